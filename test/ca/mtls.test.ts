/**
 * A real mutual-TLS handshake on 127.0.0.1 with node:tls: the server presents a certificate from the fleet
 * CA and requires a client certificate from the same CA, checked against the CRL. A device certificate made
 * from a device CSR gets in; a revoked one, one from a foreign CA and none at all are refused.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createCa,
  createCsr,
  deviceIdFromCertificate,
  generateCrl,
  generateRsaKeyPem,
  issueDeviceCertificate,
  issueServerCertificate,
  type FleetCa,
} from '../../firmware/ca/index.js';

let ca: FleetCa;
let foreign: FleetCa;
let server: tls.Server;
let port: number;
/** Same TLS settings but rejectUnauthorized: false, so the verification verdict of each client is visible. */
let diag: tls.Server;
let diagPort: number;
const verdicts: Array<{ authorized: boolean; error: string | null }> = [];
let srvCert: { keyPem: string; certPem: string };
let crlPem: string;
const accepted: string[] = [];
const rejected: string[] = [];
let good: { key: string; cert: string };
let revoked: { key: string; cert: string };
let alien: { key: string; cert: string };

beforeAll(async () => {
  [ca, foreign] = await Promise.all([createCa({ name: 'mtls' }), createCa({ name: 'foreign' })]);
  const [srv, k1, k2, k3] = await Promise.all([
    issueServerCertificate(ca, { hosts: ['localhost', '127.0.0.1'] }),
    generateRsaKeyPem(),
    generateRsaKeyPem(),
    generateRsaKeyPem(),
  ]);
  good = { key: k1, cert: issueDeviceCertificate(ca, createCsr('dev-good', k1), 'dev-good').certPem };
  const rev = issueDeviceCertificate(ca, createCsr('dev-revoked', k2), 'dev-revoked');
  revoked = { key: k2, cert: rev.certPem };
  alien = { key: k3, cert: issueDeviceCertificate(foreign, createCsr('dev-good', k3), 'dev-good').certPem };
  const crl = generateCrl(ca, [{ serial: rev.serial, revokedAt: new Date(), reason: 'keyCompromise' }], { crlNumber: 2 });
  srvCert = srv;
  crlPem = crl;

  server = tls.createServer({ key: srv.keyPem, cert: srv.certPem, ca: [ca.certPem], crl: [crl], requestCert: true, rejectUnauthorized: true }, (s) => {
    const id = deviceIdFromCertificate(s.getPeerX509Certificate()!) ?? 'unknown';
    accepted.push(id);
    s.end(`hello ${id}\n`);
  });
  server.on('tlsClientError', (e) => rejected.push((e as Error).message));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  port = (server.address() as AddressInfo).port;

  diag = tls.createServer({ key: srvCert.keyPem, cert: srvCert.certPem, ca: [ca.certPem], crl: [crlPem], requestCert: true, rejectUnauthorized: false }, (s) => {
    verdicts.push({ authorized: s.authorized, error: s.authorizationError ? String(s.authorizationError) : null });
    s.end();
  });
  diag.listen(0, '127.0.0.1');
  await once(diag, 'listening');
  diagPort = (diag.address() as AddressInfo).port;
});
afterAll(async () => {
  await new Promise<void>((r) => server.close(() => r()));
  await new Promise<void>((r) => diag.close(() => r()));
});

/** Connects with the given client identity; resolves with what the server said, or the error. */
function connect(client: { key: string; cert: string } | null, trust: string, to = port): Promise<{ data: string; error?: string }> {
  return new Promise((resolve) => {
    let data = '';
    const s = tls.connect({ host: '127.0.0.1', port: to, ca: [trust], ...(client ?? {}), servername: 'localhost' });
    s.setEncoding('utf8');
    s.on('data', (d: string) => (data += d));
    s.on('error', (e) => resolve({ data, error: e.message }));
    s.on('close', () => resolve({ data }));
    s.setTimeout(10_000, () => s.destroy(new Error('timeout')));
  });
}

describe('mTLS with fleet certificates (node:tls, loopback)', () => {
  it('accepts a device certificate issued from a device CSR and names the device', async () => {
    const r = await connect(good, ca.certPem);
    expect(r.error).toBeUndefined();
    expect(r.data).toBe('hello dev-good\n');
    expect(accepted).toContain('dev-good');
  });

  it('rejects a revoked device certificate (CRL)', async () => {
    const before = rejected.length;
    const r = await connect(revoked, ca.certPem);
    expect(r.data).toBe('');
    expect(rejected.length).toBe(before + 1);
  });

  it('rejects a client certificate from a foreign CA, and a client without one', async () => {
    let before = rejected.length;
    const r = await connect(alien, ca.certPem);
    expect(r.data).toBe('');
    expect(rejected.length).toBe(before + 1);
    before = rejected.length;
    const none = await connect(null, ca.certPem);
    expect(none.data).toBe('');
    expect(rejected.length).toBe(before + 1);
    expect(accepted).not.toContain('dev-revoked');
  });

  it('the verification verdicts name the reason: revoked, unknown issuer, no certificate', async () => {
    for (const c of [good, revoked, alien, null]) await connect(c, ca.certPem, diagPort);
    expect(verdicts).toEqual([
      { authorized: true, error: null },
      { authorized: false, error: 'CERT_REVOKED' },
      { authorized: false, error: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' }, // foreign CA
      { authorized: false, error: 'UNABLE_TO_GET_ISSUER_CERT' }, // Node's verdict for "no client certificate"
    ]);
  });

  it('the device refuses a server whose certificate is not from its fleet CA', async () => {
    const r = await connect(good, foreign.certPem);
    expect(r.data).toBe('');
    expect(r.error).toMatch(/self[- ]signed|unable to (get|verify)/i);
  });
});
