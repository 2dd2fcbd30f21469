/**
 * Streaming primitives: an exact-length byte reader over any async byte source, and the chunk verifier that
 * turns stored payload bytes into verified chunks. Memory use is bounded by one chunk (manifest chunkSize).
 */
import { createHash, type Hash } from 'node:crypto';
import { UzError } from '../../lib/errors.js';
import type { PayloadInfo } from './manifest.js';

const EMPTY = Buffer.alloc(0);

export type ByteSource = AsyncIterable<Uint8Array | string>;

function toBuffer(c: Uint8Array | string): Buffer {
  if (typeof c === 'string') throw new TypeError('bundle source must yield bytes, not strings (no setEncoding)');
  return Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
}

export class ByteReader {
  private readonly it: AsyncIterator<Uint8Array | string>;
  private buf: Buffer = EMPTY;
  private done = false;
  /** Bytes handed out so far. */
  position = 0;

  constructor(source: ByteSource) {
    this.it = source[Symbol.asyncIterator]();
  }

  private async fill(): Promise<boolean> {
    while (this.buf.length === 0 && !this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else this.buf = toBuffer(r.value);
    }
    return this.buf.length > 0;
  }

  /**
   * Reads exactly n bytes, passing each piece to `onPiece` as it arrives (for hashing without a copy).
   * Returns the pieces; throws TRUNCATED if the source ends first.
   */
  async readExact(n: number, what: string, onPiece?: (p: Buffer) => void): Promise<Buffer[]> {
    const pieces: Buffer[] = [];
    let need = n;
    while (need > 0) {
      if (!(await this.fill())) {
        throw new UzError('TRUNCATED', `stream ended ${need} byte(s) short inside ${what} (at offset ${this.position})`, {
          offset: this.position,
          missing: need,
        });
      }
      const take = Math.min(need, this.buf.length);
      const piece = this.buf.subarray(0, take);
      this.buf = this.buf.subarray(take);
      need -= take;
      this.position += take;
      onPiece?.(piece);
      pieces.push(piece);
    }
    return pieces;
  }

  async readExactBuffer(n: number, what: string): Promise<Buffer> {
    const p = await this.readExact(n, what);
    return p.length === 1 ? p[0]! : Buffer.concat(p, n);
  }

  /** True when the source has no further bytes. */
  async atEnd(): Promise<boolean> {
    return !(await this.fill());
  }

  /** Stop the underlying source early (e.g. closes a file stream). */
  async cancel(): Promise<void> {
    if (!this.done) {
      this.done = true;
      await this.it.return?.();
    }
  }
}

/**
 * Reads `info.size` payload bytes from `reader` as verified chunks: each chunk is hashed and compared with
 * chunkSha256[i] before it is yielded; the last chunk is yielded only after the whole-payload sha256 matches and
 * the source has been checked to end right there (TRAILING_DATA otherwise). The first failure throws, so a
 * consumer writing chunks to a slot stops at the first bad chunk. Codes: HASH_MISMATCH, TRUNCATED, TRAILING_DATA.
 * Each chunk is yielded as the list of source pieces it was made of (no copy); see verifiedChunks for Buffers.
 */
export async function* verifiedChunkPieces(reader: ByteReader, info: PayloadInfo, payloadOffset: number): AsyncGenerator<Buffer[], void, undefined> {
  const whole: Hash = createHash('sha256');
  const count = info.chunkSha256.length;
  try {
    for (let i = 0; i < count; i++) {
      const len = i === count - 1 ? info.size - i * info.chunkSize : info.chunkSize;
      const h = createHash('sha256');
      const pieces = await reader.readExact(len, `payload chunk ${i}`, (p) => {
        h.update(p);
        whole.update(p);
      });
      if (h.digest('hex') !== info.chunkSha256[i]) {
        throw new UzError('HASH_MISMATCH', `payload chunk ${i} (offset ${payloadOffset + i * info.chunkSize}) does not match its hash`, {
          chunk: i,
          offset: payloadOffset + i * info.chunkSize,
        });
      }
      if (i === count - 1) await finish(reader, whole, info);
      yield pieces;
    }
    if (count === 0) await finish(reader, whole, info);
  } finally {
    await reader.cancel();
  }
}

/** verifiedChunkPieces with each chunk as one Buffer (a copy only when a chunk spans several source pieces). */
export async function* verifiedChunks(reader: ByteReader, info: PayloadInfo, payloadOffset: number): AsyncGenerator<Buffer, void, undefined> {
  for await (const pieces of verifiedChunkPieces(reader, info, payloadOffset)) {
    yield pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
  }
}

async function finish(reader: ByteReader, whole: Hash, info: PayloadInfo): Promise<void> {
  if (whole.digest('hex') !== info.sha256) throw new UzError('HASH_MISMATCH', 'payload sha256 does not match', {});
  if (!(await reader.atEnd())) {
    throw new UzError('TRAILING_DATA', `unexpected bytes after the ${info.size}-byte payload`, { offset: reader.position });
  }
}
