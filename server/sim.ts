/**
 * Fleet simulator: lightweight devices speaking lib/protocol.ts over MQTT (TCP or WebSocket). Each device
 * connects with its credentials (dev mode: username = id, password derived from a seed), publishes presence
 * (retained, with a last will) and status (retained), follows its retained desired state and reports update
 * events. Devices chosen by --fail-health report a failed health check and roll back; --offline devices
 * register once and then stay away. Not the real agent (updater/): no slots are written.
 */
import { createHash } from 'node:crypto';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { decode, encode, topics, type Desired, type Status, type UpdateEvent } from '../lib/protocol.js';

export type DownloadMode = 'none' | 'range' | 'full' | 'mqtt';

export interface FleetSimOptions {
  /** mqtt://host:port or ws://host:port/mqtt */
  url: string;
  devices: number;
  prefix?: string;
  seed?: string;
  /** Percent of devices whose health check fails after an update (they roll back). */
  failHealthPct?: number;
  /** Percent of devices that connect once (to register and report status) and then stay offline. */
  offlinePct?: number;
  board?: string;
  version?: string;
  channelNote?: string;
  /** Delay between update phases. */
  stepMs?: number;
  download?: DownloadMode;
  /** Connect this many devices at a time. */
  connectBatch?: number;
  log?: (line: string) => void;
  /** Extra MQTT options per device (e.g. TLS client certificate: { ca, cert, key }); replaces the password when it sets `password: undefined`. */
  connectOptions?: (deviceId: string) => Partial<IClientOptions>;
}

/** Exactly round(n·pct/100) indices, spread evenly. */
export function pickEvenly(n: number, pct: number): Set<number> {
  const out = new Set<number>();
  if (pct <= 0) return out;
  for (let i = 0; i < n; i++) if (Math.floor(((i + 1) * pct) / 100) > Math.floor((i * pct) / 100)) out.add(i);
  return out;
}

export function simPassword(seed: string, id: string): string {
  return createHash('sha256').update(`${seed}\0${id}`).digest('base64url');
}

/** Simulated sync height: where the simulated nodes start, and when. */
const SIM_GENESIS_HEIGHT = 1_000_000;
const SIM_STARTED = Date.now();

export class SimDevice {
  client: MqttClient | null = null;
  version: string;
  slot: 'A' | 'B' = 'A';
  state: Status['state'] = 'idle';
  /** Every desired state received that carried a release (txid, version). */
  readonly received: { txid: string; version: string; deploymentId: string | null }[] = [];
  /** Completed update attempts: txid → outcome event. */
  readonly handled = new Map<string, UpdateEvent>();
  installs = 0;
  bytesDownloaded = 0;
  lastError: Status['lastError'];
  private busy = false;
  private pendingReq = new Map<string, (data: Buffer | null, eof: boolean) => void>();

  constructor(readonly id: string, private readonly password: string, readonly failsHealth: boolean, private readonly o: Required<Pick<FleetSimOptions, 'url' | 'board' | 'stepMs' | 'download'>> & { version: string; log: (l: string) => void; connectOptions?: Partial<IClientOptions> }) {
    this.version = o.version;
  }

  status(): Status {
    return {
      v: 1, deviceId: this.id, ts: Date.now(), board: this.o.board, version: this.version, slot: this.slot, rollbackCounter: 1,
      bootControl: { primary: this.slot, tryPending: null, bad: [] }, state: this.state,
      // A node that keeps syncing: one momentum per 10 s since the simulator started (what znnd reports).
      workload: { name: 'app', version: this.version, healthy: true, detail: 'simulated', restarts: 0, height: SIM_GENESIS_HEIGHT + Math.floor((Date.now() - SIM_STARTED) / 10_000) },
      ...(this.lastError ? { lastError: this.lastError } : {}),
    };
  }

  connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      const c = mqtt.connect(this.o.url, {
        clientId: this.id, username: this.id, password: this.password, clean: true, reconnectPeriod: 300, connectTimeout: 10_000, keepalive: 30,
        will: { topic: topics.presence(this.id), payload: encode('presence', { v: 1, online: false }), qos: 1, retain: true },
        ...this.o.connectOptions,
      });
      this.client = c;
      let first = true;
      c.on('connect', () => {
        c.subscribe([topics.desired(this.id), topics.response(this.id)], { qos: 1 }, (err) => {
          if (err) return;
          this.publish('presence', encode('presence', { v: 1, online: true, ts: Date.now() }), true);
          this.publish('status', encode('status', this.status()), true);
          if (first) {
            first = false;
            resolve();
          }
        });
      });
      c.on('error', (e) => {
        if (first) {
          first = false;
          c.end(true);
          reject(e);
        }
      });
      c.on('message', (topic, payload) => this.onMessage(topic, payload));
    });
  }

  private publish(kind: 'presence' | 'status' | 'events' | 'req', payload: Buffer, retain = false): void {
    const topic = kind === 'presence' ? topics.presence(this.id) : kind === 'status' ? topics.status(this.id) : kind === 'events' ? topics.events(this.id) : topics.request(this.id);
    this.client?.publish(topic, payload, { qos: 1, retain });
  }

  private onMessage(topic: string, payload: Buffer): void {
    if (topic === topics.response(this.id)) {
      const r = decode('response', payload);
      if (!r.ok) return;
      const cb = this.pendingReq.get(r.value.txid);
      if (cb) {
        this.pendingReq.delete(r.value.txid);
        cb(r.value.status === 'ok' && r.value.data?.type === 'block' ? Buffer.from(r.value.data.dataB64, 'base64') : null, r.value.data?.type === 'block' ? r.value.data.eof : true);
      }
      return;
    }
    const d = decode('desired', payload);
    if (!d.ok) return this.o.log(`${this.id}: bad desired: ${d.reason}`);
    void this.onDesired(d.value);
  }

  private async onDesired(d: Desired): Promise<void> {
    if (!d.release) return;
    this.received.push({ txid: d.txid, version: d.release.version, deploymentId: d.deploymentId });
    const done = this.handled.get(d.txid);
    if (done) return this.publish('events', encode('events', { ...done, ts: Date.now() })); // re-report, idempotent
    if (d.release.version === this.version || this.busy) return;
    this.busy = true;
    try {
      await this.update(d);
    } catch (e) {
      this.o.log(`${this.id}: update error ${(e as Error).message}`);
    } finally {
      this.busy = false;
    }
  }

  private ev(d: Desired, phase: UpdateEvent['phase'], extra: Partial<UpdateEvent> = {}): UpdateEvent {
    return { v: 1, txid: d.txid, deploymentId: d.deploymentId, ts: Date.now(), phase, version: d.release!.version, ...extra };
  }

  private async update(d: Desired): Promise<void> {
    const rel = d.release!;
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    const step = async (phase: UpdateEvent['phase'], state: Status['state'], extra: Partial<UpdateEvent> = {}) => {
      this.state = state;
      this.publish('events', encode('events', this.ev(d, phase, extra)));
      await sleep(this.o.stepMs);
    };
    await step('accepted', 'checking');
    await step('downloading', 'downloading', { progress: { bytes: 0, total: rel.size } });
    this.bytesDownloaded += await this.download(rel.bundleUrl, rel.sha256, rel.size);
    await step('installing', 'installing');
    await step('rebooting', 'rebooting');
    await step('verifying', 'verifying');
    this.installs++;
    let outcome: UpdateEvent;
    if (this.failsHealth) {
      this.lastError = { code: 'HEALTH_CHECK_FAILED', message: `workload unhealthy after update to ${rel.version}` };
      outcome = this.ev(d, 'rolled-back', { error: this.lastError });
    } else {
      this.version = rel.version;
      this.slot = this.slot === 'A' ? 'B' : 'A';
      this.lastError = undefined;
      outcome = this.ev(d, 'success');
    }
    this.state = 'idle';
    this.handled.set(d.txid, outcome);
    this.publish('events', encode('events', outcome));
    this.publish('status', encode('status', this.status()), true);
  }

  private async download(url: string, sha256: string, size: number): Promise<number> {
    const mode = this.o.download;
    if (mode === 'none') return 0;
    if (mode === 'mqtt') {
      const data = await this.requestBlock(sha256, 0, Math.min(size, 64 * 1024));
      if (!data) throw new Error('block request failed');
      return data.length;
    }
    const headers: Record<string, string> = mode === 'range' ? { range: `bytes=0-${Math.min(size, 64 * 1024) - 1}` } : {};
    const res = await fetch(url, { headers });
    if (res.status !== (mode === 'range' ? 206 : 200)) throw new Error(`download HTTP ${res.status}`);
    const buf = Buffer.from(await res.arrayBuffer());
    if (mode === 'full' && createHash('sha256').update(buf).digest('hex') !== sha256) throw new Error('sha256 mismatch');
    return buf.length;
  }

  requestBlock(sha256: string, offset: number, length: number, timeoutMs = 10_000): Promise<Buffer | null> {
    const txid = `b${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.pendingReq.delete(txid);
        resolve(null);
      }, timeoutMs);
      this.pendingReq.set(txid, (data) => {
        clearTimeout(t);
        resolve(data);
      });
      this.publish('req', encode('request', { v: 1, txid, type: 'block', artifact: sha256, offset, length }));
    });
  }

  async disconnect(): Promise<void> {
    const c = this.client;
    this.client = null;
    if (c) await c.endAsync(true).catch(() => undefined);
  }
}

export class FleetSim {
  readonly devices: SimDevice[] = [];
  readonly offline = new Set<string>();
  constructor(readonly o: FleetSimOptions) {
    const n = o.devices;
    const fail = pickEvenly(n, o.failHealthPct ?? 0);
    const off = pickEvenly(n, o.offlinePct ?? 0);
    const prefix = o.prefix ?? 'sim';
    const seed = o.seed ?? 'uz-sim';
    const width = Math.max(4, String(n - 1).length);
    for (let i = 0; i < n; i++) {
      const id = `${prefix}-${String(i).padStart(width, '0')}`;
      this.devices.push(new SimDevice(id, simPassword(seed, id), fail.has(i), { url: o.url, board: o.board ?? 'rpi4', version: o.version ?? '1.0.0', stepMs: o.stepMs ?? 50, download: o.download ?? 'range', log: o.log ?? (() => undefined), connectOptions: o.connectOptions?.(id) }));
      if (off.has(i)) this.offline.add(id);
    }
  }

  /** Connects every device (in batches); offline ones disconnect again after reporting once. */
  async start(): Promise<void> {
    const batch = this.o.connectBatch ?? 50;
    for (let i = 0; i < this.devices.length; i += batch) {
      await Promise.all(this.devices.slice(i, i + batch).map((d) => d.connect()));
    }
    await new Promise((r) => setTimeout(r, 200));
    await Promise.all(this.devices.filter((d) => this.offline.has(d.id)).map((d) => d.disconnect()));
  }

  async stop(): Promise<void> {
    await Promise.all(this.devices.map((d) => d.disconnect()));
  }

  summary(): { devices: number; online: number; versions: Record<string, number>; installs: number; failedHealth: number } {
    const versions: Record<string, number> = {};
    for (const d of this.devices) versions[d.version] = (versions[d.version] ?? 0) + 1;
    return {
      devices: this.devices.length,
      online: this.devices.filter((d) => d.client?.connected).length,
      versions,
      installs: this.devices.reduce((a, d) => a + d.installs, 0),
      failedHealth: this.devices.filter((d) => d.failsHealth).length,
    };
  }
}
