/**
 * Writing and signing `.uzb` bundles. Both stream: memory stays bounded by one read buffer whatever the
 * payload size. Output goes to a temporary file next to the destination and is renamed into place, so a
 * crash never leaves a half-written bundle under the final name.
 */
import { randomBytes, createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { UzError } from '../../lib/errors.js';
import type { SigningKey } from '../trust/keys.js';
import { tufDate } from '../trust/root.js';
import { addSignatures } from '../trust/signatures.js';
import { encodeHeader, type BundleHeader } from './format.js';
import { FORMAT_VERSION, MANIFEST_TYPE, ManifestSchema, chooseChunkSize, type Manifest, type PayloadInfo } from './manifest.js';
import { ByteReader, verifiedChunks } from './stream.js';
import { readHeader } from './verify.js';

const READ_HWM = 1024 * 1024;

export interface ManifestFields {
  board: { id: string; hardwareIds?: string[] };
  version: string;
  rollbackCounter: number;
  workload: { name: string; version: string };
  compression?: 'none' | 'gzip';
  /** Power of two between 4 KiB and 64 MiB; default: 1 MiB, grown for very large payloads. */
  chunkSize?: number;
  createdAt?: Date;
  expiresAt?: Date;
  downgradeOverride?: boolean;
}

export interface WriteBundleOptions {
  /** Path of the payload (e.g. the firmware image). */
  payload: string;
  /** Destination .uzb path (replaced atomically if it exists). */
  out: string;
  manifest: ManifestFields;
  /** Release keys to sign with now; omit to write an unsigned bundle and sign it later with signBundle. */
  keys?: readonly SigningKey[];
}

function tempPath(near: string, tag: string): string {
  return join(dirname(near), `.${basename(near)}.${tag}-${randomBytes(6).toString('hex')}`);
}

/** Streams a file once and returns size, sha256 and per-chunk sha256 of its bytes. */
export async function hashPayloadFile(path: string, chunkSize?: number): Promise<Omit<PayloadInfo, 'compression'>> {
  const size = (await stat(path)).size;
  const cs = chunkSize ?? chooseChunkSize(size);
  const whole = createHash('sha256');
  const chunkSha256: string[] = [];
  let cur = createHash('sha256');
  let inChunk = 0;
  let total = 0;
  for await (const buf of createReadStream(path, { highWaterMark: READ_HWM }) as AsyncIterable<Buffer>) {
    whole.update(buf);
    let off = 0;
    while (off < buf.length) {
      const take = Math.min(cs - inChunk, buf.length - off);
      cur.update(buf.subarray(off, off + take));
      inChunk += take;
      off += take;
      if (inChunk === cs) {
        chunkSha256.push(cur.digest('hex'));
        cur = createHash('sha256');
        inChunk = 0;
      }
    }
    total += buf.length;
  }
  if (inChunk > 0) chunkSha256.push(cur.digest('hex'));
  if (total !== size) throw new UzError('IO', `payload ${path} changed size while being read`, { path });
  return { size: total, sha256: whole.digest('hex'), chunkSize: cs, chunkSha256 };
}

/** Validates manifest data against the strict schema (UzError MALFORMED with the first issue). */
export function validateManifest(m: unknown): Manifest {
  const r = ManifestSchema.safeParse(m);
  if (!r.success) {
    const first = r.error.issues[0];
    throw new UzError('MALFORMED', `manifest: ${first?.path.join('.') || '(root)'}: ${first?.message ?? 'invalid'}`, {});
  }
  return r.data;
}

/** A Transform that passes bytes through while hashing them, and checks size + sha256 at the end. */
function checkingPassThrough(expectedSize: number, expectedSha: string): Transform {
  const h = createHash('sha256');
  let n = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      h.update(chunk);
      n += chunk.length;
      cb(null, chunk);
    },
    flush(cb) {
      if (n !== expectedSize || h.digest('hex') !== expectedSha) {
        cb(new UzError('IO', 'payload changed while the bundle was being written', {}));
      } else cb();
    },
  });
}

async function writeAtomically(out: string, header: Buffer, body: Readable): Promise<void> {
  const tmp = tempPath(out, 'tmp');
  try {
    const ws = createWriteStream(tmp, { flags: 'wx', mode: 0o644 });
    async function* all(): AsyncGenerator<Buffer> {
      yield header;
      for await (const c of body) yield c as Buffer;
    }
    await pipeline(Readable.from(all()), ws);
    await rename(tmp, out);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/** Writes `opts.out` = preamble + (signed) header + payload. Returns the header written. */
export async function writeBundle(opts: WriteBundleOptions): Promise<BundleHeader> {
  const f = opts.manifest;
  const compression = f.compression ?? 'none';
  let stored = opts.payload;
  let gzTemp: string | undefined;
  try {
    if (compression === 'gzip') {
      gzTemp = tempPath(opts.out, 'gz');
      await pipeline(createReadStream(opts.payload, { highWaterMark: READ_HWM }), createGzip({ level: 6 }), createWriteStream(gzTemp, { flags: 'wx', mode: 0o600 }));
      stored = gzTemp;
    }
    const p = await hashPayloadFile(stored, f.chunkSize);
    const manifest = validateManifest({
      _type: MANIFEST_TYPE,
      formatVersion: FORMAT_VERSION,
      board: { id: f.board.id, hardwareIds: f.board.hardwareIds ?? [] },
      version: f.version,
      rollbackCounter: f.rollbackCounter,
      payload: { size: p.size, sha256: p.sha256, compression, chunkSize: p.chunkSize, chunkSha256: p.chunkSha256 },
      createdAt: tufDate(f.createdAt ?? new Date()),
      expiresAt: f.expiresAt ? tufDate(f.expiresAt) : undefined,
      workload: f.workload,
      deltaBase: null,
      downgradeOverride: f.downgradeOverride,
    });
    let header: BundleHeader = { signed: manifest, signatures: [] };
    if (opts.keys && opts.keys.length > 0) header = addSignatures(header, opts.keys);
    const encoded = encodeHeader(header);
    await writeAtomically(opts.out, encoded, createReadStream(stored, { highWaterMark: READ_HWM }).pipe(checkingPassThrough(p.size, p.sha256)));
    return header;
  } finally {
    if (gzTemp) await rm(gzTemp, { force: true });
  }
}

/** Reads only the (unverified) header of a bundle file. */
export async function readBundleHeaderFile(path: string): Promise<{ header: BundleHeader; payloadOffset: number }> {
  const reader = new ByteReader(createReadStream(path, { highWaterMark: 64 * 1024 }));
  try {
    return await readHeader(reader);
  } finally {
    await reader.cancel();
  }
}

/**
 * Adds (or replaces) signatures by `keys` to the bundle at `path` (rewritten atomically, or written to
 * `out`). The payload is re-verified against the manifest hashes while copying, so nobody signs a bundle
 * whose payload does not match what the manifest says.
 */
export async function signBundle(path: string, keys: readonly SigningKey[], out: string = path): Promise<BundleHeader> {
  if (keys.length === 0) throw new UzError('NO_KEYS', 'no signing keys given', {});
  const reader = new ByteReader(createReadStream(path, { highWaterMark: READ_HWM }));
  try {
    const { header, payloadOffset } = await readHeader(reader);
    const signed = addSignatures(header, keys);
    await writeAtomically(out, encodeHeader(signed), Readable.from(verifiedChunks(reader, header.signed.payload, payloadOffset)));
    return signed;
  } finally {
    await reader.cancel();
  }
}
