// Certificate enrollment end to end against the embedded broker's mutual-TLS listener (fleet CA from
// firmware/ca/): one-time tokens, pending → approve / reject, pre-approval, the certificate session, revocation
// (CRL rewritten, connection dropped, refused from then on), HTTP enrollment, and the CLI.
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCa, createCsr, createDeviceKeyAndCsr, deviceIdFromCertificate, generateRsaKeyPem, initCaDir, isSerialRevoked, issueDeviceCertificate, loadCaDir } from '../../firmware/ca/index.js';
import { decode, encode, topics, type DeviceResponse } from '../../lib/protocol.js';
import { sleep, statusMsg, until } from './broker-contract.js';
import { auth, testServer, tmp, type TestServer } from './helpers.js';

let t: TestServer;
let caDir: string;
let caPem: string;
const clients: MqttClient[] = [];

beforeAll(async () => {
  caDir = join(tmp('uz-enroll-'), 'ca');
  await initCaDir({ out: caDir, name: 'enroll-test' });
  caPem = readFileSync(join(caDir, 'ca.crt'), 'utf8');
  t = await testServer({ config: { caDir, mqtt: { tlsPort: 0, autoRegister: false } } });
}, 60_000);
afterAll(async () => {
  for (const c of clients) c.end(true);
  await t.server.close();
});

function open(o: IClientOptions): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(t.urls!.mqtts!, { reconnectPeriod: 0, connectTimeout: 5000, ca: caPem, ...o });
    c.once('connect', () => (clients.push(c), resolve(c)));
    c.once('error', (e) => (c.end(true), reject(e)));
    c.once('close', () => reject(new Error('closed before CONNACK')));
  });
}

/** What a device does: connect without a certificate (password = token), send enroll, wait for the response. */
async function enrollOverMqtt(id: string, token: string, csrPem: string): Promise<DeviceResponse> {
  const c = await open({ clientId: id, username: id, password: token });
  const got = new Promise<DeviceResponse>((res) => c.on('message', (_t, p) => {
    const r = decode('response', p);
    if (r.ok) res(r.value);
  }));
  await c.subscribeAsync(topics.response(id), { qos: 1 });
  await c.publishAsync(topics.request(id), encode('request', { v: 1, txid: `enr${Date.now().toString(36)}`, type: 'enroll', token, csrPem }), { qos: 1 });
  const r = await Promise.race([got, sleep(10_000).then(() => { throw new Error('no enroll response'); })]);
  await c.endAsync();
  return r;
}

const api = (method: string, url: string, payload?: unknown) => t.server.app.inject({ method: method as 'GET', url, headers: auth(t.token), ...(payload !== undefined ? { payload: payload as object } : {}) });
const newToken = async (body: Record<string, unknown> = {}): Promise<string> => {
  const r = await api('POST', '/api/v1/enrollment-tokens', body);
  expect(r.statusCode, r.body).toBe(201);
  expect(r.json().token).toMatch(/^uze_[0-9a-f]{8}_/);
  return r.json().token as string;
};

