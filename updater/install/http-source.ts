/**
 * HTTP(S) Range source. Every response is checked against what we asked for: status, Content-Range (start,
 * end AND total must match the release's size), Content-Length, and the byte count itself (exactly()).
 * A stalled connection ends after `idleTimeoutMs` without data; a slow drip ends at a per-request deadline
 * derived from a minimum rate, so a download can never hang forever.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { UzError } from '../../lib/errors.js';
import type { RangeSource } from './source.js';

export interface HttpSourceOptions {
  /** Total artifact size as announced in the desired release; a server reporting another total is lying. */
  totalSize: number;
  idleTimeoutMs?: number;
  /** Slowest acceptable average rate per request (bytes/s); with a 60 s grace. */
  minBytesPerSecond?: number;
  tls?: { ca?: string | Buffer | string[]; cert?: string | Buffer; key?: string | Buffer };
}

function statusError(status: number, url: string): UzError {
  if (status >= 500) return new UzError('HTTP_STATUS_5XX', `server answered ${status} for ${url}`, { status });
  if (status === 429) return new UzError('HTTP_STATUS_429', `server is rate limiting (${status})`, { status });
  if (status === 404) return new UzError('ARTIFACT_NOT_FOUND', `bundle not found at ${url}`, { status });
  if (status === 416) return new UzError('SIZE_MISMATCH', `server says the range is not satisfiable: the bundle is not the announced size`, { status });
  return new UzError('HTTP_STATUS', `server answered ${status} for ${url}`, { status });
}

export function httpSource(url: string, o: HttpSourceOptions): RangeSource {
  const u = new URL(url);
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new UzError('CONFIG_INVALID', `bundle URL must be http(s): ${url}`);
  const idle = o.idleTimeoutMs ?? 30_000;
  const minRate = o.minBytesPerSecond ?? 16 * 1024;
  return {
    describe: url,
    async *read(start, end, signal) {
      const length = end - start;
      const res = await new Promise<IncomingMessage>((resolve, reject) => {
        const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(
          u,
          {
            method: 'GET',
            headers: { range: `bytes=${start}-${end - 1}`, 'accept-encoding': 'identity' },
            signal,
            ...(u.protocol === 'https:' ? { ca: o.tls?.ca, cert: o.tls?.cert, key: o.tls?.key } : {}),
          },
          resolve,
        );
        req.setTimeout(idle, () => req.destroy(new UzError('TIMEOUT', `no response from ${u.host} for ${idle} ms`, { idleMs: idle })));
        req.on('error', (e) => reject(netError(e)));
        req.end();
      });
      try {
        const status = res.statusCode ?? 0;
        if (status === 200) {
          // A server without Range support: acceptable only for the whole file.
          if (start !== 0 || end !== o.totalSize) throw new UzError('RANGE_UNSUPPORTED', `server ignored the Range request for ${url}`, {});
        } else if (status === 206) {
          const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
          if (!m || Number(m[1]) !== start || Number(m[2]) !== end - 1) {
            throw new UzError('SIZE_MISMATCH', `server answered range "${res.headers['content-range'] ?? ''}" to bytes=${start}-${end - 1}`, {});
          }
          if (m[3] !== '*' && Number(m[3]) !== o.totalSize) {
            throw new UzError('SIZE_MISMATCH', `server says the bundle has ${m[3]} bytes, the release announced ${o.totalSize}`, { total: Number(m[3]) });
          }
        } else throw statusError(status, url);
        const cl = res.headers['content-length'];
        if (cl !== undefined && Number(cl) !== length) {
          throw new UzError('SIZE_MISMATCH', `Content-Length ${cl} for a ${length}-byte range`, { contentLength: Number(cl) });
        }
        const deadline = Date.now() + 60_000 + (length / minRate) * 1000;
        res.setTimeout(idle, () => res.destroy(new UzError('TIMEOUT', `download stalled for ${idle} ms`, { idleMs: idle })));
        for await (const chunk of res as AsyncIterable<Buffer>) {
          if (Date.now() > deadline) throw new UzError('TIMEOUT', `download slower than ${minRate} B/s`, { minRate });
          yield chunk;
        }
      } catch (e) {
        throw netError(e);
      } finally {
        res.destroy();
      }
    },
  };
}

function netError(e: unknown): unknown {
  if (e instanceof UzError || (e as Error)?.name === 'AbortError') return e;
  const code = (e as NodeJS.ErrnoException)?.code;
  return new UzError('NET', `network error: ${(e as Error)?.message ?? String(e)}`, { errno: code }, { cause: e });
}
