/**
 * PostgreSQL storage (node-postgres `pg`): the same `Storage` contract as SQLite, for running several server
 * instances on one database. Nothing is coordinated in memory; every decision that must happen once is one
 * transaction with row locks:
 *
 *  - claimForDispatch: `SELECT … FROM rollouts WHERE id = $1 FOR NO KEY UPDATE` serialises the claimers of ONE
 *    rollout (so the in-flight / per-minute budget read in the same transaction is exact across instances),
 *    then `WITH c AS (SELECT … FOR UPDATE OF rd SKIP LOCKED LIMIT n) UPDATE rollout_devices … RETURNING`
 *    moves members pending → dispatched and writes their desired state, all in one commit. A member is
 *    dispatched by exactly one instance; other rollouts are claimed in parallel.
 *  - finishMember / requeueMember only apply from `dispatched` (a duplicate or late report is a no-op).
 *  - rollout state changes are optimistic (`rev`), so two instances deciding "advance" at once advance once.
 *  - useEnrollToken is a conditional UPDATE (first use binds the token to one device).
 *
 * Timestamps are BIGINT milliseconds (parsed to numbers: they stay far below 2^53), JSON columns are JSONB.
 * Migrations are versioned (table uz_schema_migrations) and applied at start under a session advisory lock,
 * so instances starting together migrate once.
 */
import pg from 'pg';
import type { Desired, Status } from '../../lib/protocol.js';
import type {
  AuditRow, ChannelRow, DeviceEventRow, DeviceFilter, DeviceRow, DeviceSummary, EnrollmentState, EnrollTokenRow, MemberRow, MemberState, ReleaseRow, Role, RolloutRow,
  RolloutState, StageStats, Storage, TokenRow,
} from './types.js';

export const PG_MIGRATIONS: { version: number; name: string; sql: string }[] = [
  {
    version: 1,
    name: 'initial schema',
    sql: `
      CREATE TABLE devices (
        id TEXT PRIMARY KEY, secret_hash TEXT, channel TEXT NOT NULL DEFAULT 'stable', tags JSONB NOT NULL DEFAULT '[]',
        online BOOLEAN NOT NULL DEFAULT false, last_seen BIGINT, status JSONB, desired JSONB, created_at BIGINT NOT NULL);
      CREATE INDEX devices_channel ON devices(channel);
      CREATE TABLE device_events (id BIGSERIAL PRIMARY KEY, device_id TEXT NOT NULL, ts BIGINT NOT NULL, kind TEXT NOT NULL, data JSONB NOT NULL);
      CREATE INDEX device_events_dev ON device_events(device_id, id);
      CREATE TABLE releases (
        id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, size BIGINT NOT NULL, board TEXT NOT NULL, version TEXT NOT NULL,
        rollback_counter INTEGER NOT NULL, workload JSONB NOT NULL, manifest JSONB NOT NULL, signed_by JSONB NOT NULL,
        created_at BIGINT NOT NULL, yanked BOOLEAN NOT NULL DEFAULT false, yanked_reason TEXT, UNIQUE(board, version));
      CREATE TABLE channels (name TEXT PRIMARY KEY, release_id TEXT, updated_at BIGINT NOT NULL);
      CREATE TABLE rollouts (
        id TEXT PRIMARY KEY, release_id TEXT NOT NULL, target JSONB NOT NULL, policy JSONB NOT NULL, state TEXT NOT NULL,
        stage_index INTEGER NOT NULL, stage_cutoffs JSONB NOT NULL, reason TEXT, ack_failed INTEGER NOT NULL DEFAULT 0,
        ack_decided INTEGER NOT NULL DEFAULT 0, gate_override INTEGER, last_stage_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, created_by TEXT NOT NULL, rev INTEGER NOT NULL DEFAULT 0);
      CREATE INDEX rollouts_state ON rollouts(state);
      CREATE TABLE rollout_devices (
        rollout_id TEXT NOT NULL, device_id TEXT NOT NULL, position INTEGER NOT NULL, stage INTEGER NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, dispatched_at BIGINT, finished_at BIGINT,
        txid TEXT, error TEXT, PRIMARY KEY (rollout_id, device_id));
      CREATE INDEX rd_state ON rollout_devices(rollout_id, state, stage, position);
      CREATE INDEX rd_device ON rollout_devices(device_id, state);
      CREATE TABLE tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL, revoked BOOLEAN NOT NULL DEFAULT false);
      CREATE TABLE audit (id BIGSERIAL PRIMARY KEY, ts BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, details JSONB);`,
  },
  {
    version: 2,
    name: 'certificate enrollment',
    sql: `
      ALTER TABLE devices ADD COLUMN enrollment TEXT NOT NULL DEFAULT 'none';
      ALTER TABLE devices ADD COLUMN cert_serial TEXT;
      CREATE TABLE enroll_tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, device_id TEXT, pre_approved BOOLEAN NOT NULL,
        expires_at BIGINT NOT NULL, used_at BIGINT, created_by TEXT NOT NULL, created_at BIGINT NOT NULL);`,
  },
];

