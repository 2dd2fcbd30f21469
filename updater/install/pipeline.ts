/**
 * The install pipeline: bundle bytes → header verified against the trusted root (board, rollback floor, expiry,
 * signatures) BEFORE anything is written → target slot marked bad → verified chunks streamed into the slot,
 * fsynced, progress recorded → (installing) the slot read back and hashed against the signed manifest.
 *
 * Chunks are checked with the manifest's per-chunk hashes as they arrive, so a resumed download is verified
 * without refetching what is already on the medium; the whole-payload hash is then checked on the bytes
 * actually in the slot (read-back), which is the strongest statement we can make before arming a try.
 *
 * gzip payloads: zlib's state cannot be resumed, so they restart from chunk 0 after an interruption (the chunks
 * are still verified before inflating). Uncompressed payloads resume at chunk granularity.
 */
import { createHash } from 'node:crypto';
import { createGunzip } from 'node:zlib';
import { UzError } from '../../lib/errors.js';
import type { ReleaseRef } from '../../lib/protocol.js';
import { PREAMBLE_BYTES, parseHeader, parsePreamble, type BundleHeader } from '../../firmware/bundle/format.js';
import { ByteReader } from '../../firmware/bundle/stream.js';
import { verifyBundleHeader, type HeaderVerdict, type VerifyPolicy } from '../../firmware/bundle/verify.js';
import type { BootControl, Slot } from '../bootctl/types.js';
import type { BlockFile, Storage } from '../io/storage.js';
import { ProgressStore, type Progress } from './progress.js';
import { collect, exactly, type RangeSource } from './source.js';

export interface InstallContext {
  storage: Storage;
  stateDir: string;
  source: RangeSource;
  release: ReleaseRef;
  target: Slot;
  slotPath: string;
  policy: VerifyPolicy;
  bootctl: BootControl;
  signal: AbortSignal;
  /** fsync the slot and record progress at least every this many bytes (resume granularity). */
  syncEveryBytes?: number;
  onProgress?: (bytes: number, total: number) => void;
}

async function* iterate(bufs: Buffer[]): AsyncGenerator<Buffer> {
  for (const b of bufs) yield b;
}

function abortError(): Error {
  return Object.assign(new Error('cancelled'), { name: 'AbortError' });
}

/** Cross-checks what the server announced against what the release keys signed. */
export function checkReleaseMatchesManifest(release: ReleaseRef, payloadOffset: number, v: HeaderVerdict): void {
  const m = v.manifest;
  if (payloadOffset + m.payload.size !== release.size) {
    throw new UzError('SIZE_MISMATCH', `bundle is ${payloadOffset + m.payload.size} bytes per its signed header, the release announced ${release.size}`, {
      signed: payloadOffset + m.payload.size,
      announced: release.size,
    });
  }
  if (m.version !== release.version || m.rollbackCounter !== release.rollbackCounter || m.board.id !== release.board) {
    throw new UzError('RELEASE_MISMATCH', `signed manifest (${m.board.id} ${m.version} #${m.rollbackCounter}) differs from the announced release (${release.board} ${release.version} #${release.rollbackCounter})`, {});
  }
}

async function readHeaderFrom(reader: ByteReader): Promise<{ bytes: Buffer; header: BundleHeader }> {
  const pre = await reader.readExactBuffer(PREAMBLE_BYTES, 'the preamble');
  const n = parsePreamble(pre);
  const body = await reader.readExactBuffer(n, 'the header');
  return { bytes: Buffer.concat([pre, body]), header: parseHeader(body) };
}

export function verifyStoredHeader(bytes: Buffer, policy: VerifyPolicy): HeaderVerdict & { payloadOffset: number } {
  const n = parsePreamble(bytes.subarray(0, PREAMBLE_BYTES));
  if (bytes.length !== PREAMBLE_BYTES + n) throw new UzError('MALFORMED', 'stored header has the wrong length', {});
  return { ...verifyBundleHeader(parseHeader(bytes.subarray(PREAMBLE_BYTES)), policy), payloadOffset: PREAMBLE_BYTES + n };
}

/**
 * downloading: fetch (or resume) the bundle into the target slot. Returns when every chunk is in the slot and
 * synced (progress.slotSha256 set). Throws UzError with a reason code; AbortError when cancelled.
 */
