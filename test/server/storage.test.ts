// The Storage contract over every implementation: SQLite (memory, disk) and a real PostgreSQL (pg-harness).
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { PG_MIGRATIONS, PostgresStorage } from '../../server/storage/postgres.js';
import { SQLITE_MIGRATIONS, SqliteStorage } from '../../server/storage/sqlite.js';
import type { Storage } from '../../server/storage/types.js';
import { startPostgres, type PgCluster } from './pg-harness.js';
import { rolloutRow, storageContractTests } from './storage-contract.js';

let cluster: Promise<PgCluster> | undefined;
const pgCluster = (): Promise<PgCluster> => (cluster ??= startPostgres());
afterAll(async () => {
  if (cluster) await (await cluster).stop();
});

const impls: [string, () => Promise<Storage>][] = [
  ['sqlite in memory', async () => new SqliteStorage(':memory:')],
  ['sqlite on disk (WAL, synchronous=FULL)', async () => new SqliteStorage(join(mkdtempSync(join(tmpdir(), 'uz-st-')), 'uz.db'))],
  ['postgresql (real server)', async () => PostgresStorage.connect(await (await pgCluster()).newDatabase())],
];

describe.each(impls)('Storage contract: %s', (_name, make) => storageContractTests(make));

describe('migrations', () => {
  it('sqlite: a database from before versioning (user_version 0) is migrated in place, data kept', () => {
    const path = join(mkdtempSync(join(tmpdir(), 'uz-st-')), 'old.db');
    const old = new Database(path);
    for (const sql of SQLITE_MIGRATIONS[0]!.sql) old.exec(sql);
    old.prepare(`INSERT INTO devices (id, created_at) VALUES ('dev-old', 1)`).run();
    old.close();
    const s = new SqliteStorage(path);
    expect(s.schemaVersion()).toBe(SQLITE_MIGRATIONS.at(-1)!.version);
    expect(s.migrate()).toEqual([]);
    return s.getDevice('dev-old').then(async (d) => {
      expect(d).toMatchObject({ id: 'dev-old', enrollment: 'none', certSerial: null });
      await s.close();
    });
  });

  it('postgresql: instances starting together migrate once (advisory lock); re-running is a no-op', async () => {
    const url = await (await pgCluster()).newDatabase('uz_mig');
    const all = await Promise.all([1, 2, 3].map(() => PostgresStorage.connect(url, { max: 2 })));
    const rows = (await all[0]!.pool.query('SELECT version FROM uz_schema_migrations ORDER BY version')).rows.map((r) => r.version);
    expect(rows).toEqual(PG_MIGRATIONS.map((m) => m.version));
    expect(await all[1]!.migrate()).toEqual([]);
    expect(await all[2]!.schemaVersion()).toBe(PG_MIGRATIONS.at(-1)!.version);
    await Promise.all(all.map((s) => s.close()));
  });
});

describe('postgresql: two storages (= two server instances) on one database', () => {
  it('concurrent claims from both never dispatch a member twice and never exceed maxInFlight together', async () => {
    const url = await (await pgCluster()).newDatabase('uz_two');
    const [a, b] = await Promise.all([PostgresStorage.connect(url), PostgresStorage.connect(url)]);
    const n = 300;
    for (let i = 0; i < n; i += 100) await Promise.all(Array.from({ length: 100 }, (_, k) => a.registerDevice({ id: `dev-${i + k}`, secretHash: null, now: 0 })));
    const base = rolloutRow('ro-x');
    await a.createRollout({ ...base, policy: { ...base.policy, maxInFlight: 40, ratePerMinute: 1_000_000 } }, Array.from({ length: n }, (_, i) => ({ deviceId: `dev-${i}`, position: i, stage: 0 })));
    const seen = new Map<string, number>();
    let now = 1000;
    let peak = 0;
    for (let round = 0; round < 200 && seen.size < n; round++) {
      now += 10;
      // both instances claim at once, each asking for the whole budget as a stale decision would
      const got = (await Promise.all([a, b, a, b].map((s) => s.claimForDispatch('ro-x', 0, 40, now, false, (m) => ({ v: 1, txid: m.txid!, deploymentId: m.rolloutId, issuedAt: now, release: null }))))).flat();
      for (const m of got) seen.set(m.deviceId, (seen.get(m.deviceId) ?? 0) + 1);
      const inflight = (await b.stageStats('ro-x'))[0]!.dispatched;
      peak = Math.max(peak, inflight);
      await Promise.all(got.map((m, i) => (i % 2 ? a : b).finishMember('ro-x', m.deviceId, 'succeeded', null, now)));
    }
    expect(seen.size).toBe(n);
    expect([...seen.values()].every((c) => c === 1)).toBe(true);
    expect(peak).toBeLessThanOrEqual(40);
    const members = await a.listMembers('ro-x');
    expect(members.every((m) => m.state === 'succeeded' && m.attempts === 1)).toBe(true);
    expect((await a.getDevice('dev-7'))!.desired!.txid).toBe('ro-x-a1');
    await Promise.all([a.close(), b.close()]);
  }, 60_000);
});
