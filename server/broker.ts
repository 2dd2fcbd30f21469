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
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { TLSSocket, createServer as createTlsServer, type Server as TlsServer, type TlsOptions } from 'node:tls';
import { Aedes, type Client } from 'aedes';
import { deviceIdFromCertificate, normalizeSerial } from '../firmware/ca/index.js';
import { MAX_MESSAGE_BYTES, parseTopic, TOPIC_ROOT } from '../lib/protocol.js';
import { UzError } from '../lib/errors.js';
import { IndexedRetainedPersistence } from './broker-persistence.js';

/** 'device': a full device session; 'enroll': a device without a certificate yet, allowed only to enroll. */
export type SessionKind = 'device' | 'enroll';

export interface BrokerPort {
  publish(topic: string, payload: Buffer, opts: { qos: 0 | 1; retain: boolean }): Promise<void>;
  /** Accepted device publishes (after ACL + rate checks). */
  onMessage(cb: (deviceId: string, topic: string, payload: Buffer, session: SessionKind) => void): void;
  onPresence(cb: (deviceId: string, online: boolean) => void): void;
  connectedCount(): number;
  /** True while a connection with this client id is established. */
  isConnected(deviceId: string): boolean;
}

/** What createServer holds: the embedded broker or an external one (server/broker-external.ts). */
export interface ServerBroker extends BrokerPort {
  readonly kind: 'embedded' | 'external';
  /** MQTT over WebSocket (embedded only). */
  handleStream?(stream: Duplex, req: IncomingMessage): void;
  /** Drops a device's connection now (revocation); a no-op where the broker cannot be told. */
  kick(deviceId: string): void;
  close(): Promise<void>;
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

/** The soft limit on open files of this process (Linux: /proc/self/limits), Infinity if unlimited, null if unknown. */
export function openFileLimit(): number | null {
  try {
    const m = /^Max open files\s+(\d+|unlimited)\s/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? (m[1] === 'unlimited' ? Infinity : Number(m[1])) : null;
  } catch {
    return null;
  }
}

/**
 * Default cap on MQTT connections per listener: the open-file limit minus a reserve (database files, HTTP API
 * and artifact downloads, logs), at least half the limit. 0 = no cap (limit unknown or unlimited).
 */
export function defaultMaxConnections(limit: number | null): number {
  if (limit === null || !Number.isFinite(limit)) return 0;
  return Math.max(Math.floor(limit / 2), limit - 512);
}

/** Enrollment sessions may only send requests and read their responses. */
export function aclEnrollPublish(clientId: string, topic: string): boolean {
  const t = parseTopic(topic);
  return !!t && t.deviceId === clientId && t.kind === 'request';
}
export function aclEnrollSubscribe(clientId: string, filter: string): boolean {
  return filter === `${TOPIC_ROOT}/dev/${clientId}/res`;
}

export interface EmbeddedBrokerOptions {
  authenticate(deviceId: string, password: string | undefined): Promise<boolean>;
  /** TLS listener: a verified fleet certificate naming `deviceId` with this serial (lower-case hex) connects. */
  authenticateCert?(deviceId: string, serial: string): Promise<boolean>;
  /** TLS listener without a client certificate: may this device enroll with this token (the MQTT password)? */
  authenticateEnroll?(deviceId: string, token: string): Promise<boolean>;
  ratePerSec: number;
  burst: number;
  /** Cap on connections per listener (0 = none); beyond it a new connection is closed at once and logged. */
  maxConnections?: number;
  log: { info(o: object, m?: string): void; warn(o: object, m?: string): void };
  onRejected?(reason: 'auth' | 'acl-publish' | 'acl-subscribe' | 'rate' | 'too-large' | 'connection-limit'): void;
}

export interface BrokerTlsOptions {
  keyPem: string;
  certPem: string;
  /** The fleet CA: client certificates must chain to it. */
  caPem: string;
  /** The CA's CRL: listed certificates are refused. */
  crlPem?: string;
  /**
   * Accept connections without a client certificate for enrollment only (password = enrollment token).
   * Without it the TLS handshake itself requires a valid, unrevoked client certificate.
   */
  enrollment: boolean;
}

export class EmbeddedBroker implements ServerBroker {
  readonly kind = 'embedded' as const;
  private msgCbs: ((deviceId: string, topic: string, payload: Buffer, session: SessionKind) => void)[] = [];
  private presenceCbs: ((deviceId: string, online: boolean) => void)[] = [];
  private tcp: Server | null = null;
  private tlsServer: TlsServer | null = null;
  private tlsOpts: TlsOptions | null = null;
  /** Clients that connected without a certificate to enroll. */
  private readonly enrolling = new WeakSet<Client>();
  private readonly limiter: RateLimiter;
  private readonly current = new Map<string, object>();

