// Integration tests against the real embedded broker (Aedes) over TCP and WebSocket.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import mqtt, { type MqttClient } from 'mqtt';
import { encode, topics, MAX_MESSAGE_BYTES } from '../../lib/protocol.js';
import { aclPublish, aclSubscribe } from '../../server/broker.js';
import { FleetSim, SimDevice, simPassword } from '../../server/sim.js';
import { auth, makeBundle, testServer, tmp, type TestServer } from './helpers.js';
import { readFileSync } from 'node:fs';

let t: TestServer;
beforeAll(async () => {
  t = await testServer();
});
afterAll(async () => {
  await t.server.close();
});

const PW = (id: string) => simPassword('test', id);

function connect(id: string, o: { password?: string; url?: string } = {}): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(o.url ?? t.urls!.mqtt, { clientId: id, username: id, password: o.password ?? PW(id), reconnectPeriod: 0, connectTimeout: 5000 });
    c.once('connect', () => resolve(c));
    c.once('error', (e) => {
      c.end(true);
      reject(e);
    });
  });
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until<T>(f: () => Promise<T> | T, ms = 10_000, what = 'condition'): Promise<NonNullable<T>> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}
const status = (id: string, version = '1.0.0') => encode('status', {
  v: 1, deviceId: id, ts: Date.now(), board: 'rpi4', version, slot: 'A', rollbackCounter: 1, bootControl: { primary: 'A', tryPending: null, bad: [] },
  state: 'idle', workload: { name: 'app', version: '1', healthy: true, detail: '', restarts: 0 },
});

describe('broker ACLs (pure)', () => {
  it('allows only own non-server topics', () => {
    expect(aclPublish('dev-a', 'uz/v1/dev/dev-a/status')).toBe(true);
    expect(aclPublish('dev-a', 'uz/v1/dev/dev-a/req')).toBe(true);
    expect(aclPublish('dev-a', 'uz/v1/dev/dev-a/desired')).toBe(false);
    expect(aclPublish('dev-a', 'uz/v1/dev/dev-a/res')).toBe(false);
    expect(aclPublish('dev-a', 'uz/v1/dev/dev-b/status')).toBe(false);
    expect(aclPublish('dev-a', 'uz/v1/dev/dev-a/status/x')).toBe(false);
    expect(aclSubscribe('dev-a', 'uz/v1/dev/dev-a/desired')).toBe(true);
    expect(aclSubscribe('dev-a', 'uz/v1/dev/dev-a/#')).toBe(true);
    for (const f of ['uz/v1/dev/+/desired', 'uz/v1/dev/#', '#', 'uz/v1/dev/dev-b/desired', 'uz/v1/dev/dev-a/../dev-b/desired', '$SYS/#']) expect(aclSubscribe('dev-a', f)).toBe(false);
  });
});

