/**
 * External broker (Mosquitto, EMQX, any MQTT 5 broker) behind the same `BrokerPort` seam as the embedded Aedes.
 * The server connects as ONE privileged client (identity `uz.server` in server/mosquitto/acl: read/write
 * uz/v1/#) and:
 *  - subscribes `$share/<group>/uz/v1/dev/+/+` (MQTT 5 shared subscription): each device message goes to one
 *    instance of the group, so N server instances split the device traffic instead of all handling it;
 *  - treats the topic's device id as the sender: the BROKER's ACL guarantees a device can only publish under
 *    its own id (that is why the shipped ACL exists) — the server never sees unauthenticated traffic;
 *  - publishes desired states (retained, QoS 1) and responses like the embedded broker does in-process.
 * Authentication, topic ACLs and revocation (CRL) are the broker's job here. The server still drops
 * oversized messages and applies the per-device message budget (dropping, since it cannot disconnect).
 * Presence comes from the devices' retained `presence` messages and their last will (a broker has no portable
 * connect/disconnect event).
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { MAX_MESSAGE_BYTES, TOPIC_ROOT, decode, parseTopic } from '../lib/protocol.js';
import { UzError } from '../lib/errors.js';
import { RateLimiter, type ServerBroker, type SessionKind } from './broker.js';

export interface ExternalBrokerOptions {
  url: string;
  clientId?: string;
  username?: string;
  password?: string;
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  /** '' = plain subscription (every instance gets every message). */
  sharedGroup: string;
  ratePerSec: number;
  burst: number;
  log: { info(o: object, m?: string): void; warn(o: object, m?: string): void };
  onRejected?(reason: 'rate' | 'too-large'): void;
}

const DEVICE_KINDS = new Set(['status', 'presence', 'events', 'request']);

export class ExternalBroker implements ServerBroker {
  readonly kind = 'external' as const;
  private client: MqttClient | null = null;
  private msgCbs: ((deviceId: string, topic: string, payload: Buffer, session: SessionKind) => void)[] = [];
  private presenceCbs: ((deviceId: string, online: boolean) => void)[] = [];
  private reconnectCbs: (() => void)[] = [];
  private readonly online = new Set<string>();
  private readonly limiter: RateLimiter;
  readonly filter: string;

  constructor(private readonly o: ExternalBrokerOptions) {
    this.limiter = new RateLimiter(o.ratePerSec, o.burst);
    const base = `${TOPIC_ROOT}/dev/+/+`;
    this.filter = o.sharedGroup ? `$share/${o.sharedGroup}/${base}` : base;
  }

  /** Connects and subscribes; rejects (MQTT_UNREACHABLE) if the broker refuses or cannot be reached in time. */
  async connect(timeoutMs = 15_000): Promise<void> {
    const o = this.o;
    const read = (f: string | undefined, what: string): Buffer | undefined => {
      if (!f) return undefined;
      try {
        return readFileSync(f);
      } catch (e) {
        throw new UzError('CONFIG_INVALID', `cannot read the MQTT ${what} ${f}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { path: f });
      }
    };
    const opts: IClientOptions = {
      clientId: o.clientId ?? `uz-server-${hostname().replace(/[^A-Za-z0-9-]/g, '').slice(0, 24)}-${process.pid}`,
      protocolVersion: 5,
      clean: true,
      keepalive: 30,
      reconnectPeriod: 1000,
      connectTimeout: timeoutMs,
      resubscribe: true,
      ...(o.username !== undefined ? { username: o.username } : {}),
      ...(o.password !== undefined ? { password: o.password } : {}),
      ...(o.caFile ? { ca: read(o.caFile, 'CA file') } : {}),
      ...(o.certFile ? { cert: read(o.certFile, 'client certificate') } : {}),
      ...(o.keyFile ? { key: read(o.keyFile, 'client key') } : {}),
    };
    const c = mqtt.connect(o.url, opts);
    this.client = c;
    c.on('message', (topic, payload) => this.onPublish(topic, payload));
    try {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no CONNACK within ${timeoutMs} ms`)), timeoutMs);
        c.once('connect', () => (clearTimeout(t), resolve()));
        c.once('error', (e) => (clearTimeout(t), reject(e)));
      });
      const granted = await c.subscribeAsync(this.filter, { qos: 1 });
      const g = granted[0];
      if (!g || g.qos > 2) throw new Error(`the broker refused the subscription ${this.filter} (check the ACL for the server's identity)`);
    } catch (e) {
      await c.endAsync(true).catch(() => undefined);
      this.client = null;
      throw new UzError('MQTT_UNREACHABLE', `cannot use the MQTT broker ${redactMqttUrl(o.url)}: ${(e as Error).message}`, { url: redactMqttUrl(o.url) });
    }
    let first = true;
    c.on('connect', () => {
      if (first) return void (first = false);
      o.log.info({ url: redactMqttUrl(o.url) }, 'reconnected to the MQTT broker');
      for (const cb of this.reconnectCbs) cb();
    });
    c.on('offline', () => o.log.warn({ url: redactMqttUrl(o.url) }, 'lost the connection to the MQTT broker; reconnecting'));
    c.on('error', (e) => o.log.warn({ err: e.message }, 'MQTT broker connection error'));
  }

  private onPublish(topic: string, payload: Buffer): void {
    const t = parseTopic(topic);
    if (!t || !DEVICE_KINDS.has(t.kind)) return; // our own desired/res publishes come back through uz/v1/#
    if (payload.length > MAX_MESSAGE_BYTES) {
      this.o.onRejected?.('too-large');
      return;
    }
    if (!this.limiter.take(t.deviceId)) {
      this.o.onRejected?.('rate');
      return;
    }
    if (t.kind === 'presence') {
      const p = decode('presence', payload);
      if (p.ok) {
        const was = this.online.has(t.deviceId);
        if (p.value.online) this.online.add(t.deviceId);
        else this.online.delete(t.deviceId);
        if (was !== p.value.online) for (const cb of this.presenceCbs) cb(t.deviceId, p.value.online);
      }
    } else if (t.kind === 'status') {
      this.online.add(t.deviceId);
    }
    for (const cb of this.msgCbs) cb(t.deviceId, topic, payload, 'device');
  }

  async publish(topic: string, payload: Buffer, opts: { qos: 0 | 1; retain: boolean }): Promise<void> {
    if (!this.client) throw new Error('not connected to the MQTT broker');
    await this.client.publishAsync(topic, payload, { qos: opts.qos, retain: opts.retain });
  }
  onMessage(cb: (deviceId: string, topic: string, payload: Buffer, session: SessionKind) => void): void {
    this.msgCbs.push(cb);
  }
  onPresence(cb: (deviceId: string, online: boolean) => void): void {
    this.presenceCbs.push(cb);
  }
  /** Called after the connection to the broker came back (the server re-publishes desired states). */
  onReconnect(cb: () => void): void {
    this.reconnectCbs.push(cb);
  }
  /** Devices this instance last saw online (its share of the traffic). */
  connectedCount(): number {
    return this.online.size;
  }
  isConnected(deviceId: string): boolean {
    return this.online.has(deviceId);
  }
  kick(_deviceId: string): void {
    // An external broker has no portable admin API; revocation there is the broker's CRL (see docs/server.md).
  }
  async close(): Promise<void> {
    const c = this.client;
    this.client = null;
    if (c) await c.endAsync().catch(() => undefined);
  }
}

export function redactMqttUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString().replace(/\/$/, '');
  } catch {
    return 'mqtt://…';
  }
}
