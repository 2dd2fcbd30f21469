/**
 * Broker-side PKI helpers next to the fleet CA (firmware/ca/): the update server's own MQTT client identity
 * for an external broker, and Mosquitto password-file lines for the development variant.
 */
import { pbkdf2Sync, randomBytes } from 'node:crypto';
import forge from 'node-forge';
import { UzError } from '../lib/errors.js';
import { DeviceId } from '../lib/protocol.js';
import { generateRsaKeyPem, normalizeSerial, randomSerialHex, type FleetCa, type KeyAndCertificate } from '../firmware/ca/index.js';
import { X509Certificate } from 'node:crypto';

/** The identity the shipped server/mosquitto/acl grants uz/v1/# to. Not a valid device id (it has a dot). */
export const SERVER_IDENTITY = 'uz.server';

/**
 * A TLS client certificate (EKU clientAuth) for the update server itself, CN = `name` (default uz.server).
 * The name may not be a valid device id, so no enrolled device can ever hold the server's identity.
 */
export async function issueServerClientCertificate(ca: FleetCa, o: { name?: string; validityDays?: number; now?: Date } = {}): Promise<KeyAndCertificate> {
  const name = o.name ?? SERVER_IDENTITY;
  if (!/^[a-z0-9][a-z0-9.-]{0,62}$/.test(name) || DeviceId.safeParse(name).success) {
    throw new UzError('CA_INVALID_OPTION', `server identity "${name.slice(0, 80)}" must be a-z 0-9 . - and must not be a valid device id (put a dot in it, like uz.server)`);
  }
  const keyPem = await generateRsaKeyPem();
  const key = forge.pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.setRsaPublicKey(key.n, key.e);
  cert.serialNumber = randomSerialHex();
  const now = Math.floor((o.now ?? new Date()).getTime() / 1000) * 1000;
  const notAfter = new Date(now + (o.validityDays ?? 730) * 86_400_000);
  cert.validity.notBefore = new Date(now - 3600_000);
  cert.validity.notAfter = notAfter > ca.cert.validity.notAfter ? ca.cert.validity.notAfter : notAfter;
  cert.setSubject([{ name: 'commonName', value: name }]);
  cert.setIssuer(ca.cert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', clientAuth: true },
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: ca.cert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(ca.key, forge.md.sha256.create());
  const certPem = forge.pki.certificateToPem(cert);
  const x = new X509Certificate(certPem);
  return { certPem, keyPem, serial: normalizeSerial(cert.serialNumber), notBefore: cert.validity.notBefore, notAfter: cert.validity.notAfter, fingerprint256: x.fingerprint256 };
}

/**
 * One Mosquitto 2 password-file line (`user:$7$101$salt$hash`, PBKDF2-SHA512 as mosquitto_passwd writes it),
 * so a password file can be produced from the server's device registrations without the CLI tool.
 */
export function mosquittoPasswordLine(user: string, password: string, iterations = 101): string {
  if (/[:\n]/.test(user)) throw new UzError('BAD_REQUEST', 'a Mosquitto username cannot contain ":" or a newline');
  const salt = randomBytes(12);
  const hash = pbkdf2Sync(password, salt, iterations, 64, 'sha512');
  return `${user}:$7$${iterations}$${salt.toString('base64')}$${hash.toString('base64')}`;
}
