/**
 * Device side of certificate enrollment (server side: server/enrollment.ts, docs/server.md "Enrollment").
 *
 * A card provisioned with an `enrollToken` and an mqtts:// broker, and without a certificate on the data
 * partition yet, enrolls before its first device session:
 *   1. the key pair is made ON the device (`createDeviceKeyAndCsr`: RSA, PKCS#8, 0600 in /data/uz/tls; reused
 *      if it already exists, e.g. after a reboot while pending) — the private key never leaves the device;
 *   2. over its own outbound connection it opens an enrollment session on the broker's TLS listener (no client
 *      certificate; username = device id, password = the token), subscribes to uz/v1/dev/<id>/res and sends
 *      `{type:"enroll", token, csrPem}` on uz/v1/dev/<id>/req. A fleet whose broker cannot take such sessions
 *      (external Mosquitto) answers over `POST <server>/api/v1/enroll` instead; that fallback is used only for an
 *      https:// server, because the token is a secret and never travels in clear text;
 *   3. the answer is checked (the certificate matches our key, names our id, chains to the returned fleet CA)
 *      and stored durably: device.crt and the fleet CA as ca.crt;
 *   4. pending approval, rejection or an unreachable server: retried with capped, jittered backoff.
 *
 * Console lines (docs/troubleshooting.md): `UZ-ENROLL requested|pending|rejected|failed|enrolled code=…`. The
 * token and the key are never logged; neither are server messages verbatim beyond their code.
 */
import { X509Certificate, createHash, createPrivateKey } from 'node:crypto';
import { readFile, rename, stat } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { rootCertificates } from 'node:tls';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { randomBytes } from 'node:crypto';
import { DEVICE_KEY_FILE, deviceIdFromCertificate } from '../firmware/ca/identity.js';
import { decode, encode, topics } from '../lib/protocol.js';
import { writeFileDurable } from './fsutil.js';
import { backoffDelay, sleep } from './state/retry.js';

export const DEVICE_CERT_FILE = 'device.crt';
export const FLEET_CA_FILE = 'ca.crt';
/** {v, deviceId, tokenSha256, serial, enrolledAt}: which token the certificate was obtained with. */
export const ENROLLMENT_RECORD = 'enrollment.json';
/** A renewal (new token on the card) makes its new key here; it replaces the old one only with a certificate. */
const RENEW_DIR = 'next';

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

export interface TlsPaths {
  cert: string;
  key: string;
  /** The fleet CA the server answered with at enrollment. */
  ca?: string;
}

/** Answer to one enrollment attempt. `answered: false` = no word from the server (network, TLS, refused). */
export type EnrollAnswer =
  | { ok: true; certPem: string; caPem: string; via: 'mqtt' | 'https' }
  | { ok: false; answered: boolean; code: string; detail: string; via: 'mqtt' | 'https' };

export interface EnrollOptions {
  deviceId: string;
  /** One-time enrollment token (secret: never logged). */
  token: string;
  /** mqtts://host:port (the broker's TLS listener). */
  brokerUrl: string;
  /** Update server base URL; used for HTTP enrollment only if it is https://. */
  serverUrl: string;
  /** PEM the device trusts for the broker and server (uz-device.json server.caCert); default: system roots. */
  caPem?: string;
  /** /data/uz/tls on the device. */
  tlsDir: string;
  log: (line: string) => void;
  keyBits?: number;
  /** Between attempts (full jitter); default 2 s doubling up to 60 s. */
  retry?: { baseMs: number; capMs: number };
  random?: () => number;
  /** Per attempt: connect + answer. Default 30 s. */
  attemptTimeoutMs?: number;
  signal?: AbortSignal;
  connect?: (url: string, opts: IClientOptions) => MqttClient;
}

/** One console-safe token of text: no quotes, no newlines, bounded. */
function clip(s: string, n = 160): string {
  return JSON.stringify(s.replace(/[\r\n\t]+/g, ' ').slice(0, n));
}

/**
 * The certificate already on the data partition, if it is usable: readable, for this device id, matching the
 * key next to it and not expired, and — when `token` is given — obtained with that token (a NEW token on the
 * card is how an operator makes a device enroll again, e.g. after a revocation). Anything else: enroll.
 */