describe('embedded broker + protocol handling', () => {
  it('authenticates devices: TOFU registration in dev mode, wrong password and id/username mismatch refused', async () => {
    const a = await connect('acl-dev-a');
    await a.endAsync();
    await expect(connect('acl-dev-a', { password: 'x'.repeat(20) })).rejects.toThrow(/Bad username or password|Not authorized|refused/i);
    await expect(new Promise((res, rej) => {
      const c = mqtt.connect(t.urls!.mqtt, { clientId: 'acl-dev-a', username: 'acl-dev-b', password: PW('acl-dev-b'), reconnectPeriod: 0 });
      c.once('connect', res);
      c.once('error', (e) => (c.end(true), rej(e)));
    })).rejects.toThrow();
    expect(await t.server.ctx.storage.deviceSecretHash('acl-dev-a')).toMatch(/^scrypt\$/);
  });

  it('device A can neither read nor write device B, nor publish desired', async () => {
    const a = await connect('acl-dev-a');
    const b = await connect('acl-dev-b');
    const seenByA: string[] = [];
    a.on('message', (topic) => seenByA.push(topic));
    const grant = (filter: string) => new Promise<number>((res) => a.subscribe(filter, { qos: 1 }, (err, g) => res(err ? 128 : g![0]!.qos)));
    const grants: number[] = [];
    for (const f of ['uz/v1/dev/acl-dev-b/desired', 'uz/v1/dev/+/status', '#', 'uz/v1/dev/acl-dev-a/desired']) grants.push(await grant(f));
    expect(grants).toEqual([128, 128, 128, 1]);
    const seenByB: string[] = [];
    await b.subscribeAsync([topics.desired('acl-dev-b')], { qos: 1 });
    b.on('message', (topic) => seenByB.push(topic));
    await b.publishAsync(topics.status('acl-dev-b'), status('acl-dev-b'), { qos: 1 });
    await sleep(200);
    expect(seenByA).toEqual([]); // nothing of B's reached A
    // A publishing B's status or its own desired gets it disconnected and nothing is delivered
    const closed = new Promise<void>((r) => a.once('close', () => r()));
    a.publish(topics.desired('acl-dev-b'), encode('desired', { v: 1, txid: 'evil', deploymentId: null, issuedAt: 1, release: null }), { qos: 1 });
    await closed;
    const a2 = await connect('acl-dev-a');
    const closed2 = new Promise<void>((r) => a2.once('close', () => r()));
    a2.publish(topics.desired('acl-dev-a'), encode('desired', { v: 1, txid: 'evil', deploymentId: null, issuedAt: 1, release: null }), { qos: 1 });
    await closed2;
    const a3 = await connect('acl-dev-a');
    const closed3 = new Promise<void>((r) => a3.once('close', () => r()));
    a3.publish(topics.status('acl-dev-b'), status('acl-dev-b', '6.6.6'), { qos: 1 });
    await closed3;
    await sleep(200);
    expect(seenByB).toEqual([]);
    expect((await t.server.ctx.storage.getDevice('acl-dev-b'))!.status!.version).toBe('1.0.0');
    const m = await t.server.app.inject({ url: '/metrics' });
    expect(m.body).toMatch(/uz_device_messages_rejected_total\{reason="acl-publish"\} [3-9]/);
    expect(m.body).toMatch(/uz_device_messages_rejected_total\{reason="acl-subscribe"\} [3-9]/);
    await b.endAsync();
  });

  it('a reconnect that takes over the session keeps the device online (late disconnect/last will of the old one ignored)', async () => {
    const will = { topic: topics.presence('takeover-dev'), payload: encode('presence', { v: 1, online: false }), qos: 1 as const, retain: true };
    const open = (): Promise<MqttClient> => new Promise((res, rej) => {
      const x = mqtt.connect(t.urls!.mqtt, { clientId: 'takeover-dev', username: 'takeover-dev', password: PW('takeover-dev'), reconnectPeriod: 0, will });
      x.once('connect', () => res(x));
      x.once('error', rej);
    });
    const first = await open();
    await until(async () => (await t.server.ctx.storage.getDevice('takeover-dev'))?.online, 5000, 'online');
    const kicked = new Promise<void>((r) => first.once('close', () => r()));
    const second = await open();
    await kicked;
    await sleep(300);
    expect((await t.server.ctx.storage.getDevice('takeover-dev'))!.online).toBe(true);
    await second.endAsync();
    await until(async () => !(await t.server.ctx.storage.getDevice('takeover-dev'))!.online, 5000, 'offline after the real disconnect');
  });

  it('per-device message rate limit disconnects a flooding device', async () => {
    const r = await testServer({ config: { mqtt: { deviceMsgPerSec: 5, deviceMsgBurst: 10 } } });
    try {
      const c = await new Promise<MqttClient>((res, rej) => {
        const x = mqtt.connect(r.urls!.mqtt, { clientId: 'flood-dev', username: 'flood-dev', password: PW('flood-dev'), reconnectPeriod: 0 });
        x.once('connect', () => res(x));
        x.once('error', rej);
      });
      const closed = new Promise<void>((res) => c.once('close', () => res()));
      for (let i = 0; i < 40; i++) c.publish(topics.presence('flood-dev'), encode('presence', { v: 1, online: true }), { qos: 0 });
      await closed;
      expect((await r.server.app.inject({ url: '/metrics' })).body).toMatch(/uz_device_messages_rejected_total\{reason="rate"\} [1-9]/);
    } finally {
      await r.server.close();
    }
  });

  it('fuzzed device messages are rejected with a logged reason and a counter, never a crash', async () => {
    const f = await testServer({ config: { mqtt: { deviceMsgPerSec: 100_000, deviceMsgBurst: 100_000 } } });
    const t = f;
    const c = await connect('fuzz-dev', { url: f.urls!.mqtt });
    const kinds = ['status', 'presence', 'events', 'req'] as const;
    let sent = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...kinds), fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.json().map((s) => new TextEncoder().encode(s)), fc.anything().map((x) => { try { return new TextEncoder().encode(JSON.stringify({ v: 1, ...(typeof x === 'object' && x ? x : { x }) })); } catch { return new Uint8Array([1]); } })), async (kind, payload) => {
        await c.publishAsync(`uz/v1/dev/fuzz-dev/${kind}`, Buffer.from(payload), { qos: 1 });
        sent++;
      }),
      { numRuns: 150 },
    );
    // near-limit payload (valid JSON, too big for the schema) — sent below the broker's hard size cut-off
    await c.publishAsync(topics.events('fuzz-dev'), Buffer.from(JSON.stringify({ v: 1, pad: 'x'.repeat(MAX_MESSAGE_BYTES - 100) })), { qos: 1 });
    expect(sent).toBe(150);
    const hist = await until(async () => {
      const h = await t.server.ctx.storage.listDeviceEvents('fuzz-dev', 200);
      return h.filter((e) => e.kind === 'rejected').length >= 100 ? h : null;
    }, 10_000, 'rejections recorded');
    expect(hist.some((e) => e.kind === 'rejected' && (e.data as { code: string }).code === 'MSG_NOT_JSON')).toBe(true);
    expect(hist.some((e) => e.kind === 'rejected' && (e.data as { code: string }).code === 'MSG_INVALID')).toBe(true);
    expect((await t.server.app.inject({ url: '/healthz' })).statusCode).toBe(200);
    // over the protocol size limit: refused at the broker (connection closed), server still fine
    const closed = new Promise<void>((r) => c.once('close', () => r()));
    c.publish(topics.events('fuzz-dev'), Buffer.alloc(MAX_MESSAGE_BYTES + 1, 0x20), { qos: 0 });
    await closed;
    const m = (await t.server.app.inject({ url: '/metrics' })).body;
    expect(m).toMatch(/uz_device_messages_rejected_total\{reason="MSG_NOT_JSON"\} \d+/);
    expect(m).toMatch(/uz_device_messages_rejected_total\{reason="too-large"\} 1/);
    await f.server.close();
  });

  it('tracks presence/status; answers block requests; desired is retained for a device that reconnects later (WebSocket too)', async () => {
    const dir = tmp();
    const bundle = await makeBundle(dir, [t.keys.release], { version: '3.0.0', size: 300_000 });
    const up = await t.server.app.inject({ method: 'POST', url: '/api/v1/releases', headers: { ...auth(t.token), 'content-type': 'application/octet-stream' }, payload: readFileSync(bundle) });
    expect(up.statusCode, up.body).toBe(201);
    const rel = up.json().release;
    const bytes = readFileSync(bundle);
    const dev = new SimDevice('late-dev', PW('late-dev'), false, { url: t.urls!.ws!, board: 'rpi4', version: '1.0.0', stepMs: 10, download: 'mqtt', log: () => undefined });
    await dev.connect();
    await until(async () => (await t.server.ctx.storage.getDevice('late-dev'))?.status, 5000, 'status stored');
    expect((await t.server.ctx.storage.getDevice('late-dev'))!.online).toBe(true);
    // blocks by offset, ≤ 128 KiB, eof at the end
    const b1 = await dev.requestBlock(rel.sha256, 0, 128 * 1024);
    expect(b1!.equals(bytes.subarray(0, 128 * 1024))).toBe(true);
    const last = await dev.requestBlock(rel.sha256, 256 * 1024, 128 * 1024);
    expect(last!.equals(bytes.subarray(256 * 1024))).toBe(true);
    expect(await dev.requestBlock('f'.repeat(64), 0, 10, 3000)).toBeNull();
    await dev.disconnect();
    await until(async () => !(await t.server.ctx.storage.getDevice('late-dev'))!.online, 5000, 'offline');
    // a rollout targets it while it is offline: nothing is dispatched until it returns
    const c = await t.server.app.inject({ method: 'POST', url: '/api/v1/rollouts', headers: auth(t.token), payload: { devices: ['late-dev'], releaseId: rel.id, stages: ['100%'], minDevices: 1 } });
    expect(c.statusCode, c.body).toBe(201);
    await sleep(300);
    expect((await t.server.ctx.storage.getDevice('late-dev'))!.desired).toBeNull();
    await dev.connect();
    const done = await until(async () => {
      const s = await t.server.ctx.rollouts.status(c.json().rollout.id);
      return s.rollout.state === 'completed' ? s : null;
    }, 10_000, 'rollout completed');
    expect(done.totals.succeeded).toBe(1);
    expect(dev.version).toBe('3.0.0');
    expect(dev.bytesDownloaded).toBe(64 * 1024);
    await dev.disconnect();
    // days later: a plain client connecting gets the retained desired immediately on subscribe
    const c2 = await connect('late-dev', { password: PW('late-dev') });
    const got = new Promise<Buffer>((r) => c2.once('message', (_t, p) => r(p)));
    await c2.subscribeAsync(topics.desired('late-dev'), { qos: 1 });
    const desired = JSON.parse((await got).toString());
    expect(desired).toMatchObject({ v: 1, deploymentId: c.json().rollout.id, release: { version: '3.0.0', sha256: rel.sha256, size: bytes.length } });
    const r = await fetch(desired.release.bundleUrl, { headers: { range: 'bytes=0-99' } });
    expect(r.status).toBe(206);
    expect(Buffer.from(await r.arrayBuffer()).equals(bytes.subarray(0, 100))).toBe(true);
    await c2.endAsync();
    const h = (await t.server.app.inject({ url: '/api/v1/devices/late-dev', headers: auth(t.token) })).json();
    expect(h.history.map((e: { kind: string }) => e.kind)).toEqual(expect.arrayContaining(['event', 'status']));
  });
});

