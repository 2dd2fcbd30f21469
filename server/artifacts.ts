/**
 * Artifacts on local disk: `{dataDir}/artifacts/{sha256}` (content-addressed, immutable), uploads staged in
 * `{dataDir}/tmp` and renamed into place after verification. HTTP delivery with single-range Range requests,
 * strong ETag (= the sha256), exact Content-Length, streamed from disk.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { httpError } from './errors.js';

export const SHA256_RE = /^[0-9a-f]{64}$/;

export class ArtifactStore {
  readonly dir: string;
  readonly tmp: string;
  constructor(dataDir: string) {
    this.dir = join(dataDir, 'artifacts');
    this.tmp = join(dataDir, 'tmp');
  }

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await rm(this.tmp, { recursive: true, force: true });
    await mkdir(this.tmp, { recursive: true });
  }

  path(sha256: string): string {
    if (!SHA256_RE.test(sha256)) throw httpError('NOT_FOUND', 'bad artifact id');
    return join(this.dir, sha256);
  }

  async size(sha256: string): Promise<number | null> {
    try {
      return (await stat(this.path(sha256))).size;
    } catch {
      return null;
    }
  }

  /** Streams `body` to a temp file, hashing it; BODY_TOO_LARGE past `limit`. */
  async stage(body: Readable, limit: number): Promise<{ tmpPath: string; sha256: string; size: number }> {
    const tmpPath = join(this.tmp, `up-${randomBytes(8).toString('hex')}`);
    const h = createHash('sha256');
    let n = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _e, cb) {
        n += chunk.length;
        if (n > limit) return cb(httpError('BODY_TOO_LARGE', `bundle larger than ${limit} bytes`));
        h.update(chunk);
        cb(null, chunk);
      },
    });
    try {
      await pipeline(body, meter, createWriteStream(tmpPath, { flags: 'wx', mode: 0o644 }));
      const fh = await open(tmpPath, 'r');
      await fh.sync();
      await fh.close();
    } catch (e) {
      await rm(tmpPath, { force: true });
      throw e;
    }
    return { tmpPath, sha256: h.digest('hex'), size: n };
  }

  async commit(tmpPath: string, sha256: string): Promise<void> {
    await rename(tmpPath, this.path(sha256));
  }

  async discard(tmpPath: string): Promise<void> {
    await rm(tmpPath, { force: true });
  }

  /** Reads [offset, offset+length) clipped to the file; for MQTT block responses. */
  async readBlock(sha256: string, offset: number, length: number): Promise<{ data: Buffer; eof: boolean } | null> {
    let fh;
    try {
      fh = await open(this.path(sha256), 'r');
    } catch {
      return null;
    }
    try {
      const size = (await fh.stat()).size;
      if (offset > size) return { data: Buffer.alloc(0), eof: true };
      const n = Math.min(length, size - offset);
      const buf = Buffer.alloc(n);
      let got = 0;
      while (got < n) {
        const { bytesRead } = await fh.read(buf, got, n - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return { data: buf.subarray(0, got), eof: offset + got >= size };
    } finally {
      await fh.close();
    }
  }

  stream(sha256: string, start: number, end: number): Readable {
    return createReadStream(this.path(sha256), { start, end, highWaterMark: 1024 * 1024 });
  }
}

export type RangeResult = { kind: 'full' } | { kind: 'partial'; start: number; end: number } | { kind: 'unsatisfiable' };

/**
 * RFC 9110 single byte range. Multiple ranges or a malformed header → full response (allowed by the RFC);
 * a syntactically valid range that does not overlap the file → 416.
 */
export function parseRange(header: string | undefined, size: number): RangeResult {
  if (!header) return { kind: 'full' };
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return { kind: 'full' };
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) return { kind: 'unsatisfiable' };
    return size === 0 ? { kind: 'unsatisfiable' } : { kind: 'partial', start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(m[1]);
  let end = m[2] === '' ? size - 1 : Number(m[2]);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end)) return { kind: 'full' };
  if (start >= size) return { kind: 'unsatisfiable' };
  if (end < start) return { kind: 'full' };
  end = Math.min(end, size - 1);
  return { kind: 'partial', start, end };
}