export async function existingEnrollment(tlsDir: string, deviceId: string, o: { token?: string; now?: number } = {}): Promise<TlsPaths | null> {
  const cert = join(tlsDir, DEVICE_CERT_FILE);
  const key = join(tlsDir, DEVICE_KEY_FILE);
  const ca = join(tlsDir, FLEET_CA_FILE);
  try {
    const x = new X509Certificate(await readFile(cert));
    if (deviceIdFromCertificate(x) !== deviceId) return null;
    if (!x.checkPrivateKey(createPrivateKey(await readFile(key)))) return null;
    if (Date.parse(x.validTo) <= (o.now ?? Date.now())) return null;
    if (o.token !== undefined) {
      const rec = await readFile(join(tlsDir, ENROLLMENT_RECORD), 'utf8').then((t) => JSON.parse(t) as { tokenSha256?: unknown }, () => null);
      if (rec && rec.tokenSha256 !== sha256(o.token)) return null;
    }
    const hasCa = await stat(ca).then((s) => s.isFile(), () => false);
    return { cert, key, ...(hasCa ? { ca } : {}) };
  } catch {
    return null;
  }
}

/**
 * PEM material for the agent's TLS options. `systemRoots`: the CA file is the fleet CA stored at enrollment
 * (no CA was provisioned, so the broker was trusted through the system roots): trust both.
 */
export async function loadTlsMaterial(t: { cert: string; key: string; ca?: string }, o: { systemRoots?: boolean } = {}): Promise<{ cert: Buffer; key: Buffer; ca?: Buffer | string[] }> {
  const cert = await readFile(t.cert);
  const key = await readFile(t.key);
  const ca = t.ca ? await readFile(t.ca).catch(() => undefined) : undefined;
  if (!ca) return { cert, key };
  return { cert, key, ca: o.systemRoots ? [...rootCertificates, ca.toString('utf8')] : ca };
}

/** Checks an issued certificate against our key, our id and the fleet CA before it is stored. */
export function checkIssued(certPem: string, caPem: string, keyPem: string, deviceId: string): string | null {
  try {
    const x = new X509Certificate(certPem);
    const ca = new X509Certificate(caPem);
    if (!x.checkPrivateKey(createPrivateKey(keyPem))) return 'the certificate is not for this device key';
    if (deviceIdFromCertificate(x) !== deviceId) return 'the certificate does not name this device';
    if (!x.checkIssued(ca) || !x.verify(ca.publicKey)) return 'the certificate is not signed by the fleet CA in the answer';
    return null;
  } catch (e) {
    return `unreadable certificate (${(e as Error).message})`;
  }
}

/** The trust anchors for TLS to the broker/server: the provisioned CA, or the system roots. */
function trust(caPem: string | undefined): string | string[] {
  return caPem ?? [...rootCertificates];
}

/** One enrollment request over an MQTT enrollment session (broker TLS listener, password = token). */
export function enrollOverMqtt(o: EnrollOptions, csrPem: string): Promise<EnrollAnswer> {
  const id = o.deviceId;
  const url = o.brokerUrl.replace(/^tls:/, 'mqtts:');
  const timeoutMs = o.attemptTimeoutMs ?? 30_000;
  const txid = `enr${randomBytes(9).toString('base64url')}`;
  return new Promise<EnrollAnswer>((resolve) => {
    let done = false;
    let client: MqttClient | null = null;
    const finish = (a: EnrollAnswer): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      client?.removeAllListeners();
      client?.on('error', () => {});
      void client?.endAsync(true).catch(() => {});
      resolve(a);
    };
    const onAbort = (): void => finish({ ok: false, answered: false, code: 'ENROLL_ABORTED', detail: 'aborted', via: 'mqtt' });
    const timer = setTimeout(() => finish({ ok: false, answered: false, code: 'ENROLL_TIMEOUT', detail: `no answer within ${timeoutMs / 1000} s`, via: 'mqtt' }), timeoutMs);
    o.signal?.addEventListener('abort', onAbort, { once: true });
    if (o.signal?.aborted) return onAbort();
    const opts: IClientOptions = {
      clientId: id,
      username: id,
      password: o.token,
      clean: true,
      protocolVersion: 4,
      reconnectPeriod: 0,
      connectTimeout: Math.min(timeoutMs, 20_000),
      keepalive: 30,
      ca: trust(o.caPem),
      rejectUnauthorized: true,
    };
    try {
      client = (o.connect ?? mqtt.connect)(url, opts);
    } catch (e) {
      return finish({ ok: false, answered: false, code: 'ENROLL_UNREACHABLE', detail: (e as Error).message, via: 'mqtt' });
    }
    client.on('error', (e: Error & { code?: unknown }) => {
      // CONNACK refusals carry a numeric return code; 4/5 = the broker did not accept the token.
      if (typeof e.code === 'number' && (e.code === 4 || e.code === 5)) {
        finish({ ok: false, answered: false, code: 'ENROLL_REFUSED', detail: `broker refused the enrollment session (${e.message})`, via: 'mqtt' });
      } else finish({ ok: false, answered: false, code: 'ENROLL_UNREACHABLE', detail: e.message, via: 'mqtt' });
    });
    client.on('close', () => finish({ ok: false, answered: false, code: 'ENROLL_UNREACHABLE', detail: 'connection closed before an answer', via: 'mqtt' }));
    client.on('message', (topic, payload) => {
      if (topic !== topics.response(id)) return;
      const r = decode('response', payload);
      if (!r.ok || r.value.txid !== txid) return;
      const v = r.value;
      if (v.status === 'ok' && v.data?.type === 'enroll') return finish({ ok: true, certPem: v.data.certPem, caPem: v.data.caPem, via: 'mqtt' });
      finish({ ok: false, answered: true, code: v.error?.code ?? 'ENROLL_FAILED', detail: v.error?.message ?? 'no certificate in the answer', via: 'mqtt' });
    });
    client.on('connect', () => {
      const c = client!;
      c.subscribeAsync(topics.response(id), { qos: 1 })
        .then(() => c.publishAsync(topics.request(id), encode('request', { v: 1, txid, type: 'enroll', token: o.token, csrPem }), { qos: 1 }))
        .catch((e: unknown) => finish({ ok: false, answered: false, code: 'ENROLL_UNREACHABLE', detail: (e as Error).message, via: 'mqtt' }));
    });
  });
}

