/**
 * Device-side TUF client core: pure functions, no I/O (refresh.ts does the fetching and persisting).
 *
 *  - followRoot: one TUF 5.3 root step (threshold of the OLD and of the NEW root keys, version exactly +1);
 *  - checkTimestamp / checkSnapshot / checkTargets: TUF 5.4–5.6 — signature by a threshold of the role's keys
 *    in the trusted root, version never below the last one seen (replay), consistency with the metadata that
 *    points at it (version, length, sha256), expiry;
 *  - findTarget: the release the server announced must be a signed target (sha256, length, custom fields).
 *
 * Reason codes: FROZEN (freshness cannot be established: bad/missing signatures, a replayed older version,
 * metadata that does not match what the timestamp/snapshot pinned), EXPIRED (metadata or final root past its
 * expiry), NOT_IN_TARGETS (release not listed), plus the root-update codes of firmware/trust/root.ts
 * (THRESHOLD, BAD_SIGNATURE, ROLLBACK, VERSION_GAP, MALFORMED).
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { UzError, isUzError } from '../../lib/errors.js';
import { canonicalBytes } from '../../firmware/trust/canonical.js';
import { DateTimeSchema, assertRootNotExpired, roleKeys, updateTrustedRoot, type RoleName, type RootMetadata, type RootSigned } from '../../firmware/trust/root.js';
import { MAX_SIGNATURES, SignatureSchema, verifyThreshold, type Envelope } from '../../firmware/trust/signatures.js';
import type { MetaFileInfo, SnapshotSigned, TargetsSigned, TimestampSigned } from '../../firmware/trust/tuf.js';

/** Highest versions seen (persisted): anything lower later is a replay. */
export interface TufState {
  v: 1;
  timestamp: number;
  snapshot: number;
  targets: number;
}
export const EMPTY_TUF_STATE: TufState = Object.freeze({ v: 1, timestamp: 0, snapshot: 0, targets: 0 });

export const MAX_TIMESTAMP_BYTES = 64 * 1024;
export const MAX_SNAPSHOT_BYTES = 4 * 1024 * 1024;
export const MAX_TARGETS_BYTES = 32 * 1024 * 1024;
/** Root versions walked in one refresh (TUF's max_root_rotations). */
export const MAX_ROOT_ROTATIONS = 256;

const Version = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER);
const Sha256 = z.string().regex(/^[0-9a-f]{64}$/);
const MetaFileSchema = z.looseObject({ version: Version, length: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER), hashes: z.looseObject({ sha256: Sha256 }) });
const Common = { spec_version: z.string().regex(/^1\.\d{1,4}(\.\d{1,4})?$/), version: Version, expires: DateTimeSchema };
const TimestampSchema = z.looseObject({ _type: z.literal('timestamp'), ...Common, meta: z.looseObject({ 'snapshot.json': MetaFileSchema }) });
const SnapshotSchema = z.looseObject({ _type: z.literal('snapshot'), ...Common, meta: z.looseObject({ 'targets.json': MetaFileSchema }) });
const TargetsSchema = z.looseObject({
  _type: z.literal('targets'),
  ...Common,
  targets: z.record(z.string().max(1024), z.looseObject({ length: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER), hashes: z.looseObject({ sha256: Sha256 }), custom: z.record(z.string(), z.unknown()).optional() })),
});
const EnvelopeSchema = z.strictObject({ signed: z.unknown(), signatures: z.array(SignatureSchema).max(MAX_SIGNATURES) });

export function frozen(message: string, context: Record<string, unknown> = {}): UzError {
  return new UzError('FROZEN', message, context);
}

function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

