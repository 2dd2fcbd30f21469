/**
 * A device's identity in its certificate (CN=<id> plus the URI SAN urn:uz:device:<id>), with node:crypto only:
 * the agent checks its stored certificate at every start, and node-forge (10 MiB of heap once loaded) is only
 * needed on the day it enrolls.
 */
import { X509Certificate } from 'node:crypto';
import { DeviceId } from '../../lib/protocol.js';

/** The device key's file name in the agent's TLS directory. */
export const DEVICE_KEY_FILE = 'device.key';

/** URI SAN carried by every device certificate. */
export function deviceUri(deviceId: string): string {
  return `urn:uz:device:${deviceId}`;
}

/**
 * The device id a client certificate names (CN, which must agree with the urn:uz:device: SAN), or null.
 * Call it only on a certificate the TLS layer already verified against the fleet CA.
 */
export function deviceIdFromCertificate(cert: string | X509Certificate): string | null {
  const x = typeof cert === 'string' ? new X509Certificate(cert) : cert;
  const cn = /^CN=([a-z0-9-]+)$/m.exec(x.subject)?.[1];
  if (!cn || !DeviceId.safeParse(cn).success) return null;
  const uris = (x.subjectAltName ?? '').split(/,\s*/).filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
  return uris.includes(deviceUri(cn)) ? cn : null;
}
