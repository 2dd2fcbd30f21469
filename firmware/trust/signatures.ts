/**
 * TUF-style signature envelopes `{ signed, signatures: [{ keyid, sig }] }`: signatures are Ed25519 over the
 * canonical JSON of `signed`, and a role is satisfied by `threshold` distinct keys of the role. Pure functions.
 */
import { z } from 'zod';
import { UzError } from '../../lib/errors.js';
import { canonicalBytes } from './canonical.js';
import { signEd25519, verifyEd25519 } from './ed25519.js';
import { HEX128, HEX64, fromHex, toHex, type SigningKey, type TufPublicKey } from './keys.js';

export const MAX_SIGNATURES = 64;

export const SignatureSchema = z.strictObject({
  keyid: z.string().regex(HEX64),
  sig: z.string().regex(HEX128),
});
export type Signature = z.infer<typeof SignatureSchema>;

export interface Envelope<T> {
  signed: T;
  signatures: Signature[];
}

/** Signatures by `keys` over canonicalJson(signed). */
export function signCanonical(signed: unknown, keys: readonly SigningKey[]): Signature[] {
  const msg = canonicalBytes(signed);
  return keys.map((k) => ({ keyid: k.keyid, sig: toHex(signEd25519(msg, k.secretKey)) }));
}

/** Adds (or replaces, per keyid) signatures by `keys`; returns a new envelope with signatures sorted by keyid. */
export function addSignatures<T>(env: Envelope<T>, keys: readonly SigningKey[]): Envelope<T> {
  const fresh = signCanonical(env.signed, keys);
  const byId = new Map(env.signatures.map((s) => [s.keyid, s]));
  for (const s of fresh) byId.set(s.keyid, s);
  if (byId.size > MAX_SIGNATURES) throw new UzError('MALFORMED', `more than ${MAX_SIGNATURES} signatures`, {});
  const signatures = [...byId.values()].sort((a, b) => (a.keyid < b.keyid ? -1 : a.keyid > b.keyid ? 1 : 0));
  return { signed: env.signed, signatures };
}

export interface RoleKeys {
  /** Human name for messages, e.g. "release" or "root v3". */
  name: string;
  keys: Readonly<Record<string, TufPublicKey>>;
  keyids: readonly string[];
  threshold: number;
  /** keyids explicitly revoked by the trust root (only used to pick a better error code). */
  revoked?: ReadonlySet<string>;
}

export interface ThresholdResult {
  validKeyids: string[];
}

/**
 * Checks `signatures` over `message` against a role.
 *
 * strict = true (bundles): every signature entry must come from a key of the role and verify; duplicates are
 *   MALFORMED. Any stray or broken signature rejects the whole thing, so no byte of a signed header can change
 *   unnoticed (not even one of several redundant signatures).
 * strict = false (root metadata, TUF 5.3.4): signatures by keys outside the role and invalid signatures are
 *   ignored; only the count of distinct valid role keys matters. Needed because a rotated root carries
 *   signatures by keys the other root version does not know.
 *
 * Error codes: MALFORMED, UNKNOWN_KEY, REVOKED_KEY, BAD_SIGNATURE, THRESHOLD.
 */
export function verifyThreshold(
  message: Uint8Array,
  signatures: readonly Signature[],
  role: RoleKeys,
  strict: boolean,
): ThresholdResult {
  const inRole = new Set(role.keyids);
  const seen = new Set<string>();
  const valid: string[] = [];
  let bad: string | undefined;
  let revoked: string | undefined;
  let unknown: string | undefined;
  for (const s of signatures) {
    if (seen.has(s.keyid)) {
      if (strict) throw new UzError('MALFORMED', `duplicate signature by key ${s.keyid.slice(0, 16)}`, { keyid: s.keyid });
      continue;
    }
    seen.add(s.keyid);
    const key = inRole.has(s.keyid) ? role.keys[s.keyid] : undefined;
    if (!key) {
      if (role.revoked?.has(s.keyid)) revoked ??= s.keyid;
      else unknown ??= s.keyid;
      if (strict) break;
      continue;
    }
    const ok = verifyEd25519(fromHex(s.sig, 64), message, fromHex(key.keyval.public, 32));
    if (ok) valid.push(s.keyid);
    else {
      bad ??= s.keyid;
      if (strict) break;
    }
  }
  const short = (k: string) => k.slice(0, 16);
  if (strict) {
    if (revoked) throw new UzError('REVOKED_KEY', `signed by revoked ${role.name} key ${short(revoked)}`, { keyid: revoked });
    if (unknown) throw new UzError('UNKNOWN_KEY', `signed by key ${short(unknown)} which is not a ${role.name} key`, { keyid: unknown });
  }
  if (bad && (strict || valid.length < role.threshold)) {
    throw new UzError('BAD_SIGNATURE', `signature by ${role.name} key ${short(bad)} does not verify`, { keyid: bad });
  }
  if (valid.length < role.threshold) {
    throw new UzError('THRESHOLD', `${valid.length} valid ${role.name} signature(s), ${role.threshold} required`, {
      valid: valid.length,
      threshold: role.threshold,
    });
  }
  return { validKeyids: valid };
}
