/**
 * Fleet CA: issuance checked with node:crypto and with the real `openssl` (a missing openssl FAILS with an
 * install hint), CSR checks (CN binding, tampering), revocation and CRLs, and the `uz ca` CLI.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  caPublicKey,
  createCa,
  createCsr,
  createDeviceKeyAndCsr,
  deviceIdFromCertificate,
  generateCrl,
  generateRsaKeyPem,
  initCaDir,
  isRevoked,
  isSerialRevoked,
  issueDeviceCertificate,
  issueServerCertificate,
  loadCaDir,
  parseCrl,
  revokeInCaDir,
  verifyCrl,
  type FleetCa,
} from '../../firmware/ca/index.js';
import { isUzError } from '../../lib/errors.js';
import { run, tempDir, uz } from '../provision/helpers.js';

let tmp: { dir: string; cleanup: () => void };
let ca: FleetCa;
let caDir: string;
let devKeyPem: string;

beforeAll(async () => {
  tmp = tempDir('ca');
  caDir = join(tmp.dir, 'ca');
  await initCaDir({ out: caDir, name: 'test' });
  ca = await loadCaDir(caDir);
  devKeyPem = await generateRsaKeyPem();
});
afterAll(() => tmp.cleanup());

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (isUzError(e)) return e.code;
    throw e;
  }
  return 'no error';
}

function write(name: string, text: string): string {
  const p = join(tmp.dir, name);
  writeFileSync(p, text);
  return p;
}

/** `openssl verify`; returns exit status and all output. */
function opensslVerify(args: string[]): { status: number | null; text: string } {
  const r = run('openssl', ['verify', ...args]);
  return { status: r.status, text: r.stdout + r.stderr };
}

