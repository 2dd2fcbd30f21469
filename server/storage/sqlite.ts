/**
 * Embedded durable storage on better-sqlite3 (v12; v13 needs Node 22). WAL journal with synchronous=FULL:
 * a transaction that returned is on disk (fsync of the WAL on every commit), so kill -9 or power loss never
 * loses an acknowledged write. See docs/server.md "Storage" for the choice vs PGlite.
 *
 * Group commit: better-sqlite3 is synchronous, so every commit's fsync (≈ 2 ms here) used to block the event
 * loop; 10,000 devices reporting a handful of messages each spent most of the server's time in fsync. Writes
 * are therefore queued and committed together at the next turn of the event loop (`setImmediate`; under load
 * the next commit waits as long as the last one took, ≤ 20 ms, so batches grow): ONE IMMEDIATE transaction,
 * one fsync, each write in its own savepoint (so one failing write rolls back alone and
 * rejects only its caller). A write's promise settles only after that commit, so "a call that returned is
 * durable" still holds. Writes are applied in call order; reads run at once and see what is committed (as
 * with PostgreSQL, a read does not see another caller's write that has not returned yet).
 */
import Database from 'better-sqlite3';
import type { Desired, Status } from '../../lib/protocol.js';
import type {
  AuditRow, ChannelRow, DeviceEventRow, DeviceFilter, DeviceRow, DeviceSummary, EnrollmentState, EnrollTokenRow, MemberRow, MemberState, ReleaseRow, Role, RolloutRow, RolloutState,
  StageStats, Storage, TokenRow,
} from './types.js';

/** Version 1: the original schema (IF NOT EXISTS, so databases created before versioning adopt it as is). */
const SCHEMA_V1 = [
  `CREATE TABLE IF NOT EXISTS devices (
     id TEXT PRIMARY KEY, secret_hash TEXT, channel TEXT NOT NULL DEFAULT 'stable', tags TEXT NOT NULL DEFAULT '[]',
     online INTEGER NOT NULL DEFAULT 0, last_seen INTEGER, status TEXT, desired TEXT, created_at INTEGER NOT NULL)`,
  `CREATE INDEX IF NOT EXISTS devices_channel ON devices(channel)`,
  `CREATE TABLE IF NOT EXISTS device_events (
     id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, ts INTEGER NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL)`,
  `CREATE INDEX IF NOT EXISTS device_events_dev ON device_events(device_id, id)`,
  `CREATE TABLE IF NOT EXISTS releases (
     id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, board TEXT NOT NULL, version TEXT NOT NULL,
     rollback_counter INTEGER NOT NULL, workload TEXT NOT NULL, manifest TEXT NOT NULL, signed_by TEXT NOT NULL,
     created_at INTEGER NOT NULL, yanked INTEGER NOT NULL DEFAULT 0, yanked_reason TEXT, UNIQUE(board, version))`,
  `CREATE TABLE IF NOT EXISTS channels (name TEXT PRIMARY KEY, release_id TEXT, updated_at INTEGER NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS rollouts (
     id TEXT PRIMARY KEY, release_id TEXT NOT NULL, target TEXT NOT NULL, policy TEXT NOT NULL, state TEXT NOT NULL,
     stage_index INTEGER NOT NULL, stage_cutoffs TEXT NOT NULL, reason TEXT, ack_failed INTEGER NOT NULL DEFAULT 0,
     ack_decided INTEGER NOT NULL DEFAULT 0, gate_override INTEGER, last_stage_at INTEGER NOT NULL,
     created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, created_by TEXT NOT NULL, rev INTEGER NOT NULL DEFAULT 0)`,
  `CREATE TABLE IF NOT EXISTS rollout_devices (
     rollout_id TEXT NOT NULL, device_id TEXT NOT NULL, position INTEGER NOT NULL, stage INTEGER NOT NULL,
     state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, dispatched_at INTEGER, finished_at INTEGER,
     txid TEXT, error TEXT, PRIMARY KEY (rollout_id, device_id))`,
  `CREATE INDEX IF NOT EXISTS rd_state ON rollout_devices(rollout_id, state, stage, position)`,
  `CREATE INDEX IF NOT EXISTS rd_device ON rollout_devices(device_id, state)`,
  `CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
     created_at INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)`,
  `CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, actor TEXT NOT NULL,
     action TEXT NOT NULL, target TEXT NOT NULL, details TEXT)`,
];

