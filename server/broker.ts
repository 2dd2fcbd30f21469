/**
 * Embedded MQTT broker (Aedes) with device authentication, topic ACLs and per-device message budgets.
 *
 * ACL (pure functions below, tested against a live broker in test/server/acl.test.ts):
 *   a device (client id = username = device id) may PUBLISH only  uz/v1/dev/{own id}/{status|presence|events|req}
 *   and SUBSCRIBE only filters inside uz/v1/dev/{own id}/ that match {desired|res} (or + / #, which the broker
 *   then only ever matches against its own topics). It can never publish `desired` or `res`: those come from
 *   the server, which publishes in-process (bypassing the ACL). A refused publish closes the connection
 *   (MQTT 3.1.1 has no publish NACK); a refused subscription gets SUBACK 0x80.
 * The server side never subscribes over the network: it sees every accepted publish through the broker's
 * `publish` event. `BrokerPort` is the seam where an external broker (Mosquitto + an MQTT client) plugs in.
 */
import { createServer, type Server } from 'node:net';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { Aedes } from 'aedes';
import { MAX_MESSAGE_BYTES, parseTopic, TOPIC_ROOT } from '../lib/protocol.js';
import { UzError } from '../lib/errors.js';

export interface BrokerPort {
  publish(topic: string, payload: Buffer, opts: { qos: 0 | 1; retain: boolean }): Promise<void>;
  /** Accepted device publishes (after ACL + rate checks). */
  onMessage(cb: (deviceId: string, topic: string, payload: Buffer) => void): void;
  onPresence(cb: (deviceId: string, online: boolean) => void): void;
  connectedCount(): number;
  /** True while a connection with this client id is established. */
  isConnected(deviceId: string): boolean;
}

const DEVICE_PUB = new Set(['status', 'presence', 'events', 'request']);

export function aclPublish(clientId: string, topic: string): boolean {
  const t = parseTopic(topic);
  return !!t && t.deviceId === clientId && DEVICE_PUB.has(t.kind);
}

export function aclSubscribe(clientId: string, filter: string): boolean {
  const prefix = `${TOPIC_ROOT}/dev/${clientId}/`;
  if (!filter.startsWith(prefix)) return false;
  const rest = filter.slice(prefix.length);
  return rest === 'desired' || rest === 'res' || rest === '+' || rest === '#';
}

/** Token bucket per client: `rate` tokens/s, capacity `burst`. */
export class RateLimiter {
  private readonly b = new Map<string, { tokens: number; at: number }>();
  constructor(private readonly rate: number, private readonly burst: number, private readonly now: () => number = Date.now) {}
  take(key: string): boolean {
    const t = this.now();
    const cur = this.b.get(key) ?? { tokens: this.burst, at: t };
    cur.tokens = Math.min(this.burst, cur.tokens + ((t - cur.at) / 1000) * this.rate);
    cur.at = t;
    this.b.set(key, cur);
    if (cur.tokens < 1) return false;
    cur.tokens -= 1;
    return true;
  }
  forget(key: string): void {
    this.b.delete(key);
  }
}

export interface EmbeddedBrokerOptions {
  authenticate(deviceId: string, password: string | undefined): Promise<boolean>;
  ratePerSec: number;
  burst: number;
  log: { info(o: object, m?: string): void; warn(o: object, m?: string): void };
  onRejected?(reason: 'auth' | 'acl-publish' | 'acl-subscribe' | 'rate' | 'too-large'): void;
}

export class EmbeddedBroker implements BrokerPort {
  private msgCbs: ((deviceId: string, topic: string, payload: Buffer) => void)[] = [];
  private presenceCbs: ((deviceId: string, online: boolean) => void)[] = [];
  private tcp: Server | null = null;
  private readonly limiter: RateLimiter;
  private readonly current = new Map<string, object>();

  private constructor(readonly aedes: Aedes, private readonly o: EmbeddedBrokerOptions) {
    this.limiter = new RateLimiter(o.ratePerSec, o.burst);
  }

