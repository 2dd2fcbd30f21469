/**
 * Server side of the TUF repository: serves what the operator signed offline (`uz repo publish`: every
 * N.root.json, snapshot.json, targets.json) from a directory, and re-signs ONLY timestamp.json with the one
 * online key it holds (the timestamp role key). The timestamp is re-signed when it is due (every
 * `intervalSec`) or when snapshot.json changed on disk (the operator published), with expiry now + `ttlSec`
 * and a version that never decreases, also across restarts (last signed timestamp persisted in `stateFile`).
 *
 * Root rotation: the operator drops N+1.root.json into the directory; it is served at once. If the new root
 * no longer lists our timestamp key, re-signing stops (an error is logged) and devices see the timestamp
 * expire (FROZEN/EXPIRED) — the safe failure; give the server the new key.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rename, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { UzError } from '../../lib/errors.js';
import { MAX_ROOT_BYTES, parseRootMetadata, type RootMetadata } from '../../firmware/trust/root.js';
import { createTimestampSigned, metadataFile, signMetadata, type MetaFileInfo } from '../../firmware/trust/tuf.js';
import type { SigningKey } from '../../firmware/trust/keys.js';

export const ROOT_FILE = /^([1-9]\d{0,15})\.root\.json$/;
const MAX_META_BYTES = 32 * 1024 * 1024;

export interface TufRepoOptions {
  /** `uz repo publish --dir` output (uses its metadata/ folder when present) or a flat metadata folder. */
  dir: string;
  timestampKey: SigningKey;
  intervalSec: number;
  ttlSec: number;
  /** Where the last signed timestamp.json is kept (server data dir). */
  stateFile: string;
  now: () => number;
  log?: { info(o: object, m?: string): void; error(o: object, m?: string): void };
}

interface Signed {
  bytes: Buffer;
  version: number;
  signedAt: number;
  snapshotSha256: string;
}

