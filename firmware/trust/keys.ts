/**
 * TUF-style Ed25519 key objects, key ids and the on-disk private key format. Pure functions only.
 *
 * Public key object (as in TUF metadata):  { keytype: 'ed25519', scheme: 'ed25519', keyval: { public: <64 hex> } }
 * keyid = hex(sha256(canonicalJson(public key object)))  — what python-tuf/securesystemslib compute.
 *
 * Private key file (written 0600 by `uz keys init`, never printed):
 *   { "_type": "uz-private-key", "role": "root"|"release"|..., "keyid", "keytype", "scheme",
 *     "keyval": { "public": <hex>, "private": <64 hex: the 32-byte RFC 8032 seed> } }
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { UzError } from '../../lib/errors.js';
import { canonicalBytes } from './canonical.js';
import { ed25519PublicKey, generateEd25519KeyPair } from './ed25519.js';

export const HEX64 = /^[0-9a-f]{64}$/;
export const HEX128 = /^[0-9a-f]{128}$/;

export const TufPublicKeySchema = z.strictObject({
  keytype: z.literal('ed25519'),
  scheme: z.literal('ed25519'),
  keyval: z.strictObject({ public: z.string().regex(HEX64) }),
});
export type TufPublicKey = z.infer<typeof TufPublicKeySchema>;

export interface SigningKey {
  keyid: string;
  publicKey: Uint8Array;
  /** 32-byte seed. Keep in memory only as long as needed; never log. */
  secretKey: Uint8Array;
}

export function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

/** Strict lowercase hex → bytes (uppercase or odd-length input is refused, so one value has one spelling). */
export function fromHex(s: string, expectedBytes?: number): Uint8Array {
  if (!/^(?:[0-9a-f]{2})*$/.test(s) || (expectedBytes !== undefined && s.length !== expectedBytes * 2)) {
    throw new UzError('MALFORMED', 'expected lowercase hex' + (expectedBytes ? ` of ${expectedBytes} bytes` : ''), {});
  }
  return new Uint8Array(Buffer.from(s, 'hex'));
}

export function publicKeyObject(publicKey: Uint8Array): TufPublicKey {
  return { keytype: 'ed25519', scheme: 'ed25519', keyval: { public: toHex(publicKey) } };
}

export function keyIdOf(key: TufPublicKey): string {
  return createHash('sha256')
    .update(canonicalBytes({ keytype: key.keytype, scheme: key.scheme, keyval: { public: key.keyval.public } }))
    .digest('hex');
}

export function signingKeyFromSecret(secretKey: Uint8Array): SigningKey {
  const publicKey = ed25519PublicKey(secretKey);
  return { keyid: keyIdOf(publicKeyObject(publicKey)), publicKey, secretKey };
}

export function generateSigningKey(): SigningKey {
  return signingKeyFromSecret(generateEd25519KeyPair().secretKey);
}

export function tufKeyOf(k: Pick<SigningKey, 'publicKey'>): TufPublicKey {
  return publicKeyObject(k.publicKey);
}

const PrivateKeyFileSchema = z.strictObject({
  _type: z.literal('uz-private-key'),
  role: z.string().regex(/^[a-z][a-z0-9-]{0,31}$/),
  keyid: z.string().regex(HEX64),
  keytype: z.literal('ed25519'),
  scheme: z.literal('ed25519'),
  keyval: z.strictObject({ public: z.string().regex(HEX64), private: z.string().regex(HEX64) }),
});

export function serializePrivateKey(key: SigningKey, role: string): string {
  const doc: z.infer<typeof PrivateKeyFileSchema> = {
    _type: 'uz-private-key',
    role,
    keyid: key.keyid,
    keytype: 'ed25519',
    scheme: 'ed25519',
    keyval: { public: toHex(key.publicKey), private: toHex(key.secretKey) },
  };
  return JSON.stringify(doc, null, 2) + '\n';
}

/** Parse a private key file; checks that public key and keyid really belong to the seed. */
export function parsePrivateKey(text: string): SigningKey & { role: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new UzError('MALFORMED', 'private key file is not JSON', {});
  }
  const r = PrivateKeyFileSchema.safeParse(raw);
  if (!r.success) throw new UzError('MALFORMED', 'not a uz private key file', { issues: r.error.issues.length });
  const k = signingKeyFromSecret(fromHex(r.data.keyval.private, 32));
  if (toHex(k.publicKey) !== r.data.keyval.public || k.keyid !== r.data.keyid) {
    throw new UzError('MALFORMED', 'private key file is inconsistent (public key or keyid does not match the seed)', {
      keyid: r.data.keyid,
    });
  }
  return { ...k, role: r.data.role };
}
