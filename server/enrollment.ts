/**
 * Certificate enrollment (server side), on the fleet CA of firmware/ca/ (`caDir`, made by `uz ca init`).
 *
 *  1. An operator creates a one-time enrollment token (POST /api/v1/enrollment-tokens, `uz devices token
 *     create`), optionally for one device id and optionally pre-approved. Only SHA-256(token) is stored; it
 *     expires (enrollTokenTtlSec). Devices can also be pre-approved by id (`uz devices approve <id>` before
 *     the device ever connected).
 *  2. The device makes its own key + CSR (CN = its id), connects WITHOUT a certificate (embedded broker TLS
 *     listener: password = the token; or POST /api/v1/enroll over HTTPS) and sends
 *     `{"type":"enroll","token","csrPem"}` on uz/v1/dev/<id>/req.
 *  3. The first use binds the token to that device id (a token enrolls one device; the same device may retry
 *     with it). Approved (pre-approved token or device) → the server issues the certificate from the CSR and
 *     answers `{type:"enroll", certPem, caPem}` on uz/v1/dev/<id>/res. Otherwise the device is `pending` and
 *     gets ENROLL_PENDING; an operator approves (`uz devices approve`) or rejects it; the device retries.
 *  4. Revocation (`uz devices revoke`) adds the certificate serial to the CA's CRL, rewrites crl.pem, reloads
 *     the embedded broker's CRL and drops the connection; the device row is `revoked`, which the broker also
 *     checks on every connect (so a revoked device is refused even before every broker has the new CRL).
 * A certificate connects only while it is the device's CURRENT one (serial stored at issue), so re-enrolling
 * retires the previous certificate.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isUzError } from '../lib/errors.js';
import { CA_CERT_FILE, CRL_FILE, issueDeviceCertificate, loadCaDir, revokeInCaDir, type FleetCa } from '../firmware/ca/index.js';
import { httpError } from './errors.js';
import type { DeviceRow, EnrollTokenRow, Storage } from './storage/types.js';

export const ENROLL_TOKEN_PREFIX = 'uze_';

export type EnrollResult = { ok: true; certPem: string; caPem: string; serial: string } | { ok: false; code: EnrollErrorCode; message: string };

/** Error codes of an enroll response (docs/server.md "Enrollment"). */
export type EnrollErrorCode = 'NOT_SUPPORTED' | 'ENROLL_TOKEN_INVALID' | 'ENROLL_PENDING' | 'ENROLL_REJECTED' | 'ENROLL_CSR_INVALID' | 'ENROLL_FAILED';

