/**
 * Ed25519 primitives. Key generation and signing use @noble/ed25519 (audited lineage, deterministic RFC 8032
 * signing); verification has two interchangeable paths:
 *  - `verifyNoble`: @noble/ed25519 with `zip215: false` (strict RFC 8032 / FIPS 186-5 encoding rules);
 *  - `verifyNode`: node:crypto (OpenSSL) Ed25519, ~an order of magnitude faster (see bench/verify.ts).
 * `verifyEd25519` is the one the rest of the code uses; it is node:crypto (decision recorded in docs/security.md).
 * Both reject non-canonical S (s >= L) so signatures are not malleable; they only differ on crafted
 * small-order / non-canonical public keys, which cannot enter a trust root (keys come from our own ceremony).
 *
 * Everything here is pure (no I/O) and synchronous.
 */
import * as ed from '@noble/ed25519';
import { createHash, createPublicKey, verify as cryptoVerify, type KeyObject } from 'node:crypto';

// @noble/ed25519 v3 ships without a SHA-512; give it node:crypto's so the synchronous API works.
const sha512 = (m: Uint8Array): Uint8Array<ArrayBuffer> => new Uint8Array(createHash('sha512').update(m).digest());
ed.hashes.sha512 = sha512;
ed.hashes.sha512Async = (m: Uint8Array) => Promise.resolve(sha512(m));

export const ED25519_PUBLIC_KEY_BYTES = 32;
export const ED25519_SECRET_KEY_BYTES = 32;
export const ED25519_SIGNATURE_BYTES = 64;

export interface Ed25519KeyPair {
  /** 32-byte RFC 8032 seed ("private key"). */
  secretKey: Uint8Array;
  publicKey: Uint8Array;
}

/** Fresh key pair from the platform CSPRNG (crypto.getRandomValues). */
export function generateEd25519KeyPair(): Ed25519KeyPair {
  const { secretKey, publicKey } = ed.keygen();
  return { secretKey, publicKey };
}

export function ed25519PublicKey(secretKey: Uint8Array): Uint8Array {
  if (secretKey.length !== ED25519_SECRET_KEY_BYTES) throw new RangeError('ed25519 secret key must be 32 bytes');
  return ed.getPublicKey(secretKey);
}

export function signEd25519(message: Uint8Array, secretKey: Uint8Array): Uint8Array {
  if (secretKey.length !== ED25519_SECRET_KEY_BYTES) throw new RangeError('ed25519 secret key must be 32 bytes');
  return ed.sign(message, secretKey);
}

function lengthsOk(signature: Uint8Array, publicKey: Uint8Array): boolean {
  return signature.length === ED25519_SIGNATURE_BYTES && publicKey.length === ED25519_PUBLIC_KEY_BYTES;
}

/** Strict RFC 8032 verification in pure JS. Never throws. */
export function verifyNoble(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean {
  if (!lengthsOk(signature, publicKey)) return false;
  try {
    return ed.verify(signature, message, publicKey, { zip215: false });
  } catch {
    return false;
  }
}

const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');
const keyObjectCache = new Map<string, KeyObject | null>();

function nodeKey(publicKey: Uint8Array): KeyObject | null {
  const id = Buffer.from(publicKey).toString('hex');
  let k = keyObjectCache.get(id);
  if (k === undefined) {
    try {
      k = createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, publicKey]), format: 'der', type: 'spki' });
    } catch {
      k = null;
    }
    if (keyObjectCache.size > 256) keyObjectCache.clear();
    keyObjectCache.set(id, k);
  }
  return k;
}

/** OpenSSL Ed25519 verification through node:crypto. Never throws. */
export function verifyNode(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean {
  if (!lengthsOk(signature, publicKey)) return false;
  const key = nodeKey(publicKey);
  if (!key) return false;
  try {
    return cryptoVerify(null, message, key, signature);
  } catch {
    return false;
  }
}

/** The verifier used by trust roots and bundles. */
export const verifyEd25519 = verifyNode;
