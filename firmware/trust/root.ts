/**
 * Root of trust: TUF root metadata (spec 1.0.x) plus a `release` role whose keys sign firmware bundles.
 *
 *   { signed: { _type: 'root', spec_version: '1.0.31', version, expires, consistent_snapshot,
 *               keys: { <keyid>: { keytype: 'ed25519', scheme: 'ed25519', keyval: { public } } },
 *               roles: { root, targets, snapshot, timestamp, release: { keyids, threshold } },
 *               'x-uz-revoked-keyids'?: [<keyid>] },
 *     signatures: [{ keyid, sig }] }
 *
 * Unknown fields are allowed (TUF requires clients to keep them) and are covered by the signatures, because we
 * always sign/verify the canonical JSON of the `signed` object exactly as parsed.
 * `x-uz-revoked-keyids` is our extension: keyids that were removed from the release role by a rotation. It is
 * informational (a key not in the release role is never accepted anyway); it lets verifiers report REVOKED_KEY
 * instead of UNKNOWN_KEY. Pure functions only; see io.ts for file access.
 */
import { z } from 'zod';
import { UzError } from '../../lib/errors.js';
import { canonicalBytes } from './canonical.js';
import { HEX64, TufPublicKeySchema, keyIdOf, tufKeyOf, type SigningKey, type TufPublicKey } from './keys.js';
import { SignatureSchema, addSignatures, verifyThreshold, MAX_SIGNATURES, type Envelope, type RoleKeys } from './signatures.js';

export const SPEC_VERSION = '1.0.31';
export const TOP_LEVEL_ROLES = ['root', 'targets', 'snapshot', 'timestamp'] as const;
export const RELEASE_ROLE = 'release';
export const ROLE_NAMES = [...TOP_LEVEL_ROLES, RELEASE_ROLE] as const;
export type RoleName = (typeof ROLE_NAMES)[number];
export const REVOKED_FIELD = 'x-uz-revoked-keyids';
export const MAX_KEYS = 256;
export const MAX_REVOKED = 1024;
/** Largest root.json we agree to parse (bytes). */
export const MAX_ROOT_BYTES = 512 * 1024;

/** TUF datetime: `YYYY-MM-DDTHH:MM:SSZ` (UTC, no fractions). */
export const TUF_DATETIME = /^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\dZ$/;
export const DateTimeSchema = z
  .string()
  .regex(TUF_DATETIME)
  .refine((s) => !Number.isNaN(Date.parse(s)), 'invalid date');