export async function downloadIntoSlot(ctx: InstallContext): Promise<Progress> {
  const store = new ProgressStore(ctx.storage, ctx.stateDir);
  let prog = await store.load();
  if (prog && (prog.artifact !== ctx.release.sha256 || prog.slot !== ctx.target)) prog = null;
  if (prog?.slotSha256) return prog; // complete: installing reads it back

  const resumeAt = prog && prog.compression === 'none' ? prog.chunksDone : 0;
  let reader: ByteReader;
  let headerBytes: Buffer;
  let header: BundleHeader;
  if (prog && resumeAt > 0) {
    // Only the header (verified again: trust is never carried over from a previous run) and the missing chunks.
    const hb = await collect(exactly(ctx.source.read(0, PREAMBLE_BYTES + prog.headerLength, ctx.signal), 0, PREAMBLE_BYTES + prog.headerLength));
    const r = await readHeaderFrom(new ByteReader(iterate([hb])));
    headerBytes = r.bytes;
    header = r.header;
    reader = new ByteReader(iterate([]));
  } else {
    reader = new ByteReader(exactly(ctx.source.read(0, ctx.release.size, ctx.signal), 0, ctx.release.size));
    const r = await readHeaderFrom(reader);
    headerBytes = r.bytes;
    header = r.header;
  }
  const verdict = verifyBundleHeader(header, ctx.policy);
  const payloadOffset = headerBytes.length;
  checkReleaseMatchesManifest(ctx.release, payloadOffset, verdict);
  const info = verdict.manifest.payload;

  const slot = await ctx.storage.openBlock(ctx.slotPath);
  try {
    const slotSize = await slot.size();
    if (info.compression === 'none' && info.size > slotSize) {
      throw new UzError('SLOT_TOO_SMALL', `payload of ${info.size} bytes does not fit the ${slotSize}-byte slot ${ctx.target}`, { size: info.size, slotSize });
    }
    if (prog && prog.payloadSha256 !== info.sha256) prog = null; // same artifact id, different content: start over
    if (!prog || resumeAt === 0) {
      // Nothing is written before the header is verified; the slot is marked bad before its first byte changes.
      await store.saveHeader(headerBytes);
      await ctx.bootctl.markBad(ctx.target);
      prog = {
        v: 1,
        artifact: ctx.release.sha256,
        slot: ctx.target,
        headerLength: payloadOffset - PREAMBLE_BYTES,
        payloadSha256: info.sha256,
        compression: info.compression,
        chunkSize: info.chunkSize,
        chunks: info.chunkSha256.length,
        chunksDone: 0,
        slotBytes: null,
        slotSha256: null,
      };
      await store.save(prog);
    } else {
      await ctx.bootctl.markBad(ctx.target); // idempotent: unchanged state is not rewritten
      reader = new ByteReader(
        exactly(ctx.source.read(payloadOffset + resumeAt * info.chunkSize, ctx.release.size, ctx.signal), payloadOffset + resumeAt * info.chunkSize, ctx.release.size),
      );
    }
    const p = prog;
    const done = info.compression === 'none' ? await writeRaw(ctx, slot, reader, p, store, info) : await writeGunzip(ctx, slot, reader, p, slotSize, info);
    if (!(await reader.atEnd())) throw new UzError('SIZE_MISMATCH', 'bytes after the signed payload', {});
    await store.save(done);
    return done;
  } finally {
    await reader.cancel().catch(() => {});
    await slot.close();
  }
}

function chunkLen(p: Progress, i: number, size: number): number {
  return i === p.chunks - 1 ? size - i * p.chunkSize : p.chunkSize;
}

async function readVerifiedChunk(reader: ByteReader, hashes: readonly string[], p: Progress, i: number, size: number): Promise<Buffer[]> {
  const h = createHash('sha256');
  const pieces = await reader.readExact(chunkLen(p, i, size), `payload chunk ${i}`, (x) => h.update(x));
  if (h.digest('hex') !== hashes[i]) throw new UzError('HASH_MISMATCH', `payload chunk ${i} does not match its signed hash`, { chunk: i });
  return pieces;
}

type PayloadInfo = BundleHeader['signed']['payload'];