async function readIfExists(path: string, limit = MAX_META_BYTES): Promise<Buffer | null> {
  try {
    const st = await stat(path);
    if (!st.isFile()) return null;
    if (st.size > limit) throw new UzError('MALFORMED', `${path} is larger than ${limit} bytes`, { path });
    return await readFile(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

export class TufRepo {
  private current: Signed | null = null;
  private pending: Promise<void> | null = null;

  private constructor(
    readonly metadataDir: string,
    private readonly o: TufRepoOptions,
    private lastVersion: number,
  ) {}

  /** Opens the directory; refuses (CONFIG_INVALID) a timestamp key the newest root does not accept alone. */
  static async open(o: TufRepoOptions): Promise<TufRepo> {
    if (o.intervalSec >= o.ttlSec) throw new UzError('CONFIG_INVALID', `tuf.timestampIntervalSec (${o.intervalSec}) must be shorter than tuf.timestampTtlSec (${o.ttlSec})`, {});
    const sub = join(o.dir, 'metadata');
    const metadataDir = (await stat(sub).catch(() => null))?.isDirectory() ? sub : o.dir;
    const repo = new TufRepo(metadataDir, o, 0);
    const newest = await repo.newestRoot();
    if (!newest) throw new UzError('CONFIG_INVALID', `tuf.dir ${metadataDir} has no N.root.json`, { path: metadataDir });
    repo.checkKey(newest, true);
    let last = await repo.publishedTimestampVersion();
    const own = await readIfExists(o.stateFile, 1024 * 1024).catch(() => null);
    try {
      const v = own ? (JSON.parse(own.toString('utf8')) as { signed?: { version?: unknown } }).signed?.version : 0;
      if (typeof v === 'number' && Number.isSafeInteger(v)) last = Math.max(last, v);
    } catch {
      /* unreadable: the published floor still applies */
    }
    repo.lastVersion = last;
    await repo.refresh(true);
    return repo;
  }

  /** Highest N.root.json in the directory (parsed, not verified: devices verify the chain themselves). */
  async newestRoot(): Promise<RootMetadata | null> {
    const names = await readdir(this.metadataDir).catch(() => [] as string[]);
    const versions = names.map((n) => ROOT_FILE.exec(n)).filter((m): m is RegExpExecArray => !!m).map((m) => Number(m[1]));
    if (versions.length === 0) return null;
    const b = await readIfExists(join(this.metadataDir, `${Math.max(...versions)}.root.json`), MAX_ROOT_BYTES);
    return b ? parseRootMetadata(b) : null;
  }

  private checkKey(root: RootMetadata, fatal: boolean): boolean {
    const role = root.signed.roles.timestamp;
    const ok = role.keyids.includes(this.o.timestampKey.keyid) && role.threshold === 1;
    if (!ok) {
      const msg = `timestamp key ${this.o.timestampKey.keyid.slice(0, 16)} cannot sign timestamps alone for root v${root.signed.version} (role keyids ${role.keyids.map((k) => k.slice(0, 16)).join(',')}, threshold ${role.threshold})`;
      if (fatal) throw new UzError('CONFIG_INVALID', msg, { keyid: this.o.timestampKey.keyid });
      this.o.log?.error({ rootVersion: root.signed.version }, msg);
    }
    return ok;
  }

  /** Version of the timestamp.json `uz repo publish` wrote (if a client got it elsewhere, stay above it). */
  private async publishedTimestampVersion(): Promise<number> {
    const b = await readIfExists(join(this.metadataDir, 'timestamp.json'), 1024 * 1024).catch(() => null);
    try {
      const v = b ? (JSON.parse(b.toString('utf8')) as { signed?: { version?: unknown } }).signed?.version : 0;
      return typeof v === 'number' && Number.isSafeInteger(v) ? v : 0;
    } catch {
      return 0;
    }
  }

  async root(version: number): Promise<Buffer | null> {
    return readIfExists(join(this.metadataDir, `${version}.root.json`), MAX_ROOT_BYTES);
  }

  /** snapshot.json / targets.json exactly as the operator signed them. */
  async file(name: 'snapshot.json' | 'targets.json'): Promise<Buffer | null> {
    return readIfExists(join(this.metadataDir, name));
  }

  /** The current timestamp.json (re-signed first if due or if snapshot.json changed); null without snapshot. */
  async timestamp(): Promise<Buffer | null> {
    await this.refresh();
    return this.current?.bytes ?? null;
  }

  get version(): number {
    return this.current?.version ?? this.lastVersion;
  }

  /** Re-signs when due (or forced); concurrent callers share one signing. */
  async refresh(force = false): Promise<void> {
    while (this.pending) await this.pending;
    const p = this.doRefresh(force).finally(() => {
      this.pending = null;
    });
    this.pending = p;
    await p;
  }

  private async doRefresh(force: boolean): Promise<void> {
    const snap = await this.file('snapshot.json');
    if (!snap) {
      this.current = null;
      return;
    }
    const snapSha = sha256(snap);
    const now = this.o.now();
    const cur = this.current;
    if (!force && cur && cur.snapshotSha256 === snapSha && now - cur.signedAt < this.o.intervalSec * 1000) return;
    const root = await this.newestRoot();
    if (!root || !this.checkKey(root, false)) return; // keep serving the old one until it expires
    let snapVersion: number;
    try {
      const v = (JSON.parse(snap.toString('utf8')) as { signed?: { version?: unknown } }).signed?.version;
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new Error('no version');
      snapVersion = v;
    } catch (e) {
      this.o.log?.error({ err: (e as Error).message }, 'snapshot.json in tuf.dir is unreadable; timestamp not re-signed');
      return;
    }
    const info: MetaFileInfo = { version: snapVersion, length: snap.length, hashes: { sha256: snapSha } };
    if (!cur || cur.snapshotSha256 !== snapSha) this.lastVersion = Math.max(this.lastVersion, await this.publishedTimestampVersion());
    const version = this.lastVersion + 1;
    const env = signMetadata(createTimestampSigned({ version, expires: new Date(now + this.o.ttlSec * 1000), snapshot: info }), [this.o.timestampKey]);
    const { bytes } = metadataFile(env);
    await mkdir(dirname(this.o.stateFile), { recursive: true });
    const tmp = `${this.o.stateFile}.tmp`;
    await writeFile(tmp, bytes, { mode: 0o644 });
    await rename(tmp, this.o.stateFile);
    this.lastVersion = version;
    this.current = { bytes, version, signedAt: now, snapshotSha256: snapSha };
    this.o.log?.info({ version, snapshot: snapVersion, expires: env.signed.expires }, 'tuf timestamp re-signed');
  }
}
