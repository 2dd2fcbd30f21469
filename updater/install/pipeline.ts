/**
 * The install pipeline: bundle bytes → header verified against the trusted root (board, rollback floor, expiry,
 * signatures) BEFORE anything is written → target slot marked bad → chunks streamed into the slot, each checked
 * against its signed hash before it is handed to a write, fsync at checkpoints and at the end, progress recorded
 * after each fsync → (installing) the slot confirmed before it may be armed.
 *
 * The manifest signs a hash for every chunk, and the chunks cover the payload exactly, so a slot whose every
 * chunk matched on its way in holds the signed payload; the final fsync makes it durable before the record
 * says "complete". Installing accepts that once; a repeated confirmation (after a restart or a lost trial
 * boot) reads the slot back (readBackSlot, docs/agent.md "Write path").
 *
 * Chunks are checked as they arrive, so a resumed download is verified without refetching what is already on
 * the medium: only chunks counted by a record written after an fsync are skipped.
 *
 * gzip payloads: zlib's state cannot be resumed, so they restart from chunk 0 after an interruption (the chunks
 * are still verified before inflating). Uncompressed payloads resume at chunk granularity.
 */
import { createHash } from 'node:crypto';
import type { Writable } from 'node:stream';
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

/**
 * A slot write carries up to this many bytes of whole chunks (one chunk when chunks are larger): small chunks are
 * not written one syscall each. Larger batches measured slower: three 4 MiB buffers no longer stay in a 4 MiB
 * L2 cache between the copy, the hash and the kernel's copy (docs/agent.md, "Write path").
 */
export const WRITE_BATCH_BYTES = 1024 * 1024;
/** Write buffers in rotation: one being filled while up to two are queued for writing. */
const WRITE_BUFFERS = 3;
/**
 * Default checkpoint cadence (resume granularity): fsync the slot, then record progress. It also bounds the
 * slot's dirty pages in the page cache to about two intervals. Why this value: docs/agent.md ("Write path").
 */
export const DEFAULT_SYNC_EVERY_BYTES = 32 * 1024 * 1024;
/** zlib output piece size (its default of 16 KiB means a thread-pool round trip per 16 KiB). */
const INFLATE_PIECE_BYTES = 256 * 1024;

/**
 * Bytes bound for the slot go into a few reusable buffers; a full buffer becomes ONE positional write, queued
 * without waiting, while the next buffer fills. Writes run one after the other (concurrent writes to one file
 * only contend for its lock in the kernel). A buffer is refilled only after its write completed, so the bytes
 * that were hashed are exactly the bytes the kernel copies. Memory: `WRITE_BUFFERS × size`, allocated once per
 * download, instead of a fresh Buffer (and a copy) per chunk.
 */
class SlotBatcher {
  private readonly bufs: Buffer[] = [];
  private readonly done: Promise<void>[] = [];
  /** The last queued write: settles after every earlier one (a failure rejects everything queued after it). */
  private tail: Promise<void> = Promise.resolve();
  private cur = 0;
  /** Bytes in the current buffer. */
  fill = 0;

  constructor(
    private readonly slot: BlockFile,
    /** Capacity of one buffer. */
    readonly size: number,
    /** Slot position of the current buffer's first byte. */
    private base: number,
  ) {
    for (let i = 0; i < WRITE_BUFFERS; i++) this.done.push(Promise.resolve());
  }

  private buffer(): Buffer {
    // Allocated on first use: a small payload never needs all of them.
    return (this.bufs[this.cur] ??= Buffer.allocUnsafeSlow(this.size));
  }

  get room(): number {
    return this.size - this.fill;
  }

  /** The next n bytes of the current buffer, to be filled by the caller and then `commit(n)`ed. */
  view(n: number): Buffer {
    return this.buffer().subarray(this.fill, this.fill + n);
  }

  commit(n: number): void {
    this.fill += n;
  }

  /** What the current buffer holds (not yet written). */
  pending(): Buffer {
    return this.buffer().subarray(0, this.fill);
  }

  /** Queues the write of the current buffer and moves to the next one, once that one's earlier write is done. */
  async flush(): Promise<void> {
    if (this.fill === 0) return;
    const data = this.pending();
    const at = this.base;
    const w = this.tail.then(() => this.slot.write(data, at));
    w.catch(() => {}); // observed by whoever awaits it next (rotation, written())
    this.tail = w;
    this.done[this.cur] = w;
    this.base += this.fill;
    this.fill = 0;
    this.cur = (this.cur + 1) % WRITE_BUFFERS;
    await this.done[this.cur];
  }

  /** Settles when every write queued so far has completed; rejects with the first failure. */
  written(): Promise<void> {
    return this.tail;
  }
}

