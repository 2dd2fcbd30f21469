// Device enrollment on the host, with the agent's own pieces (updater/enroll.ts, updater/device/boot-config.ts,
// updater/agent.ts) against the real update server and its embedded Aedes broker with the mutual-TLS listener:
// a provisioned card with an enroll token makes its key, asks over the enrollment session, waits while pending,
// stores its certificate once approved and then connects with mTLS; rejection, a reused token, the HTTPS
// fallback (external-broker fleets) and revocation at the broker.
import { X509Certificate } from 'node:crypto';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceIdFromCertificate, initCaDir, issueServerCertificate, loadCaDir } from '../../firmware/ca/index.js';
import { serializeDeviceConfig, type DeviceConfigInput } from '../../firmware/provision/config.js';
import { MqttAgent } from '../../updater/agent.js';
import { enrollAttempt, enrollDevice, existingEnrollment, loadTlsMaterial, type EnrollOptions } from '../../updater/enroll.js';
import { resolveBootConfig, type BootConfigPaths } from '../../updater/device/boot-config.js';
import type { StateRecord } from '../../updater/state/store.js';
import { auth, testServer, tmp, type TestServer } from '../server/helpers.js';

let t: TestServer;
let caDir: string;
let caPem: string;
const stops: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  caDir = join(tmp('uz-home-enroll-'), 'ca');
  await initCaDir({ out: caDir, name: 'home-test' });
  caPem = readFileSync(join(caDir, 'ca.crt'), 'utf8');
  t = await testServer({ config: { caDir, mqtt: { tlsPort: 0, autoRegister: false } } });
}, 120_000);
afterAll(async () => {
  for (const s of stops.reverse()) await s().catch(() => {});
  await t.server.close();
});