  private constructor(readonly aedes: Aedes, private readonly o: EmbeddedBrokerOptions) {
    this.limiter = new RateLimiter(o.ratePerSec, o.burst);
  }

  static async create(o: EmbeddedBrokerOptions): Promise<EmbeddedBroker> {
    const aedes = await Aedes.createBroker({
      heartbeatInterval: 60_000, connectTimeout: 10_000, maxClientsIdLength: 64, queueLimit: 100, drainTimeout: 30_000,
      // Retained messages indexed per device (the stock store scans all of them on every SUBSCRIBE: O(n²) connects).
      persistence: new IndexedRetainedPersistence(),
      // No cap on messages being routed at once. With a cap (Aedes' default is 100) the overflow waits in
      // mqemitter's queue, and that queue is drained by RECURSION whenever a message completes synchronously (a
      // device publish nobody subscribes to, i.e. every status/event: the server reads them from the 'publish'
      // event): a burst of a few thousand — 2,500 desired states dispatched at once while 10,000 devices report —
      // overflowed the stack ("Maximum call stack size exceeded" in mqemitter) and killed the server. In-flight
      // work stays bounded without the cap: each connection handles one read batch at a time, and the server's
      // own publishes are bounded by the rollout's maxInFlight.
      concurrency: 0,
    });
    const b = new EmbeddedBroker(aedes, o);
    aedes.authenticate = (client, username, password, done) => {
      const id = client.id;
      const fail = (): void => {
        o.onRejected?.('auth');
        const e = new Error('bad username or password') as Error & { returnCode: number };
        e.returnCode = 4;
        done(e, false);
      };
      const conn = client.conn as unknown;
      if (conn instanceof TLSSocket) return b.authenticateTls(client, conn, username, password, done);
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
      if (!(b.enrolling.has(client) ? aclEnrollPublish(client.id, packet.topic) : aclPublish(client.id, packet.topic))) {
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
      if (b.enrolling.has(client) ? aclEnrollSubscribe(client.id, sub.topic) : aclSubscribe(client.id, sub.topic)) return cb(null, sub);
      o.onRejected?.('acl-subscribe');
      o.log.warn({ device: client.id, topic: sub.topic }, 'subscription refused by ACL');
      cb(null, null);
    };
    aedes.on('publish', (packet, client) => {
      if (!client) return;
      const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload as string);
      const session: SessionKind = b.enrolling.has(client) ? 'enroll' : 'device';
      for (const cb of b.msgCbs) cb(client.id, packet.topic, payload, session);
    });
    // A reconnect with the same client id takes over the session; the old connection's disconnect may arrive
    // after the new one is ready, so only the current connection of an id reports presence.
    const current = b.current;
    aedes.on('clientReady', (client) => {
      if (b.enrolling.has(client)) return; // not a device session yet: no presence
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

  /**
   * TLS connections: a client certificate that verified against the fleet CA (and is not in the CRL) names the
   * device (CN + urn:uz:device SAN, which must equal the client id); no password is needed. A certificate that
   * did not verify is refused. Without a certificate, only an enrollment session (password = token) is allowed.
   */
  private authenticateTls(client: Client, conn: TLSSocket, username: string | undefined, password: Buffer | undefined, done: Parameters<Aedes['authenticate']>[3]): void {
    const id = client.id;
    const refuse = (why: string, code = 5): void => {
      this.o.onRejected?.('auth');
      this.o.log.warn({ device: id, reason: why }, 'TLS client refused');
      const e = Object.assign(new Error(why), { returnCode: code }) as Parameters<typeof done>[0];
      done(e, false);
    };
    const peer = conn.getPeerX509Certificate();
    if (peer) {
      if (!conn.authorized) return refuse(`client certificate not accepted: ${String(conn.authorizationError)}`);
      const certId = deviceIdFromCertificate(peer);
      if (!certId || certId !== id) return refuse(`client id ${id} does not match the certificate (${certId ?? 'no device id'})`);
      if (username && username !== id) return refuse('username does not match the certificate');
      const serial = normalizeSerial(peer.serialNumber.toLowerCase());
      const check = this.o.authenticateCert ?? (async () => true);
      check(id, serial).then(
        (ok) => (ok ? done(null, true) : refuse(`certificate ${serial} of ${id} is not (or no longer) valid for this server`)),
        (err: unknown) => refuse(`certificate check failed: ${(err as Error).message}`),
      );
      return;
    }
    if (!this.o.authenticateEnroll || !username || username !== id || !password) return refuse('a client certificate is required', 4);
    this.o.authenticateEnroll(id, password.toString('utf8')).then(
      (ok) => {
        if (!ok) return refuse('a client certificate is required (or a valid enrollment token)', 4);
        this.enrolling.add(client);
        done(null, true);
      },
      (err: unknown) => refuse(`enrollment check failed: ${(err as Error).message}`),
    );
  }

  /** Listens with TLS requiring fleet client certificates (see BrokerTlsOptions). Returns the bound port. */
  async listenTls(host: string, port: number, t: BrokerTlsOptions): Promise<number> {
    this.tlsOpts = { key: t.keyPem, cert: t.certPem, ca: [t.caPem], ...(t.crlPem ? { crl: [t.crlPem] } : {}), requestCert: true, rejectUnauthorized: !t.enrollment, minVersion: 'TLSv1.2' };
    const srv = createTlsServer(this.tlsOpts, this.aedes.handle);
    srv.on('tlsClientError', (e) => this.o.log.warn({ err: e.message }, 'TLS handshake failed'));
    await this.listenOn(srv, host, port, () => new UzError('PORT_IN_USE', `MQTT TLS port ${host}:${port} is already in use (choose another with --mqtt-tls-port)`, { port }));
    this.tlsServer = srv;
    const a = srv.address();
    return typeof a === 'object' && a ? a.port : port;
  }

  /** Replaces the CRL of the TLS listener (new handshakes use it at once). */
  setCrl(crlPem: string): void {
    if (!this.tlsServer || !this.tlsOpts) return;
    this.tlsOpts = { ...this.tlsOpts, crl: [crlPem] };
    this.tlsServer.setSecureContext(this.tlsOpts);
  }

  kick(deviceId: string): void {
    const c = (this.aedes as unknown as { clients: Record<string, Client | undefined> }).clients[deviceId];
    c?.close();
  }

  /** Listens on TCP; PORT_IN_USE if the port is taken. Returns the bound port. */
  async listen(host: string, port: number): Promise<number> {
    const srv = createServer(this.aedes.handle);
    await this.listenOn(srv, host, port, () => new UzError('PORT_IN_USE', `MQTT port ${host}:${port} is already in use (choose another with --mqtt-port)`, { port }));
    this.tcp = srv;
    const a = srv.address();
    return typeof a === 'object' && a ? a.port : port;
  }

  private dropWarned = 0;
  private errorWarned = 0;
  /**
   * Binds a listener. Afterwards: the connection cap (see maxConnections), a logged refusal when it is reached,
   * and listener errors (e.g. EMFILE from accept: out of file descriptors) logged instead of crashing the
   * process (an 'error' event without a listener is thrown).
   */
  private async listenOn(srv: Server | TlsServer, host: string, port: number, inUse: () => UzError): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const onError = (e: NodeJS.ErrnoException): void => reject(e.code === 'EADDRINUSE' ? inUse() : e);
      srv.once('error', onError);
      srv.listen(port, host, () => {
        srv.off('error', onError);
        resolve();
      });
    });
    if (this.o.maxConnections) srv.maxConnections = this.o.maxConnections;
    srv.on('drop', () => {
      this.o.onRejected?.('connection-limit');
      const now = Date.now();
      if (now - this.dropWarned < 10_000) return;
      this.dropWarned = now;
      this.o.log.warn(
        { maxConnections: srv.maxConnections, connected: this.aedes.connectedClients, openFileLimit: openFileLimit() },
        'MQTT connection refused: connection limit reached (each connection is a file descriptor: raise the open-file limit, ulimit -n / systemd LimitNOFILE, or set mqtt.maxConnections)',
      );
    });
    srv.on('error', (e: NodeJS.ErrnoException) => {
      const now = Date.now();
      if (now - this.errorWarned < 10_000) return;
      this.errorWarned = now;
      this.o.log.warn({ err: e.message, code: e.code, openFileLimit: openFileLimit() }, e.code === 'EMFILE' || e.code === 'ENFILE' ? 'MQTT listener out of file descriptors: connections are being refused (raise the open-file limit: ulimit -n / systemd LimitNOFILE)' : 'MQTT listener error');
    });
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

  onMessage(cb: (deviceId: string, topic: string, payload: Buffer, session: SessionKind) => void): void {
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
    for (const k of ['tcp', 'tlsServer'] as const) {
      const t = this[k];
      this[k] = null;
      if (t) await new Promise<void>((r) => t.close(() => r()));
    }
  }
}