async function writeRaw(ctx: InstallContext, slot: BlockFile, reader: ByteReader, p: Progress, store: ProgressStore, info: PayloadInfo): Promise<Progress> {
  const hashes = info.chunkSha256;
  const size = info.size;
  const every = Math.max(1, ctx.syncEveryBytes ?? DEFAULT_SYNC_EVERY_BYTES);
  const start = p.chunksDone * p.chunkSize;
  // A batch holds whole chunks (a chunk is verified before any of it is handed to a write) and never spans a
  // checkpoint interval, so the resume granularity stays `every`.
  const perBatch = Math.max(1, Math.floor(Math.min(WRITE_BATCH_BYTES, every) / p.chunkSize));
  const out = new SlotBatcher(slot, Math.min(perBatch * p.chunkSize, size - start), start);
  let buffered = p.chunksDone; // chunks verified into the buffers (written or not)
  let unsynced = 0;
  let cur = p;
  // Writes run while the next batch is fetched and hashed, and one fsync (+ its progress record) runs while
  // the following batches arrive: network, hashing and the medium overlap. A sync covers the writes that had
  // completed when it was called, so the record it completes counts only those chunks.
  let checkpoint: Promise<void> = Promise.resolve();
  const flush = async (last: boolean): Promise<void> => {
    unsynced += out.fill;
    await out.flush();
    if (!last && unsynced < every) return;
    await checkpoint; // at most one checkpoint in flight (backpressure when the medium is slow)
    unsynced = 0;
    const done = buffered;
    checkpoint = out
      .written()
      .then(() => slot.sync())
      .then(async () => {
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
      const len = chunkLen(p, i, size);
      if (len > out.room) await flush(false);
      // Each network piece is copied into the write buffer and hashed THERE, right away (while it is in the
      // CPU cache, and while the next piece is on its way): the hashed bytes are the written bytes. Nothing of
      // the chunk is committed to the batch before its signed hash matched.
      const dst = out.view(len);
      const h = createHash('sha256');
      let at = 0;
      await reader.readExact(len, `payload chunk ${i}`, (piece) => {
        const from = at;
        at += piece.copy(dst, at);
        h.update(dst.subarray(from, at));
      });
      if (h.digest('hex') !== hashes[i]) {
        throw new UzError('HASH_MISMATCH', `payload chunk ${i} does not match its signed hash`, { chunk: i });
      }
      out.commit(len);
      buffered = i + 1;
      ctx.onProgress?.(i * p.chunkSize + len, size);
    }
    await flush(true);
  } finally {
    await out.written().catch(() => {});
    await checkpoint.catch(() => {});
  }
  // Every chunk was checked against the signed manifest on its way in and is synced: installing may accept
  // the slot without reading it back (readBackSlot).
  return { ...cur, chunksDone: p.chunks, slotBytes: size, slotSha256: p.payloadSha256, writeVerified: true };
}

/** Resolves on 'drain', or on 'close' when the writer side failed and destroyed the stream (no 'drain' then). */
function drainedOrClosed(s: Writable): Promise<void> {
  if (s.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      s.off('drain', done);
      s.off('close', done);
      resolve();
    };
    s.once('drain', done);
    s.once('close', done);
  });
}

async function writeGunzip(ctx: InstallContext, slot: BlockFile, reader: ByteReader, p: Progress, slotSize: number, m: PayloadInfo): Promise<Progress> {
  const every = Math.max(1, ctx.syncEveryBytes ?? DEFAULT_SYNC_EVERY_BYTES);
  const gunzip = createGunzip({ chunkSize: INFLATE_PIECE_BYTES });
  const out = createHash('sha256');
  const batch = new SlotBatcher(slot, Math.max(1, Math.min(WRITE_BATCH_BYTES, every, slotSize)), 0);
  let pos = 0;
  let unsynced = 0;
  // No resume for gzip (see the top of this file), so the periodic sync only bounds dirty pages.
  let syncing: Promise<void> = Promise.resolve();
  const flush = async (): Promise<void> => {
    unsynced += batch.fill;
    await batch.flush();
    if (unsynced < every) return;
    unsynced = 0;
    await syncing;
    syncing = batch.written().then(() => slot.sync());
    syncing.catch(() => {});
  };
  let failure: unknown = null;
  const writer = (async () => {
    for await (const b of gunzip as AsyncIterable<Buffer>) {
      if (pos + b.length > slotSize) throw new UzError('SLOT_TOO_SMALL', `inflated payload exceeds the ${slotSize}-byte slot`, { slotSize });
      for (let off = 0; off < b.length; ) {
        const n = Math.min(batch.room, b.length - off);
        const dst = batch.view(n);
        off += b.copy(dst, 0, off, off + n);
        out.update(dst); // the inflated bytes as they sit in the buffer that is written
        batch.commit(n);
        if (batch.room === 0) await flush();
      }
      pos += b.length;
    }
    await flush();
    await batch.written();
    await syncing;
  })().catch((e: unknown) => {
    failure = e;
    gunzip.destroy();
  });
  try {
    try {
      for (let i = 0; i < p.chunks; i++) {
        if (ctx.signal.aborted) throw abortError();
        if (failure) break;
        const pieces = await readVerifiedChunk(reader, m.chunkSha256, p, i, m.size);
        for (const piece of pieces) {
          if (gunzip.destroyed) break; // the writer side failed: `failure` says why
          if (!gunzip.write(piece)) await drainedOrClosed(gunzip);
        }
        ctx.onProgress?.(Math.min(m.size, (i + 1) * p.chunkSize), m.size);
      }
      gunzip.end();
    } catch (e) {
      gunzip.destroy();
      await writer;
      throw e;
    }
    await writer;
  } finally {
    await batch.written().catch(() => {});
    await syncing.catch(() => {});
  }
  if (failure) throw failure instanceof UzError ? failure : new UzError('MALFORMED', `gzip payload: ${(failure as Error).message}`, {});
  await slot.sync();
  // The compressed chunks were checked against the signed manifest before inflating; slotSha256 is the hash of
  // what inflating them wrote, for a later read-back.
  return { ...p, chunksDone: p.chunks, slotBytes: pos, slotSha256: out.digest('hex'), writeVerified: true };
}