const api = async <T = Record<string, unknown>>(method: string, url: string, payload?: unknown): Promise<{ status: number; body: T }> => {
  const r = await t.server.app.inject({ method: method as 'GET', url, headers: auth(t.token), ...(payload !== undefined ? { payload: payload as object } : {}) });
  return { status: r.statusCode, body: r.json() as T };
};
const newToken = async (body: Record<string, unknown> = {}): Promise<string> => {
  const r = await api<{ token: string }>('POST', '/api/v1/enrollment-tokens', body);
  expect(r.status).toBe(201);
  return r.body.token;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until<T>(fn: () => T | Promise<T>, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** A device's filesystem in a temp dir: boot partition (uz-device.json), data partition, /run. */
function deviceDirs(name: string, dev: DeviceConfigInput | string): BootConfigPaths {
  const root = tmp(`uz-home-${name}-`);
  for (const d of ['boot', 'data/uz', 'run']) mkdirSync(join(root, d), { recursive: true });
  writeFileSync(join(root, 'boot/uz-device.json'), typeof dev === 'string' ? dev : serializeDeviceConfig(dev));
  return {
    agentJson: [join(root, 'data/uz/agent.json'), join(root, 'etc-agent.json')],
    deviceFile: join(root, 'boot/uz-device.json'),
    lastGood: join(root, 'data/uz/device-last-good.json'),
    tlsDir: join(root, 'data/uz/tls'),
    runDir: join(root, 'run'),
    trustRoot: join(root, 'root.json'),
  };
}

const provisioned = (deviceName: string, enrollToken: string, o: { mqttUrl?: string; httpUrl?: string } = {}): DeviceConfigInput => ({
  formatVersion: 1,
  deviceName,
  server: { httpUrl: o.httpUrl ?? t.urls!.http, mqttUrl: o.mqttUrl ?? t.urls!.mqtts!, caCert: caPem },
  enrollToken,
});

/** Runs enrollment in the background with fast retries; collects the console lines. */
function startEnroll(plan: Omit<EnrollOptions, 'log'>) {
  const lines: string[] = [];
  const ac = new AbortController();
  const done = enrollDevice({ ...plan, keyBits: 2048, retry: { baseMs: 100, capMs: 400 }, attemptTimeoutMs: 10_000, log: (l) => lines.push(l), signal: ac.signal });
  stops.push(async () => (ac.abort(), done.catch(() => null)));
  return { lines, done, abort: () => ac.abort() };
}

const record: StateRecord = { v: 1, state: 'idle', update: null, committed: { slot: 'A', version: '1.0.0', rollbackCounter: 1 }, floor: 1, done: null, lastError: null, savedAt: 0 };

describe('device enrollment (agent side) against the real server and broker', () => {
  let agent: MqttAgent;
  let firstPlan: Omit<EnrollOptions, 'log'>;
  let firstPaths: BootConfigPaths;
  const agentLogs: string[] = [];
  const ID = 'home-node-01';

  it('token + CSR over the enrollment session: pending until an operator approves, then the certificate is stored and the device connects with mTLS', async () => {
    const token = await newToken();
    const paths = deviceDirs('a', provisioned(ID, token));
    firstPaths = paths;
    const sayLines: string[] = [];
    const boot = await resolveBootConfig(paths, (l) => sayLines.push(l));
    expect(boot.source).toBe('uz-device.json');
    expect(boot.enroll).toMatchObject({ deviceId: ID, brokerUrl: t.urls!.mqtts, tlsDir: paths.tlsDir, caPem });
    // after enrollment: the client certificate from the data partition, the provisioned CA; the server is http:// (lab)
    expect(boot.config).toMatchObject({ deviceId: ID, brokerUrl: t.urls!.mqtts, devMode: true, tls: { cert: join(paths.tlsDir, 'device.crt'), key: join(paths.tlsDir, 'device.key'), ca: join(paths.runDir, 'fleet-ca.crt') } });
    // the remembered provisioning has no secrets
    expect(readFileSync(paths.lastGood, 'utf8')).not.toContain(token);

    const seen: string[] = [];
    t.server.ctx.broker!.onMessage((id, _topic, payload) => {
      if (id === ID) seen.push(payload.toString('utf8'));
    });
    firstPlan = boot.enroll!;
    const e = startEnroll(boot.enroll!);
    await until(() => e.lines.some((l) => l.startsWith('UZ-ENROLL pending code=ENROLL_PENDING')), 20_000, 'pending');
    expect(e.lines[0]).toMatch(new RegExp(`^UZ-ENROLL requested device=${ID} key=new via=mqtts$`));
    const pending = await api<{ devices: Array<{ id: string }> }>('GET', '/api/v1/devices?enrollment=pending');
    expect(pending.body.devices.map((d) => d.id)).toContain(ID);
    // the key was made on the device: 0600, and it never appears in anything the server received
    const keyPem = readFileSync(join(paths.tlsDir, 'device.key'), 'utf8');
    expect(statSync(join(paths.tlsDir, 'device.key')).mode & 0o777).toBe(0o600);
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.join('\n')).toContain('CERTIFICATE REQUEST');
    const keyBody = keyPem.split('\n').slice(1, -2).join('');
    for (const p of seen) {
      expect(p).not.toContain('PRIVATE KEY');
      expect(p.replace(/\\n/g, '')).not.toContain(keyBody.slice(0, 64));
    }

    expect((await api('POST', `/api/v1/devices/${ID}/approve`, {})).status).toBe(200);
    const tls = await e.done;
    expect(tls).toEqual({ cert: join(paths.tlsDir, 'device.crt'), key: join(paths.tlsDir, 'device.key'), ca: join(paths.tlsDir, 'ca.crt') });
    expect(e.lines.at(-1)).toMatch(new RegExp(`^UZ-ENROLL enrolled device=${ID} serial=[0-9a-f]+ not_after=\\S+ via=mqtt$`));
    const cert = new X509Certificate(readFileSync(tls!.cert));
    expect(deviceIdFromCertificate(cert)).toBe(ID);
    expect(cert.checkIssued(new X509Certificate(caPem))).toBe(true);
    expect(readFileSync(tls!.ca!, 'utf8')).toBe(caPem);
    // secrets never on the console
    const secret = token.slice('uze_01234567_'.length);
    for (const l of [...e.lines, ...sayLines]) {
      expect(l).not.toContain(secret);
      expect(l).not.toContain('PRIVATE KEY');
    }

    // "reboot": the stored certificate is found, no enrollment this time, the key is the same
    const again = await resolveBootConfig(paths, () => {});
    expect(again.enroll).toBeUndefined();
    expect(again.config?.tls).toEqual(boot.config!.tls);
    expect(await existingEnrollment(paths.tlsDir, ID)).not.toBeNull();
    expect(readFileSync(join(paths.tlsDir, 'device.key'), 'utf8')).toBe(keyPem);

    // the device session: mutual TLS with the new certificate; the server shows it online with its version
    agent = new MqttAgent({
      config: again.config!,
      log: (l) => agentLogs.push(l),
      tls: await loadTlsMaterial(again.config!.tls!),
      statusExtra: async () => ({ board: 'rpi4', version: '1.0.0', workload: { name: 'znnd', version: '0.0.7', healthy: true, detail: 'ok', restarts: 0 }, bootControl: { primary: 'A', tryPending: null, bad: [] } }),
      reconnect: { baseMs: 50, capMs: 300 },
    });
    agent.attach({ offer: async () => 'started' as const, record, bootedSlot: 'A' as const });
    agent.start();
    stops.push(() => agent.stop());
    await until(() => agent.connected, 10_000, 'mTLS connect');
    const dev = await until(async () => {
      const r = await api<{ devices: Array<{ id: string; online: boolean; enrollment: string; status: { version: string } | null }> }>('GET', '/api/v1/devices');
      const d = r.body.devices.find((x) => x.id === ID);
      return d?.online && d.status ? d : null;
    }, 10_000, 'device online with status');
    expect(dev).toMatchObject({ enrollment: 'approved', status: { version: '1.0.0' } });
  });

  it('a revoked device is refused at the broker: dropped, its reconnects refused, offline at the server', async () => {
    const r = await api<{ device: { enrollment: string }; serial: string }>('POST', `/api/v1/devices/${ID}/revoke`, { reason: 'keyCompromise' });
    expect(r.status).toBe(200);
    expect(r.body.device.enrollment).toBe('revoked');
    await until(() => agent.stats.refused >= 2, 10_000, 'refused reconnects');
    expect(agent.connected).toBe(false);
    expect(agentLogs.some((l) => /^UZ-MQTT refused rc=5 broker=mqtts:\/\/\S+ detail="Connection refused: Not authorized"$/.test(l))).toBe(true);
    const d = await api<{ devices: Array<{ id: string; online: boolean; enrollment: string }> }>('GET', '/api/v1/devices');
    expect(d.body.devices.find((x) => x.id === ID)).toMatchObject({ online: false, enrollment: 'revoked' });
    // asking for a new certificate with its (bound) token: the session opens, the answer is ENROLL_REJECTED
    const { createCsr, generateRsaKeyPem } = await import('../../firmware/ca/index.js');
    const a = await enrollAttempt({ ...firstPlan, log: () => {}, attemptTimeoutMs: 10_000 }, createCsr(ID, await generateRsaKeyPem(2048)));
    expect(a).toMatchObject({ ok: false, answered: true, code: 'ENROLL_REJECTED' });
    await agent.stop();
  });

  it('re-admitting a revoked device: the operator approves it again and puts a NEW token on the card; it enrolls with a new key', async () => {
    const paths = firstPaths;
    const oldKey = readFileSync(join(paths.tlsDir, 'device.key'), 'utf8');
    const oldCert = readFileSync(join(paths.tlsDir, 'device.crt'), 'utf8');
    expect((await api('POST', `/api/v1/devices/${ID}/approve`, {})).status).toBe(200);
    // the same card (old token): the device keeps its certificate, which stays refused (not current any more)
    expect((await resolveBootConfig(paths, () => {})).enroll).toBeUndefined();
    const token = await newToken();
    writeFileSync(paths.deviceFile, serializeDeviceConfig(provisioned(ID, token)));
    const boot = await resolveBootConfig(paths, () => {});
    expect(boot.enroll).toMatchObject({ deviceId: ID });
    const e = startEnroll(boot.enroll!);
    const tls = await e.done;
    expect(e.lines[0]).toBe(`UZ-ENROLL requested device=${ID} key=new renew=true via=mqtts`);
    expect(e.lines.at(-1)).toMatch(/^UZ-ENROLL enrolled /);
    expect(tls).toEqual({ cert: join(paths.tlsDir, 'device.crt'), key: join(paths.tlsDir, 'device.key'), ca: join(paths.tlsDir, 'ca.crt') });
    const newKey = readFileSync(tls!.key, 'utf8');
    expect(newKey).not.toBe(oldKey);
    expect(statSync(tls!.key).mode & 0o777).toBe(0o600);
    expect(readFileSync(tls!.cert, 'utf8')).not.toBe(oldCert);
    expect(await existingEnrollment(paths.tlsDir, ID, { token })).not.toBeNull();
    // and it connects again
    const back = new MqttAgent({
      config: boot.config!,
      log: () => {},
      tls: await loadTlsMaterial(boot.config!.tls!),
      statusExtra: async () => ({ board: 'rpi4', version: '1.0.1', workload: { name: 'znnd', version: '0.0.7', healthy: true, detail: 'ok', restarts: 0 }, bootControl: { primary: 'A', tryPending: null, bad: [] } }),
      reconnect: { baseMs: 50, capMs: 300 },
    });
    back.attach({ offer: async () => 'started' as const, record, bootedSlot: 'A' as const });
    back.start();
    stops.push(() => back.stop());
    await until(() => back.connected, 10_000, 'mTLS connect with the renewed certificate');
    await back.stop();
  });

  it('an operator rejects a pending device: the device says so and keeps asking, slowly', async () => {
    const token = await newToken();
    const paths = deviceDirs('b', provisioned('home-node-02', token));
    const boot = await resolveBootConfig(paths, () => {});
    const e = startEnroll(boot.enroll!);
    await until(() => e.lines.some((l) => l.startsWith('UZ-ENROLL pending')), 20_000, 'pending');
    expect((await api('POST', '/api/v1/devices/home-node-02/reject', {})).status).toBe(200);
    await until(() => e.lines.some((l) => /^UZ-ENROLL rejected code=ENROLL_REJECTED retry_in_ms=\d+$/.test(l)), 20_000, 'rejected');
    e.abort();
    expect(await e.done).toBeNull();
    expect(await existingEnrollment(paths.tlsDir, 'home-node-02')).toBeNull();
  });

  it('a token already used by one device is refused for another (the broker does not even open the session)', async () => {
    const token = await newToken({ preApproved: true });
    const first = deviceDirs('c', provisioned('home-node-03', token));
    const e1 = startEnroll((await resolveBootConfig(first, () => {})).enroll!);
    expect(await e1.done).not.toBeNull();
    expect(e1.lines.some((l) => l.startsWith('UZ-ENROLL pending'))).toBe(false); // pre-approved: at once
    const other = deviceDirs('d', provisioned('home-node-04', token));
    const e2 = startEnroll((await resolveBootConfig(other, () => {})).enroll!);
    await until(() => e2.lines.some((l) => /^UZ-ENROLL rejected code=ENROLL_TOKEN_INVALID detail="broker refused the enrollment session/.test(l)), 20_000, 'token refused');
    e2.abort();
    expect(await e2.done).toBeNull();
    expect(e2.lines.join('\n')).not.toContain(token.slice('uze_01234567_'.length));
    const list = await api<{ devices: Array<{ id: string }> }>('GET', '/api/v1/devices');
    expect(list.body.devices.map((d) => d.id)).not.toContain('home-node-04');
  });

  it('no answer over MQTT (external broker): HTTPS enrollment when the server is https://, never the token over plain http', async () => {
    // An HTTPS front for the server's API (as a reverse proxy would be), with a certificate from the fleet CA.
    const ca = await loadCaDir(caDir);
    const srvCert = await issueServerCertificate(ca, { hosts: ['127.0.0.1'] });
    let httpsHits = 0;
    const front: HttpsServer = createHttpsServer({ key: srvCert.keyPem, cert: srvCert.certPem }, (req, res) => {
      httpsHits++;
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        void t.server.app.inject({ method: req.method as 'POST', url: req.url!, headers: { 'content-type': 'application/json' }, payload: Buffer.concat(chunks) }).then((r) => {
          res.writeHead(r.statusCode, { 'content-type': 'application/json' });
          res.end(r.body);
        });
      });
    });
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', () => r()));
    stops.push(() => new Promise((r) => front.close(r)));
    const httpsUrl = `https://127.0.0.1:${(front.address() as { port: number }).port}`;
    let plainHits = 0;
    const plain: HttpServer = createHttpServer((_q, s) => (plainHits++, s.end('{}')));
    await new Promise<void>((r) => plain.listen(0, '127.0.0.1', () => r()));
    stops.push(() => new Promise((r) => plain.close(r)));
    const plainUrl = `http://127.0.0.1:${(plain.address() as { port: number }).port}`;
    const deadBroker = 'mqtts://127.0.0.1:1'; // nothing listens: no enrollment session possible

    const token = await newToken({ preApproved: true });
    // plain http server: the token is not sent there; the attempt fails as unreachable
    const p1 = deviceDirs('e', provisioned('home-node-05', token, { mqttUrl: deadBroker, httpUrl: plainUrl }));
    const b1 = await resolveBootConfig(p1, () => {});
    const { csrPem } = await import('../../firmware/ca/device.js').then((m) => m.createDeviceKeyAndCsr('home-node-05', p1.tlsDir, { bits: 2048 }));
    const a1 = await enrollAttempt({ ...b1.enroll!, log: () => {}, attemptTimeoutMs: 5000 }, csrPem);
    expect(a1).toMatchObject({ ok: false, answered: false, code: 'ENROLL_UNREACHABLE', via: 'mqtt' });
    expect(plainHits).toBe(0);
    // https server: enrolled over POST /api/v1/enroll
    const p2 = deviceDirs('f', provisioned('home-node-05', token, { mqttUrl: deadBroker, httpUrl: httpsUrl }));
    const e = startEnroll((await resolveBootConfig(p2, () => {})).enroll!);
    const tls = await e.done;
    expect(tls).not.toBeNull();
    expect(httpsHits).toBeGreaterThan(0);
    expect(e.lines.at(-1)).toMatch(/^UZ-ENROLL enrolled device=home-node-05 serial=[0-9a-f]+ not_after=\S+ via=https$/);
    expect(deviceIdFromCertificate(readFileSync(tls!.cert, 'utf8'))).toBe('home-node-05');
  });
});