/**
 * Versioned migrations; PRAGMA user_version is the applied version. Each runs in one IMMEDIATE transaction
 * (SQLite DDL is transactional), so a crash mid-migration leaves the previous version.
 */
export const SQLITE_MIGRATIONS: { version: number; name: string; sql: string[] }[] = [
  { version: 1, name: 'initial schema', sql: SCHEMA_V1 },
  {
    version: 2,
    name: 'certificate enrollment',
    sql: [
      `ALTER TABLE devices ADD COLUMN enrollment TEXT NOT NULL DEFAULT 'none'`,
      `ALTER TABLE devices ADD COLUMN cert_serial TEXT`,
      `CREATE TABLE enroll_tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, device_id TEXT, pre_approved INTEGER NOT NULL,
         expires_at INTEGER NOT NULL, used_at INTEGER, created_by TEXT NOT NULL, created_at INTEGER NOT NULL)`,
    ],
  },
];

/** Keep at most this many history rows per device (oldest trimmed). */
const EVENTS_PER_DEVICE = 200;

type R = Record<string, unknown>;
const j = <T>(s: unknown): T => JSON.parse(s as string) as T;

function deviceRow(r: R): DeviceRow {
  return {
    id: r.id as string,
    channel: r.channel as string,
    tags: j<string[]>(r.tags),
    online: r.online === 1,
    lastSeen: (r.last_seen as number | null) ?? null,
    status: r.status ? j<Status>(r.status) : null,
    desired: r.desired ? j<Desired>(r.desired) : null,
    createdAt: r.created_at as number,
    enrollment: r.enrollment as EnrollmentState,
    certSerial: (r.cert_serial as string | null) ?? null,
  };
}

function enrollTokenRow(r: R): EnrollTokenRow {
  return {
    id: r.id as string,
    deviceId: (r.device_id as string | null) ?? null,
    preApproved: r.pre_approved === 1,
    expiresAt: r.expires_at as number,
    usedAt: (r.used_at as number | null) ?? null,
    createdBy: r.created_by as string,
    createdAt: r.created_at as number,
  };
}

function releaseRow(r: R): ReleaseRow {
  return {
    id: r.id as string,
    sha256: r.sha256 as string,
    size: r.size as number,
    board: r.board as string,
    version: r.version as string,
    rollbackCounter: r.rollback_counter as number,
    workload: j(r.workload),
    manifest: j(r.manifest),
    signedBy: j(r.signed_by),
    createdAt: r.created_at as number,
    yanked: r.yanked === 1,
    yankedReason: (r.yanked_reason as string | null) ?? null,
  };
}

function rolloutRow(r: R): RolloutRow {
  return {
    id: r.id as string,
    releaseId: r.release_id as string,
    target: j(r.target),
    policy: j(r.policy),
    state: r.state as RolloutState,
    stageIndex: r.stage_index as number,
    stageCutoffs: j(r.stage_cutoffs),
    reason: (r.reason as string | null) ?? null,
    ackFailed: r.ack_failed as number,
    ackDecided: r.ack_decided as number,
    gateOverride: (r.gate_override as number | null) ?? null,
    lastStageAt: r.last_stage_at as number,
    createdAt: r.created_at as number,
    updatedAt: r.updated_at as number,
    createdBy: r.created_by as string,
    rev: r.rev as number,
  };
}

function memberRow(r: R): MemberRow {
  return {
    rolloutId: r.rollout_id as string,
    deviceId: r.device_id as string,
    position: r.position as number,
    stage: r.stage as number,
    state: r.state as MemberState,
    attempts: r.attempts as number,
    dispatchedAt: (r.dispatched_at as number | null) ?? null,
    finishedAt: (r.finished_at as number | null) ?? null,
    txid: (r.txid as string | null) ?? null,
    error: (r.error as string | null) ?? null,
  };
}

export class SqliteStorage implements Storage {
  readonly kind = 'sqlite';
  readonly db: Database.Database;

  /** `path` is a file (durable) or ':memory:' (tests). */
  constructor(path: string) {
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    this.migrate();
  }

