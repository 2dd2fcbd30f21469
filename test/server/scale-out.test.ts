// Scale-out: TWO update-server instances on ONE real PostgreSQL and ONE real Mosquitto (shipped configs),
// a staged rollout to simulated devices → every device dispatched exactly once (checked in the database),
// rollout completed. Plus a small rollout over Mosquitto with mutual TLS (certificates from the fleet CA).
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FleetSim, SimDevice, simPassword } from '../../server/sim.js';
import { SERVER_IDENTITY } from '../../server/pki.js';
import type { PostgresStorage } from '../../server/storage/postgres.js';
import { until } from './broker-contract.js';
import { auth, fleetKeys, makeBundle, testServer, tmp, type TestServer } from './helpers.js';
import { deviceCerts, makeTlsFiles, startMosquitto, type RunningMosquitto } from './mosquitto-harness.js';
import { startPostgres, type PgCluster } from './pg-harness.js';

let pg: PgCluster;
beforeAll(async () => {
  pg = await startPostgres();
}, 60_000);
afterAll(async () => {
  await pg?.stop();
});

const N = 120;
const SEED = 'scale';

describe('two server instances, one PostgreSQL, one Mosquitto', () => {
  let m: RunningMosquitto;
  let a: TestServer;
  let b: TestServer;
  let sim: FleetSim;
  const serverPassword = 'server-' + simPassword(SEED, 'server');
  afterAll(async () => {
    await sim?.stop();
    await a?.server.close();
    await b?.server.close();
    await m?.stop();
  });

  it(`a rollout to ${N} devices: each device dispatched exactly once across both instances, rollout completes`, async () => {
    const ids = Array.from({ length: N }, (_, i) => `scale-${String(i).padStart(4, '0')}`);
    m = await startMosquitto({ variant: 'dev', serverPassword, devices: new Map(ids.map((id) => [id, simPassword(SEED, id)])) });
    const databaseUrl = await pg.newDatabase('uz_scale');
    const dataDir = tmp(); // shared: artifacts, URL-signing key (as a shared volume would be)
    const keys = fleetKeys();
    const cfg = (clientId: string) => ({ databaseUrl, rolloutTickMs: 200, mqtt: { url: `mqtt://127.0.0.1:${m.serverPort}`, username: SERVER_IDENTITY, password: serverPassword, clientId, deviceMsgPerSec: 100 } });
    a = await testServer({ dataDir, keys, config: cfg('uz-a') });
    b = await testServer({ dataDir, keys, config: cfg('uz-b') });
    const token = a.token;
    expect(b.server.bootstrapToken).toBeNull(); // the second instance found the first one's admin token in the database

    sim = new FleetSim({ url: `mqtt://127.0.0.1:${m.devicePort}`, devices: N, seed: SEED, prefix: 'scale', stepMs: 20, download: 'range', connectBatch: 40 });
    await sim.start();
    await until(async () => (await a.server.ctx.storage.listDevices()).filter((d) => d.status && d.online).length === N, 30_000, 'all devices registered and online');

    const up = await a.server.app.inject({ method: 'POST', url: '/api/v1/releases?channel=stable', headers: { ...auth(token), 'content-type': 'application/octet-stream' }, payload: readFileSync(await makeBundle(tmp(), [keys.release], { version: '2.0.0' })) });
    expect(up.statusCode, up.body).toBe(201);
    // created through instance B, whose database row instance A sees at once
    const c = await b.server.app.inject({ method: 'POST', url: '/api/v1/rollouts', headers: auth(token), payload: { channel: 'stable', stages: ['10%', '50%', '100%'], maxInFlight: 25, minDevices: 5 } });
    expect(c.statusCode, c.body).toBe(201);
    const id = c.json().rollout.id as string;
    const done = await until(async () => {
      const s = await a.server.ctx.rollouts.status(id);
      return s.rollout.state !== 'running' ? s : null;
    }, 60_000, 'rollout finished');
    expect(done.rollout.state).toBe('completed');
    expect(done.totals).toMatchObject({ total: N, succeeded: N, failed: 0, pending: 0, dispatched: 0 });

    // the database: every member dispatched exactly once, with the first-attempt txid, and that is the desired state stored
    const db = (a.server.ctx.storage as PostgresStorage).pool;
    const rows = (await db.query(`SELECT device_id, attempts, txid, state FROM rollout_devices WHERE rollout_id = $1`, [id])).rows;
    expect(rows.length).toBe(N);
    expect(rows.every((r) => r.attempts === 1 && r.txid === `${id}-a1` && r.state === 'succeeded')).toBe(true);
    const desired = (await db.query(`SELECT count(*)::int n FROM devices WHERE desired->>'txid' = $1`, [`${id}-a1`])).rows[0].n;
    expect(desired).toBe(N);
    const completes = (await db.query(`SELECT count(*)::int n FROM audit WHERE target = $1 AND action = 'rollout.complete'`, [id])).rows[0].n;
    expect(completes).toBe(1);
    // devices: each got exactly one desired state for this rollout and installed once
    expect(sim.devices.every((d) => d.received.filter((r) => r.deploymentId === id).length >= 1 && d.installs === 1 && d.version === '2.0.0')).toBe(true);

    // both instances took part: dispatches split between them (sum = N) and so did the device traffic ($share)
    const metric = async (t: TestServer, re: RegExp) => Number(re.exec((await t.server.app.inject({ url: '/metrics' })).body)?.[1] ?? 0);
    const dispatched = [await metric(a, /uz_rollout_device_outcomes_total\{outcome="dispatched"\} (\d+)/), await metric(b, /uz_rollout_device_outcomes_total\{outcome="dispatched"\} (\d+)/)];
    const events = [await metric(a, /uz_device_messages_total\{kind="events"\} (\d+)/), await metric(b, /uz_device_messages_total\{kind="events"\} (\d+)/)];
    console.log(`scale-out: dispatched by A/B = ${dispatched.join('/')}, device events handled by A/B = ${events.join('/')}`);
    expect(dispatched[0]! + dispatched[1]!).toBe(N);
    expect(events[0]).toBeGreaterThan(0);
    expect(events[1]).toBeGreaterThan(0);
    // 6 update events per device; with $share each is handled by ONE instance (without it the sum would be 2·6·N).
    // ≥ because QoS 1 may redeliver.
    expect(events[0]! + events[1]!).toBeGreaterThanOrEqual(N * 6);
    expect(events[0]! + events[1]!).toBeLessThan(N * 6 * 1.2);
    // secrets are masked in the effective config
    const conf = (await b.server.app.inject({ url: '/api/v1/config', headers: auth(token) })).json();
    expect(conf.mqtt.password).toBe('***');
    expect(conf.databaseUrl).toBe(databaseUrl); // no password in this URL
  }, 110_000);
});