function parseEnvelope<T>(bytes: Uint8Array, name: string, schema: z.ZodType<T>, limit: number): Envelope<T> {
  if (bytes.length > limit) throw frozen(`${name} is larger than ${limit} bytes`, { file: name });
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw frozen(`${name} is not JSON`, { file: name });
  }
  const env = EnvelopeSchema.safeParse(raw);
  if (!env.success) throw frozen(`${name}: expected { signed, signatures }`, { file: name });
  const s = schema.safeParse(env.data.signed);
  if (!s.success) {
    const i = s.error.issues[0];
    throw frozen(`${name}: ${i?.path.join('.') ?? ''}: ${i?.message ?? 'invalid'}`, { file: name });
  }
  // Verify over exactly what was parsed (unknown fields included).
  return { signed: env.data.signed as T, signatures: env.data.signatures };
}

/** Threshold of `role` keys of the trusted root (TUF rules: stray/invalid signatures ignored). */
function verifyRole(root: RootSigned, role: RoleName, env: Envelope<unknown>, name: string): void {
  try {
    verifyThreshold(canonicalBytes(env.signed), env.signatures, roleKeys(root, role, `${role} (root v${root.version})`), false);
  } catch (e) {
    if (!isUzError(e)) throw e;
    throw new UzError('FROZEN', `${name} is not signed by the ${role} role of root v${root.version}: ${e.code}: ${e.message}`, { file: name, cause: e.code });
  }
}

function notExpired(signed: { expires: string; version: number }, name: string, now: Date): void {
  if (Date.parse(signed.expires) <= now.getTime()) {
    throw new UzError('EXPIRED', `${name} v${signed.version} expired at ${signed.expires} (freeze: the server serves stale metadata)`, { file: name, expires: signed.expires });
  }
}

function matchesMeta(bytes: Uint8Array, info: MetaFileInfo, name: string): void {
  if (bytes.length !== info.length) throw frozen(`${name} is ${bytes.length} bytes, pinned length is ${info.length}`, { file: name });
  if (sha256(bytes) !== info.hashes.sha256) throw frozen(`${name} does not match its pinned sha256`, { file: name });
}

function keySetOf(root: RootSigned, role: RoleName): string {
  const r = root.roles[role];
  return `${r.threshold}:${[...r.keyids].sort().join(',')}`;
}

/**
 * One root step (TUF 5.3.4–5.3.5) plus 5.3.11: when the timestamp or snapshot keys changed, the version
 * floors of timestamp/snapshot are forgotten (recovery from a fast-forward attack with a compromised key).
 */
export function followRoot(trusted: RootMetadata, candidate: Uint8Array, state: TufState): { root: RootMetadata; state: TufState } {
  const root = updateTrustedRoot(trusted, candidate);
  let next = state;
  if (keySetOf(trusted.signed, 'timestamp') !== keySetOf(root.signed, 'timestamp') || keySetOf(trusted.signed, 'snapshot') !== keySetOf(root.signed, 'snapshot')) {
    next = { ...state, timestamp: 0, snapshot: 0 };
  }
  if (keySetOf(trusted.signed, 'targets') !== keySetOf(root.signed, 'targets')) next = { ...next, targets: 0 };
  return { root, state: next };
}

/** After the chain: the final root must not have expired (TUF 5.3.10). */
export function checkFinalRoot(root: RootMetadata, now: Date): void {
  assertRootNotExpired(root, now);
}

export function checkTimestamp(root: RootMetadata, bytes: Uint8Array, state: TufState, now: Date): { timestamp: TimestampSigned; state: TufState } {
  const env = parseEnvelope(bytes, 'timestamp.json', TimestampSchema, MAX_TIMESTAMP_BYTES);
  verifyRole(root.signed, 'timestamp', env, 'timestamp.json');
  const ts = env.signed as unknown as TimestampSigned;
  if (ts.version < state.timestamp) {
    throw frozen(`timestamp.json v${ts.version} is older than v${state.timestamp} seen before (replayed metadata)`, { file: 'timestamp.json', got: ts.version, seen: state.timestamp });
  }
  const snapV = ts.meta['snapshot.json']!.version;
  if (snapV < state.snapshot) {
    throw frozen(`timestamp.json pins snapshot v${snapV}, older than v${state.snapshot} seen before`, { file: 'timestamp.json', got: snapV, seen: state.snapshot });
  }
  notExpired(ts, 'timestamp.json', now);
  return { timestamp: ts, state: { ...state, timestamp: ts.version } };
}

