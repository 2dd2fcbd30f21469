/**
 * The I/O edge of the device TUF client (pure logic in core.ts):
 *
 *   1. start from the newest trusted root: the one persisted on the data partition (<trustDir>/root.json) or
 *      the image's embedded root, whichever is newer (the embedded one is only the starting point);
 *   2. fetch <tufUrl>/<n+1>.root.json until 404, applying each (threshold of old AND new root keys, versions in
 *      order), persisting the newest after every step (write + fsync + rename);
 *   3. fetch timestamp.json → snapshot.json → targets.json, checking signatures, versions (never below the
 *      persisted floors: replay), consistency (mixed metadata) and expiry (freeze); persist the new floors;
 *   4. require the announced release to be a signed target.
 *
 * Any failure throws (FROZEN / EXPIRED / NOT_IN_TARGETS / root-update codes; NET / HTTP_STATUS_5XX / TIMEOUT
 * for the network, which the engine retries). The caller installs nothing unless this resolved.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { UzError } from '../../lib/errors.js';
import { MAX_ROOT_BYTES, parseRootMetadata, verifyRootSelfSigned, type RootMetadata } from '../../firmware/trust/root.js';
import type { Storage } from '../io/storage.js';
import {
  MAX_ROOT_ROTATIONS,
  MAX_SNAPSHOT_BYTES,
  MAX_TARGETS_BYTES,
  MAX_TIMESTAMP_BYTES,
  checkFinalRoot,
  checkSnapshot,
  checkTargets,
  checkTimestamp,
  findTarget,
  followRoot,
  parseTufState,
  type AnnouncedRelease,
  type TufState,
} from './core.js';

/** GET <base>/<name>: the body, or null for 404/403 (TUF: "no such version"). */
export type TufFetch = (name: string, maxBytes: number) => Promise<Buffer | null>;

export interface HttpFetchOptions {
  timeoutMs?: number;
  tls?: { ca?: string | Buffer | string[]; cert?: string | Buffer; key?: string | Buffer };
}

/** node:http(s) fetcher with a size cap and an idle timeout. */
export function httpTufFetch(baseUrl: string, o: HttpFetchOptions = {}): TufFetch {
  const base = baseUrl.endsWith('/') ? baseUrl : baseUrl + '/';
  const timeout = o.timeoutMs ?? 30_000;
  return async (name, maxBytes) => {
    const u = new URL(name, base);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new UzError('CONFIG_INVALID', `tufUrl must be http(s): ${baseUrl}`, {});
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(u, { method: 'GET', headers: { 'accept-encoding': 'identity' }, ...(u.protocol === 'https:' ? { ca: o.tls?.ca, cert: o.tls?.cert, key: o.tls?.key } : {}) }, resolve);
      req.setTimeout(timeout, () => req.destroy(new UzError('TIMEOUT', `no response from ${u.host} for ${timeout} ms`, { idleMs: timeout })));
      req.on('error', (e) => reject(e instanceof UzError ? e : new UzError('NET', `network error fetching ${u.pathname}: ${e.message}`, { errno: (e as NodeJS.ErrnoException).code }, { cause: e })));
      req.end();
    });
    try {
      const status = res.statusCode ?? 0;
      if (status === 404 || status === 403) return null;
      if (status >= 500) throw new UzError('HTTP_STATUS_5XX', `server answered ${status} for ${u.pathname}`, { status });
      if (status === 429) throw new UzError('HTTP_STATUS_429', `server is rate limiting (${status})`, { status });
      if (status !== 200) throw new UzError('HTTP_STATUS', `server answered ${status} for ${u.pathname}`, { status });
      const chunks: Buffer[] = [];
      let n = 0;
      res.setTimeout(timeout, () => res.destroy(new UzError('TIMEOUT', `${u.pathname} stalled for ${timeout} ms`, { idleMs: timeout })));
      for await (const c of res as AsyncIterable<Buffer>) {
        n += c.length;
        if (n > maxBytes) throw new UzError('FROZEN', `${u.pathname} is larger than ${maxBytes} bytes (endless-data attack?)`, { file: name });
        chunks.push(c);
      }
      return Buffer.concat(chunks);
    } catch (e) {
      if (e instanceof UzError) throw e;
      throw new UzError('NET', `network error reading ${u.pathname}: ${(e as Error).message}`, {}, { cause: e });
    } finally {
      res.destroy();
    }
  };
}