  /** Applies pending migrations; returns the versions applied. */
  migrate(): number[] {
    const applied: number[] = [];
    for (const m of SQLITE_MIGRATIONS) {
      this.db.transaction(() => {
        const cur = this.db.pragma('user_version', { simple: true }) as number;
        if (cur >= m.version) return;
        for (const sql of m.sql) this.db.exec(sql);
        this.db.pragma(`user_version = ${m.version}`);
        applied.push(m.version);
      }).immediate();
    }
    return applied;
  }

  schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  async close(): Promise<void> {
    this.flush(); // queued writes are committed, not dropped
    if (this.db.open) this.db.close();
  }

  private readonly stmts = new Map<string, Database.Statement>();
  /** Prepared statements are cached (preparing costs more than running most of these). */
  private stmt(sql: string): Database.Statement {
    let st = this.stmts.get(sql);
    if (!st) {
      st = this.db.prepare(sql);
      if (this.stmts.size > 500) this.stmts.clear();
      this.stmts.set(sql, st);
    }
    return st;
  }
  private all(sql: string, ...args: unknown[]): R[] {
    return this.stmt(sql).all(...args) as R[];
  }
  private get(sql: string, ...args: unknown[]): R | undefined {
    return this.stmt(sql).get(...args) as R | undefined;
  }
  private run(sql: string, ...args: unknown[]): Database.RunResult {
    return this.stmt(sql).run(...args);
  }

  private queue: { fn: () => unknown; resolve: (v: unknown) => void; reject: (e: unknown) => void }[] = [];
  private flushTimer: NodeJS.Immediate | NodeJS.Timeout | null = null;
  /** When the last group commit ended and how long it took (ms, performance.now()). */
  private lastCommit = { end: 0, took: 0 };
  /** Group commits so far and the writes in them. */
  readonly commitStats = { commits: 0, writes: 0 };