export function tufDate(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

const RoleSchema = z.looseObject({
  keyids: z.array(z.string().regex(HEX64)).min(1).max(MAX_KEYS),
  threshold: z.number().int().min(1).max(MAX_KEYS),
});
export type Role = z.infer<typeof RoleSchema>;

export const RootSignedSchema = z.looseObject({
  _type: z.literal('root'),
  spec_version: z.string().regex(/^1\.\d{1,4}(\.\d{1,4})?$/),
  version: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  expires: DateTimeSchema,
  consistent_snapshot: z.boolean(),
  keys: z.record(z.string().regex(HEX64), TufPublicKeySchema),
  roles: z.looseObject({
    root: RoleSchema,
    targets: RoleSchema,
    snapshot: RoleSchema,
    timestamp: RoleSchema,
    release: RoleSchema,
  }),
  [REVOKED_FIELD]: z.array(z.string().regex(HEX64)).max(MAX_REVOKED).optional(),
});
export type RootSigned = z.infer<typeof RootSignedSchema>;
export type RootMetadata = Envelope<RootSigned>;

const RootEnvelopeSchema = z.strictObject({
  signed: z.unknown(),
  signatures: z.array(SignatureSchema).max(MAX_SIGNATURES),
});

function malformed(msg: string, context: Record<string, unknown> = {}): UzError {
  return new UzError('MALFORMED', `root metadata: ${msg}`, context);
}

/**
 * Structural validation of root metadata (JSON text, bytes or an already parsed value). Does NOT check
 * signatures. Checks: schema, keyid == sha256(canonical key), every role keyid is a listed key, no duplicate
 * keyids in a role, threshold ≤ number of keys in the role, canonical encodability.
 */
export function parseRootMetadata(input: string | Uint8Array | unknown): RootMetadata {
  let raw: unknown = input;
  if (typeof input === 'string' || input instanceof Uint8Array) {
    const text = typeof input === 'string' ? input : Buffer.from(input).toString('utf8');
    if (text.length > MAX_ROOT_BYTES) throw malformed('too large');
    try {
      raw = JSON.parse(text);
    } catch {
      throw malformed('not JSON');
    }
  }
  const env = RootEnvelopeSchema.safeParse(raw);
  if (!env.success) throw malformed('expected { signed, signatures }');
  const r = RootSignedSchema.safeParse(env.data.signed);
  if (!r.success) {
    const first = r.error.issues[0];
    throw malformed(`${first?.path.join('.') ?? ''}: ${first?.message ?? 'invalid'}`);
  }
  const signed = r.data;
  if (Object.keys(signed.keys).length > MAX_KEYS) throw malformed('too many keys');
  for (const [keyid, key] of Object.entries(signed.keys)) {
    if (keyIdOf(key) !== keyid) throw malformed(`keyid ${keyid.slice(0, 16)} does not match its key`, { keyid });
  }
  for (const name of ROLE_NAMES) {
    const role = signed.roles[name];
    if (new Set(role.keyids).size !== role.keyids.length) throw malformed(`role ${name} lists a keyid twice`);
    for (const k of role.keyids) if (!signed.keys[k]) throw malformed(`role ${name} uses unlisted key ${k.slice(0, 16)}`);
    if (role.threshold > role.keyids.length) throw malformed(`role ${name} threshold ${role.threshold} > ${role.keyids.length} keys`);
  }
  // The exact object we verify signatures over is the parsed `signed` value, unknown fields included.
  canonicalBytes(env.data.signed);
  return { signed: env.data.signed as RootSigned, signatures: env.data.signatures };
}

export function roleKeys(root: RootSigned, role: RoleName, name: string = role): RoleKeys {
  const r = root.roles[role];
  return {
    name,
    keys: root.keys,
    keyids: r.keyids,
    threshold: r.threshold,
    revoked: new Set(root[REVOKED_FIELD] ?? []),
  };
}

/** Keys + threshold that bundles must satisfy. */
export function releaseRoleKeys(root: RootMetadata | RootSigned): RoleKeys {
  const signed = 'signed' in root && 'signatures' in root ? (root as RootMetadata).signed : (root as RootSigned);
  return roleKeys(signed, RELEASE_ROLE);
}

/** Threshold-checks a root against its own root role (trust-on-first-use / factory provisioning). */
export function verifyRootSelfSigned(root: RootMetadata): void {
  verifyThreshold(canonicalBytes(root.signed), root.signatures, roleKeys(root.signed, 'root', `root v${root.signed.version}`), false);
}

export function isRootExpired(root: RootMetadata | RootSigned, now: Date): boolean {
  const signed = 'signed' in root && 'signatures' in root ? (root as RootMetadata).signed : (root as RootSigned);
  return Date.parse(signed.expires) <= now.getTime();
}

export function assertRootNotExpired(root: RootMetadata, now: Date): void {
  if (isRootExpired(root, now)) {
    throw new UzError('EXPIRED', `trusted root v${root.signed.version} expired at ${root.signed.expires}`, {
      expires: root.signed.expires,
    });
  }
}

/**
 * TUF 5.3 root update step. `trusted` is the device's current root (already trusted); `newRoot` the candidate
 * (JSON text, bytes or parsed value). Accepts only if:
 *  - the candidate is well-formed root metadata with the same spec major version,
 *  - it is signed by a threshold of the TRUSTED root's root keys (5.3.4) and by a threshold of its OWN root keys,
 *  - its version is exactly trusted.version + 1 (5.3.5): lower/equal → ROLLBACK, a gap → VERSION_GAP.
 * Expiry is intentionally not checked here (intermediate roots may have expired, TUF 5.3.10); check the final
 * root with assertRootNotExpired or use updateTrustedRootChain.
 */
export function updateTrustedRoot(trusted: RootMetadata, newRoot: string | Uint8Array | unknown): RootMetadata {
  const next = parseRootMetadata(newRoot);
  const msg = canonicalBytes(next.signed);
  const oldV = trusted.signed.version;
  const newV = next.signed.version;
  verifyThreshold(msg, next.signatures, roleKeys(trusted.signed, 'root', `trusted root v${oldV}`), false);
  verifyThreshold(msg, next.signatures, roleKeys(next.signed, 'root', `new root v${newV}`), false);
  if (newV <= oldV) throw new UzError('ROLLBACK', `root v${newV} is not newer than trusted root v${oldV}`, { trusted: oldV, got: newV });
  if (newV !== oldV + 1) throw new UzError('VERSION_GAP', `root v${newV} does not follow trusted root v${oldV}`, { trusted: oldV, got: newV });
  if (next.signed.spec_version.split('.')[0] !== trusted.signed.spec_version.split('.')[0]) {
    throw new UzError('MALFORMED', 'root metadata: unsupported spec_version', { spec_version: next.signed.spec_version });
  }
  return next;
}

/** Applies a sequence of root updates in order, then checks that the final root has not expired. */
export function updateTrustedRootChain(trusted: RootMetadata, newRoots: readonly (string | Uint8Array | unknown)[], now: Date): RootMetadata {
  let cur = trusted;
  for (const r of newRoots) cur = updateTrustedRoot(cur, r);
  assertRootNotExpired(cur, now);
  return cur;
}

export interface RoleSpec {
  keys: readonly Pick<SigningKey, 'publicKey'>[];
  threshold: number;
}

export interface CreateRootOptions {
  version?: number;
  expires: Date;
  root: RoleSpec;
  release: RoleSpec;
  targets: RoleSpec;
  snapshot: RoleSpec;
  timestamp: RoleSpec;
  revokedKeyids?: readonly string[];
}

/** Builds the unsigned `signed` part of a root. */
export function createRootSigned(o: CreateRootOptions): RootSigned {
  const keys: Record<string, TufPublicKey> = {};
  const roles = {} as Record<RoleName, Role>;
  for (const name of ROLE_NAMES) {
    const spec = o[name];
    const keyids: string[] = [];
    for (const k of spec.keys) {
      const tk = tufKeyOf(k);
      const id = keyIdOf(tk);
      keys[id] = tk;
      if (!keyids.includes(id)) keyids.push(id);
    }
    if (keyids.length === 0 || spec.threshold < 1 || spec.threshold > keyids.length) {
      throw new UzError('BAD_THRESHOLD', `role ${name}: threshold ${spec.threshold} with ${keyids.length} key(s)`, { role: name });
    }
    roles[name] = { keyids, threshold: spec.threshold };
  }
  const signed: RootSigned = {
    _type: 'root',
    spec_version: SPEC_VERSION,
    version: o.version ?? 1,
    expires: tufDate(o.expires),
    consistent_snapshot: false,
    keys,
    roles,
  };
  if (o.revokedKeyids && o.revokedKeyids.length > 0) signed[REVOKED_FIELD] = [...o.revokedKeyids].slice(-MAX_REVOKED);
  return parseRootMetadata({ signed, signatures: [] }).signed;
}

export function signRoot(root: RootMetadata | RootSigned, keys: readonly SigningKey[]): RootMetadata {
  const env: RootMetadata = 'signed' in root && 'signatures' in root ? (root as RootMetadata) : { signed: root as RootSigned, signatures: [] };
  return addSignatures(env, keys);
}

export interface RootChange {
  expires: Date;
  /** Keys to add per role (public parts only). */
  add?: Partial<Record<RoleName, readonly Pick<SigningKey, 'publicKey'>[]>>;
  /** Keyids to remove per role. Removing from `release` records the keyid in `x-uz-revoked-keyids`. */
  remove?: Partial<Record<RoleName, readonly string[]>>;
  thresholds?: Partial<Record<RoleName, number>>;
}

/**
 * Next root version (unsigned): version + 1, role changes applied, keys no longer used by any role dropped.
 * Sign the result with a threshold of the OLD root keys and a threshold of the NEW root keys.
 */
export function rotateRootSigned(prev: RootSigned, change: RootChange): RootSigned {
  const keys: Record<string, TufPublicKey> = { ...prev.keys };
  const roles = {} as Record<RoleName, Role>;
  const revoked = new Set(prev[REVOKED_FIELD] ?? []);
  for (const name of ROLE_NAMES) {
    const removed = new Set(change.remove?.[name] ?? []);
    let keyids = prev.roles[name].keyids.filter((k) => !removed.has(k));
    for (const k of change.add?.[name] ?? []) {
      const tk = tufKeyOf(k);
      const id = keyIdOf(tk);
      keys[id] = tk;
      if (!keyids.includes(id)) keyids = [...keyids, id];
      if (name === RELEASE_ROLE) revoked.delete(id);
    }
    if (name === RELEASE_ROLE) for (const k of removed) if (prev.roles.release.keyids.includes(k)) revoked.add(k);
    const threshold = change.thresholds?.[name] ?? Math.min(prev.roles[name].threshold, keyids.length);
    if (keyids.length === 0 || threshold < 1 || threshold > keyids.length) {
      throw new UzError('BAD_THRESHOLD', `role ${name}: threshold ${threshold} with ${keyids.length} key(s)`, { role: name });
    }
    roles[name] = { keyids, threshold };
  }
  const used = new Set(ROLE_NAMES.flatMap((n) => roles[n].keyids));
  for (const id of Object.keys(keys)) if (!used.has(id)) delete keys[id];
  const { [REVOKED_FIELD]: _drop, ...rest } = prev;
  void _drop;
  const next: RootSigned = {
    ...rest,
    version: prev.version + 1,
    expires: tufDate(change.expires),
    keys,
    roles: { ...prev.roles, ...roles },
  };
  if (revoked.size > 0) next[REVOKED_FIELD] = [...revoked].slice(-MAX_REVOKED);
  return parseRootMetadata({ signed: next, signatures: [] }).signed;
}
