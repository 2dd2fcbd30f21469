/**
 * TUF repository metadata (targets / snapshot / timestamp) for publishing bundles, in the format any TUF client
 * (python-tuf, tuf-js, go-tuf) reads: consistent_snapshot is false, so files are
 *
 *   <repo>/metadata/<v>.root.json   every root version (clients walk v+1, v+2, … for rotation)
 *   <repo>/metadata/timestamp.json  short-lived; points at snapshot.json (version, length, sha256)
 *   <repo>/metadata/snapshot.json   points at targets.json (version, length, sha256)
 *   <repo>/metadata/targets.json    lists each target: length, sha256, custom { board, version, rollbackCounter }
 *   <repo>/targets/<path>           the .uzb bundles
 *
 * Signatures are by the keys of the respective roles in the root (threshold rules as in TUF). The builders are
 * pure; writeTufRepository does the I/O. A tuf-js client test lives in test/trust/tuf-interop.test.ts.
 * Bundles stay independently verifiable (release-role signatures inside the .uzb); TUF adds freshness
 * (timestamp), consistency (snapshot) and discovery (targets).
 */
import { createHash } from 'node:crypto';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { UzError } from '../../lib/errors.js';
import type { SigningKey } from './keys.js';
import { SPEC_VERSION, tufDate, type RootMetadata } from './root.js';
import { addSignatures, type Envelope } from './signatures.js';

export interface TargetEntry {
  /** Target path, e.g. "rpi4/app-1.4.0.uzb" (relative, '/'-separated, no '..'). */
  path: string;
  length: number;
  sha256: string;
  custom?: Record<string, unknown>;
}

export interface MetaFileInfo {
  version: number;
  length: number;
  hashes: { sha256: string };
}

export interface TargetsSigned {
  _type: 'targets';
  spec_version: string;
  version: number;
  expires: string;
  targets: Record<string, { length: number; hashes: { sha256: string }; custom?: Record<string, unknown> }>;
}
export interface SnapshotSigned {
  _type: 'snapshot';
  spec_version: string;
  version: number;
  expires: string;
  meta: Record<string, MetaFileInfo>;
}
export interface TimestampSigned {
  _type: 'timestamp';
  spec_version: string;
  version: number;
  expires: string;
  meta: Record<string, MetaFileInfo>;
}

const SAFE_PATH = /^(?!.*(?:^|\/)\.\.?(?:\/|$))[A-Za-z0-9._+@-]+(?:\/[A-Za-z0-9._+@-]+)*$/;

export function createTargetsSigned(o: { version: number; expires: Date; targets: readonly TargetEntry[] }): TargetsSigned {
  const targets: TargetsSigned['targets'] = {};
  for (const t of o.targets) {
    if (!SAFE_PATH.test(t.path)) throw new UzError('USAGE', `unsafe target path ${JSON.stringify(t.path)}`, { path: t.path });
    targets[t.path] = { length: t.length, hashes: { sha256: t.sha256 }, ...(t.custom ? { custom: t.custom } : {}) };
  }
  return { _type: 'targets', spec_version: SPEC_VERSION, version: o.version, expires: tufDate(o.expires), targets };
}

export function createSnapshotSigned(o: { version: number; expires: Date; targets: MetaFileInfo }): SnapshotSigned {
  return { _type: 'snapshot', spec_version: SPEC_VERSION, version: o.version, expires: tufDate(o.expires), meta: { 'targets.json': o.targets } };
}

export function createTimestampSigned(o: { version: number; expires: Date; snapshot: MetaFileInfo }): TimestampSigned {
  return { _type: 'timestamp', spec_version: SPEC_VERSION, version: o.version, expires: tufDate(o.expires), meta: { 'snapshot.json': o.snapshot } };
}

export function signMetadata<T>(signed: T, keys: readonly SigningKey[]): Envelope<T> {
  return addSignatures({ signed, signatures: [] }, keys);
}

/** The file bytes we publish for a metadata envelope, and its MetaFileInfo. */
export function metadataFile(env: Envelope<{ version: number }>): { bytes: Buffer; info: MetaFileInfo } {
  const bytes = Buffer.from(JSON.stringify(env, null, 1) + '\n');
  return { bytes, info: { version: env.signed.version, length: bytes.length, hashes: { sha256: createHash('sha256').update(bytes).digest('hex') } } };
}

export interface PublishOptions {
  dir: string;
  /** All root versions, oldest first (v1 … vN); each is written as <v>.root.json. */
  roots: readonly RootMetadata[];
  /** Bundles to publish: source file + target path (+ custom). */
  targets: readonly (TargetEntry & { file: string })[];
  version: number;
  keys: { targets: readonly SigningKey[]; snapshot: readonly SigningKey[]; timestamp: readonly SigningKey[] };
  expires: { targets: Date; snapshot: Date; timestamp: Date };
}

/** Writes a complete (non-consistent-snapshot) TUF repository. */
export async function writeTufRepository(o: PublishOptions): Promise<{ targets: TargetsSigned; snapshot: MetaFileInfo; timestamp: MetaFileInfo }> {
  const last = o.roots[o.roots.length - 1];
  if (!last) throw new UzError('USAGE', 'at least one root version is required', {});
  for (const role of ['targets', 'snapshot', 'timestamp'] as const) {
    const r = last.signed.roles[role];
    for (const k of o.keys[role]) {
      if (!r.keyids.includes(k.keyid)) throw new UzError('KEY_ROLE', `key ${k.keyid.slice(0, 16)} is not a ${role} key in root v${last.signed.version}`, { role });
    }
    if (new Set(o.keys[role].map((k) => k.keyid)).size < r.threshold) {
      throw new UzError('THRESHOLD', `${role} needs ${r.threshold} key(s), got ${o.keys[role].length}`, { role });
    }
  }
  const meta = join(o.dir, 'metadata');
  await mkdir(meta, { recursive: true });
  for (const r of o.roots) await writeFile(join(meta, `${r.signed.version}.root.json`), JSON.stringify(r, null, 1) + '\n');
  for (const t of o.targets) {
    const dest = join(o.dir, 'targets', ...t.path.split('/'));
    await mkdir(dirname(dest), { recursive: true });
    await copyFile(t.file, dest);
  }
  const targets = signMetadata(createTargetsSigned({ version: o.version, expires: o.expires.targets, targets: o.targets }), o.keys.targets);
  const tf = metadataFile(targets);
  const snapshot = signMetadata(createSnapshotSigned({ version: o.version, expires: o.expires.snapshot, targets: tf.info }), o.keys.snapshot);
  const sf = metadataFile(snapshot);
  const timestamp = signMetadata(createTimestampSigned({ version: o.version, expires: o.expires.timestamp, snapshot: sf.info }), o.keys.timestamp);
  const tsf = metadataFile(timestamp);
  await writeFile(join(meta, 'targets.json'), tf.bytes);
  await writeFile(join(meta, 'snapshot.json'), sf.bytes);
  await writeFile(join(meta, 'timestamp.json'), tsf.bytes);
  return { targets: targets.signed, snapshot: sf.info, timestamp: tsf.info };
}
