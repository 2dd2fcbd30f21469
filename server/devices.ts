/**
 * Device side of the protocol (lib/protocol.ts): every incoming message is size/JSON/schema checked with
 * `decode` — a bad one is logged (rate-limited), counted and kept in the device history, never thrown.
 * Tracks presence/status/events in storage, publishes desired state RETAINED at QoS 1, answers block requests
 * on the device's response topic, and refreshes expiring signed URLs when a device reconnects.
 */
import type { Desired, DeviceRequest, DeviceResponse, ReleaseRef } from '../lib/protocol.js';
import { MAX_BLOCK_BYTES, decode, encode, parseTopic, topics } from '../lib/protocol.js';
import type { ArtifactStore } from './artifacts.js';
import type { UrlSigner } from './auth.js';
import type { BrokerPort, SessionKind } from './broker.js';
import type { EnrollmentService } from './enrollment.js';
import type { Metrics } from './metrics.js';
import type { RolloutService } from './rollouts.js';
import type { ReleaseRow, Storage } from './storage/types.js';

export interface DeviceServiceDeps {
  storage: Storage;
  broker: () => BrokerPort | null;
  artifacts: ArtifactStore;
  signer: UrlSigner;
  metrics: Metrics;
  rollouts: () => RolloutService;
  enrollment: () => EnrollmentService | null;
  publicUrl: () => string;
  urlTtlSec: number;
  now(): number;
  log: { info(o: object, m?: string): void; warn(o: object, m?: string): void; debug(o: object, m?: string): void };
}

export class DeviceService {
  private warnBudget = { at: 0, n: 0 };
  constructor(private readonly d: DeviceServiceDeps) {}

  releaseRef(rel: ReleaseRow, deviceId: string): ReleaseRef {
    const exp = Math.floor(this.d.now() / 1000) + this.d.urlTtlSec;
    return {
      version: rel.version,
      board: rel.board,
      rollbackCounter: rel.rollbackCounter,
      bundleUrl: `${this.d.publicUrl()}/artifacts/${rel.sha256}?${this.d.signer.sign(rel.sha256, deviceId, exp)}`,
      size: rel.size,
      sha256: rel.sha256,
    };
  }

  publishDesired(deviceId: string, desired: Desired): void {
    const b = this.d.broker();
    if (!b) return;
    b.publish(topics.desired(deviceId), encode('desired', desired), { qos: 1, retain: true }).catch((e: unknown) =>
      this.d.log.warn({ device: deviceId, err: (e as Error).message }, 'publishing desired state failed'),
    );
  }

  /** At start: the broker's retained store is in memory, so re-publish every stored desired state. */
  async republishAll(): Promise<number> {
    let n = 0;
    for (const dev of await this.d.storage.listDevices()) {
      if (dev.desired) {
        this.publishDesired(dev.id, await this.freshen(dev.id, dev.desired));
        n++;
      }
    }
    return n;
  }

  /** Same desired (same txid) with a re-signed URL if less than half its lifetime is left. */
  private async freshen(deviceId: string, desired: Desired): Promise<Desired> {
    if (!desired.release) return desired;
    const e = Number(new URL(desired.release.bundleUrl).searchParams.get('e'));
    if (e - this.d.now() / 1000 > this.d.urlTtlSec / 2) return desired;
    const rel = await this.d.storage.getReleaseBySha(desired.release.sha256);
    if (!rel) return desired;
    const next = { ...desired, release: this.releaseRef(rel, deviceId) };
    await this.d.storage.setDesired(deviceId, next);
    return next;
  }

  private reject(deviceId: string, topic: string, code: string, reason: string): void {
    this.d.metrics.rejected.inc({ reason: code });
    const t = this.d.now();
    if (t - this.warnBudget.at > 10_000) this.warnBudget = { at: t, n: 0 };
    if (++this.warnBudget.n <= 20) this.d.log.warn({ device: deviceId, topic, code, reason: reason.slice(0, 300) }, 'device message rejected');
    void this.d.storage.appendDeviceEvent(deviceId, t, 'rejected', { topic, code, reason: reason.slice(0, 300) }).catch(() => undefined);
  }

  async onPresence(deviceId: string, online: boolean): Promise<void> {
    try {
      await this.d.storage.setPresence(deviceId, online, this.d.now());
      if (online) {
        const dev = await this.d.storage.getDevice(deviceId);
        if (dev?.desired?.release) {
          const fresh = await this.freshen(deviceId, dev.desired);
          if (fresh !== dev.desired) this.publishDesired(deviceId, fresh);
        }
        this.d.rollouts().poke();
      }
    } catch (e) {
      this.d.log.warn({ device: deviceId, err: (e as Error).message }, 'presence update failed');
    }
  }