describe('certificate enrollment (embedded broker, mutual TLS)', () => {
  let cert1: { key: string; cert: string; serial: string };

  it('pending → approved: a token + CSR over MQTT gives a certificate from the fleet CA; the certificate connects as the device', async () => {
    const token = await newToken();
    // tokens are stored hashed
    const stored = await t.server.ctx.storage.listEnrollTokens();
    expect(JSON.stringify(stored)).not.toContain(token.split('_')[2]);
    const keyDir = tmp('uz-devkey-');
    const { csrPem, keyPath } = await createDeviceKeyAndCsr('enr-dev-1', keyDir, { bits: 2048 });
    // not approved yet
    let r = await enrollOverMqtt('enr-dev-1', token, csrPem);
    expect(r).toMatchObject({ status: 'error', error: { code: 'ENROLL_PENDING' } });
    const pend = (await api('GET', '/api/v1/devices?enrollment=pending')).json().devices.map((d: { id: string }) => d.id);
    expect(pend).toEqual(['enr-dev-1']);
    // the enrollment session may do nothing else: a block request is answered ENROLL_ONLY, a status publish disconnects
    const c = await open({ clientId: 'enr-dev-1', username: 'enr-dev-1', password: token });
    const resp = new Promise<DeviceResponse>((res) => c.on('message', (_t, p) => { const x = decode('response', p); if (x.ok) res(x.value); }));
    await c.subscribeAsync(topics.response('enr-dev-1'), { qos: 1 });
    expect(await new Promise<number>((res) => c.subscribe(topics.desired('enr-dev-1'), { qos: 1 }, (err, g) => res(err ? 128 : g![0]!.qos)))).toBe(128);
    await c.publishAsync(topics.request('enr-dev-1'), encode('request', { v: 1, txid: 'blk1', type: 'block', artifact: 'a'.repeat(64), offset: 0, length: 10 }), { qos: 1 });
    expect(await resp).toMatchObject({ txid: 'blk1', status: 'error', error: { code: 'ENROLL_ONLY' } });
    const closed = new Promise<void>((res) => c.once('close', () => res()));
    c.publish(topics.status('enr-dev-1'), statusMsg('enr-dev-1'), { qos: 1 });
    await closed;
    // the token is bound to enr-dev-1 now: another device cannot use it, not even to connect
    await expect(open({ clientId: 'enr-dev-9', username: 'enr-dev-9', password: token })).rejects.toThrow(/Bad username or password|Not authorized|closed/i);
    // an operator approves; the device retries with the same token and gets its certificate
    expect((await api('POST', '/api/v1/devices/enr-dev-1/approve', {})).json().device.enrollment).toBe('approved');
    r = await enrollOverMqtt('enr-dev-1', token, csrPem);
    expect(r.status, JSON.stringify(r.error)).toBe('ok');
    if (r.data?.type !== 'enroll') throw new Error('no certificate');
    expect(r.data.caPem).toBe(caPem);
    const x = new X509Certificate(r.data.certPem);
    expect(x.verify(new X509Certificate(caPem).publicKey)).toBe(true);
    expect(deviceIdFromCertificate(x)).toBe('enr-dev-1');
    cert1 = { key: readFileSync(keyPath, 'utf8'), cert: r.data.certPem, serial: (await t.server.ctx.storage.getDevice('enr-dev-1'))!.certSerial! };
    expect(cert1.serial).toMatch(/^[0-9a-f]+$/);
    // the certificate session: a normal device (status stored, its desired state delivered)
    const d = await open({ clientId: 'enr-dev-1', cert: cert1.cert, key: cert1.key });
    const desired = new Promise<string>((res) => d.on('message', (topic) => res(topic)));
    expect((await d.subscribeAsync(topics.desired('enr-dev-1'), { qos: 1 }))[0]!.qos).toBe(1);
    await d.publishAsync(topics.status('enr-dev-1'), statusMsg('enr-dev-1'), { qos: 1 });
    await until(async () => (await t.server.ctx.storage.getDevice('enr-dev-1'))?.online, 5000, 'online');
    t.server.ctx.devices.publishDesired('enr-dev-1', { v: 1, txid: 'hello', deploymentId: null, issuedAt: 1, release: null });
    expect(await desired).toBe(topics.desired('enr-dev-1'));
    // the certificate names the device: it cannot connect under another client id
    await expect(open({ clientId: 'enr-dev-2', cert: cert1.cert, key: cert1.key })).rejects.toThrow();
    await d.endAsync();
    const audit = (await api('GET', '/api/v1/audit?limit=50')).json().audit.map((a: { action: string }) => a.action);
    expect(audit).toEqual(expect.arrayContaining(['enroll-token.create', 'device.enroll-request', 'device.approve', 'device.enroll']));
  });

  it('pre-approved tokens and pre-approved device ids enroll at once; expired, unknown and rejected do not', async () => {
    const key = await generateRsaKeyPem(2048);
    const pre = await newToken({ deviceId: 'enr-dev-3', preApproved: true });
    expect((await enrollOverMqtt('enr-dev-3', pre, createCsr('enr-dev-3', key))).status).toBe('ok');
    // an operator pre-approves an id before the device ever connected; a plain token then suffices
    expect((await api('POST', '/api/v1/devices/enr-dev-4/approve', {})).json().device).toMatchObject({ id: 'enr-dev-4', enrollment: 'approved' });
    expect((await enrollOverMqtt('enr-dev-4', await newToken(), createCsr('enr-dev-4', key))).status).toBe('ok');
    // a CSR for another id is refused (the certificate would name someone else)
    const tk = await newToken({ preApproved: true });
    expect(await enrollOverMqtt('enr-dev-6', tk, createCsr('enr-dev-7', key))).toMatchObject({ status: 'error', error: { code: 'ENROLL_CSR_INVALID' } });
    // expired before use: cannot even connect
    const short = await newToken({ ttlSec: 1 });
    await sleep(1100);
    await expect(open({ clientId: 'enr-dev-8', username: 'enr-dev-8', password: short })).rejects.toThrow();
    // no certificate and no (valid) token: refused
    await expect(open({ clientId: 'enr-dev-8', username: 'enr-dev-8', password: 'uze_00000000_' + 'x'.repeat(43) })).rejects.toThrow();
    await expect(open({ clientId: 'enr-dev-8' })).rejects.toThrow();
    // pending → rejected: the device's retry is refused
    const rt = await newToken();
    expect((await enrollOverMqtt('enr-dev-5', rt, createCsr('enr-dev-5', key))).error?.code).toBe('ENROLL_PENDING');
    expect((await api('POST', '/api/v1/devices/enr-dev-5/reject', {})).json().device.enrollment).toBe('rejected');
    expect((await enrollOverMqtt('enr-dev-5', rt, createCsr('enr-dev-5', key))).error?.code).toBe('ENROLL_REJECTED');
    // a certificate from a foreign CA, and a fleet certificate that is not the device's current one, are refused
    const foreign = await createCa({ name: 'foreign' });
    await expect(open({ clientId: 'enr-dev-3', cert: issueDeviceCertificate(foreign, createCsr('enr-dev-3', key), 'enr-dev-3').certPem, key })).rejects.toThrow();
    const stale = issueDeviceCertificate(await loadCaDir(caDir), createCsr('enr-dev-3', key), 'enr-dev-3'); // valid chain, never recorded
    await expect(open({ clientId: 'enr-dev-3', cert: stale.certPem, key })).rejects.toThrow(/Not authorized|closed/i);
  });

  it('revocation: the CRL gets the serial, the connected device is dropped and refused from then on', async () => {
    const d = await open({ clientId: 'enr-dev-1', cert: cert1.cert, key: cert1.key });
    const dropped = new Promise<void>((res) => d.once('close', () => res()));
    const r = await api('POST', '/api/v1/devices/enr-dev-1/revoke', { reason: 'keyCompromise' });
    expect(r.statusCode, r.body).toBe(200);
    expect(r.json()).toMatchObject({ device: { enrollment: 'revoked' }, serial: cert1.serial });
    expect(r.json().crlNumber).toBeGreaterThan(1);
    await dropped;
    expect(isSerialRevoked(readFileSync(join(caDir, 'crl.pem'), 'utf8'), cert1.serial)).toBe(true);
    const err = await open({ clientId: 'enr-dev-1', cert: cert1.cert, key: cert1.key }).then(() => 'connected', (e: Error) => e.message);
    expect(err).not.toBe('connected');
    // the CRL alone refuses it: even with the database row forced back to approved with that serial
    await t.server.ctx.storage.setEnrollment('enr-dev-1', { state: 'approved', certSerial: cert1.serial });
    expect(await open({ clientId: 'enr-dev-1', cert: cert1.cert, key: cert1.key }).then(() => 'connected', (e: Error) => e.message)).not.toBe('connected');
    await t.server.ctx.storage.setEnrollment('enr-dev-1', { state: 'revoked' });
    expect((await t.server.app.inject({ url: '/metrics' })).body).toMatch(/uz_device_messages_rejected_total\{reason="auth"\} [1-9]/);
    // its old token cannot bring it back
    expect((await api('POST', '/api/v1/devices/enr-dev-1/reject', {})).statusCode).toBe(200);
  });

  it('HTTP enrollment (for external brokers): POST /api/v1/enroll follows the same rules', async () => {
    const key = await generateRsaKeyPem(2048);
    const tk = await newToken({ preApproved: true });
    const ok = await t.server.app.inject({ method: 'POST', url: '/api/v1/enroll', payload: { deviceId: 'enr-http-1', token: tk, csrPem: createCsr('enr-http-1', key) } });
    expect(ok.statusCode, ok.body).toBe(200);
    expect(deviceIdFromCertificate(ok.json().certPem)).toBe('enr-http-1');
    const again = await t.server.app.inject({ method: 'POST', url: '/api/v1/enroll', payload: { deviceId: 'enr-http-2', token: tk, csrPem: createCsr('enr-http-2', key) } });
    expect(again.statusCode).toBe(401);
    expect(again.json().error.code).toBe('ENROLL_TOKEN_INVALID');
  });

  it('CLI: uz devices token create / pending / approve / revoke', async () => {
    const uz = async (...args: string[]) => {
      const r = await promisify(execFile)(process.execPath, [fileURLToPath(new URL('../../bin/uz.js', import.meta.url)), ...args], { env: { ...process.env, UZ_API_URL: t.urls!.http, UZ_API_TOKEN: t.token }, timeout: 60_000 });
      return r.stdout;
    };
    const created = JSON.parse(await uz('devices', 'token', 'create', '--device', 'enr-cli-1', '--json'));
    expect(created).toMatchObject({ deviceId: 'enr-cli-1', preApproved: false });
    const key = await generateRsaKeyPem(2048);
    expect((await enrollOverMqtt('enr-cli-1', created.token, createCsr('enr-cli-1', key))).error?.code).toBe('ENROLL_PENDING');
    expect(await uz('devices', 'pending')).toContain('enr-cli-1');
    expect(await uz('devices', 'approve', 'enr-cli-1')).toContain('enr-cli-1: approved');
    expect((await enrollOverMqtt('enr-cli-1', created.token, createCsr('enr-cli-1', key))).status).toBe('ok');
    expect(await uz('devices', 'revoke', 'enr-cli-1')).toMatch(/enr-cli-1: revoked \(certificate [0-9a-f]+ revoked, CRL #\d+\)/);
  }, 60_000);
});
