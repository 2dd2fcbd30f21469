// What the 10,000-device rollout benchmark (bench/rollout.ts) found, as regression tests: the broker's
// message routing under bursts, the retained-message index, SQLite group commit, and the aggregate API the
// dashboard and the benchmark poll instead of the full device list.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmbeddedBroker } from '../../server/broker.js';
import { IndexedRetainedPersistence, MemoryPersistence } from '../../server/broker-persistence.js';
import { SqliteStorage } from '../../server/storage/sqlite.js';
import { auth, testServer, type TestServer } from './helpers.js';

const quiet = { info: () => undefined, warn: () => undefined };

describe('embedded broker under bursts', () => {
  it('routes 20,000 messages published at once while others are still being delivered (no stack overflow)', async () => {
    // With Aedes' default routing cap (100 in flight) the overflow queued in mqemitter and was drained by
    // recursion: this burst overflowed the stack and killed the server (the 10,000-device benchmark's crash).
    const b = await EmbeddedBroker.create({ authenticate: async () => false, ratePerSec: 1, burst: 1, log: quiet });
    try {
      let slow = 0;
      const mq = (b.aedes as unknown as { mq: { on(topic: string, fn: (p: unknown, cb: () => void) => void): void } }).mq;
      mq.on('slow/#', (_p, cb) => void setTimeout(() => (slow++, cb()), 5));
      const seen: string[] = [];
      const all: Promise<void>[] = [];
      for (let i = 0; i < 200; i++) all.push(b.publish(`slow/${i}`, Buffer.from('x'), { qos: 0, retain: false }));
      for (let i = 0; i < 20_000; i++) all.push(b.publish(`uz/v1/dev/d${i}/status`, Buffer.from('x'), { qos: 0, retain: false }).then(() => void seen.push('x')));
      await Promise.all(all);
      expect(slow).toBe(200);
      expect(seen.length).toBe(20_000);
    } finally {
      await b.close();
    }
  }, 60_000);
});

describe('retained messages indexed per device', () => {
  const topics = [
    'uz/v1/dev/a-1/status', 'uz/v1/dev/a-1/presence', 'uz/v1/dev/a-1/desired', 'uz/v1/dev/a-1', 'uz/v1/dev/a-2/status',
    'uz/v1/dev/a-2/desired', 'uz/v1/dev/a-10/desired', 'uz/v1/dev/a-1/x/y', 'uz/v1/other', 'top', 'a/b', 'uz/v1/dev/a-1/status/extra',
  ];
  const patterns = [
    'uz/v1/dev/a-1/desired', 'uz/v1/dev/a-1/#', 'uz/v1/dev/a-1/+', 'uz/v1/dev/+/desired', 'uz/v1/dev/#', '#', '+/+', 'top', 'uz/v1/dev/a-1',
    'uz/v1/dev/a-1/+/y', 'uz/v1/+', 'nothing/here', 'uz/v1/dev/a-3/#', 'a/#', '+',
  ];
  const collect = async (s: NodeJS.ReadableStream): Promise<string[]> => {
    const out: string[] = [];
    for await (const p of s as AsyncIterable<{ topic: string }>) out.push(p.topic);
    return out.sort();
  };

  it('answers every filter exactly as the stock full scan does', async () => {
    const stock = new MemoryPersistence();
    const ours = new IndexedRetainedPersistence();
    for (const topic of topics) {
      const pkt = { cmd: 'publish', topic, payload: Buffer.from(topic), qos: 1, retain: true };
      await stock.storeRetained(pkt);
      await ours.storeRetained(pkt);
    }
    // an empty payload deletes
    for (const p of [stock, ours]) await p.storeRetained({ topic: 'uz/v1/dev/a-2/status', payload: Buffer.alloc(0) });
    expect(ours.retainedCount).toBe(topics.length - 1);
    for (const pattern of patterns) {
      expect(await collect(ours.createRetainedStream(pattern)), pattern).toEqual(await collect(stock.createRetainedStream(pattern)));
    }
    expect(await collect(ours.createRetainedStreamCombi(['uz/v1/dev/a-1/desired', 'uz/v1/dev/a-2/#']))).toEqual(['uz/v1/dev/a-1/desired', 'uz/v1/dev/a-2/desired']);
  });

  it('a subscribe costs the same with 20,000 other retained messages (no full scan)', async () => {
    const ours = new IndexedRetainedPersistence();
    for (let i = 0; i < 10_000; i++) {
      for (const k of ['status', 'presence']) await ours.storeRetained({ topic: `uz/v1/dev/d-${i}/${k}`, payload: Buffer.from('x') });
    }
    const t0 = performance.now();
    for (let i = 0; i < 10_000; i++) expect([...ours.matching(`uz/v1/dev/d-${i}/desired`)].length).toBe(0);
    for (let i = 0; i < 1000; i++) expect([...ours.matching(`uz/v1/dev/d-${i}/#`)].length).toBe(2);
    // the stock store tests every retained message per filter: 11,000 × 20,000 topic matches, minutes
    expect(performance.now() - t0).toBeLessThan(2000);
  });
});

