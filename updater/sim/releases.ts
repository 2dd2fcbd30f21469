/**
 * Signed releases for simulation and tests: a throwaway root of trust and in-memory `.uzb` bundles built with
 * the real firmware/bundle encoder and firmware/trust signer, so the agent verifies exactly what a device would.
 */
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import type { ReleaseRef } from '../../lib/protocol.js';
import { encodeHeader, type BundleHeader } from '../../firmware/bundle/format.js';
import { FORMAT_VERSION, MANIFEST_TYPE, type Manifest } from '../../firmware/bundle/manifest.js';
import { generateSigningKey, type SigningKey } from '../../firmware/trust/keys.js';
import { createRootSigned, signRoot, tufDate, type RootMetadata } from '../../firmware/trust/root.js';
import { addSignatures } from '../../firmware/trust/signatures.js';

export interface SimTrust {
  root: RootMetadata;
  releaseKey: SigningKey;
  /** A key the root does not trust (for attack tests). */
  strangerKey: SigningKey;
}

export function simTrust(now: Date = new Date()): SimTrust {
  const rootKey = generateSigningKey();
  const releaseKey = generateSigningKey();
  const strangerKey = generateSigningKey();
  const one = (k: SigningKey) => ({ keys: [k], threshold: 1 });
  const signed = createRootSigned({
    expires: new Date(now.getTime() + 5 * 365 * 86_400_000),
    root: one(rootKey),
    release: one(releaseKey),
    targets: one(rootKey),
    snapshot: one(rootKey),
    timestamp: one(rootKey),
  });
  return { root: signRoot(signed, [rootKey]), releaseKey, strangerKey };
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

export interface SimBundleOptions {
  payload: Buffer;
  version: string;
  rollbackCounter?: number;
  board?: string;
  chunkSize?: number;
  compression?: 'none' | 'gzip';
  keys: readonly SigningKey[];
  now?: Date;
  expiresAt?: Date;
}

export interface SimBundle {
  bytes: Buffer;
  manifest: Manifest;
  /** What ends up in the slot (the inflated payload for gzip). */
  slotContent: Buffer;
  release: (bundleUrl: string) => ReleaseRef;
}

export function simBundle(o: SimBundleOptions): SimBundle {
  const stored = o.compression === 'gzip' ? gzipSync(o.payload) : o.payload;
  const chunkSize = o.chunkSize ?? 4096;
  const chunkSha256: string[] = [];
  for (let i = 0; i < stored.length; i += chunkSize) chunkSha256.push(sha(stored.subarray(i, i + chunkSize)));
  const now = o.now ?? new Date();
  const manifest: Manifest = {
    _type: MANIFEST_TYPE,
    formatVersion: FORMAT_VERSION,
    board: { id: o.board ?? 'qemu-virt', hardwareIds: [] },
    version: o.version,
    rollbackCounter: o.rollbackCounter ?? 1,
    payload: { size: stored.length, sha256: sha(stored), compression: o.compression ?? 'none', chunkSize, chunkSha256 },
    createdAt: tufDate(new Date(now.getTime() - 3_600_000)),
    expiresAt: tufDate(o.expiresAt ?? new Date(now.getTime() + 365 * 86_400_000)),
    workload: { name: 'demo', version: '1.0.0' },
    deltaBase: null,
  };
  let h: BundleHeader = { signed: manifest, signatures: [] };
  h = addSignatures(h, o.keys);
  const bytes = Buffer.concat([encodeHeader(h), stored]);
  return {
    bytes,
    manifest,
    slotContent: o.payload,
    release: (bundleUrl) => ({ version: o.version, board: manifest.board.id, rollbackCounter: manifest.rollbackCounter, bundleUrl, size: bytes.length, sha256: sha(bytes) }),
  };
}

/** A deterministic "slot image" for a version: recognisable bytes, not all zeros. */
export function simSlotImage(version: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  let seed = createHash('sha256').update(`uz-sim-slot:${version}`).digest();
  for (let o = 0; o < size; o += seed.length) {
    seed.copy(out, o, 0, Math.min(seed.length, size - o));
    seed = createHash('sha256').update(seed).digest();
  }
  return out;
}
