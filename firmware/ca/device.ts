/**
 * Device side of enrollment: the device makes its own key (it never leaves the device: written 0600 to the
 * data partition) and a CSR with subject CN=<deviceId>, which it sends to the server with its enroll token.
 */
import { createPrivateKey } from 'node:crypto';
import { mkdir, open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import forge from 'node-forge';
import { UzError } from '../../lib/errors.js';
import { KEY_BITS, assertDeviceId, generateRsaKeyPem } from './ca.js';

export { DEVICE_KEY_FILE } from './identity.js';
import { DEVICE_KEY_FILE } from './identity.js';

export interface DeviceCsr {
  /** PEM "CERTIFICATE REQUEST": safe to send. */
  csrPem: string;
  keyPath: string;
  /** False when an existing key in keyDir was reused (e.g. enrollment retried after a reboot). */
  created: boolean;
}

/** A CSR (subject CN=<deviceId>, SHA-256) signed with `keyPem`. */
export function createCsr(deviceId: string, keyPem: string): string {
  assertDeviceId(deviceId);
  const key = forge.pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = forge.pki.setRsaPublicKey(key.n, key.e);
  csr.setSubject([{ name: 'commonName', value: deviceId }]);
  csr.sign(key, forge.md.sha256.create());
  return forge.pki.certificationRequestToPem(csr);
}

/**
 * Creates `<keyDir>/device.key` (RSA 3072, PKCS#8, mode 0600; keyDir created 0700) unless it already exists,
 * in which case that key is reused; returns a CSR for `deviceId`. The key is never returned.
 */
export async function createDeviceKeyAndCsr(deviceId: string, keyDir: string, opts: { bits?: number } = {}): Promise<DeviceCsr> {
  assertDeviceId(deviceId);
  await mkdir(keyDir, { recursive: true, mode: 0o700 });
  const keyPath = join(keyDir, DEVICE_KEY_FILE);
  let keyPem: string;
  let created = false;
  const st = await stat(keyPath).catch(() => null);
  if (st) {
    if (process.platform !== 'win32' && (st.mode & 0o077) !== 0) {
      throw new UzError('CA_KEY_PERMISSIONS', `device key ${keyPath} is accessible by group/others`, { path: keyPath });
    }
    keyPem = await readFile(keyPath, 'utf8');
    try {
      const k = createPrivateKey(keyPem);
      if (k.asymmetricKeyType !== 'rsa') throw new Error('not RSA');
    } catch {
      throw new UzError('CA_DEVICE_KEY_INVALID', `device key ${keyPath} is unreadable or not an RSA key; delete it to make a new one`, { path: keyPath });
    }
  } else {
    keyPem = await generateRsaKeyPem(opts.bits ?? KEY_BITS);
    let fh;
    try {
      fh = await open(keyPath, 'wx', 0o600);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return createDeviceKeyAndCsr(deviceId, keyDir, opts); // lost a race: reuse
      throw e;
    }
    try {
      await fh.writeFile(keyPem);
      await fh.chmod(0o600);
      await fh.sync();
    } finally {
      await fh.close();
    }
    created = true;
  }
  return { csrPem: createCsr(deviceId, keyPem), keyPath, created };
}