export function checkSnapshot(root: RootMetadata, bytes: Uint8Array, timestamp: TimestampSigned, state: TufState, now: Date): { snapshot: SnapshotSigned; state: TufState } {
  const pinned = timestamp.meta['snapshot.json']!;
  matchesMeta(bytes, pinned, 'snapshot.json');
  const env = parseEnvelope(bytes, 'snapshot.json', SnapshotSchema, MAX_SNAPSHOT_BYTES);
  verifyRole(root.signed, 'snapshot', env, 'snapshot.json');
  const snap = env.signed as unknown as SnapshotSigned;
  if (snap.version !== pinned.version) {
    throw frozen(`snapshot.json is v${snap.version}, timestamp v${timestamp.version} pins v${pinned.version} (mixed metadata)`, { file: 'snapshot.json', got: snap.version, pinned: pinned.version });
  }
  const tv = snap.meta['targets.json']!.version;
  if (tv < state.targets) throw frozen(`snapshot.json pins targets v${tv}, older than v${state.targets} seen before`, { file: 'snapshot.json', got: tv, seen: state.targets });
  notExpired(snap, 'snapshot.json', now);
  return { snapshot: snap, state: { ...state, snapshot: snap.version } };
}

export function checkTargets(root: RootMetadata, bytes: Uint8Array, snapshot: SnapshotSigned, state: TufState, now: Date): { targets: TargetsSigned; state: TufState } {
  const pinned = snapshot.meta['targets.json']!;
  matchesMeta(bytes, pinned, 'targets.json');
  const env = parseEnvelope(bytes, 'targets.json', TargetsSchema, MAX_TARGETS_BYTES);
  verifyRole(root.signed, 'targets', env, 'targets.json');
  const t = env.signed as unknown as TargetsSigned;
  if (t.version !== pinned.version) {
    throw frozen(`targets.json is v${t.version}, snapshot v${snapshot.version} pins v${pinned.version} (mixed metadata)`, { file: 'targets.json', got: t.version, pinned: pinned.version });
  }
  notExpired(t, 'targets.json', now);
  return { targets: t, state: { ...state, targets: t.version } };
}

export interface AnnouncedRelease {
  sha256: string;
  size: number;
  board: string;
  version: string;
  rollbackCounter: number;
}

/** The signed target for the announced bundle (sha256 + length; custom board/version/counter must agree). */
export function findTarget(targets: TargetsSigned, r: AnnouncedRelease): string {
  for (const [path, t] of Object.entries(targets.targets)) {
    if (t.hashes.sha256 !== r.sha256 || t.length !== r.size) continue;
    const c = t.custom ?? {};
    if ((c.board !== undefined && c.board !== r.board) || (c.version !== undefined && c.version !== r.version) || (c.rollbackCounter !== undefined && c.rollbackCounter !== r.rollbackCounter)) {
      throw new UzError('NOT_IN_TARGETS', `target ${path} has the bundle's hash but other custom fields than the announced release`, { path });
    }
    return path;
  }
  throw new UzError('NOT_IN_TARGETS', `bundle ${r.sha256.slice(0, 16)} (${r.board} ${r.version}) is not a target in targets.json v${targets.version}`, { sha256: r.sha256 });
}

/**
 * Persisted floors; null when the file is damaged. The caller then starts from zero: replays stay bounded by
 * the metadata expiry (a day for the timestamp), which beats refusing every update forever.
 */
export function parseTufState(bytes: Uint8Array | null): TufState | null {
  if (!bytes) return { ...EMPTY_TUF_STATE };
  try {
    return z.strictObject({ v: z.literal(1), timestamp: z.number().int().min(0), snapshot: z.number().int().min(0), targets: z.number().int().min(0) }).parse(JSON.parse(Buffer.from(bytes).toString('utf8')));
  } catch {
    return null;
  }
}