/** One enrollment request over `POST <server>/api/v1/enroll` (https:// only: the token is a secret). */
export function enrollOverHttps(o: EnrollOptions, csrPem: string): Promise<EnrollAnswer> {
  const u = new URL('/api/v1/enroll', o.serverUrl);
  if (u.protocol !== 'https:') return Promise.resolve({ ok: false, answered: false, code: 'ENROLL_UNREACHABLE', detail: 'HTTP enrollment needs an https:// server', via: 'https' });
  const body = Buffer.from(JSON.stringify({ deviceId: o.deviceId, token: o.token, csrPem }));
  const timeoutMs = o.attemptTimeoutMs ?? 30_000;
  return new Promise<EnrollAnswer>((resolve) => {
    const req = httpsRequest(
      u,
      { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': body.length }, ca: trust(o.caPem), rejectUnauthorized: true, timeout: timeoutMs, ...(o.signal ? { signal: o.signal } : {}) },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > 64 * 1024) res.destroy(new Error('answer too large'));
          else chunks.push(c);
        });
        res.on('error', (e) => resolve({ ok: false, answered: false, code: 'ENROLL_UNREACHABLE', detail: e.message, via: 'https' }));
        res.on('end', () => {
          let j: { certPem?: unknown; caPem?: unknown; error?: { code?: unknown; message?: unknown } } = {};
          try {
            j = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            /* handled below */
          }
          if (res.statusCode === 200 && typeof j.certPem === 'string' && typeof j.caPem === 'string') return resolve({ ok: true, certPem: j.certPem, caPem: j.caPem, via: 'https' });
          const code = typeof j.error?.code === 'string' && /^[A-Z][A-Z0-9_]{1,63}$/.test(j.error.code) ? j.error.code : null;
          // Only an answer of the enroll endpoint counts; a proxy's 404/502 is "not reached".
          if (code) resolve({ ok: false, answered: true, code, detail: typeof j.error?.message === 'string' ? j.error.message : '', via: 'https' });
          else resolve({ ok: false, answered: false, code: 'ENROLL_UNREACHABLE', detail: `HTTP ${res.statusCode}`, via: 'https' });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)));
    req.on('error', (e) => resolve({ ok: false, answered: false, code: 'ENROLL_UNREACHABLE', detail: e.message, via: 'https' }));
    req.end(body);
  });
}

/** One attempt: the MQTT enrollment session, else (no answer from it) HTTPS when the server is https://. */
export async function enrollAttempt(o: EnrollOptions, csrPem: string): Promise<EnrollAnswer> {
  const m = await enrollOverMqtt(o, csrPem);
  if (m.ok || m.answered || o.signal?.aborted || !o.serverUrl.startsWith('https:')) return m;
  const h = await enrollOverHttps(o, csrPem);
  return h.ok || h.answered ? h : m;
}