  /** Entry point for every accepted device publish. Never throws. */
  async onMessage(clientId: string, topic: string, payload: Buffer, session: SessionKind = 'device'): Promise<void> {
    try {
      const t = parseTopic(topic);
      if (!t || t.deviceId !== clientId) return this.reject(clientId, topic, 'BAD_TOPIC', 'not a topic of this device');
      if (session === 'enroll') return await this.onEnrollSession(clientId, topic, t.kind, payload);
      const now = this.d.now();
      switch (t.kind) {
        case 'status': {
          const r = decode('status', payload);
          if (!r.ok) return this.reject(clientId, topic, r.code, r.reason);
          if (r.value.deviceId !== clientId) return this.reject(clientId, topic, 'MSG_INVALID', 'deviceId does not match the topic');
          this.d.metrics.messages.inc({ kind: 'status' });
          const prev = await this.d.storage.getDevice(clientId);
          await this.d.storage.setStatus(clientId, r.value, now);
          const p = prev?.status;
          if (!p || p.version !== r.value.version || p.state !== r.value.state || p.slot !== r.value.slot || p.workload.healthy !== r.value.workload.healthy || JSON.stringify(p.lastError) !== JSON.stringify(r.value.lastError)) {
            await this.d.storage.appendDeviceEvent(clientId, now, 'status', { version: r.value.version, slot: r.value.slot, state: r.value.state, healthy: r.value.workload.healthy, lastError: r.value.lastError });
          }
          await this.d.rollouts().onDeviceStatus(clientId, r.value);
          return;
        }
        case 'presence': {
          const r = decode('presence', payload);
          if (!r.ok) return this.reject(clientId, topic, r.code, r.reason);
          this.d.metrics.messages.inc({ kind: 'presence' });
          // The connection is the truth; a presence payload (e.g. the last will of a connection that a
          // reconnect just replaced) cannot mark a connected device offline.
          const connected = this.d.broker()?.isConnected(clientId) ?? r.value.online;
          await this.d.storage.setPresence(clientId, r.value.online || connected, now);
          return;
        }
        case 'events': {
          const r = decode('events', payload);
          if (!r.ok) return this.reject(clientId, topic, r.code, r.reason);
          this.d.metrics.messages.inc({ kind: 'events' });
          await this.d.storage.appendDeviceEvent(clientId, now, 'event', r.value);
          await this.d.rollouts().onDeviceEvent(clientId, r.value);
          return;
        }
        case 'request': {
          const r = decode('request', payload);
          if (!r.ok) {
            this.reject(clientId, topic, r.code, r.reason);
            // answer if the txid is readable, so a device does not wait for its timeout
            const txid = safeTxid(payload);
            if (txid) this.respond(clientId, { v: 1, txid, status: 'error', error: { code: r.code, message: r.reason.slice(0, 500) } });
            return;
          }
          this.d.metrics.messages.inc({ kind: 'request' });
          await this.onRequest(clientId, r.value);
          return;
        }
        default:
          return this.reject(clientId, topic, 'BAD_TOPIC', `devices do not publish ${t.kind}`);
      }
    } catch (e) {
      this.d.log.warn({ device: clientId, topic, err: (e as Error).message }, 'device message handling failed');
    }
  }

  private respond(deviceId: string, res: DeviceResponse): void {
    const b = this.d.broker();
    if (!b) return;
    b.publish(topics.response(deviceId), encode('response', res), { qos: 1, retain: false }).catch((e: unknown) =>
      this.d.log.warn({ device: deviceId, err: (e as Error).message }, 'publishing response failed'),
    );
  }

  /** A connection without a certificate (embedded broker TLS listener) may only send enroll requests. */
  private async onEnrollSession(deviceId: string, topic: string, kind: string, payload: Buffer): Promise<void> {
    const r = kind === 'request' ? decode('request', payload) : null;
    if (!r || !r.ok || r.value.type !== 'enroll') {
      this.reject(deviceId, topic, 'ENROLL_ONLY', 'a device without a certificate may only send enroll requests');
      const txid = safeTxid(payload);
      if (txid) this.respond(deviceId, { v: 1, txid, status: 'error', error: { code: 'ENROLL_ONLY', message: 'enroll first: this connection has no device certificate' } });
      return;
    }
    this.d.metrics.messages.inc({ kind: 'request' });
    await this.onRequest(deviceId, r.value);
  }

  private async onRequest(deviceId: string, req: DeviceRequest): Promise<void> {
    if (req.type === 'enroll') {
      const e = this.d.enrollment();
      const r = e ? await e.enroll(deviceId, req.token, req.csrPem) : { ok: false as const, code: 'NOT_SUPPORTED', message: 'certificate enrollment is not enabled on this server (dev mode uses device credentials)' };
      if (r.ok) this.respond(deviceId, { v: 1, txid: req.txid, status: 'ok', data: { type: 'enroll', certPem: r.certPem, caPem: r.caPem } });
      else this.respond(deviceId, { v: 1, txid: req.txid, status: 'error', error: { code: r.code, message: r.message } });
      return;
    }
    const rel = await this.d.storage.getReleaseBySha(req.artifact);
    const block = rel ? await this.d.artifacts.readBlock(req.artifact, req.offset, Math.min(req.length, MAX_BLOCK_BYTES)) : null;
    if (!rel || !block) {
      this.respond(deviceId, { v: 1, txid: req.txid, status: 'error', error: { code: 'NOT_FOUND', message: `no artifact ${req.artifact}` } });
      return;
    }
    if (req.offset > rel.size) {
      this.respond(deviceId, { v: 1, txid: req.txid, status: 'error', error: { code: 'BAD_OFFSET', message: `offset ${req.offset} is past the end (${rel.size})` } });
      return;
    }
    this.d.metrics.bytesServed.inc({ via: 'mqtt' }, block.data.length);
    this.respond(deviceId, { v: 1, txid: req.txid, status: 'ok', data: { type: 'block', offset: req.offset, dataB64: block.data.toString('base64'), eof: block.eof } });
  }
}

function safeTxid(payload: Buffer): string | null {
  try {
    const v = JSON.parse(payload.toString('utf8')) as { txid?: unknown };
    return typeof v?.txid === 'string' && /^[A-Za-z0-9_-]{1,64}$/.test(v.txid) ? v.txid : null;
  } catch {
    return null;
  }
}