describe('200 simulated devices, 20% failing health checks', () => {
  it('the rollout pauses at its failure threshold in the canary stage; nobody outside the canary receives the release', async () => {
    const s = await testServer({ config: { mqtt: { deviceMsgPerSec: 50 } } });
    const sim = new FleetSim({ url: s.urls!.mqtt, devices: 200, failHealthPct: 20, stepMs: 20, download: 'none', seed: 'test', prefix: 'fleet' });
    try {
      await sim.start();
      await until(async () => (await s.server.ctx.storage.listDevices()).filter((d) => d.status).length === 200, 20_000, 'all statuses');
      const dir = tmp();
      const up = await s.server.app.inject({ method: 'POST', url: '/api/v1/releases?channel=stable', headers: { ...auth(s.token), 'content-type': 'application/octet-stream' }, payload: readFileSync(await makeBundle(dir, [s.keys.release], { version: '2.0.0' })) });
      expect(up.statusCode).toBe(201);
      const c = await s.server.app.inject({ method: 'POST', url: '/api/v1/rollouts', headers: auth(s.token), payload: { channel: 'stable', stages: ['10%', '50%', '100%'], failureThreshold: { percent: 10 }, minDevices: 10, maxInFlight: 20, successThreshold: 0.95, seed: 'canary-a' } });
      expect(c.statusCode, c.body).toBe(201);
      const id = c.json().rollout.id as string;
      const st = await until(async () => {
        const x = await s.server.ctx.rollouts.status(id);
        return x.rollout.state !== 'running' ? x : null;
      }, 30_000, 'rollout halted');
      expect(st.rollout.state).toBe('paused');
      expect(st.rollout.stageIndex).toBe(0);
      const members = await s.server.ctx.storage.listMembers(id);
      const canary = new Set(members.filter((m) => m.stage === 0).map((m) => m.deviceId));
      expect(canary.size).toBe(20);
      const failingInCanary = sim.devices.filter((d) => canary.has(d.id) && d.failsHealth).length;
      // the threshold logic (not luck) decided: either failures crossed 10% once ≥ 10 decided, or the stage gate held
      expect(st.rollout.reason).toMatch(/failure threshold|success threshold/);
      // A fixed seed: the canary holds 5 of the 40 failing devices (25%). With the default seed (the rollout id)
      // a canary of 20 has at most one failing device about 7% of the time, and then passes the stage gate
      // (19/20 = 0.95) legitimately — which made this test flaky.
      expect(failingInCanary).toBeGreaterThanOrEqual(3);
      await sleep(500);
      const receivers = sim.devices.filter((d) => d.received.length > 0).map((d) => d.id);
      expect(receivers.length).toBeGreaterThan(0);
      expect(receivers.every((id2) => canary.has(id2))).toBe(true);
      expect(members.filter((m) => m.stage > 0).every((m) => m.state === 'pending')).toBe(true);
      const failed = members.filter((m) => m.state === 'failed');
      expect(failed.every((m) => sim.devices.find((d) => d.id === m.deviceId)!.failsHealth)).toBe(true);
      expect(failed[0]!.error).toMatch(/HEALTH_CHECK_FAILED/);
      const metrics = (await s.server.app.inject({ url: '/metrics' })).body;
      expect(metrics).toMatch(/uz_devices\{presence="online"\} 200/);
      expect(metrics).toMatch(new RegExp(`uz_rollout_stage\\{rollout="${id}",state="paused"\\} 0`));
    } finally {
      await sim.stop();
      await s.server.close();
    }
  }, 90_000);
});