/** Codes after which only an operator (or a new token) can help: retried, but slowly. */
const DECIDED = new Set(['ENROLL_REJECTED', 'ENROLL_TOKEN_INVALID', 'ENROLL_REFUSED', 'ENROLL_CSR_INVALID', 'NOT_SUPPORTED']);

/**
 * Enrolls until a certificate is stored (or the signal aborts: then null). Returns the certificate files.
 * Safe to interrupt at any point: the key is reused and the certificate is written atomically.
 */
export async function enrollDevice(o: EnrollOptions): Promise<TlsPaths | null> {
  const have = await existingEnrollment(o.tlsDir, o.deviceId, { token: o.token });
  if (have) return have;
  // A certificate is there but not usable (new token, other name, expired): renew with a NEW key, made beside
  // the old one; the old key and certificate stay in place until the new certificate has arrived.
  const renew = await stat(join(o.tlsDir, DEVICE_CERT_FILE)).then(() => true, () => false);
  const keyDir = renew ? join(o.tlsDir, RENEW_DIR) : o.tlsDir;
  // node-forge is loaded only here, on the day the device enrolls (identity.ts says why).
  const { createDeviceKeyAndCsr } = await import('../firmware/ca/device.js');
  const csr = await createDeviceKeyAndCsr(o.deviceId, keyDir, o.keyBits ? { bits: o.keyBits } : {});
  const keyPem = await readFile(csr.keyPath, 'utf8');
  const via = o.brokerUrl.replace(/^tls:/, 'mqtts:').split('://')[0];
  o.log(`UZ-ENROLL requested device=${o.deviceId} key=${csr.created ? 'new' : 'existing'}${renew ? ' renew=true' : ''} via=${via}${o.serverUrl.startsWith('https:') ? '+https' : ''}`);
  const retry = o.retry ?? { baseMs: 2000, capMs: 60_000 };
  let attempt = 0;
  let slow = 0;
  for (;;) {
    if (o.signal?.aborted) return null;
    const a = await enrollAttempt(o, csr.csrPem);
    if (o.signal?.aborted) return null;
    if (a.ok) {
      const bad = checkIssued(a.certPem, a.caPem, keyPem, o.deviceId);
      if (!bad) {
        const paths = { cert: join(o.tlsDir, DEVICE_CERT_FILE), key: join(o.tlsDir, DEVICE_KEY_FILE), ca: join(o.tlsDir, FLEET_CA_FILE) };
        const x = new X509Certificate(a.certPem);
        await writeFileDurable(paths.ca, a.caPem);
        if (renew) {
          // Key first, then certificate: a cut in between leaves a mismatch, which the next boot re-enrolls.
          await writeFileDurable(join(keyDir, DEVICE_CERT_FILE), a.certPem);
          await rename(csr.keyPath, paths.key);
          await rename(join(keyDir, DEVICE_CERT_FILE), paths.cert);
        } else await writeFileDurable(paths.cert, a.certPem);
        const record = { v: 1, deviceId: o.deviceId, tokenSha256: sha256(o.token), serial: x.serialNumber.toLowerCase(), enrolledAt: new Date().toISOString() };
        await writeFileDurable(join(o.tlsDir, ENROLLMENT_RECORD), `${JSON.stringify(record)}\n`);
        o.log(`UZ-ENROLL enrolled device=${o.deviceId} serial=${x.serialNumber.toLowerCase()} not_after=${new Date(x.validTo).toISOString()} via=${a.via}`);
        return paths;
      }
      const wait = backoffDelay(attempt++, retry, o.random);
      o.log(`UZ-ENROLL failed code=ENROLL_CERT_MISMATCH detail=${clip(bad)} retry_in_ms=${wait}`);
      await sleep(wait, o.signal);
      continue;
    }
    const code = a.code === 'ENROLL_REFUSED' ? 'ENROLL_TOKEN_INVALID' : a.code;
    // Pending: the operator may approve any moment; decided: back off to the cap quickly; unreachable: normal.
    const decided = DECIDED.has(a.code);
    const wait = backoffDelay(decided ? Math.max(attempt++, 4 + slow++) : attempt++, retry, o.random);
    const state = code === 'ENROLL_PENDING' ? 'pending' : decided ? 'rejected' : 'failed';
    const detail = state === 'failed' || a.code === 'ENROLL_REFUSED' ? ` detail=${clip(a.detail)}` : '';
    o.log(`UZ-ENROLL ${state} code=${code}${detail} retry_in_ms=${wait}`);
    await sleep(wait, o.signal);
  }
}
