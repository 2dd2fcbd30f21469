/**
 * Errors are transient (retry with capped exponential backoff and jitter) or fatal (report, roll back).
 * The split is by reason code so it is testable and the same everywhere (mender app/error.go; balena's
 * applyTarget backoff).
 */
import { isUzError } from '../../lib/errors.js';

/** Codes that say "try again later": the network, the server or a flaky medium, never the release itself. */
export const TRANSIENT_CODES: ReadonlySet<string> = new Set([
  'NET',
  'HTTP_STATUS_5XX',
  'HTTP_STATUS_429',
  'TIMEOUT',
  'TRUNCATED', // connection dropped mid-body: resume
  'HASH_MISMATCH', // corrupted chunk in transit: nothing was written, fetch it again
  'MQTT_OFFLINE',
  'MQTT_TIMEOUT',
  'IO',
  'BOOTCTL_WRITE',
]);

export type ErrorClass = 'transient' | 'fatal' | 'cancelled';

export function classify(e: unknown, signal?: AbortSignal): ErrorClass {
  if (signal?.aborted || (e as Error)?.name === 'AbortError') return 'cancelled';
  if (isUzError(e)) return TRANSIENT_CODES.has(e.code) ? 'transient' : 'fatal';
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code && /^(ECONNRESET|ECONNREFUSED|EPIPE|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|EAI_AGAIN|ENOTFOUND|UND_ERR_.*)$/.test(code)) return 'transient';
  return 'fatal';
}

export interface BackoffPolicy {
  baseMs: number;
  capMs: number;
  /** Retries per action before giving up (the state machine's give-up event). */
  maxRetries: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { baseMs: 1000, capMs: 5 * 60_000, maxRetries: 12 };

/** "Full jitter" (AWS architecture blog): uniform in [0, min(cap, base * 2^attempt)]; never 0 so we always yield. */
export function backoffDelay(attempt: number, p: Pick<BackoffPolicy, 'baseMs' | 'capMs'>, random: () => number = Math.random): number {
  const ceiling = Math.min(p.capMs, p.baseMs * 2 ** Math.min(attempt, 30));
  return Math.max(1, Math.round(ceiling * random()));
}

/** Sleeps unless aborted; an abort resolves early (cancel is not an error: callers check signal.aborted). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