export interface ReadBackResult {
  ok: boolean;
  version: string;
  rollbackCounter: number;
  reason?: string;
  /**
   * How the slot content was established: 'write' = accepted on the verification done while it was written
   * (first confirmation of a download), 'read-back' = hashed from the slot.
   */
  checked?: 'write' | 'read-back';
}

/** Read-back buffer; two of them, so the next read runs while the current one is hashed. */
const READ_BACK_BYTES = 4 * 1024 * 1024;

/**
 * installing: confirms that the slot holds the signed payload before it may be armed. The header is verified
 * again from the copy on the data partition (works offline after a restart), and the progress record must
 * describe a complete, synced download of that payload into this slot.
 *
 * The first confirmation of a download accepts the slot on the verification done while it was written
 * (every chunk hash-checked in the very buffer that was written, the slot fsynced before the record saying
 * so): reading it back now would come from the page cache, not the medium, and prove nothing more. That
 * acceptance is used up (recorded durably) before returning, so any later confirmation of the same download —
 * after a restart between download and arm, or when a trial boot was lost and the slot is about to be armed
 * again — reads the whole slot back and hashes it; after a reboot the cache is cold and that read reaches the
 * medium. See docs/agent.md ("Write path").
 */
export async function readBackSlot(storage: Storage, stateDir: string, release: ReleaseRef, target: Slot, slotPath: string, policy: VerifyPolicy, signal?: AbortSignal): Promise<ReadBackResult> {
  const store = new ProgressStore(storage, stateDir);
  const prog = await store.load();
  const hb = await store.loadHeader();
  if (!prog || !hb || prog.artifact !== release.sha256 || prog.slot !== target || !prog.slotSha256 || prog.slotBytes === null) {
    return { ok: false, version: release.version, rollbackCounter: release.rollbackCounter, reason: 'no complete download recorded' };
  }
  const v = verifyStoredHeader(hb, policy);
  const version = v.manifest.version;
  const rollbackCounter = v.manifest.rollbackCounter;
  if (v.manifest.payload.sha256 !== prog.payloadSha256) return { ok: false, version, rollbackCounter, reason: 'header changed' };
  if (prog.writeVerified) {
    if (signal?.aborted) throw abortError();
    await store.save({ ...prog, writeVerified: false });
    return { ok: true, version, rollbackCounter, checked: 'write' };
  }
  const slot = await storage.openBlock(slotPath);
  try {
    const h = createHash('sha256');
    const bufs = [Buffer.allocUnsafeSlow(Math.min(READ_BACK_BYTES, prog.slotBytes)), Buffer.allocUnsafeSlow(Math.min(READ_BACK_BYTES, prog.slotBytes))];
    const readAt = (k: number, pos: number): Promise<number> => {
      const b = bufs[k % 2]!;
      const want = Math.min(b.length, prog.slotBytes! - pos);
      return slot.read(want === b.length ? b : b.subarray(0, want), pos);
    };
    let k = 0;
    let pos = 0;
    let next = prog.slotBytes > 0 ? readAt(0, 0) : null;
    while (next) {
      const n = await next;
      next = null;
      if (n <= 0) return { ok: false, version, rollbackCounter, reason: 'slot shorter than the payload', checked: 'read-back' };
      if (signal?.aborted) throw abortError();
      const got = bufs[k % 2]!.subarray(0, n);
      pos += n;
      k++;
      if (pos < prog.slotBytes) next = readAt(k, pos); // the other buffer: overlaps with hashing this one
      h.update(got);
    }
    const ok = h.digest('hex') === prog.slotSha256;
    return { ok, version, rollbackCounter, checked: 'read-back', ...(ok ? {} : { reason: 'slot content does not match the signed payload hash' }) };
  } finally {
    await slot.close();
  }
}
