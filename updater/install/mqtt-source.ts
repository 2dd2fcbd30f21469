/**
 * Bundle bytes over MQTT for boards that only reach the broker: `block` requests on the device's request topic,
 * answered on its response topic with the txid echoed (lib/protocol.ts). Up to `window` requests are in flight
 * so latency does not dominate; each answer must be for the offset asked and no longer than asked.
 */
import { UzError } from '../../lib/errors.js';
import { MAX_BLOCK_BYTES } from '../../lib/protocol.js';
import type { RangeSource } from './source.js';

export interface BlockAnswer {
  offset: number;
  data: Buffer;
  eof: boolean;
}

/** Implemented by the agent's MQTT link: one request/response round trip with a timeout. */
export interface BlockRequester {
  requestBlock(artifact: string, offset: number, length: number, signal: AbortSignal): Promise<BlockAnswer>;
}

export function mqttBlockSource(link: BlockRequester, artifact: string, o: { blockBytes?: number; window?: number } = {}): RangeSource {
  const block = Math.min(o.blockBytes ?? MAX_BLOCK_BYTES, MAX_BLOCK_BYTES);
  const window = Math.max(1, o.window ?? 4);
  return {
    describe: `mqtt-blocks:${artifact.slice(0, 12)}`,
    async *read(start, end, signal) {
      let next = start; // next offset to request
      let pos = start; // next offset to yield
      const inflight: { offset: number; length: number; p: Promise<BlockAnswer> }[] = [];
      const fill = () => {
        while (inflight.length < window && next < end) {
          const length = Math.min(block, end - next);
          const p = link.requestBlock(artifact, next, length, signal);
          p.catch(() => {}); // observed when awaited; avoid unhandled rejections for abandoned ones
          inflight.push({ offset: next, length, p });
          next += length;
        }
      };
      fill();
      while (pos < end) {
        const head = inflight.shift();
        if (!head) break;
        const a = await head.p;
        if (a.offset !== head.offset) throw new UzError('SIZE_MISMATCH', `block answer for offset ${a.offset}, asked ${head.offset}`, {});
        if (a.data.length > head.length) throw new UzError('SIZE_MISMATCH', `block of ${a.data.length} bytes, asked ${head.length}`, {});
        if (a.data.length < head.length) {
          // Short block: yield what came and re-plan the rest from there.
          inflight.length = 0;
          next = head.offset + a.data.length;
          if (a.data.length === 0 || a.eof) throw new UzError('TRUNCATED', `artifact ended at ${next}, expected ${end}`, { offset: next });
        }
        pos = head.offset + a.data.length;
        yield a.data;
        fill();
      }
    },
  };
}