/** Arbitrary constant key of the advisory lock held while migrating. */
const MIGRATION_LOCK = 0x757a_0001;
const EVENTS_PER_DEVICE = 200;

// BIGINT (int8, oid 20) → number; everything else as pg parses it (JSONB → objects).
const INT8 = 20;
const typeParsers = {
  getTypeParser: ((oid: number, format?: string) => (oid === INT8 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text'))) as typeof pg.types.getTypeParser,
};

type R = Record<string, unknown>;
type Q = Pick<pg.PoolClient, 'query'>;
const js = (v: unknown): string => JSON.stringify(v);
const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

function deviceRow(r: R): DeviceRow {
  return {
    id: r.id as string,
    channel: r.channel as string,
    tags: r.tags as string[],
    online: r.online as boolean,
    lastSeen: num(r.last_seen),
    status: (r.status as Status | null) ?? null,
    desired: (r.desired as Desired | null) ?? null,
    createdAt: Number(r.created_at),
    enrollment: r.enrollment as EnrollmentState,
    certSerial: (r.cert_serial as string | null) ?? null,
  };
}

function releaseRow(r: R): ReleaseRow {
  return {
    id: r.id as string, sha256: r.sha256 as string, size: Number(r.size), board: r.board as string, version: r.version as string,
    rollbackCounter: r.rollback_counter as number, workload: r.workload as ReleaseRow['workload'], manifest: r.manifest,
    signedBy: r.signed_by as string[], createdAt: Number(r.created_at), yanked: r.yanked as boolean, yankedReason: (r.yanked_reason as string | null) ?? null,
  };
}

function rolloutRow(r: R): RolloutRow {
  return {
    id: r.id as string, releaseId: r.release_id as string, target: r.target as RolloutRow['target'], policy: r.policy as RolloutRow['policy'],
    state: r.state as RolloutState, stageIndex: r.stage_index as number, stageCutoffs: r.stage_cutoffs as number[], reason: (r.reason as string | null) ?? null,
    ackFailed: r.ack_failed as number, ackDecided: r.ack_decided as number, gateOverride: (r.gate_override as number | null) ?? null,
    lastStageAt: Number(r.last_stage_at), createdAt: Number(r.created_at), updatedAt: Number(r.updated_at), createdBy: r.created_by as string, rev: r.rev as number,
  };
}

function memberRow(r: R): MemberRow {
  return {
    rolloutId: r.rollout_id as string, deviceId: r.device_id as string, position: r.position as number, stage: r.stage as number,
    state: r.state as MemberState, attempts: r.attempts as number, dispatchedAt: num(r.dispatched_at), finishedAt: num(r.finished_at),
    txid: (r.txid as string | null) ?? null, error: (r.error as string | null) ?? null,
  };
}

function enrollTokenRow(r: R): EnrollTokenRow {
  return {
    id: r.id as string, deviceId: (r.device_id as string | null) ?? null, preApproved: r.pre_approved as boolean, expiresAt: Number(r.expires_at),
    usedAt: num(r.used_at), createdBy: r.created_by as string, createdAt: Number(r.created_at),
  };
}

/** `postgres://user:***@host:port/db` for logs. */
export function redactDatabaseUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'postgres://…';
  }
}

export interface PostgresOptions {
  /** Pool size (default 10). */
  max?: number;
  /** Application name shown in pg_stat_activity. */
  applicationName?: string;
}