export function enrollTokenHash(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export interface EnrollmentDeps {
  storage: Storage;
  /** Fleet CA directory; null = enrollment disabled. */
  caDir: string | null;
  tokenTtlSec: number;
  now(): number;
  log: { info(o: object, m?: string): void; warn(o: object, m?: string): void };
  /** Called after a revocation with the new CRL (the embedded broker reloads it and drops the device). */
  onRevoked?(deviceId: string, crlPem: string): void;
}

export class EnrollmentService {
  private ca: Promise<FleetCa> | null = null;
  /** revokeInCaDir rewrites ca-state.json: one revocation at a time in this process. */
  private revoking: Promise<unknown> = Promise.resolve();

  constructor(private readonly d: EnrollmentDeps) {}

  get enabled(): boolean {
    return this.d.caDir !== null;
  }

  private requireEnabled(): string {
    if (!this.d.caDir) throw httpError('ENROLLMENT_DISABLED', 'certificate enrollment is not enabled on this server (start it with --ca <dir>, made by uz ca init)');
    return this.d.caDir;
  }

  private loadCa(): Promise<FleetCa> {
    const dir = this.requireEnabled();
    this.ca ??= loadCaDir(dir).catch((e: unknown) => {
      this.ca = null;
      throw e;
    });
    return this.ca;
  }

  async caPem(): Promise<string> {
    return (await this.loadCa()).certPem;
  }

  async crlPem(): Promise<string | undefined> {
    return readFile(join(this.requireEnabled(), CRL_FILE), 'utf8').catch(() => undefined);
  }

  caCertPath(): string {
    return join(this.requireEnabled(), CA_CERT_FILE);
  }

  async createToken(o: { deviceId?: string; ttlSec?: number; preApproved?: boolean; actor: string }): Promise<{ id: string; token: string; deviceId: string | null; preApproved: boolean; expiresAt: number }> {
    this.requireEnabled();
    const id = randomBytes(4).toString('hex');
    const token = `${ENROLL_TOKEN_PREFIX}${id}_${randomBytes(32).toString('base64url')}`;
    const now = this.d.now();
    const expiresAt = now + (o.ttlSec ?? this.d.tokenTtlSec) * 1000;
    const row = { id, hash: enrollTokenHash(token), deviceId: o.deviceId ?? null, preApproved: !!o.preApproved, expiresAt, createdBy: o.actor, now };
    await this.d.storage.createEnrollToken(row);
    await this.d.storage.appendAudit({ ts: now, actor: o.actor, action: 'enroll-token.create', target: id, details: { deviceId: row.deviceId, preApproved: row.preApproved, expiresAt } });
    return { id, token, deviceId: row.deviceId, preApproved: row.preApproved, expiresAt };
  }

  /** Broker check for a connection without a certificate: may `deviceId` enroll with this token? (Not consumed.) */
  async canEnroll(deviceId: string, token: string): Promise<boolean> {
    if (!this.enabled || !token.startsWith(ENROLL_TOKEN_PREFIX)) return false;
    const t = await this.d.storage.enrollTokenByHash(enrollTokenHash(token));
    if (!t) return false;
    if (t.usedAt !== null) return t.deviceId === deviceId;
    return t.expiresAt > this.d.now() && (t.deviceId === null || t.deviceId === deviceId);
  }

  /** Broker check for a verified fleet certificate: is it the device's current certificate, and is the device approved? */
  async certValid(deviceId: string, serial: string): Promise<boolean> {
    const dev = await this.d.storage.getDevice(deviceId);
    return !!dev && dev.enrollment === 'approved' && dev.certSerial === serial;
  }

  /** Handles an enroll request (MQTT or HTTP). Never throws. */
  async enroll(deviceId: string, token: string, csrPem: string): Promise<EnrollResult> {
    if (!this.enabled) return { ok: false, code: 'NOT_SUPPORTED', message: 'certificate enrollment is not enabled on this server (dev mode uses device credentials)' };
    try {
      const s = this.d.storage;
      const now = this.d.now();
      const tok: EnrollTokenRow | null = await s.useEnrollToken(enrollTokenHash(token), deviceId, now);
      if (!tok) return { ok: false, code: 'ENROLL_TOKEN_INVALID', message: 'enrollment token unknown, expired, or already used by another device' };
      let dev: DeviceRow | null = await s.getDevice(deviceId);
      const initial = tok.preApproved ? 'approved' : 'pending';
      if (!dev) {
        await s.registerDevice({ id: deviceId, secretHash: null, now, enrollment: initial });
        await s.appendAudit({ ts: now, actor: `device:${deviceId}`, action: 'device.enroll-request', target: deviceId, details: { token: tok.id, preApproved: tok.preApproved } });
      } else if (dev.enrollment === 'none' || (dev.enrollment === 'pending' && tok.preApproved)) {
        await s.setEnrollment(deviceId, { state: initial });
        await s.appendAudit({ ts: now, actor: `device:${deviceId}`, action: 'device.enroll-request', target: deviceId, details: { token: tok.id, preApproved: tok.preApproved } });
      }
      dev = (await s.getDevice(deviceId))!;
      if (dev.enrollment === 'rejected' || dev.enrollment === 'revoked') {
        return { ok: false, code: 'ENROLL_REJECTED', message: `device ${deviceId} is ${dev.enrollment}; an operator must approve it again` };
      }
      if (dev.enrollment !== 'approved') {
        return { ok: false, code: 'ENROLL_PENDING', message: `waiting for an operator to approve ${deviceId} (uz devices approve ${deviceId}); retry later with the same token` };
      }
      const ca = await this.loadCa();
      let issued;
      try {
        issued = issueDeviceCertificate(ca, csrPem, deviceId);
      } catch (e) {
        if (isUzError(e)) return { ok: false, code: 'ENROLL_CSR_INVALID', message: `${e.code}: ${e.message}` };
        throw e;
      }
      await s.setEnrollment(deviceId, { certSerial: issued.serial });
      await s.appendAudit({ ts: now, actor: `device:${deviceId}`, action: 'device.enroll', target: deviceId, details: { serial: issued.serial, notAfter: issued.notAfter.toISOString(), token: tok.id } });
      this.d.log.info({ device: deviceId, serial: issued.serial }, 'device enrolled');
      return { ok: true, certPem: issued.certPem, caPem: ca.certPem, serial: issued.serial };
    } catch (e) {
      this.d.log.warn({ device: deviceId, err: (e as Error).message }, 'enrollment failed');
      return { ok: false, code: 'ENROLL_FAILED', message: 'enrollment failed on the server (logged); retry later' };
    }
  }

  /** Approves a pending device, or pre-approves an id that has not enrolled yet. */
  async approve(id: string, actor: string): Promise<DeviceRow> {
    this.requireEnabled();
    const s = this.d.storage;
    const now = this.d.now();
    const dev = await s.getDevice(id);
    if (!dev) await s.registerDevice({ id, secretHash: null, now, enrollment: 'approved' });
    // re-approving a revoked device needs a fresh certificate: its old serial is on the CRL
    else await s.setEnrollment(id, dev.enrollment === 'revoked' ? { state: 'approved', certSerial: null } : { state: 'approved' });
    await s.appendAudit({ ts: now, actor, action: dev ? 'device.approve' : 'device.pre-approve', target: id, details: { from: dev?.enrollment ?? null } });
    return (await s.getDevice(id))!;
  }

  async reject(id: string, actor: string): Promise<DeviceRow> {
    this.requireEnabled();
    const s = this.d.storage;
    const dev = await s.getDevice(id);
    if (!dev) throw httpError('NOT_FOUND', `no device ${id}`);
    if (dev.enrollment === 'approved' && dev.certSerial) throw httpError('ENROLLMENT_STATE', `device ${id} already has a certificate; revoke it instead`);
    await s.setEnrollment(id, { state: 'rejected' });
    await s.appendAudit({ ts: this.d.now(), actor, action: 'device.reject', target: id, details: { from: dev.enrollment } });
    return (await s.getDevice(id))!;
  }

  /** Revokes the device: its certificate goes on the CRL and it is refused at the broker from now on. */
  async revoke(id: string, actor: string, reason: 'keyCompromise' | 'privilegeWithdrawn' | 'cessationOfOperation' = 'privilegeWithdrawn'): Promise<{ device: DeviceRow; serial: string | null; crlNumber: number | null }> {
    const dir = this.requireEnabled();
    const s = this.d.storage;
    const dev = await s.getDevice(id);
    if (!dev) throw httpError('NOT_FOUND', `no device ${id}`);
    let crl: { crlNumber: number } | null = null;
    if (dev.certSerial) {
      const serial = dev.certSerial;
      const run = this.revoking.then(() => revokeInCaDir(dir, serial, { reason }));
      this.revoking = run.catch(() => undefined);
      crl = await run;
    }
    await s.setEnrollment(id, { state: 'revoked' });
    await s.appendAudit({ ts: this.d.now(), actor, action: 'device.revoke', target: id, details: { serial: dev.certSerial, reason, crlNumber: crl?.crlNumber ?? null } });
    this.d.log.info({ device: id, serial: dev.certSerial, crlNumber: crl?.crlNumber }, 'device revoked');
    const pem = await this.crlPem();
    if (pem) this.d.onRevoked?.(id, pem);
    return { device: (await s.getDevice(id))!, serial: dev.certSerial, crlNumber: crl?.crlNumber ?? null };
  }
}