  static async create(o: EmbeddedBrokerOptions): Promise<EmbeddedBroker> {
    const aedes = await Aedes.createBroker({ heartbeatInterval: 60_000, connectTimeout: 10_000, maxClientsIdLength: 64, queueLimit: 100, drainTimeout: 30_000 });
    const b = new EmbeddedBroker(aedes, o);
    aedes.authenticate = (client, username, password, done) => {
      const id = client.id;
      const fail = (): void => {
        o.onRejected?.('auth');
        const e = new Error('bad username or password') as Error & { returnCode: number };
        e.returnCode = 4;
        done(e, false);
      };
      if (!username || username !== id || !parseTopic(`${TOPIC_ROOT}/dev/${id}/status`)) return fail();
      o.authenticate(id, password?.toString('utf8')).then(
        (ok) => (ok ? done(null, true) : fail()),
        (err: unknown) => {
          o.log.warn({ device: id, err: (err as Error).message }, 'device authentication error');
          fail();
        },
      );
    };
    aedes.authorizePublish = (client, packet, cb) => {
      if (!client) return cb(new Error('no client'));
      if (!aclPublish(client.id, packet.topic)) {
        o.onRejected?.('acl-publish');
        o.log.warn({ device: client.id, topic: packet.topic }, 'publish refused by ACL; disconnecting');
        return cb(new Error('topic not allowed'));
      }
      if (packet.payload && packet.payload.length > MAX_MESSAGE_BYTES) {
        o.onRejected?.('too-large');
        o.log.warn({ device: client.id, bytes: packet.payload.length }, 'message too large; disconnecting');
        return cb(new Error('message too large'));
      }
      if (!b.limiter.take(client.id)) {
        o.onRejected?.('rate');
        o.log.warn({ device: client.id }, 'device exceeded its message budget; disconnecting');
        return cb(new Error('rate limit'));
      }
      cb(null);
    };
    aedes.authorizeSubscribe = (client, sub, cb) => {
      if (aclSubscribe(client.id, sub.topic)) return cb(null, sub);
      o.onRejected?.('acl-subscribe');
      o.log.warn({ device: client.id, topic: sub.topic }, 'subscription refused by ACL');
      cb(null, null);
    };
    aedes.on('publish', (packet, client) => {
      if (!client) return;
      const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload as string);
      for (const cb of b.msgCbs) cb(client.id, packet.topic, payload);
    });
    // A reconnect with the same client id takes over the session; the old connection's disconnect may arrive
    // after the new one is ready, so only the current connection of an id reports presence.
    const current = b.current;
    aedes.on('clientReady', (client) => {
      current.set(client.id, client);
      for (const cb of b.presenceCbs) cb(client.id, true);
    });
    aedes.on('clientDisconnect', (client) => {
      if (current.get(client.id) !== client) return;
      current.delete(client.id);
      b.limiter.forget(client.id);
      for (const cb of b.presenceCbs) cb(client.id, false);
    });
    return b;
  }

  /** Listens on TCP; PORT_IN_USE if the port is taken. Returns the bound port. */
  async listen(host: string, port: number): Promise<number> {
    const srv = createServer(this.aedes.handle);
    await new Promise<void>((resolve, reject) => {
      srv.once('error', (e: NodeJS.ErrnoException) =>
        reject(e.code === 'EADDRINUSE' ? new UzError('PORT_IN_USE', `MQTT port ${host}:${port} is already in use (choose another with --mqtt-port)`, { port }) : e),
      );
      srv.listen(port, host, () => resolve());
    });
    this.tcp = srv;
    const a = srv.address();
    return typeof a === 'object' && a ? a.port : port;
  }

  /** Hands an upgraded WebSocket stream (MQTT over WebSocket) to the broker. */
  handleStream(stream: Duplex, req: IncomingMessage): void {
    this.aedes.handle(stream, req);
  }

  publish(topic: string, payload: Buffer, opts: { qos: 0 | 1; retain: boolean }): Promise<void> {
    return new Promise((resolve, reject) => {
      this.aedes.publish({ cmd: 'publish', topic, payload, qos: opts.qos, retain: opts.retain, dup: false }, (err) => (err ? reject(err) : resolve()));
    });
  }

  onMessage(cb: (deviceId: string, topic: string, payload: Buffer) => void): void {
    this.msgCbs.push(cb);
  }
  onPresence(cb: (deviceId: string, online: boolean) => void): void {
    this.presenceCbs.push(cb);
  }
  connectedCount(): number {
    return this.aedes.connectedClients;
  }
  isConnected(deviceId: string): boolean {
    return this.current.has(deviceId);
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => this.aedes.close(() => r()));
    if (this.tcp) {
      const t = this.tcp;
      this.tcp = null;
      await new Promise<void>((r) => t.close(() => r()));
    }
  }
}