export class PostgresStorage implements Storage {
  readonly kind = 'postgresql';
  private closed = false;

  private constructor(readonly pool: pg.Pool) {}

  /** Connects, applies pending migrations and returns the storage. Throws if the database is unreachable. */
  static async connect(url: string, o: PostgresOptions = {}): Promise<PostgresStorage> {
    const pool = new pg.Pool({ connectionString: url, max: o.max ?? 10, application_name: o.applicationName ?? 'uz-server', types: typeParsers, connectionTimeoutMillis: 10_000 });
    // An idle client losing its connection must not crash the process; the next query reconnects.
    pool.on('error', () => undefined);
    const s = new PostgresStorage(pool);
    try {
      await s.migrate();
    } catch (e) {
      await pool.end().catch(() => undefined);
      throw e;
    }
    return s;
  }

  /** Applies pending migrations (under an advisory lock); returns the versions this call applied. */
  async migrate(): Promise<number[]> {
    const c = await this.pool.connect();
    const applied: number[] = [];
    try {
      await c.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
      try {
        await c.query(`CREATE TABLE IF NOT EXISTS uz_schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`);
        const done = new Set((await c.query<{ version: number }>('SELECT version FROM uz_schema_migrations')).rows.map((r) => r.version));
        for (const m of PG_MIGRATIONS) {
          if (done.has(m.version)) continue;
          await c.query('BEGIN');
          try {
            await c.query(m.sql);
            await c.query('INSERT INTO uz_schema_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
            await c.query('COMMIT');
          } catch (e) {
            await c.query('ROLLBACK');
            throw new Error(`migration ${m.version} (${m.name}) failed: ${(e as Error).message}`, { cause: e });
          }
          applied.push(m.version);
        }
      } finally {
        await c.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]);
      }
    } finally {
      c.release();
    }
    return applied;
  }

  async schemaVersion(): Promise<number> {
    return Number((await this.one('SELECT COALESCE(MAX(version), 0) v FROM uz_schema_migrations'))!.v);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.end();
  }

  private async all(sql: string, args: unknown[] = [], q: Q = this.pool): Promise<R[]> {
    return (await q.query(sql, args)).rows as R[];
  }
  private async one(sql: string, args: unknown[] = [], q: Q = this.pool): Promise<R | undefined> {
    return (await q.query(sql, args)).rows[0] as R | undefined;
  }
  private async run(sql: string, args: unknown[] = [], q: Q = this.pool): Promise<number> {
    return (await q.query(sql, args)).rowCount ?? 0;
  }
  private async tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      const v = await fn(c);
      await c.query('COMMIT');
      return v;
    } catch (e) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw e;
    } finally {
      c.release();
    }
  }

  // devices
  async registerDevice(d: { id: string; secretHash: string | null; channel?: string; tags?: string[]; now: number; enrollment?: EnrollmentState }): Promise<boolean> {
    return (await this.run(
      `INSERT INTO devices (id, secret_hash, channel, tags, created_at, enrollment) VALUES ($1, $2, $3, $4::jsonb, $5, $6) ON CONFLICT (id) DO NOTHING`,
      [d.id, d.secretHash, d.channel ?? 'stable', js(d.tags ?? []), d.now, d.enrollment ?? 'none'],
    )) === 1;
  }
  async setEnrollment(id: string, patch: { state?: EnrollmentState; certSerial?: string | null }): Promise<boolean> {
    return (await this.run(
      `UPDATE devices SET enrollment = CASE WHEN $2 THEN $3 ELSE enrollment END, cert_serial = CASE WHEN $4 THEN $5 ELSE cert_serial END WHERE id = $1`,
      [id, patch.state !== undefined, patch.state ?? null, patch.certSerial !== undefined, patch.certSerial ?? null],
    )) === 1;
  }
  async deviceSecretHash(id: string): Promise<string | null | undefined> {
    const r = await this.one(`SELECT secret_hash FROM devices WHERE id = $1`, [id]);
    return r ? ((r.secret_hash as string | null) ?? null) : undefined;
  }
  async getDevice(id: string): Promise<DeviceRow | null> {
    const r = await this.one(`SELECT * FROM devices WHERE id = $1`, [id]);
    return r ? deviceRow(r) : null;
  }
  private deviceWhere(f: DeviceFilter): { sql: string; args: unknown[] } {
    const where: string[] = [];
    const args: unknown[] = [];
    if (f.channel !== undefined) (args.push(f.channel), where.push(`channel = $${args.length}`));
    if (f.tag !== undefined) (args.push(f.tag), where.push(`tags ? $${args.length}`));
    if (f.ids !== undefined) (args.push(f.ids), where.push(`id = ANY($${args.length}::text[])`));
    if (f.enrollment !== undefined) (args.push(f.enrollment), where.push(`enrollment = $${args.length}`));
    if (f.search !== undefined) {
      args.push(f.search.toLowerCase());
      where.push(`strpos(lower(id || ' ' || COALESCE(status->>'version', '') || ' ' || COALESCE(status->>'state', '')), $${args.length}) > 0`);
    }
    // COLLATE "C": the same byte order as SQLite and JavaScript, so pages follow `after` exactly
    if (f.after !== undefined) (args.push(f.after), where.push(`id COLLATE "C" > $${args.length}`));
    return { sql: where.length ? 'WHERE ' + where.join(' AND ') : '', args };
  }
  async listDevices(f: DeviceFilter = {}): Promise<DeviceRow[]> {
    if (f.ids !== undefined && f.ids.length === 0) return [];
    const w = this.deviceWhere(f);
    const limit = f.limit !== undefined ? ` LIMIT ${Math.max(0, Math.floor(f.limit))}` : '';
    return (await this.all(`SELECT * FROM devices ${w.sql} ORDER BY id COLLATE "C"${limit}`, w.args)).map(deviceRow);
  }
  async deviceSummary(f: Pick<DeviceFilter, 'channel' | 'tag'> = {}): Promise<DeviceSummary> {
    const w = this.deviceWhere({ channel: f.channel, tag: f.tag });
    const t = (await this.one(
      `SELECT COUNT(*) total, COUNT(*) FILTER (WHERE online) online, COUNT(status) reporting,
         COUNT(*) FILTER (WHERE status->'workload'->>'healthy' = 'false') unhealthy,
         COUNT(*) FILTER (WHERE status ? 'lastError' AND status->'lastError' <> 'null'::jsonb) with_error
       FROM devices ${w.sql}`,
      w.args,
    ))!;
    const group = async (expr: string): Promise<Record<string, number>> => {
      const out: Record<string, number> = {};
      for (const r of await this.all(`SELECT ${expr} k, COUNT(*) n FROM devices ${w.sql ? w.sql + ' AND' : 'WHERE'} status IS NOT NULL GROUP BY k ORDER BY n DESC, k`, w.args)) out[String(r.k)] = Number(r.n);
      return out;
    };
    return {
      total: Number(t.total), online: Number(t.online), reporting: Number(t.reporting), versions: await group(`status->>'version'`),
      states: await group(`status->>'state'`), slots: await group(`status->>'slot'`), unhealthy: Number(t.unhealthy), withError: Number(t.with_error),
    };
  }
  async updateDeviceMeta(id: string, patch: { channel?: string; tags?: string[] }): Promise<boolean> {
    return (await this.run(`UPDATE devices SET channel = COALESCE($1, channel), tags = COALESCE($2::jsonb, tags) WHERE id = $3`, [patch.channel ?? null, patch.tags ? js(patch.tags) : null, id])) === 1;
  }
  async setPresence(id: string, online: boolean, now: number): Promise<void> {
    await this.run(`UPDATE devices SET online = $1, last_seen = $2 WHERE id = $3`, [online, now, id]);
  }
  async setStatus(id: string, status: Status, now: number): Promise<void> {
    await this.run(`UPDATE devices SET status = $1::jsonb, last_seen = $2, online = true WHERE id = $3`, [js(status), now, id]);
  }
  async setDesired(id: string, desired: Desired | null): Promise<void> {
    await this.run(`UPDATE devices SET desired = $1::jsonb WHERE id = $2`, [desired ? js(desired) : null, id]);
  }
  async markAllOffline(): Promise<void> {
    await this.run(`UPDATE devices SET online = false WHERE online`);
  }
  async appendDeviceEvent(deviceId: string, ts: number, kind: DeviceEventRow['kind'], data: unknown): Promise<void> {
    const r = await this.one(`INSERT INTO device_events (device_id, ts, kind, data) VALUES ($1, $2, $3, $4::jsonb) RETURNING id`, [deviceId, ts, kind, js(data ?? null)]);
    if (Number(r!.id) % 50 === 0) {
      await this.run(
        `DELETE FROM device_events WHERE device_id = $1 AND id < (SELECT MIN(id) FROM (SELECT id FROM device_events WHERE device_id = $1 ORDER BY id DESC LIMIT $2) k)`,
        [deviceId, EVENTS_PER_DEVICE],
      );
    }
  }
  async listDeviceEvents(deviceId: string, limit: number): Promise<DeviceEventRow[]> {
    return (await this.all(`SELECT * FROM device_events WHERE device_id = $1 ORDER BY id DESC LIMIT $2`, [deviceId, limit])).map((r) => ({
      id: Number(r.id), deviceId: r.device_id as string, ts: Number(r.ts), kind: r.kind as DeviceEventRow['kind'], data: r.data,
    }));
  }

  // releases + channels
  async insertRelease(r: ReleaseRow): Promise<void> {
    await this.run(
      `INSERT INTO releases (id, sha256, size, board, version, rollback_counter, workload, manifest, signed_by, created_at, yanked, yanked_reason)
       VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9::jsonb, $10, $11, $12)`,
      [r.id, r.sha256, r.size, r.board, r.version, r.rollbackCounter, js(r.workload), js(r.manifest), js(r.signedBy), r.createdAt, r.yanked, r.yankedReason],
    );
  }
  async getRelease(id: string): Promise<ReleaseRow | null> {
    const r = await this.one(`SELECT * FROM releases WHERE id = $1`, [id]);
    return r ? releaseRow(r) : null;
  }
  async getReleaseBySha(sha256: string): Promise<ReleaseRow | null> {
    const r = await this.one(`SELECT * FROM releases WHERE sha256 = $1`, [sha256]);
    return r ? releaseRow(r) : null;
  }
  async findRelease(board: string, version: string): Promise<ReleaseRow | null> {
    const r = await this.one(`SELECT * FROM releases WHERE board = $1 AND version = $2`, [board, version]);
    return r ? releaseRow(r) : null;
  }
  async listReleases(): Promise<ReleaseRow[]> {
    return (await this.all(`SELECT * FROM releases ORDER BY created_at DESC, id`)).map(releaseRow);
  }
  async yankRelease(id: string, reason: string): Promise<boolean> {
    return (await this.run(`UPDATE releases SET yanked = true, yanked_reason = $1 WHERE id = $2`, [reason, id])) === 1;
  }
  async setChannel(name: string, releaseId: string | null, now: number): Promise<void> {
    await this.run(
      `INSERT INTO channels (name, release_id, updated_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET release_id = excluded.release_id, updated_at = excluded.updated_at`,
      [name, releaseId, now],
    );
  }
  async getChannel(name: string): Promise<ChannelRow | null> {
    const r = await this.one(`SELECT * FROM channels WHERE name = $1`, [name]);
    return r ? { name: r.name as string, releaseId: (r.release_id as string | null) ?? null, updatedAt: Number(r.updated_at) } : null;
  }
  async listChannels(): Promise<ChannelRow[]> {
    return (await this.all(`SELECT * FROM channels ORDER BY name`)).map((r) => ({ name: r.name as string, releaseId: (r.release_id as string | null) ?? null, updatedAt: Number(r.updated_at) }));
  }

  // rollouts
  async createRollout(r: RolloutRow, members: { deviceId: string; position: number; stage: number; state?: MemberState }[]): Promise<void> {
    await this.tx(async (c) => {
      await c.query(
        `INSERT INTO rollouts (id, release_id, target, policy, state, stage_index, stage_cutoffs, reason, ack_failed, ack_decided, gate_override,
           last_stage_at, created_at, updated_at, created_by, rev) VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
        [r.id, r.releaseId, js(r.target), js(r.policy), r.state, r.stageIndex, js(r.stageCutoffs), r.reason, r.ackFailed, r.ackDecided, r.gateOverride,
          r.lastStageAt, r.createdAt, r.updatedAt, r.createdBy, r.rev],
      );
      // one multi-row insert per 5000 members (unnest keeps it to 5 parameters)
      for (let i = 0; i < members.length; i += 5000) {
        const part = members.slice(i, i + 5000);
        await c.query(
          `INSERT INTO rollout_devices (rollout_id, device_id, position, stage, state)
           SELECT $1, d, p, s, st FROM unnest($2::text[], $3::int[], $4::int[], $5::text[]) AS m(d, p, s, st)`,
          [r.id, part.map((m) => m.deviceId), part.map((m) => m.position), part.map((m) => m.stage), part.map((m) => m.state ?? 'pending')],
        );
      }
    });
  }
  async getRollout(id: string): Promise<RolloutRow | null> {
    const r = await this.one(`SELECT * FROM rollouts WHERE id = $1`, [id]);
    return r ? rolloutRow(r) : null;
  }
  async listRollouts(states?: RolloutState[]): Promise<RolloutRow[]> {
    if (states) return (await this.all(`SELECT * FROM rollouts WHERE state = ANY($1::text[]) ORDER BY created_at DESC, id`, [states])).map(rolloutRow);
    return (await this.all(`SELECT * FROM rollouts ORDER BY created_at DESC, id`)).map(rolloutRow);
  }
  async updateRollout(id: string, rev: number, patch: Partial<Pick<RolloutRow, 'state' | 'stageIndex' | 'reason' | 'ackFailed' | 'ackDecided' | 'gateOverride' | 'lastStageAt'>>, now: number): Promise<RolloutRow | null> {
    const cols: Record<string, string> = { state: 'state', stageIndex: 'stage_index', reason: 'reason', ackFailed: 'ack_failed', ackDecided: 'ack_decided', gateOverride: 'gate_override', lastStageAt: 'last_stage_at' };
    const sets: string[] = [];
    const args: unknown[] = [];
    for (const [k, v] of Object.entries(patch)) {
      if (v === undefined) continue;
      args.push(v);
      sets.push(`${cols[k]} = $${args.length}`);
    }
    args.push(now, id, rev);
    sets.push(`updated_at = $${args.length - 2}`, 'rev = rev + 1');
    const r = await this.one(`UPDATE rollouts SET ${sets.join(', ')} WHERE id = $${args.length - 1} AND rev = $${args.length} RETURNING *`, args);
    return r ? rolloutRow(r) : null;
  }
  async stageStats(rolloutId: string): Promise<StageStats[]> {
    const rows = await this.all(
      `SELECT stage, COUNT(*) total,
         COUNT(*) FILTER (WHERE state = 'pending') pending, COUNT(*) FILTER (WHERE state = 'dispatched') dispatched,
         COUNT(*) FILTER (WHERE state = 'succeeded') succeeded, COUNT(*) FILTER (WHERE state = 'failed') failed,
         COUNT(*) FILTER (WHERE state = 'skipped') skipped
       FROM rollout_devices WHERE rollout_id = $1 GROUP BY stage ORDER BY stage`,
      [rolloutId],
    );
    return rows.map((r) => ({
      stage: r.stage as number, total: Number(r.total), pending: Number(r.pending), dispatched: Number(r.dispatched),
      succeeded: Number(r.succeeded), failed: Number(r.failed), skipped: Number(r.skipped),
    }));
  }
  async dispatchedSince(rolloutId: string, since: number): Promise<number> {
    return Number((await this.one(`SELECT COUNT(*) n FROM rollout_devices WHERE rollout_id = $1 AND dispatched_at >= $2`, [rolloutId, since]))!.n);
  }
  async claimForDispatch(rolloutId: string, maxStage: number, limit: number, now: number, onlineOnly: boolean, desiredFor?: (m: MemberRow) => Desired): Promise<MemberRow[]> {
    if (limit <= 0) return [];
    return this.tx(async (c) => {
      // Serialises claimers of this rollout (any instance) for the budget check below; other rollouts are not blocked.
      const ro = await this.one(`SELECT policy FROM rollouts WHERE id = $1 FOR NO KEY UPDATE`, [rolloutId], c);
      if (!ro) return [];
      const pol = ro.policy as { maxInFlight: number; ratePerMinute: number };
      const cnt = (await this.one(
        `SELECT COUNT(*) FILTER (WHERE state = 'dispatched') inflight, COUNT(*) FILTER (WHERE dispatched_at >= $2) recent FROM rollout_devices WHERE rollout_id = $1`,
        [rolloutId, now - 60_000], c,
      ))!;
      const n = Math.min(limit, pol.maxInFlight - Number(cnt.inflight), pol.ratePerMinute - Number(cnt.recent));
      if (n <= 0) return [];
      const rows = await this.all(
        `WITH c AS (
           SELECT rd.device_id, d.online FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id
           WHERE rd.rollout_id = $1 AND rd.state = 'pending' AND rd.stage <= $2 ${onlineOnly ? 'AND d.online' : ''}
           ORDER BY d.online DESC, rd.position LIMIT $3
           FOR UPDATE OF rd SKIP LOCKED)
         UPDATE rollout_devices rd SET state = 'dispatched', attempts = rd.attempts + 1, dispatched_at = $4, finished_at = NULL,
           txid = $1 || '-a' || (rd.attempts + 1)
         FROM c WHERE rd.rollout_id = $1 AND rd.device_id = c.device_id AND rd.state = 'pending'
         RETURNING rd.*, c.online AS dev_online`,
        [rolloutId, maxStage, n, now], c,
      );
      rows.sort((a, b) => Number(b.dev_online) - Number(a.dev_online) || (a.position as number) - (b.position as number));
      const out = rows.map(memberRow);
      if (desiredFor && out.length) {
        const byId: Record<string, Desired> = {};
        for (const m of out) byId[m.deviceId] = desiredFor(m);
        await c.query(`UPDATE devices d SET desired = m.value FROM jsonb_each($1::jsonb) m WHERE d.id = m.key`, [js(byId)]);
      }
      return out;
    });
  }
  async finishMember(rolloutId: string, deviceId: string, outcome: 'succeeded' | 'failed', error: string | null, now: number): Promise<boolean> {
    return (await this.run(
      `UPDATE rollout_devices SET state = $1, error = $2, finished_at = $3 WHERE rollout_id = $4 AND device_id = $5 AND state = 'dispatched'`,
      [outcome, error, now, rolloutId, deviceId],
    )) === 1;
  }
  async timedOut(rolloutId: string, before: number): Promise<MemberRow[]> {
    return (await this.all(`SELECT * FROM rollout_devices WHERE rollout_id = $1 AND state = 'dispatched' AND dispatched_at < $2 ORDER BY position`, [rolloutId, before])).map(memberRow);
  }
  async requeueMember(rolloutId: string, deviceId: string, error: string): Promise<boolean> {
    return (await this.run(`UPDATE rollout_devices SET state = 'pending', error = $1 WHERE rollout_id = $2 AND device_id = $3 AND state = 'dispatched'`, [error, rolloutId, deviceId])) === 1;
  }
  async skipPending(rolloutId: string, maxStage: number, reason: string, now: number): Promise<number> {
    return this.run(`UPDATE rollout_devices SET state = 'skipped', error = $1, finished_at = $2 WHERE rollout_id = $3 AND state = 'pending' AND stage <= $4`, [reason, now, rolloutId, maxStage]);
  }
  async listMembers(rolloutId: string, opts: { state?: MemberState; limit?: number } = {}): Promise<MemberRow[]> {
    const lim = opts.limit ?? 100_000;
    if (opts.state) return (await this.all(`SELECT * FROM rollout_devices WHERE rollout_id = $1 AND state = $2 ORDER BY position LIMIT $3`, [rolloutId, opts.state, lim])).map(memberRow);
    return (await this.all(`SELECT * FROM rollout_devices WHERE rollout_id = $1 ORDER BY position LIMIT $2`, [rolloutId, lim])).map(memberRow);
  }
  async countOnlinePending(rolloutId: string, maxStage: number): Promise<number> {
    return Number((await this.one(
      `SELECT COUNT(*) n FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id
       WHERE rd.rollout_id = $1 AND rd.state = 'pending' AND rd.stage <= $2 AND d.online`,
      [rolloutId, maxStage],
    ))!.n);
  }
  async activeMemberships(deviceId: string): Promise<MemberRow[]> {
    return (await this.all(
      `SELECT rd.* FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
       WHERE rd.device_id = $1 AND rd.state = 'dispatched' AND r.state IN ('running', 'paused', 'aborted')`,
      [deviceId],
    )).map(memberRow);
  }

  // auth
  async createToken(t: { id: string; name: string; role: Role; hash: string; now: number }): Promise<void> {
    await this.run(`INSERT INTO tokens (id, name, role, hash, created_at) VALUES ($1, $2, $3, $4, $5)`, [t.id, t.name, t.role, t.hash, t.now]);
  }
  async tokenByHash(hash: string): Promise<TokenRow | null> {
    const r = await this.one(`SELECT * FROM tokens WHERE hash = $1 AND NOT revoked`, [hash]);
    return r ? { id: r.id as string, name: r.name as string, role: r.role as Role, createdAt: Number(r.created_at), revoked: false } : null;
  }
  async listTokens(): Promise<TokenRow[]> {
    return (await this.all(`SELECT * FROM tokens ORDER BY created_at, id`)).map((r) => ({ id: r.id as string, name: r.name as string, role: r.role as Role, createdAt: Number(r.created_at), revoked: r.revoked as boolean }));
  }
  async revokeToken(id: string): Promise<boolean> {
    return (await this.run(`UPDATE tokens SET revoked = true WHERE id = $1 AND NOT revoked`, [id])) === 1;
  }
  async countTokens(): Promise<number> {
    return Number((await this.one(`SELECT COUNT(*) n FROM tokens WHERE NOT revoked`))!.n);
  }

  // enrollment tokens
  async createEnrollToken(t: { id: string; hash: string; deviceId: string | null; preApproved: boolean; expiresAt: number; createdBy: string; now: number }): Promise<void> {
    await this.run(
      `INSERT INTO enroll_tokens (id, hash, device_id, pre_approved, expires_at, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
      [t.id, t.hash, t.deviceId, t.preApproved, t.expiresAt, t.createdBy, t.now],
    );
  }
  async enrollTokenByHash(hash: string): Promise<EnrollTokenRow | null> {
    const r = await this.one(`SELECT * FROM enroll_tokens WHERE hash = $1`, [hash]);
    return r ? enrollTokenRow(r) : null;
  }
  async useEnrollToken(hash: string, deviceId: string, now: number): Promise<EnrollTokenRow | null> {
    const r = await this.one(
      `UPDATE enroll_tokens SET device_id = $2, used_at = $3 WHERE hash = $1 AND used_at IS NULL AND expires_at > $3 AND (device_id IS NULL OR device_id = $2) RETURNING *`,
      [hash, deviceId, now],
    );
    if (r) return enrollTokenRow(r);
    const again = await this.one(`SELECT * FROM enroll_tokens WHERE hash = $1 AND used_at IS NOT NULL AND device_id = $2`, [hash, deviceId]);
    return again ? enrollTokenRow(again) : null;
  }
  async listEnrollTokens(): Promise<EnrollTokenRow[]> {
    return (await this.all(`SELECT * FROM enroll_tokens ORDER BY created_at, id`)).map(enrollTokenRow);
  }
  async deleteEnrollToken(id: string): Promise<boolean> {
    return (await this.run(`DELETE FROM enroll_tokens WHERE id = $1`, [id])) === 1;
  }

  // audit
  async appendAudit(a: { ts: number; actor: string; action: string; target: string; details?: unknown }): Promise<void> {
    await this.run(`INSERT INTO audit (ts, actor, action, target, details) VALUES ($1, $2, $3, $4, $5::jsonb)`, [a.ts, a.actor, a.action, a.target, js(a.details ?? null)]);
  }
  async listAudit(limit: number): Promise<AuditRow[]> {
    return (await this.all(`SELECT * FROM audit ORDER BY id DESC LIMIT $1`, [limit])).map((r) => ({
      id: Number(r.id), ts: Number(r.ts), actor: r.actor as string, action: r.action as string, target: r.target as string, details: r.details,
    }));
  }
}