describe('SQLite group commit', () => {
  const disk = () => new SqliteStorage(join(mkdtempSync(join(tmpdir(), 'uz-gc-')), 'uz.db'));

  it('commits concurrent writes together, in call order, each settled after its commit', async () => {
    const s = disk();
    await s.registerDevice({ id: 'dev-x', secretHash: null, now: 0 });
    const before = { ...s.commitStats };
    const writes: Promise<unknown>[] = [];
    for (let i = 0; i < 1000; i++) writes.push(s.registerDevice({ id: `dev-${String(i).padStart(4, '0')}`, secretHash: null, now: i }));
    // same row written twice in one batch: the later call wins
    writes.push(s.setPresence('dev-x', true, 1), s.setPresence('dev-x', false, 2));
    // nothing is visible (or acknowledged) before the commit
    expect(await s.getDevice('dev-0000')).toBeNull();
    expect(await Promise.all(writes)).toEqual([...Array(1000).fill(true), undefined, undefined]);
    expect(s.commitStats.commits - before.commits).toBe(1);
    expect(s.commitStats.writes - before.writes).toBe(1002);
    expect((await s.listDevices()).length).toBe(1001);
    expect(await s.getDevice('dev-x')).toMatchObject({ online: false, lastSeen: 2 });
    await s.close();
  });

  it('a failing write is rolled back alone; the others in its commit stand', async () => {
    const s = disk();
    const rel = { id: 'rel-1', sha256: 'a'.repeat(64), size: 1, board: 'rpi4', version: '1.0.0', rollbackCounter: 1, workload: { name: 'app', version: '1' }, manifest: {}, signedBy: [], createdAt: 1, yanked: false, yankedReason: null };
    await s.insertRelease(rel);
    const [a, dup, b] = await Promise.allSettled([
      s.appendAudit({ ts: 1, actor: 't', action: 'a', target: 'before' }),
      s.insertRelease({ ...rel, sha256: 'b'.repeat(64) }), // same id: UNIQUE constraint
      s.appendAudit({ ts: 2, actor: 't', action: 'a', target: 'after' }),
    ]);
    expect([a.status, dup.status, b.status]).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect((await s.listAudit(10)).map((r) => r.target)).toEqual(['after', 'before']);
    expect((await s.getRelease('rel-1'))!.sha256).toBe('a'.repeat(64));
    await s.close();
  });

  it('close() commits what is queued', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'uz-gc-')), 'uz.db');
    const s = new SqliteStorage(path);
    const w = s.appendAudit({ ts: 1, actor: 't', action: 'a', target: 'queued' });
    await s.close();
    await w;
    const again = new SqliteStorage(path);
    expect((await again.listAudit(10)).map((r) => r.target)).toEqual(['queued']);
    await again.close();
  });
});

describe('fleet aggregates and paging over the API', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await testServer({ start: false });
    for (let i = 0; i < 25; i++) await t.server.ctx.storage.registerDevice({ id: `dev-${String(i).padStart(2, '0')}`, secretHash: null, now: i });
  });
  afterAll(async () => {
    await t.server.close();
  });

  it('GET /api/v1/fleet/summary and GET /api/v1/devices?limit=&after=', async () => {
    const get = async (url: string) => {
      const r = await t.server.app.inject({ url, headers: auth(t.token) });
      expect(r.statusCode, url).toBe(200);
      return r.json();
    };
    expect((await get('/api/v1/fleet/summary')).summary).toEqual({ total: 25, online: 0, reporting: 0, versions: {}, states: {}, slots: {}, unhealthy: 0, withError: 0 });
    expect((await get('/api/v1/devices?q=DEV-1')).devices.map((d: { id: string }) => d.id)).toEqual(Array.from({ length: 10 }, (_, i) => `dev-1${i}`));
    const ids: string[] = [];
    let after: string | null = null;
    let pages = 0;
    do {
      const page: { devices: { id: string }[]; next: string | null } = await get(`/api/v1/devices?limit=10${after ? `&after=${after}` : ''}`);
      ids.push(...page.devices.map((d) => d.id));
      after = page.next;
      pages++;
    } while (after);
    expect(pages).toBe(3);
    expect(ids).toEqual(Array.from({ length: 25 }, (_, i) => `dev-${String(i).padStart(2, '0')}`));
    const all = await get('/api/v1/devices');
    expect(all.devices.length).toBe(25);
    expect(all.next).toBeNull();
    const bad = await t.server.app.inject({ url: '/api/v1/devices?limit=0', headers: auth(t.token) });
    expect(bad.statusCode).toBe(400);
    expect((await t.server.app.inject({ url: '/api/v1/fleet/summary' })).statusCode).toBe(401);
  });
});

describe('connection cap (file descriptors)', () => {
  it('refuses connections beyond mqtt.maxConnections at once and counts them; the others stay connected', async () => {
    const { default: mqtt } = await import('mqtt');
    const { simPassword } = await import('../../server/sim.js');
    const t = await testServer({ config: { mqtt: { maxConnections: 2 } } });
    const clients: import('mqtt').MqttClient[] = [];
    try {
      const attempt = (id: string) =>
        new Promise<'connected' | 'refused'>((resolve) => {
          const c = mqtt.connect(t.urls!.mqtt, { clientId: id, username: id, password: simPassword('cap', id), reconnectPeriod: 0, connectTimeout: 5000 });
          clients.push(c);
          c.once('connect', () => resolve('connected'));
          c.once('error', () => resolve('refused'));
          c.once('close', () => resolve('refused'));
        });
      expect(await attempt('cap-1')).toBe('connected');
      expect(await attempt('cap-2')).toBe('connected');
      expect(await attempt('cap-3')).toBe('refused');
      const metrics = (await t.server.app.inject({ url: '/metrics' })).body;
      expect(metrics).toMatch(/uz_device_messages_rejected_total\{reason="connection-limit"\} [1-9]/);
      expect(clients[0]!.connected && clients[1]!.connected).toBe(true);
    } finally {
      await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
      await t.server.close();
    }
  });
});
