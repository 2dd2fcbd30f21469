// Fixtures for TUF trust tests: a key set, a root chain, signed timestamp/snapshot/targets, an in-memory fetch.
import { generateSigningKey, type SigningKey } from '../../firmware/trust/keys.js';
import { createRootSigned, rotateRootSigned, signRoot, type RootChange, type RootMetadata } from '../../firmware/trust/root.js';
import { createSnapshotSigned, createTargetsSigned, createTimestampSigned, metadataFile, signMetadata, type TargetEntry } from '../../firmware/trust/tuf.js';
import type { Storage } from '../../updater/io/storage.js';

export const T0 = new Date('2030-01-01T00:00:00Z');
export const days = (n: number, from = T0) => new Date(from.getTime() + n * 86_400_000);

export interface Keys {
  root: SigningKey[];
  release: SigningKey;
  targets: SigningKey;
  snapshot: SigningKey;
  timestamp: SigningKey;
}

export function newKeys(rootN = 1): Keys {
  return { root: Array.from({ length: rootN }, () => generateSigningKey()), release: generateSigningKey(), targets: generateSigningKey(), snapshot: generateSigningKey(), timestamp: generateSigningKey() };
}

export function rootV1(k: Keys, threshold = 1): RootMetadata {
  const one = (x: SigningKey) => ({ keys: [x], threshold: 1 });
  return signRoot(createRootSigned({ expires: days(365), root: { keys: k.root, threshold }, release: one(k.release), targets: one(k.targets), snapshot: one(k.snapshot), timestamp: one(k.timestamp) }), k.root);
}

export function rotate(prev: RootMetadata, change: Omit<RootChange, 'expires'>, signers: SigningKey[]): RootMetadata {
  return signRoot(rotateRootSigned(prev.signed, { expires: days(365), ...change }), signers);
}

/** timestamp → snapshot → targets, as raw file bytes. */
export function repoFiles(k: Pick<Keys, 'targets' | 'snapshot' | 'timestamp'>, o: { version: number; targets?: TargetEntry[]; tsExpires?: Date; tsVersion?: number; snapVersion?: number }) {
  const targets = metadataFile(signMetadata(createTargetsSigned({ version: o.version, expires: days(90), targets: o.targets ?? [] }), [k.targets]));
  const snapshot = metadataFile(signMetadata(createSnapshotSigned({ version: o.snapVersion ?? o.version, expires: days(7), targets: targets.info }), [k.snapshot]));
  const timestamp = metadataFile(signMetadata(createTimestampSigned({ version: o.tsVersion ?? o.version, expires: o.tsExpires ?? days(1), snapshot: snapshot.info }), [k.timestamp]));
  return { 'targets.json': targets.bytes, 'snapshot.json': snapshot.bytes, 'timestamp.json': timestamp.bytes };
}

/** In-memory HTTP side: files by name; records what was asked. */
export function memFetch(files: Map<string, Buffer>) {
  const asked: string[] = [];
  const fetch = async (name: string, max: number): Promise<Buffer | null> => {
    asked.push(name);
    const b = files.get(name);
    if (!b) return null;
    if (b.length > max) throw new Error(`too big: ${name}`);
    return b;
  };
  return { fetch, asked };
}

export function memStorage(): Storage & { files: Map<string, Buffer> } {
  const files = new Map<string, Buffer>();
  return {
    files,
    async readFile(p) {
      return files.get(p) ?? null;
    },
    async writeFileDurable(p, d) {
      files.set(p, Buffer.from(d));
    },
    async remove(p) {
      files.delete(p);
    },
    async mkdirp() {},
    async openBlock() {
      throw new Error('no block devices here');
    },
  };
}

export const rootBytes = (r: RootMetadata) => Buffer.from(JSON.stringify(r));
