/**
 * Where bundle bytes come from: HTTP with Range requests, MQTT blocks, or memory (tests). A source streams a
 * byte range; `exactly` wraps it so that a server sending fewer bytes is TRUNCATED (transient: resume) and
 * one sending more is SIZE_MISMATCH (fatal: it is lying about sizes).
 */
import { UzError } from '../../lib/errors.js';

export interface RangeSource {
  /** Bytes [start, end) of the artifact, in order. */
  read(start: number, end: number, signal: AbortSignal): AsyncIterable<Buffer>;
  readonly describe: string;
}

export async function* exactly(src: AsyncIterable<Buffer>, start: number, end: number): AsyncGenerator<Buffer> {
  const want = end - start;
  let got = 0;
  for await (const b of src) {
    got += b.length;
    if (got > want) throw new UzError('SIZE_MISMATCH', `source sent more than the ${want} bytes requested at offset ${start}`, { start, want });
    if (b.length) yield b;
  }
  if (got < want) throw new UzError('TRUNCATED', `source ended ${want - got} byte(s) early at offset ${start + got}`, { offset: start + got });
}

export async function collect(src: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of src) parts.push(b);
  return Buffer.concat(parts);
}

export interface MemorySourceFaults {
  /** Called before each piece; may throw to simulate a dropped connection. */
  beforePiece?: (offset: number) => void;
  piece?: number;
}

/** An in-memory artifact (tests, the power-cut harness). */
export function memorySource(buf: Buffer, faults: MemorySourceFaults = {}): RangeSource {
  const piece = faults.piece ?? 16 * 1024;
  return {
    describe: `memory:${buf.length}`,
    async *read(start, end, signal) {
      for (let o = start; o < Math.min(end, buf.length); o += piece) {
        if (signal.aborted) throw Object.assign(new Error('aborted'), { name: 'AbortError' });
        faults.beforePiece?.(o);
        yield buf.subarray(o, Math.min(end, buf.length, o + piece));
      }
    },
  };
}