describe('Mosquitto with mutual TLS (shipped mosquitto.conf), PostgreSQL', () => {
  it('the server drives a small rollout through Mosquitto to certificate devices', async () => {
    const tls = await makeTlsFiles();
    const m = await startMosquitto({ variant: 'tls', tls });
    const ids = Array.from({ length: 8 }, (_, i) => `tls-${String(i).padStart(4, '0')}`);
    const certs = await deviceCerts(tls.ca, ids);
    const files = tmp('uz-id-');
    writeFileSync(join(files, 'ca.crt'), tls.caPem);
    writeFileSync(join(files, 'server.crt'), tls.identity.certPem);
    writeFileSync(join(files, 'server.key'), tls.identity.keyPem, { mode: 0o600 });
    const t = await testServer({ config: { databaseUrl: await pg.newDatabase('uz_tls'), mqtt: { url: `mqtts://127.0.0.1:${m.serverPort}`, caFile: join(files, 'ca.crt'), certFile: join(files, 'server.crt'), keyFile: join(files, 'server.key') } } });
    const sim = new FleetSim({
      url: `mqtts://127.0.0.1:${m.devicePort}`, devices: ids.length, prefix: 'tls', stepMs: 20, download: 'range',
      connectOptions: (id) => ({ ca: tls.caPem, cert: certs.get(id)!.cert, key: certs.get(id)!.key, username: undefined, password: undefined }),
    });
    try {
      await sim.start();
      await until(async () => (await t.server.ctx.storage.listDevices()).filter((d) => d.status).length === ids.length, 20_000, 'statuses');
      const up = await t.server.app.inject({ method: 'POST', url: '/api/v1/releases?channel=stable', headers: { ...auth(t.token), 'content-type': 'application/octet-stream' }, payload: readFileSync(await makeBundle(tmp(), [t.keys.release], { version: '2.0.0' })) });
      expect(up.statusCode, up.body).toBe(201);
      const c = await t.server.app.inject({ method: 'POST', url: '/api/v1/rollouts', headers: auth(t.token), payload: { channel: 'stable', stages: ['25%', '100%'], minDevices: 1 } });
      expect(c.statusCode, c.body).toBe(201);
      const s = await until(async () => {
        const x = await t.server.ctx.rollouts.status(c.json().rollout.id);
        return x.rollout.state !== 'running' ? x : null;
      }, 30_000, 'rollout finished');
      expect(s.rollout.state).toBe('completed');
      expect(s.totals.succeeded).toBe(ids.length);
      expect(sim.devices.every((d) => d.version === '2.0.0')).toBe(true);
      expect((await t.server.app.inject({ url: '/healthz' })).json()).toMatchObject({ storage: 'postgresql', broker: 'external' });
      // a revoked device that the broker still lets in (its CRL not updated yet) is ignored by the server
      const rev = (await deviceCerts(tls.ca, ['tls-revoked'])).get('tls-revoked')!;
      await t.server.ctx.storage.registerDevice({ id: 'tls-revoked', secretHash: null, now: Date.now(), enrollment: 'revoked' });
      const rd = new SimDevice('tls-revoked', '', false, { url: `mqtts://127.0.0.1:${m.devicePort}`, board: 'rpi4', version: '1.0.0', stepMs: 10, download: 'none', log: () => undefined, connectOptions: { ca: tls.caPem, cert: rev.cert, key: rev.key, username: undefined, password: undefined } });
      await rd.connect();
      await until(async () => /uz_device_messages_rejected_total\{reason="revoked"\} [1-9]/.test((await t.server.app.inject({ url: '/metrics' })).body), 10_000, 'revoked device ignored');
      expect((await t.server.ctx.storage.getDevice('tls-revoked'))!.status).toBeNull();
      await rd.disconnect();
    } finally {
      await sim.stop();
      await t.server.close();
      await m.stop();
    }
  }, 60_000);
});
