/**
 * The agent's MQTT loop (lib/protocol.ts is the contract with the server). The device only connects OUT:
 * TLS with a client certificate (plain TCP only in dev mode), a persistent session (clean: false, clientId =
 * deviceId) so QoS 1 messages queued while we were away still arrive, a retained last will that says
 * {online:false}, and reconnects with capped, jittered backoff (MQTT.js's own fixed-period reconnect is off).
 *
 * Every incoming payload is checked at the edge (size, JSON, schema) by lib/protocol decode(); a bad one is
 * logged with its reason code and dropped, and the agent keeps running. The agent turns engine notices into
 * retained status and QoS 1 events, and serves the MQTT block source (request/response matched by txid).
 */
import { randomBytes } from 'node:crypto';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { UzError } from '../lib/errors.js';
import { type Desired, type ReleaseRef, type Status, decode, encode, topics } from '../lib/protocol.js';
import type { AgentConfig } from './config.js';
import type { EngineNotice, UpdateEngine } from './engine.js';
import { httpSource } from './install/http-source.js';
import { mqttBlockSource, type BlockAnswer, type BlockRequester } from './install/mqtt-source.js';
import type { RangeSource } from './install/source.js';
import { backoffDelay } from './state/retry.js';

/** `lastError` here (e.g. DEVICE_CONFIG_INVALID found at boot) is reported unless the engine has a newer one. */
export type StatusExtra = Pick<Status, 'board' | 'version' | 'workload' | 'bootControl'> & Partial<Pick<Status, 'data' | 'lastError'>>;

export interface AgentDeps {
  config: AgentConfig;
  /** Board, running version, workload and boot-control facts for the status message. */
  statusExtra: () => Promise<StatusExtra>;
  log: (line: string) => void;
  /** PEM contents (read by the caller from config.tls paths). */
  tls?: { ca?: Buffer | string | string[]; cert?: Buffer; key?: Buffer };
  /**
   * Dev mode without a client certificate: username = device id, password = a per-device secret the device
   * generated itself (see devSecret in updater/device/main.ts); the server registers it on first use (TOFU).
   */
  password?: string;
  now?: () => number;
  random?: () => number;
  /** Injectable for tests; defaults to mqtt.connect. */
  connect?: (url: string, opts: IClientOptions) => MqttClient;
  requestTimeoutMs?: number;
  reconnect?: { baseMs: number; capMs: number };
}

type EngineLike = Pick<UpdateEngine, 'offer' | 'record' | 'bootedSlot'>;