  /** Queues a write for the next group commit; settles after that commit. */
  private write<T>(fn: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ fn, resolve: resolve as (v: unknown) => void, reject });
      if (!this.flushTimer) {
        // Throttle: the next commit starts no sooner than the last one took (capped at 20 ms), so under load
        // fsync gets at most about half of the event loop and batches grow; when idle, commit at once.
        const wait = Math.min(20, this.lastCommit.end + this.lastCommit.took - performance.now());
        this.flushTimer = wait >= 1 ? setTimeout(() => this.flush(), wait) : setImmediate(() => this.flush());
      }
    });
  }

  /** Commits every queued write in one transaction (one fsync), then settles their promises in call order. */
  flush(): void {
    if (this.flushTimer) {
      clearTimeout(this.flushTimer as NodeJS.Timeout);
      clearImmediate(this.flushTimer as NodeJS.Immediate);
      this.flushTimer = null;
    }
    const batch = this.queue;
    if (batch.length === 0) return;
    this.queue = [];
    if (!this.db.open) {
      for (const w of batch) w.reject(new Error('the database is closed'));
      return;
    }
    const t0 = performance.now();
    const results: { ok: boolean; v: unknown }[] = [];
    try {
      this.db.transaction(() => {
        for (const w of batch) {
          // each write in its own savepoint: one that throws is rolled back alone
          this.stmt('SAVEPOINT w').run();
          try {
            results.push({ ok: true, v: w.fn() });
            this.stmt('RELEASE w').run();
          } catch (e) {
            if (!this.db.inTransaction) throw e; // SQLite gave up the whole transaction (I/O error, disk full)
            this.stmt('ROLLBACK TO w').run();
            this.stmt('RELEASE w').run();
            results.push({ ok: false, v: e });
          }
        }
      }).immediate();
    } catch (e) {
      for (const w of batch) w.reject(e);
      return;
    } finally {
      const end = performance.now();
      this.lastCommit = { end, took: end - t0 };
    }
    this.commitStats.commits++;
    this.commitStats.writes += batch.length;
    batch.forEach((w, i) => (results[i]!.ok ? w.resolve(results[i]!.v) : w.reject(results[i]!.v)));
  }

  registerDevice(d: { id: string; secretHash: string | null; channel?: string; tags?: string[]; now: number; enrollment?: EnrollmentState }): Promise<boolean> {
    return this.write(() => this.run(
      `INSERT INTO devices (id, secret_hash, channel, tags, created_at, enrollment) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING`,
      d.id, d.secretHash, d.channel ?? 'stable', JSON.stringify(d.tags ?? []), d.now, d.enrollment ?? 'none',
    ).changes === 1);
  }
  setEnrollment(id: string, patch: { state?: EnrollmentState; certSerial?: string | null }): Promise<boolean> {
    const sets: string[] = [];
    const args: unknown[] = [];
    if (patch.state !== undefined) (sets.push('enrollment = ?'), args.push(patch.state));
    if (patch.certSerial !== undefined) (sets.push('cert_serial = ?'), args.push(patch.certSerial));
    if (!sets.length) return this.write(() => this.get(`SELECT 1 FROM devices WHERE id = ?`, id) !== undefined);
    return this.write(() => this.run(`UPDATE devices SET ${sets.join(', ')} WHERE id = ?`, ...args, id).changes === 1);
  }
  async deviceSecretHash(id: string): Promise<string | null | undefined> {
    const r = this.get(`SELECT secret_hash FROM devices WHERE id = ?`, id);
    return r ? ((r.secret_hash as string | null) ?? null) : undefined;
  }
  async getDevice(id: string): Promise<DeviceRow | null> {
    const r = this.get(`SELECT * FROM devices WHERE id = ?`, id);
    return r ? deviceRow(r) : null;
  }
  private deviceWhere(f: DeviceFilter): { sql: string; args: unknown[] } {
    const where: string[] = [];
    const args: unknown[] = [];
    if (f.channel !== undefined) (where.push('channel = ?'), args.push(f.channel));
    if (f.tag !== undefined) (where.push(`EXISTS (SELECT 1 FROM json_each(devices.tags) WHERE value = ?)`), args.push(f.tag));
    if (f.ids !== undefined) {
      where.push(`id IN (SELECT value FROM json_each(?))`);
      args.push(JSON.stringify(f.ids));
    }
    if (f.enrollment !== undefined) (where.push('enrollment = ?'), args.push(f.enrollment));
    if (f.search !== undefined) {
      where.push(`instr(lower(id || ' ' || COALESCE(json_extract(status, '$.version'), '') || ' ' || COALESCE(json_extract(status, '$.state'), '')), ?) > 0`);
      args.push(f.search.toLowerCase());
    }
    if (f.after !== undefined) (where.push('id > ?'), args.push(f.after));
    return { sql: where.length ? 'WHERE ' + where.join(' AND ') : '', args };
  }
  async listDevices(f: DeviceFilter = {}): Promise<DeviceRow[]> {
    if (f.ids !== undefined && f.ids.length === 0) return [];
    const w = this.deviceWhere(f);
    if (f.limit !== undefined) return this.all(`SELECT * FROM devices ${w.sql} ORDER BY id LIMIT ?`, ...w.args, f.limit).map(deviceRow);
    return this.all(`SELECT * FROM devices ${w.sql} ORDER BY id`, ...w.args).map(deviceRow);
  }
  async deviceSummary(f: Pick<DeviceFilter, 'channel' | 'tag'> = {}): Promise<DeviceSummary> {
    const w = this.deviceWhere({ channel: f.channel, tag: f.tag });
    const t = this.get(
      `SELECT COUNT(*) total, COALESCE(SUM(online), 0) online, COUNT(status) reporting,
         COALESCE(SUM(json_extract(status, '$.workload.healthy') = 0), 0) unhealthy,
         COALESCE(SUM(json_type(status, '$.lastError') IS NOT NULL), 0) with_error
       FROM devices ${w.sql}`,
      ...w.args,
    )!;
    const group = (expr: string): Record<string, number> => {
      const out: Record<string, number> = {};
      for (const r of this.all(`SELECT ${expr} k, COUNT(*) n FROM devices ${w.sql ? w.sql + ' AND' : 'WHERE'} status IS NOT NULL GROUP BY k ORDER BY n DESC, k`, ...w.args)) out[String(r.k)] = r.n as number;
      return out;
    };
    return {
      total: t.total as number, online: Number(t.online), reporting: t.reporting as number, versions: group(`json_extract(status, '$.version')`),
      states: group(`json_extract(status, '$.state')`), slots: group(`json_extract(status, '$.slot')`), unhealthy: Number(t.unhealthy), withError: Number(t.with_error),
    };
  }
  updateDeviceMeta(id: string, patch: { channel?: string; tags?: string[] }): Promise<boolean> {
    return this.write(() => this.run(
      `UPDATE devices SET channel = COALESCE(?, channel), tags = COALESCE(?, tags) WHERE id = ?`,
      patch.channel ?? null, patch.tags ? JSON.stringify(patch.tags) : null, id,
    ).changes === 1);
  }
  setPresence(id: string, online: boolean, now: number): Promise<void> {
    return this.write(() => void this.run(`UPDATE devices SET online = ?, last_seen = ? WHERE id = ?`, online ? 1 : 0, now, id));
  }
  setStatus(id: string, status: Status, now: number): Promise<void> {
    const json = JSON.stringify(status);
    return this.write(() => void this.run(`UPDATE devices SET status = ?, last_seen = ?, online = 1 WHERE id = ?`, json, now, id));
  }
  setDesired(id: string, desired: Desired | null): Promise<void> {
    const json = desired ? JSON.stringify(desired) : null;
    return this.write(() => void this.run(`UPDATE devices SET desired = ? WHERE id = ?`, json, id));
  }
  markAllOffline(): Promise<void> {
    return this.write(() => void this.run(`UPDATE devices SET online = 0 WHERE online = 1`));
  }
  appendDeviceEvent(deviceId: string, ts: number, kind: DeviceEventRow['kind'], data: unknown): Promise<void> {
    const json = JSON.stringify(data ?? null);
    return this.write(() => {
      const r = this.run(`INSERT INTO device_events (device_id, ts, kind, data) VALUES (?, ?, ?, ?)`, deviceId, ts, kind, json);
      const id = Number(r.lastInsertRowid);
      if (id % 50 === 0) {
        this.run(
          `DELETE FROM device_events WHERE device_id = ? AND id < (SELECT MIN(id) FROM (SELECT id FROM device_events WHERE device_id = ? ORDER BY id DESC LIMIT ?))`,
          deviceId, deviceId, EVENTS_PER_DEVICE,
        );
      }
    });
  }
  async listDeviceEvents(deviceId: string, limit: number): Promise<DeviceEventRow[]> {
    return this.all(`SELECT * FROM device_events WHERE device_id = ? ORDER BY id DESC LIMIT ?`, deviceId, limit).map((r) => ({
      id: r.id as number,
      deviceId: r.device_id as string,
      ts: r.ts as number,
      kind: r.kind as DeviceEventRow['kind'],
      data: j(r.data),
    }));
  }

  insertRelease(r: ReleaseRow): Promise<void> {
    return this.write(() => void this.run(
      `INSERT INTO releases (id, sha256, size, board, version, rollback_counter, workload, manifest, signed_by, created_at, yanked, yanked_reason)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      r.id, r.sha256, r.size, r.board, r.version, r.rollbackCounter, JSON.stringify(r.workload), JSON.stringify(r.manifest),
      JSON.stringify(r.signedBy), r.createdAt, r.yanked ? 1 : 0, r.yankedReason,
    ));
  }
  async getRelease(id: string): Promise<ReleaseRow | null> {
    const r = this.get(`SELECT * FROM releases WHERE id = ?`, id);
    return r ? releaseRow(r) : null;
  }
  async getReleaseBySha(sha256: string): Promise<ReleaseRow | null> {
    const r = this.get(`SELECT * FROM releases WHERE sha256 = ?`, sha256);
    return r ? releaseRow(r) : null;
  }
  async findRelease(board: string, version: string): Promise<ReleaseRow | null> {
    const r = this.get(`SELECT * FROM releases WHERE board = ? AND version = ?`, board, version);
    return r ? releaseRow(r) : null;
  }
  async listReleases(): Promise<ReleaseRow[]> {
    return this.all(`SELECT * FROM releases ORDER BY created_at DESC, id`).map(releaseRow);
  }
  yankRelease(id: string, reason: string): Promise<boolean> {
    return this.write(() => this.run(`UPDATE releases SET yanked = 1, yanked_reason = ? WHERE id = ?`, reason, id).changes === 1);
  }
  setChannel(name: string, releaseId: string | null, now: number): Promise<void> {
    return this.write(() => void this.run(
      `INSERT INTO channels (name, release_id, updated_at) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET release_id = excluded.release_id, updated_at = excluded.updated_at`,
      name, releaseId, now,
    ));
  }
  async getChannel(name: string): Promise<ChannelRow | null> {
    const r = this.get(`SELECT * FROM channels WHERE name = ?`, name);
    return r ? { name: r.name as string, releaseId: (r.release_id as string | null) ?? null, updatedAt: r.updated_at as number } : null;
  }
  async listChannels(): Promise<ChannelRow[]> {
    return this.all(`SELECT * FROM channels ORDER BY name`).map((r) => ({ name: r.name as string, releaseId: (r.release_id as string | null) ?? null, updatedAt: r.updated_at as number }));
  }

  createRollout(r: RolloutRow, members: { deviceId: string; position: number; stage: number; state?: MemberState }[]): Promise<void> {
    return this.write(() => {
      const ins = this.stmt(`INSERT INTO rollout_devices (rollout_id, device_id, position, stage, state) VALUES (?, ?, ?, ?, ?)`);
      this.run(
        `INSERT INTO rollouts (id, release_id, target, policy, state, stage_index, stage_cutoffs, reason, ack_failed, ack_decided, gate_override,
           last_stage_at, created_at, updated_at, created_by, rev) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        r.id, r.releaseId, JSON.stringify(r.target), JSON.stringify(r.policy), r.state, r.stageIndex, JSON.stringify(r.stageCutoffs), r.reason,
        r.ackFailed, r.ackDecided, r.gateOverride, r.lastStageAt, r.createdAt, r.updatedAt, r.createdBy, r.rev,
      );
      for (const m of members) ins.run(r.id, m.deviceId, m.position, m.stage, m.state ?? 'pending');
    });
  }
  async getRollout(id: string): Promise<RolloutRow | null> {
    const r = this.get(`SELECT * FROM rollouts WHERE id = ?`, id);
    return r ? rolloutRow(r) : null;
  }
  async listRollouts(states?: RolloutState[]): Promise<RolloutRow[]> {
    if (states) return this.all(`SELECT * FROM rollouts WHERE state IN (SELECT value FROM json_each(?)) ORDER BY created_at DESC, id`, JSON.stringify(states)).map(rolloutRow);
    return this.all(`SELECT * FROM rollouts ORDER BY created_at DESC, id`).map(rolloutRow);
  }
  updateRollout(id: string, rev: number, patch: Partial<Pick<RolloutRow, 'state' | 'stageIndex' | 'reason' | 'ackFailed' | 'ackDecided' | 'gateOverride' | 'lastStageAt'>>, now: number): Promise<RolloutRow | null> {
    const cols: Record<string, string> = { state: 'state', stageIndex: 'stage_index', reason: 'reason', ackFailed: 'ack_failed', ackDecided: 'ack_decided', gateOverride: 'gate_override', lastStageAt: 'last_stage_at' };
    const sets: string[] = [];
    const args: unknown[] = [];
    for (const [k, v] of Object.entries(patch)) {
      if (v === undefined) continue;
      sets.push(`${cols[k]} = ?`);
      args.push(v);
    }
    sets.push('updated_at = ?', 'rev = rev + 1');
    args.push(now);
    return this.write(() => {
      if (this.run(`UPDATE rollouts SET ${sets.join(', ')} WHERE id = ? AND rev = ?`, ...args, id, rev).changes !== 1) return null;
      const r = this.get(`SELECT * FROM rollouts WHERE id = ?`, id);
      return r ? rolloutRow(r) : null;
    });
  }
  async stageStats(rolloutId: string): Promise<StageStats[]> {
    const rows = this.all(
      `SELECT stage, COUNT(*) total,
         SUM(state = 'pending') pending, SUM(state = 'dispatched') dispatched, SUM(state = 'succeeded') succeeded,
         SUM(state = 'failed') failed, SUM(state = 'skipped') skipped
       FROM rollout_devices WHERE rollout_id = ? GROUP BY stage ORDER BY stage`,
      rolloutId,
    );
    return rows.map((r) => ({
      stage: r.stage as number, total: r.total as number, pending: Number(r.pending), dispatched: Number(r.dispatched),
      succeeded: Number(r.succeeded), failed: Number(r.failed), skipped: Number(r.skipped),
    }));
  }
  async dispatchedSince(rolloutId: string, since: number): Promise<number> {
    return Number(this.get(`SELECT COUNT(*) n FROM rollout_devices WHERE rollout_id = ? AND dispatched_at >= ?`, rolloutId, since)!.n);
  }
  async claimForDispatch(rolloutId: string, maxStage: number, limit: number, now: number, onlineOnly: boolean, desiredFor?: (m: MemberRow) => Desired): Promise<MemberRow[]> {
    if (limit <= 0) return [];
    return this.write(() => {
      const ro = this.get(`SELECT policy FROM rollouts WHERE id = ?`, rolloutId);
      if (!ro) return [];
      const pol = j<{ maxInFlight: number; ratePerMinute: number }>(ro.policy);
      const inFlight = Number(this.get(`SELECT COUNT(*) n FROM rollout_devices WHERE rollout_id = ? AND state = 'dispatched'`, rolloutId)!.n);
      const lastMinute = Number(this.get(`SELECT COUNT(*) n FROM rollout_devices WHERE rollout_id = ? AND dispatched_at >= ?`, rolloutId, now - 60_000)!.n);
      limit = Math.min(limit, pol.maxInFlight - inFlight, pol.ratePerMinute - lastMinute);
      if (limit <= 0) return [];
      const rows = this.all(
        `SELECT rd.device_id FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id
         WHERE rd.rollout_id = ? AND rd.state = 'pending' AND rd.stage <= ? ${onlineOnly ? 'AND d.online = 1' : ''}
         ORDER BY d.online DESC, rd.position LIMIT ?`,
        rolloutId, maxStage, limit,
      );
      const upd = this.stmt(
        `UPDATE rollout_devices SET state = 'dispatched', attempts = attempts + 1, dispatched_at = ?, finished_at = NULL,
           txid = ? || '-a' || (attempts + 1)
         WHERE rollout_id = ? AND device_id = ? AND state = 'pending'`,
      );
      const out: MemberRow[] = [];
      for (const r of rows) {
        if (upd.run(now, rolloutId, rolloutId, r.device_id).changes === 1) {
          const m = memberRow(this.get(`SELECT * FROM rollout_devices WHERE rollout_id = ? AND device_id = ?`, rolloutId, r.device_id)!);
          if (desiredFor) this.run(`UPDATE devices SET desired = ? WHERE id = ?`, JSON.stringify(desiredFor(m)), m.deviceId);
          out.push(m);
        }
      }
      return out;
    });
  }
  finishMember(rolloutId: string, deviceId: string, outcome: 'succeeded' | 'failed', error: string | null, now: number): Promise<boolean> {
    return this.write(() => this.run(
      `UPDATE rollout_devices SET state = ?, error = ?, finished_at = ? WHERE rollout_id = ? AND device_id = ? AND state = 'dispatched'`,
      outcome, error, now, rolloutId, deviceId,
    ).changes === 1);
  }
  async timedOut(rolloutId: string, before: number): Promise<MemberRow[]> {
    return this.all(`SELECT * FROM rollout_devices WHERE rollout_id = ? AND state = 'dispatched' AND dispatched_at < ? ORDER BY position`, rolloutId, before).map(memberRow);
  }
  requeueMember(rolloutId: string, deviceId: string, error: string): Promise<boolean> {
    return this.write(() => this.run(`UPDATE rollout_devices SET state = 'pending', error = ? WHERE rollout_id = ? AND device_id = ? AND state = 'dispatched'`, error, rolloutId, deviceId).changes === 1);
  }
  skipPending(rolloutId: string, maxStage: number, reason: string, now: number): Promise<number> {
    return this.write(() => this.run(`UPDATE rollout_devices SET state = 'skipped', error = ?, finished_at = ? WHERE rollout_id = ? AND state = 'pending' AND stage <= ?`, reason, now, rolloutId, maxStage).changes);
  }
  async listMembers(rolloutId: string, opts: { state?: MemberState; limit?: number } = {}): Promise<MemberRow[]> {
    const lim = opts.limit ?? 100_000;
    if (opts.state) return this.all(`SELECT * FROM rollout_devices WHERE rollout_id = ? AND state = ? ORDER BY position LIMIT ?`, rolloutId, opts.state, lim).map(memberRow);
    return this.all(`SELECT * FROM rollout_devices WHERE rollout_id = ? ORDER BY position LIMIT ?`, rolloutId, lim).map(memberRow);
  }
  async countOnlinePending(rolloutId: string, maxStage: number): Promise<number> {
    return Number(this.get(
      `SELECT COUNT(*) n FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id
       WHERE rd.rollout_id = ? AND rd.state = 'pending' AND rd.stage <= ? AND d.online = 1`,
      rolloutId, maxStage,
    )!.n);
  }
  async activeMemberships(deviceId: string): Promise<MemberRow[]> {
    return this.all(
      `SELECT rd.* FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
       WHERE rd.device_id = ? AND rd.state = 'dispatched' AND r.state IN ('running', 'paused', 'aborted')`,
      deviceId,
    ).map(memberRow);
  }

  createToken(t: { id: string; name: string; role: Role; hash: string; now: number }): Promise<void> {
    return this.write(() => void this.run(`INSERT INTO tokens (id, name, role, hash, created_at) VALUES (?, ?, ?, ?, ?)`, t.id, t.name, t.role, t.hash, t.now));
  }
  async tokenByHash(hash: string): Promise<TokenRow | null> {
    const r = this.get(`SELECT * FROM tokens WHERE hash = ? AND revoked = 0`, hash);
    return r ? { id: r.id as string, name: r.name as string, role: r.role as Role, createdAt: r.created_at as number, revoked: false } : null;
  }
  async listTokens(): Promise<TokenRow[]> {
    return this.all(`SELECT * FROM tokens ORDER BY created_at, id`).map((r) => ({ id: r.id as string, name: r.name as string, role: r.role as Role, createdAt: r.created_at as number, revoked: r.revoked === 1 }));
  }
  revokeToken(id: string): Promise<boolean> {
    return this.write(() => this.run(`UPDATE tokens SET revoked = 1 WHERE id = ? AND revoked = 0`, id).changes === 1);
  }
  async countTokens(): Promise<number> {
    return Number(this.get(`SELECT COUNT(*) n FROM tokens WHERE revoked = 0`)!.n);
  }

  createEnrollToken(t: { id: string; hash: string; deviceId: string | null; preApproved: boolean; expiresAt: number; createdBy: string; now: number }): Promise<void> {
    return this.write(() => void this.run(
      `INSERT INTO enroll_tokens (id, hash, device_id, pre_approved, expires_at, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
      t.id, t.hash, t.deviceId, t.preApproved ? 1 : 0, t.expiresAt, t.createdBy, t.now,
    ));
  }
  async enrollTokenByHash(hash: string): Promise<EnrollTokenRow | null> {
    const r = this.get(`SELECT * FROM enroll_tokens WHERE hash = ?`, hash);
    return r ? enrollTokenRow(r) : null;
  }
  useEnrollToken(hash: string, deviceId: string, now: number): Promise<EnrollTokenRow | null> {
    return this.write(() => {
      const changed = this.run(
        `UPDATE enroll_tokens SET device_id = ?, used_at = ? WHERE hash = ? AND used_at IS NULL AND expires_at > ? AND (device_id IS NULL OR device_id = ?)`,
        deviceId, now, hash, now, deviceId,
      ).changes;
      const r = this.get(`SELECT * FROM enroll_tokens WHERE hash = ?`, hash);
      if (!r) return null;
      const row = enrollTokenRow(r);
      return changed === 1 || (row.usedAt !== null && row.deviceId === deviceId) ? row : null;
    });
  }
  async listEnrollTokens(): Promise<EnrollTokenRow[]> {
    return this.all(`SELECT * FROM enroll_tokens ORDER BY created_at, id`).map(enrollTokenRow);
  }
  deleteEnrollToken(id: string): Promise<boolean> {
    return this.write(() => this.run(`DELETE FROM enroll_tokens WHERE id = ?`, id).changes === 1);
  }

  appendAudit(a: { ts: number; actor: string; action: string; target: string; details?: unknown }): Promise<void> {
    const details = JSON.stringify(a.details ?? null);
    return this.write(() => void this.run(`INSERT INTO audit (ts, actor, action, target, details) VALUES (?, ?, ?, ?, ?)`, a.ts, a.actor, a.action, a.target, details));
  }
  async listAudit(limit: number): Promise<AuditRow[]> {
    return this.all(`SELECT * FROM audit ORDER BY id DESC LIMIT ?`, limit).map((r) => ({
      id: r.id as number, ts: r.ts as number, actor: r.actor as string, action: r.action as string, target: r.target as string, details: j(r.details),
    }));
  }
}