async function writeRaw(ctx: InstallContext, slot: BlockFile, reader: ByteReader, p: Progress, store: ProgressStore, info: PayloadInfo): Promise<Progress> {
  const hashes = info.chunkSha256;
  const size = info.size;
  const every = ctx.syncEveryBytes ?? 16 * 1024 * 1024;
  let unsynced = 0;
  let cur = p;
  // One write in flight while the next chunk is fetched and hashed, and one fsync (+ its progress record) in
  // flight while the following chunks arrive: network, hashing and the medium overlap. A sync covers what was
  // written before it was called, so the record it completes counts only those chunks.
  let writing: Promise<void> = Promise.resolve();
  let checkpoint: Promise<void> = Promise.resolve();
  const startCheckpoint = async (done: number, last: boolean): Promise<void> => {
    await writing;
    const synced = slot.sync();
    checkpoint = synced.then(async () => {
      cur = { ...cur, chunksDone: done };
      if (!last) await store.save(cur);
    });
    // Awaited later; the no-op handler only keeps an early failure (a power cut) from counting as unhandled.
    checkpoint.catch(() => {});
    if (last) await checkpoint;
  };
  try {
    for (let i = p.chunksDone; i < p.chunks; i++) {
      if (ctx.signal.aborted) throw abortError();
      const pieces = await readVerifiedChunk(reader, hashes, p, i, size);
      const chunk = pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
      const pos = i * p.chunkSize;
      await writing;
      writing = slot.write(chunk, pos);
      writing.catch(() => {}); // rethrown by the next `await writing`
      unsynced += chunk.length;
      const last = i === p.chunks - 1;
      if (unsynced >= every || last) {
        await checkpoint; // at most one checkpoint in flight (backpressure when the medium is slow)
        await startCheckpoint(i + 1, last);
        unsynced = 0;
      }
      ctx.onProgress?.(pos + chunk.length, size);
    }
  } finally {
    await writing.catch(() => {});
    await checkpoint.catch(() => {});
  }
  return { ...cur, chunksDone: p.chunks, slotBytes: size, slotSha256: p.payloadSha256 };
}

async function writeGunzip(ctx: InstallContext, slot: BlockFile, reader: ByteReader, p: Progress, slotSize: number, m: PayloadInfo): Promise<Progress> {
  const gunzip = createGunzip();
  const out = createHash('sha256');
  let pos = 0;
  let failure: unknown = null;
  const writer = (async () => {
    for await (const b of gunzip as AsyncIterable<Buffer>) {
      if (pos + b.length > slotSize) throw new UzError('SLOT_TOO_SMALL', `inflated payload exceeds the ${slotSize}-byte slot`, { slotSize });
      out.update(b);
      await slot.write(b, pos);
      pos += b.length;
    }
  })().catch((e: unknown) => {
    failure = e;
    gunzip.destroy();
  });
  try {
    for (let i = 0; i < p.chunks; i++) {
      if (ctx.signal.aborted) throw abortError();
      if (failure) break;
      const pieces = await readVerifiedChunk(reader, m.chunkSha256, p, i, m.size);
      for (const piece of pieces) if (!gunzip.write(piece)) await new Promise((r) => gunzip.once('drain', r));
    }
    gunzip.end();
  } catch (e) {
    gunzip.destroy();
    await writer;
    throw e;
  }
  await writer;
  if (failure) throw failure instanceof UzError ? failure : new UzError('MALFORMED', `gzip payload: ${(failure as Error).message}`, {});
  await slot.sync();
  ctx.onProgress?.(m.size, m.size);
  return { ...p, chunksDone: p.chunks, slotBytes: pos, slotSha256: out.digest('hex') };
}

export interface ReadBackResult {
  ok: boolean;
  version: string;
  rollbackCounter: number;
  reason?: string;
}

/**
 * installing: the slot's content is hashed from the medium and compared with what the signed manifest (for
 * uncompressed payloads) or the verified inflate (gzip) says. The header is verified again from the copy on
 * the data partition, so this also works after a restart with no network.
 */
export async function readBackSlot(storage: Storage, stateDir: string, release: ReleaseRef, target: Slot, slotPath: string, policy: VerifyPolicy, signal?: AbortSignal): Promise<ReadBackResult> {
  const store = new ProgressStore(storage, stateDir);
  const prog = await store.load();
  const hb = await store.loadHeader();
  if (!prog || !hb || prog.artifact !== release.sha256 || prog.slot !== target || !prog.slotSha256 || prog.slotBytes === null) {
    return { ok: false, version: release.version, rollbackCounter: release.rollbackCounter, reason: 'no complete download recorded' };
  }
  const v = verifyStoredHeader(hb, policy);
  if (v.manifest.payload.sha256 !== prog.payloadSha256) return { ok: false, version: v.manifest.version, rollbackCounter: v.manifest.rollbackCounter, reason: 'header changed' };
  const slot = await storage.openBlock(slotPath);
  try {
    const h = createHash('sha256');
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (let pos = 0; pos < prog.slotBytes; ) {
      if (signal?.aborted) throw abortError();
      const want = Math.min(buf.length, prog.slotBytes - pos);
      const n = await slot.read(want === buf.length ? buf : buf.subarray(0, want), pos);
      if (n <= 0) return { ok: false, version: v.manifest.version, rollbackCounter: v.manifest.rollbackCounter, reason: 'slot shorter than the payload' };
      h.update(buf.subarray(0, n));
      pos += n;
    }
    const ok = h.digest('hex') === prog.slotSha256;
    return { ok, version: v.manifest.version, rollbackCounter: v.manifest.rollbackCounter, ...(ok ? {} : { reason: 'slot content does not match the signed payload hash' }) };
  } finally {
    await slot.close();
  }
}