export interface TrustRefreshOptions {
  storage: Storage;
  /** <stateDir>/trust on the data partition: root.json (newest trusted root) and tuf-state.json (floors). */
  dir: string;
  fetch: TufFetch;
  /** The root embedded in the image (already loaded with loadTrustedRoot). */
  embedded: RootMetadata;
  now?: () => Date;
  log?: (line: string) => void;
}

export interface TrustRefreshResult {
  root: RootMetadata;
  state: TufState;
  /** Target path of the announced release, when one was given. */
  target?: string;
}

export function trustPaths(dir: string): { root: string; state: string } {
  return { root: join(dir, 'root.json'), state: join(dir, 'tuf-state.json') };
}

/** Newest of the persisted and the embedded root (a damaged persisted root falls back to the embedded one). */
export async function loadNewestRoot(o: Pick<TrustRefreshOptions, 'storage' | 'dir' | 'embedded' | 'log'>): Promise<RootMetadata> {
  const bytes = await o.storage.readFile(trustPaths(o.dir).root);
  if (!bytes) return o.embedded;
  try {
    const p = parseRootMetadata(bytes);
    verifyRootSelfSigned(p);
    return p.signed.version >= o.embedded.signed.version ? p : o.embedded;
  } catch (e) {
    o.log?.(`persisted trust root unusable (${(e as Error).message}); starting from the embedded root v${o.embedded.signed.version}`);
    return o.embedded;
  }
}

async function persist(o: TrustRefreshOptions, path: string, value: unknown): Promise<void> {
  await o.storage.mkdirp(o.dir);
  await o.storage.writeFileDurable(path, JSON.stringify(value, null, 1) + '\n');
}

/** Offline variant (no network): the newest root this device has already accepted. */
export async function currentTrust(o: Pick<TrustRefreshOptions, 'storage' | 'dir' | 'embedded' | 'log'>): Promise<RootMetadata> {
  return loadNewestRoot(o);
}

export async function refreshTrust(o: TrustRefreshOptions, release?: AnnouncedRelease): Promise<TrustRefreshResult> {
  const now = (o.now ?? (() => new Date()))();
  const paths = trustPaths(o.dir);
  let root = await loadNewestRoot(o);
  let state = parseTufState(await o.storage.readFile(paths.state));
  if (!state) {
    o.log?.('persisted TUF version floors unreadable; starting from zero (replays stay bounded by expiry)');
    state = { v: 1, timestamp: 0, snapshot: 0, targets: 0 };
  }
  // 1. root chain
  for (let i = 0; i < MAX_ROOT_ROTATIONS; i++) {
    const next = await o.fetch(`${root.signed.version + 1}.root.json`, MAX_ROOT_BYTES);
    if (!next) break;
    const r = followRoot(root, next, state);
    root = r.root;
    state = r.state;
    await persist(o, paths.root, root);
    await persist(o, paths.state, state);
    o.log?.(`trust root rotated to v${root.signed.version}`);
  }
  checkFinalRoot(root, now);
  // 2. timestamp → snapshot → targets
  const tsBytes = await o.fetch('timestamp.json', MAX_TIMESTAMP_BYTES);
  if (!tsBytes) throw new UzError('FROZEN', 'the server has no timestamp.json', { file: 'timestamp.json' });
  const ts = checkTimestamp(root, tsBytes, state, now);
  const pin = ts.timestamp.meta['snapshot.json']!;
  const snapBytes = await o.fetch('snapshot.json', Math.min(pin.length, MAX_SNAPSHOT_BYTES));
  if (!snapBytes) throw new UzError('FROZEN', 'the server has no snapshot.json', { file: 'snapshot.json' });
  const snap = checkSnapshot(root, snapBytes, ts.timestamp, ts.state, now);
  const tpin = snap.snapshot.meta['targets.json']!;
  const tBytes = await o.fetch('targets.json', Math.min(tpin.length, MAX_TARGETS_BYTES));
  if (!tBytes) throw new UzError('FROZEN', 'the server has no targets.json', { file: 'targets.json' });
  const t = checkTargets(root, tBytes, snap.snapshot, snap.state, now);
  state = t.state;
  await persist(o, paths.state, state);
  const target = release ? findTarget(t.targets, release) : undefined;
  return { root, state, ...(target !== undefined ? { target } : {}) };
}

/**
 * What the engine calls before verifying a bundle (EngineDeps.refreshTrust): online before a download, offline
 * (persisted root only) when re-verifying the stored header after a restart.
 */
export function tufTrustRefresher(o: TrustRefreshOptions): (release: AnnouncedRelease, mode: { offline: boolean }) => Promise<RootMetadata> {
  return async (release, mode) => (mode.offline ? currentTrust(o) : (await refreshTrust(o, release)).root);
}
