/**
 * HTTP downloads from the Debian mirror with global `fetch`: an idle timeout, retries with backoff for transient
 * failures (network errors, 5xx, 408/429, bodies cut short), none for 404 or a wrong hash.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { UzError } from '../../lib/errors.js';

export interface FetchOptions {
  /** Abort when no bytes arrive for this long (default 30 s). */
  timeoutMs?: number;
  /** Attempts in all, first one included (default 3). */
  attempts?: number;
  /** Delay before the 2nd attempt; doubled for each further one (default 1000 ms). */
  backoffMs?: number;
  /** Refuse bodies larger than this when no size is expected (default 256 MiB). */
  maxBytes?: number;
  /** Called with the number of new bytes as they arrive (a failed attempt reports a negative rewind). */
  onProgress?: (deltaBytes: number) => void;
  fetchImpl?: typeof fetch;
}

export interface Expected {
  sha256: string;
  size: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A failure worth another attempt. */
class Transient extends Error {}

function isTransientStatus(status: number): boolean {
  return status >= 500 || status === 408 || status === 429;
}

/**
 * Streams `url` to `sink` chunk by chunk; resolves with the byte count and SHA-256. Throws `DEB_NOT_FOUND` (404/410),
 * `DEB_FETCH` (other HTTP errors), `Transient` (worth a retry) or `DEB_HASH_MISMATCH` (body larger than expected).
 */
async function streamOnce(
  url: string,
  sink: (chunk: Uint8Array) => Promise<void> | void,
  options: FetchOptions,
  expectedSize: number | undefined,
): Promise<{ size: number; sha256: string }> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => controller.abort(new Error(`no data for ${timeoutMs} ms`)), timeoutMs);
  };
  arm();
  let received = 0;
  try {
    let res: Response;
    try {
      res = await (options.fetchImpl ?? fetch)(url, { signal: controller.signal, redirect: 'follow' });
    } catch (e) {
      throw new Transient(`request failed: ${(e as Error).message}`, { cause: e });
    }
    if (res.status === 404 || res.status === 410) {
      await res.body?.cancel().catch(() => undefined);
      throw new UzError('DEB_NOT_FOUND', `Not on the mirror (HTTP ${res.status}): ${url}`, { url, status: res.status });
    }
    if (!res.ok || !res.body) {
      await res.body?.cancel().catch(() => undefined);
      if (isTransientStatus(res.status)) throw new Transient(`HTTP ${res.status}`);
      throw new UzError('DEB_FETCH', `HTTP ${res.status} from ${url}`, { url, status: res.status });
    }
    const hash = createHash('sha256');
    const reader = res.body.getReader();
    for (;;) {
      let step: ReadableStreamReadResult<Uint8Array>;
      try {
        step = await reader.read();
      } catch (e) {
        throw new Transient(`download interrupted after ${received} bytes: ${(e as Error).message}`, { cause: e });
      }
      if (step.done) break;
      arm();
      received += step.value.byteLength;
      if (expectedSize === undefined && received > (options.maxBytes ?? 256 * 1024 * 1024)) {
        await reader.cancel().catch(() => undefined);
        throw new UzError('DEB_FETCH', `${url} is larger than ${options.maxBytes ?? 256 * 1024 * 1024} bytes`, { url });
      }
      if (expectedSize !== undefined && received > expectedSize) {
        await reader.cancel().catch(() => undefined);
        throw new UzError('DEB_HASH_MISMATCH', `${url} is larger than the expected ${expectedSize} bytes`, {
          url,
          expectedSize,
        });
      }
      hash.update(step.value);
      await sink(step.value);
      options.onProgress?.(step.value.byteLength);
    }
    if (expectedSize !== undefined && received < expectedSize) {
      throw new Transient(`truncated: got ${received} of ${expectedSize} bytes`);
    }
    return { size: received, sha256: hash.digest('hex') };
  } catch (e) {
    if (received > 0) options.onProgress?.(-received);
    throw e;
  } finally {
    if (timer) clearTimeout(timer);
  }
}

async function withRetries<T>(url: string, options: FetchOptions, attemptFn: () => Promise<T>): Promise<T> {
  const attempts = Math.max(1, options.attempts ?? 3);
  const backoff = options.backoffMs ?? 1000;
  let last: unknown;
  for (let i = 0; i < attempts; i++) {
    if (i > 0) await sleep(backoff * 2 ** (i - 1));
    try {
      return await attemptFn();
    } catch (e) {
      if (!(e instanceof Transient)) throw e;
      last = e;
    }
  }
  throw new UzError('DEB_FETCH', `Download failed after ${attempts} attempts: ${url}: ${(last as Error).message}`, {
    url,
    attempts,
  }, { cause: last });
}

function checkExpected(url: string, got: { size: number; sha256: string }, expected: Expected): void {
  if (got.size !== expected.size || got.sha256 !== expected.sha256.toLowerCase()) {
    throw new UzError('DEB_HASH_MISMATCH', `Checksum mismatch for ${url}`, {
      url,
      expectedSha256: expected.sha256,
      actualSha256: got.sha256,
      expectedSize: expected.size,
      actualSize: got.size,
    });
  }
}

/** Downloads `url` into memory; when `expected` is given, size and SHA-256 must match (else `DEB_HASH_MISMATCH`). */
export async function fetchBytes(url: string, expected?: Expected, options: FetchOptions = {}): Promise<Buffer> {
  return withRetries(url, options, async () => {
    const chunks: Uint8Array[] = [];
    const got = await streamOnce(url, (c) => void chunks.push(c), options, expected?.size);
    if (expected) checkExpected(url, got, expected);
    return Buffer.concat(chunks);
  });
}

/**
 * Downloads `url` into the file `dest` (created or truncated) while hashing; size and SHA-256 must match `expected`
 * before this resolves. On failure `dest` may hold partial data: the caller deletes it.
 */
export async function downloadToFile(
  url: string,
  dest: string,
  expected: Expected,
  options: FetchOptions = {},
): Promise<void> {
  await withRetries(url, options, async () => {
    const fh = await open(dest, 'w');
    try {
      const got = await streamOnce(url, async (c) => void (await fh.write(c)), options, expected.size);
      checkExpected(url, got, expected);
      await fh.sync();
    } finally {
      await fh.close();
    }
  });
}