describe('fleet CA', () => {
  it('init: CA cert self-signed with CA constraints, key 0600, refuses to overwrite', async () => {
    expect(statSync(join(caDir, 'ca.key')).mode & 0o777).toBe(0o600);
    const x = new X509Certificate(readFileSync(join(caDir, 'ca.crt')));
    expect(x.ca).toBe(true);
    expect(x.subject).toContain('CN=test fleet CA');
    expect(x.verify(x.publicKey)).toBe(true);
    expect(x.publicKey.asymmetricKeyDetails?.modulusLength).toBe(3072);
    await expect(initCaDir({ out: caDir, name: 'again' })).rejects.toMatchObject({ code: 'CA_EXISTS' });
    // a key readable by others is refused, like ssh does
    chmodSync(join(caDir, 'ca.key'), 0o644);
    await expect(loadCaDir(caDir)).rejects.toMatchObject({ code: 'CA_KEY_PERMISSIONS' });
    chmodSync(join(caDir, 'ca.key'), 0o600);
  });

  it('CSR → device certificate: CN, SAN URI, clientAuth, random 128-bit serial; verifies with node:crypto and openssl', () => {
    const csr = createCsr('dev-0001', devKeyPem);
    const a = issueDeviceCertificate(ca, csr, 'dev-0001');
    const b = issueDeviceCertificate(ca, csr, 'dev-0001');
    const x = new X509Certificate(a.certPem);
    expect(x.verify(caPublicKey(ca))).toBe(true);
    expect(x.checkIssued(new X509Certificate(ca.certPem))).toBe(true);
    expect(x.subject).toBe('CN=dev-0001');
    expect(x.subjectAltName).toBe('URI:urn:uz:device:dev-0001');
    expect(x.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']);
    expect(x.ca).toBe(false);
    expect(deviceIdFromCertificate(x)).toBe('dev-0001');
    // serials: random, positive, ≤ 128 bits, different every time
    expect(a.serial).not.toBe(b.serial);
    expect(a.serial).toMatch(/^[0-9a-f]{1,32}$/);
    expect(BigInt(`0x${a.serial}`) < 2n ** 127n).toBe(true);
    expect(x.serialNumber.toLowerCase().replace(/^0+/, '')).toBe(a.serial);
    // two years, never beyond the CA
    const days = (a.notAfter.getTime() - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(729);
    expect(days).toBeLessThan(731);

    const caFile = join(caDir, 'ca.crt');
    const certFile = write('dev-0001.crt', a.certPem);
    const v = opensslVerify(['-purpose', 'sslclient', '-CAfile', caFile, certFile]);
    expect(v.status, v.text).toBe(0);
    expect(v.text).toContain(': OK');
    // the same certificate is not a server certificate
    expect(opensslVerify(['-purpose', 'sslserver', '-CAfile', caFile, certFile]).status).not.toBe(0);
  });

  it('refuses a CSR whose CN is not the device id, a tampered CSR, garbage and bad ids', () => {
    const csr = createCsr('dev-aaaa', devKeyPem);
    expect(code(() => issueDeviceCertificate(ca, csr, 'dev-bbbb'))).toBe('CA_CSR_SUBJECT_MISMATCH');

    // tamper: rewrite the CN inside the signed request to the id the attacker wants
    const der = Buffer.from(csr.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    const at = der.indexOf(Buffer.from('dev-aaaa'));
    expect(at).toBeGreaterThan(0);
    Buffer.from('dev-bbbb').copy(der, at);
    const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n')}\n-----END CERTIFICATE REQUEST-----\n`;
    expect(code(() => issueDeviceCertificate(ca, tampered, 'dev-bbbb'))).toBe('CA_CSR_SIGNATURE');

    expect(code(() => issueDeviceCertificate(ca, 'not a csr', 'dev-aaaa'))).toBe('CA_CSR_INVALID');
    expect(code(() => issueDeviceCertificate(ca, csr, 'Bad_ID'))).toBe('CA_DEVICE_ID_INVALID');
    expect(code(() => createCsr('x', devKeyPem))).toBe('CA_DEVICE_ID_INVALID');
  });

  it('refuses a CSR made by openssl with extra subject attributes, accepts a plain openssl CSR', () => {
    const keyFile = write('ossl.key', devKeyPem);
    const extra = run('openssl', ['req', '-new', '-key', keyFile, '-subj', '/CN=dev-ossl/O=evil', '-sha256']);
    expect(extra.status, extra.stderr).toBe(0);
    expect(code(() => issueDeviceCertificate(ca, extra.stdout, 'dev-ossl'))).toBe('CA_CSR_SUBJECT_MISMATCH');
    const plain = run('openssl', ['req', '-new', '-key', keyFile, '-subj', '/CN=dev-ossl', '-sha256']);
    expect(plain.status, plain.stderr).toBe(0);
    const c = issueDeviceCertificate(ca, plain.stdout, 'dev-ossl');
    expect(new X509Certificate(c.certPem).verify(caPublicKey(ca))).toBe(true);
  });

  it('server certificate: DNS and IP SANs, serverAuth; openssl verifies it for sslserver', async () => {
    const s = await issueServerCertificate(ca, { hosts: ['broker.example.net', '127.0.0.1', '::1'] });
    const x = new X509Certificate(s.certPem);
    expect(x.checkHost('broker.example.net')).toBe('broker.example.net');
    expect(x.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(x.checkIP('::1')).toBeDefined();
    expect(x.verify(caPublicKey(ca))).toBe(true);
    const v = opensslVerify(['-purpose', 'sslserver', '-CAfile', join(caDir, 'ca.crt'), write('srv.crt', s.certPem)]);
    expect(v.status, v.text).toBe(0);
    await expect(issueServerCertificate(ca, { hosts: ['bad host!'] })).rejects.toMatchObject({ code: 'CA_INVALID_OPTION' });
  });

  it('revocation: the serial is in the CRL; isRevoked; openssl -crl_check rejects it and accepts others', async () => {
    const revoked = issueDeviceCertificate(ca, createCsr('dev-rev1', devKeyPem), 'dev-rev1');
    const good = issueDeviceCertificate(ca, createCsr('dev-good', devKeyPem), 'dev-good');
    const r = await revokeInCaDir(caDir, revoked.serial.toUpperCase(), { reason: 'keyCompromise' });
    expect(r.alreadyRevoked).toBe(false);
    expect((await revokeInCaDir(caDir, revoked.serial)).alreadyRevoked).toBe(true);

    const crl = readFileSync(join(caDir, 'crl.pem'), 'utf8');
    const p = verifyCrl(crl, ca.certPem);
    expect(p.revoked.map((x) => x.serial)).toEqual([revoked.serial]);
    expect(p.revoked[0]!.reasonCode).toBe(1);
    expect(Number(p.crlNumber)).toBeGreaterThanOrEqual(3);
    expect(isRevoked(crl, revoked.certPem)).toBe(true);
    expect(isRevoked(crl, good.certPem)).toBe(false);
    expect(isSerialRevoked(crl, `00:${revoked.serial}`)).toBe(true);

    const caFile = join(caDir, 'ca.crt');
    const crlFile = join(caDir, 'crl.pem');
    const bad = opensslVerify(['-crl_check', '-CAfile', caFile, '-CRLfile', crlFile, write('rev.crt', revoked.certPem)]);
    expect(bad.status).not.toBe(0);
    expect(bad.text).toMatch(/certificate revoked/);
    const ok = opensslVerify(['-crl_check', '-CAfile', caFile, '-CRLfile', crlFile, write('good.crt', good.certPem)]);
    expect(ok.status, ok.text).toBe(0);
    const crlText = run('openssl', ['crl', '-in', crlFile, '-CAfile', caFile, '-noout', '-text']);
    expect(crlText.status, crlText.stderr).toBe(0);
    expect(crlText.stderr + crlText.stdout).toMatch(/verify OK/);
    expect(crlText.stdout).toContain(revoked.serial.toUpperCase());
  });

  it('CRL checks: tampered, foreign, expired', async () => {
    const crl = generateCrl(ca, [{ serial: 'abc123', revokedAt: new Date() }], { crlNumber: 7 });
    // flip one bit of the revoked serial
    const der = Buffer.from(crl.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    const at = der.indexOf(Buffer.from([0xab, 0xc1, 0x23]));
    der[at + 2] = der[at + 2]! ^ 1;
    expect(code(() => verifyCrl(der, ca.certPem))).toBe('CA_CRL_SIGNATURE');

    const other = await createCa({ name: 'other' });
    const foreign = generateCrl(other, [], { crlNumber: 1 });
    expect(code(() => verifyCrl(foreign, ca.certPem))).toBe('CA_CRL_ISSUER_MISMATCH');
    const cert = issueDeviceCertificate(ca, createCsr('dev-ffff', devKeyPem), 'dev-ffff');
    expect(code(() => isRevoked(foreign, cert.certPem))).toBe('CA_CRL_ISSUER_MISMATCH');

    const old = generateCrl(ca, [], { crlNumber: 2, now: new Date(Date.now() - 40 * 86_400_000), validityDays: 30 });
    expect(code(() => verifyCrl(old, ca.certPem))).toBe('CA_CRL_EXPIRED');
    expect(parseCrl(old).revoked).toEqual([]);
  });

  it('device side: key 0600 in the key dir, reused on retry, never in the CSR', async () => {
    const keyDir = join(tmp.dir, 'device-data', 'uz', 'tls');
    const a = await createDeviceKeyAndCsr('dev-0042', keyDir);
    expect(a.created).toBe(true);
    expect(statSync(a.keyPath).mode & 0o777).toBe(0o600);
    expect(statSync(keyDir).mode & 0o777).toBe(0o700);
    expect(a.csrPem).toMatch(/^-----BEGIN CERTIFICATE REQUEST-----/);
    expect(a.csrPem).not.toMatch(/PRIVATE KEY/);
    const b = await createDeviceKeyAndCsr('dev-0042', keyDir);
    expect(b.created).toBe(false);
    const ca1 = issueDeviceCertificate(ca, a.csrPem, 'dev-0042');
    const ca2 = issueDeviceCertificate(ca, b.csrPem, 'dev-0042');
    expect(new X509Certificate(ca1.certPem).publicKey.export({ format: 'der', type: 'spki' })).toEqual(
      new X509Certificate(ca2.certPem).publicKey.export({ format: 'der', type: 'spki' }),
    );
    chmodSync(a.keyPath, 0o640);
    await expect(createDeviceKeyAndCsr('dev-0042', keyDir)).rejects.toMatchObject({ code: 'CA_KEY_PERMISSIONS' });
  });
});

describe('uz ca CLI', () => {
  it('init, server-cert, device-csr, issue, revoke, crl; keys never printed', () => {
    const cwd = tmp.dir;
    let r = uz(cwd, 'ca', 'init', '--out', 'cli-ca', '--name', 'cli', '--json');
    expect(r.code, r.err).toBe(0);
    const init = JSON.parse(r.out);
    expect(init.algorithm).toBe('RSA 3072 / SHA-256');
    const caKey = readFileSync(join(cwd, 'cli-ca', 'ca.key'), 'utf8');
    expect(caKey).toMatch(/PRIVATE KEY/);
    expect(r.out + r.err).not.toMatch(/PRIVATE KEY/);

    r = uz(cwd, 'ca', 'init', '--out', 'cli-ca');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^uz: CA_EXISTS: /);

    r = uz(cwd, 'ca', 'server-cert', '--ca', 'cli-ca', '--host', 'localhost', '--host', '127.0.0.1', '--out', 'srv');
    expect(r.code, r.err).toBe(0);
    expect(statSync(join(cwd, 'srv', 'server.key')).mode & 0o777).toBe(0o600);
    expect(r.out).not.toMatch(/PRIVATE KEY/);

    r = uz(cwd, 'ca', 'device-csr', '--device-id', 'dev-cli1', '--key-dir', 'dev-keys', '--out', 'dev.csr');
    expect(r.code, r.err).toBe(0);
    r = uz(cwd, 'ca', 'issue', '--ca', 'cli-ca', '--csr', 'dev.csr', '--device-id', 'dev-cli2', '--out', 'wrong.crt');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^uz: CA_CSR_SUBJECT_MISMATCH: /);
    r = uz(cwd, 'ca', 'issue', '--ca', 'cli-ca', '--csr', 'dev.csr', '--device-id', 'dev-cli1', '--out', 'dev.crt', '--json');
    expect(r.code, r.err).toBe(0);
    const issued = JSON.parse(r.out);

    r = uz(cwd, 'ca', 'revoke', '--ca', 'cli-ca', '--serial', issued.serial, '--reason', 'superseded');
    expect(r.code, r.err).toBe(0);
    r = uz(cwd, 'ca', 'crl', '--ca', 'cli-ca', '--out', 'published-crl.pem', '--days', '7', '--json');
    expect(r.code, r.err).toBe(0);
    expect(JSON.parse(r.out).revoked).toBe(1);
    const crl = readFileSync(join(cwd, 'published-crl.pem'), 'utf8');
    expect(isRevoked(crl, readFileSync(join(cwd, 'dev.crt'), 'utf8'))).toBe(true);
    expect(verifyCrl(crl, readFileSync(join(cwd, 'cli-ca', 'ca.crt'), 'utf8')).nextUpdate!.getTime() - Date.now()).toBeLessThan(7 * 86_400_000 + 60_000);

    r = uz(cwd, 'ca', 'revoke', '--ca', 'cli-ca', '--serial', 'xyz');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^uz: CA_SERIAL_INVALID: /);
  });
});
