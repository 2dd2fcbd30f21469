// Shared fixtures for trust/bundle tests: in-memory keys and roots, in-memory bundles, byte sources.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { isUzError } from '../../lib/errors.js';
import { encodeHeader, FORMAT_VERSION, MANIFEST_TYPE, type BundleHeader, type Manifest } from '../../firmware/bundle/index.js';
import { generateSigningKey, type SigningKey } from '../../firmware/trust/keys.js';
import { createRootSigned, signRoot, tufDate, type RootMetadata } from '../../firmware/trust/root.js';
import { addSignatures } from '../../firmware/trust/signatures.js';

export const NOW = new Date('2030-01-01T00:00:00Z');

export interface Ceremony {
  rootKeys: SigningKey[];
  releaseKeys: SigningKey[];
  other: SigningKey;
  root: RootMetadata;
}

/** Root v1 with `rootN` root keys (threshold rootK) and `relN` release keys (threshold relK). */
export function ceremony(rootK = 1, rootN = 1, relK = 1, relN = 1): Ceremony {
  const rootKeys = Array.from({ length: rootN }, () => generateSigningKey());
  const releaseKeys = Array.from({ length: relN }, () => generateSigningKey());
  const other = generateSigningKey();
  const one = { keys: [other], threshold: 1 };
  const signed = createRootSigned({
    expires: new Date(NOW.getTime() + 365 * 86_400_000),
    root: { keys: rootKeys, threshold: rootK },
    release: { keys: releaseKeys, threshold: relK },
    targets: one,
    snapshot: one,
    timestamp: one,
  });
  return { rootKeys, releaseKeys, other, root: signRoot(signed, rootKeys) };
}

export function sha256hex(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

export function manifestFor(payload: Buffer, over: Partial<Manifest> = {}, chunkSize = 4096): Manifest {
  const chunkSha256: string[] = [];
  for (let o = 0; o < payload.length; o += chunkSize) chunkSha256.push(sha256hex(payload.subarray(o, o + chunkSize)));
  return {
    _type: MANIFEST_TYPE,
    formatVersion: FORMAT_VERSION,
    board: { id: 'rpi4', hardwareIds: ['c03111'] },
    version: '1.2.3',
    rollbackCounter: 5,
    payload: { size: payload.length, sha256: sha256hex(payload), compression: 'none', chunkSize, chunkSha256 },
    createdAt: tufDate(new Date(NOW.getTime() - 86_400_000)),
    expiresAt: tufDate(new Date(NOW.getTime() + 30 * 86_400_000)),
    workload: { name: 'app', version: '1.0.0' },
    deltaBase: null,
    ...over,
  };
}

/** Builds bundle bytes in memory (no schema validation: lets tests craft hostile-but-signed headers). */
export function craftBundle(manifest: Manifest, keys: readonly SigningKey[], payload: Buffer): Buffer {
  let h: BundleHeader = { signed: manifest, signatures: [] };
  if (keys.length) h = addSignatures(h, keys);
  return Buffer.concat([encodeHeader(h), payload]);
}

/** A byte source that yields `buf` in pieces of `piece` bytes and records how far it was read. */
export function trackedSource(buf: Buffer, piece = 1024): { source: AsyncIterable<Uint8Array>; pulled: () => number } {
  let pulled = 0;
  async function* gen(): AsyncGenerator<Uint8Array> {
    for (let o = 0; o < buf.length; o += piece) {
      const p = buf.subarray(o, Math.min(buf.length, o + piece));
      pulled = o + p.length;
      yield p;
    }
  }
  return { source: gen(), pulled: () => pulled };
}

export function randomPayload(n: number): Buffer {
  return randomBytes(n);
}

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'uz-test-'));
}

/** Asserts that `p` rejects with a UzError whose code is `code` (or one of `code`). */
export async function expectCode(p: Promise<unknown> | (() => unknown), code: string | readonly string[]): Promise<string> {
  const codes = typeof code === 'string' ? [code] : code;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    if (!isUzError(e)) throw e;
    expect(codes).toContain(e.code);
    return e.code;
  }
  throw new Error(`expected rejection with ${codes.join('|')}, but it succeeded`);
}