interface Pending {
  resolve: (a: BlockAnswer) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class MqttAgent implements BlockRequester {
  private client: MqttClient | null = null;
  private engine: EngineLike | null = null;
  private early: Desired | null = null;
  private stopping = false;
  private attempt = 0;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private readonly pending = new Map<string, Pending>();
  /** Counters for status and tests. */
  readonly stats = { connects: 0, rejected: 0, desired: 0, refused: 0 };

  constructor(private readonly d: AgentDeps) {}

  private get id(): string {
    return this.d.config.deviceId;
  }

  private now(): number {
    return (this.d.now ?? Date.now)();
  }

  get connected(): boolean {
    return this.client?.connected ?? false;
  }

  /** The engine for this boot; a desired message that arrived before it is handed over now. */
  attach(engine: EngineLike): void {
    this.engine = engine;
    if (this.early) {
      const d = this.early;
      this.early = null;
      void this.offer(d);
    }
  }

  /** Bundle source per config: HTTP Range from the update server, or MQTT blocks. */
  sourceFor(release: ReleaseRef): RangeSource {
    if (this.d.config.transport === 'mqtt') return mqttBlockSource(this, release.sha256);
    const want = new URL(this.d.config.serverUrl).origin;
    const got = new URL(release.bundleUrl).origin;
    if (got !== want) throw new UzError('BUNDLE_URL_UNTRUSTED', `bundle URL ${got} is not on the update server ${want}`, { url: release.bundleUrl });
    if (!this.d.config.devMode && !release.bundleUrl.startsWith('https:')) throw new UzError('BUNDLE_URL_UNTRUSTED', 'bundle URL must be https unless devMode', {});
    return httpSource(release.bundleUrl, { totalSize: release.size, tls: this.d.tls ?? {} });
  }

  start(): void {
    this.stopping = false;
    const c = this.d.config;
    const url = c.brokerUrl.replace(/^tcp:/, 'mqtt:').replace(/^tls:/, 'mqtts:');
    const opts: IClientOptions = {
      clientId: this.id,
      clean: false,
      keepalive: c.keepaliveSeconds,
      protocolVersion: 4,
      reconnectPeriod: 0, // we reconnect ourselves, with jitter
      connectTimeout: 15_000,
      will: { topic: topics.presence(this.id), payload: encode('presence', { v: 1, online: false }), qos: 1, retain: true },
      ...(this.d.password ? { username: this.id, password: this.d.password } : {}),
      ...(url.startsWith('mqtts:') ? { ca: this.d.tls?.ca, cert: this.d.tls?.cert, key: this.d.tls?.key, rejectUnauthorized: true } : {}),
    };
    const client = (this.d.connect ?? mqtt.connect)(url, opts);
    this.client = client;
    client.on('connect', () => void this.onConnect());
    client.on('message', (topic, payload) => this.onMessage(topic, payload));
    client.on('error', (e: Error & { code?: unknown }) => {
      // A CONNACK refusal (numeric return code): 4 = bad credentials, 5 = not authorized (e.g. a revoked
      // certificate). Logged on its own line so the console says why the device is offline.
      if (typeof e.code === 'number') {
        this.stats.refused++;
        this.d.log(`UZ-MQTT refused rc=${e.code} broker=${c.brokerUrl} detail=${JSON.stringify(e.message.slice(0, 200))}`);
      } else this.d.log(`UZ-MQTT error ${e.message}`);
    });
    client.on('close', () => this.scheduleReconnect());
  }

  private scheduleReconnect(): void {
    if (this.stopping || this.reconnectTimer) return;
    const r = this.d.reconnect ?? { baseMs: 1000, capMs: 60_000 };
    const wait = backoffDelay(this.attempt++, r, this.d.random);
    this.d.log(`UZ-MQTT disconnected; reconnecting in ${wait} ms`);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.stopping) this.client?.reconnect();
    }, wait);
  }

  private async onConnect(): Promise<void> {
    this.attempt = 0;
    this.stats.connects++;
    this.d.log(`UZ-MQTT connected broker=${this.d.config.brokerUrl} client=${this.id}`);
    const client = this.client!;
    try {
      await client.subscribeAsync([topics.desired(this.id), topics.response(this.id)], { qos: 1 });
      await client.publishAsync(topics.presence(this.id), encode('presence', { v: 1, online: true, ts: this.now() }), { qos: 1, retain: true });
      await this.publishStatus();
    } catch (e) {
      this.d.log(`UZ-MQTT setup failed: ${(e as Error).message}`);
    }
  }

  private reject(kind: string, code: string, reason: string): void {
    this.stats.rejected++;
    this.d.log(`UZ-REJECT topic=${kind} code=${code} reason=${JSON.stringify(reason.slice(0, 200))}`);
  }

  private onMessage(topic: string, payload: Buffer): void {
    try {
      if (topic === topics.desired(this.id)) {
        const r = decode('desired', payload);
        if (!r.ok) return this.reject('desired', r.code, r.reason);
        this.stats.desired++;
        void this.offer(r.value);
      } else if (topic === topics.response(this.id)) {
        const r = decode('response', payload);
        if (!r.ok) return this.reject('response', r.code, r.reason);
        const p = this.pending.get(r.value.txid);
        if (!p) return this.reject('response', 'MSG_UNEXPECTED', `no request with txid ${r.value.txid}`);
        this.pending.delete(r.value.txid);
        clearTimeout(p.timer);
        const v = r.value;
        if (v.status === 'error' || !v.data || v.data.type !== 'block') {
          p.reject(new UzError(v.error?.code ?? 'BLOCK_ERROR', v.error?.message ?? 'server could not serve the block', {}));
        } else p.resolve({ offset: v.data.offset, data: Buffer.from(v.data.dataB64, 'base64'), eof: v.data.eof });
      } else this.reject('unknown', 'MSG_TOPIC', topic);
    } catch (e) {
      this.reject('any', 'MSG_HANDLER', (e as Error).message);
    }
  }

  private async offer(d: Desired): Promise<void> {
    if (!this.engine) {
      this.early = d;
      return;
    }
    const r = await this.engine.offer(d);
    this.d.log(`UZ-DESIRED txid=${d.txid} version=${d.release?.version ?? 'none'} -> ${r}`);
  }

  /** Engine notices → retained status on state changes, QoS 1 events for update phases. */
  notify(n: EngineNotice): void {
    if (n.kind === 'state') void this.publishStatus();
    if (n.kind === 'phase') {
      const ev = { v: 1 as const, ts: this.now(), ...n.event };
      void this.publish(topics.events(this.id), () => encode('events', ev), false);
    }
  }

  async publishStatus(): Promise<void> {
    if (!this.engine?.record) return; // not started yet: the engine announces its state after recovery
    try {
      const extra = await this.d.statusExtra();
      const rec = this.engine.record;
      const status: Status = {
        v: 1,
        deviceId: this.id,
        ts: this.now(),
        slot: this.engine.bootedSlot,
        rollbackCounter: rec.floor,
        state: rec.state,
        ...extra,
        ...(rec.lastError && /^[A-Z][A-Z0-9_]{1,63}$/.test(rec.lastError.code) ? { lastError: { code: rec.lastError.code, message: rec.lastError.message.slice(0, 1000) } } : {}),
      };
      await this.publish(topics.status(this.id), () => encode('status', status), true);
    } catch (e) {
      this.d.log(`UZ-MQTT status not published: ${(e as Error).message}`);
    }
  }

  private async publish(topic: string, body: () => Buffer, retain: boolean): Promise<void> {
    if (!this.client || this.stopping) return;
    try {
      await this.client.publishAsync(topic, body(), { qos: 1, retain });
    } catch (e) {
      this.d.log(`UZ-MQTT publish ${topic} failed: ${(e as Error).message}`);
    }
  }

  requestBlock(artifact: string, offset: number, length: number, signal: AbortSignal): Promise<BlockAnswer> {
    const txid = randomBytes(9).toString('base64url');
    return new Promise<BlockAnswer>((resolve, reject) => {
      if (!this.client) return reject(new UzError('MQTT_OFFLINE', 'agent not started', {}));
      const timeoutMs = this.d.requestTimeoutMs ?? 20_000;
      const timer = setTimeout(() => {
        this.pending.delete(txid);
        reject(new UzError('MQTT_TIMEOUT', `no answer to block request at ${offset} within ${timeoutMs} ms`, { offset }));
      }, timeoutMs);
      this.pending.set(txid, { resolve, reject, timer });
      signal.addEventListener(
        'abort',
        () => {
          clearTimeout(timer);
          this.pending.delete(txid);
          reject(Object.assign(new Error('aborted'), { name: 'AbortError' }));
        },
        { once: true },
      );
      this.client.publish(topics.request(this.id), encode('request', { v: 1, txid, type: 'block', artifact, offset, length }), { qos: 1 });
    });
  }

  /** Clean shutdown: say offline (retained), then disconnect. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new UzError('MQTT_OFFLINE', 'agent stopping', {}));
    }
    this.pending.clear();
    const c = this.client;
    if (!c) return;
    if (c.connected) await c.publishAsync(topics.presence(this.id), encode('presence', { v: 1, online: false, ts: this.now() }), { qos: 1, retain: true }).catch(() => {});
    await c.endAsync(false).catch(() => {});
    this.client = null;
  }

  /** Drops the connection without a clean DISCONNECT (tests: makes the broker publish the last will). */
  kill(): void {
    this.stopping = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    const c = this.client as unknown as { stream?: { destroy: () => void } } | null;
    c?.stream?.destroy();
    void this.client?.endAsync(true).catch(() => {});
    this.client = null;
  }
}
