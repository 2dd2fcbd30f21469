/**
 * createServer(config): one update server = HTTP API + dashboard (fastify), MQTT broker (embedded Aedes on TCP,
 * WebSocket and optionally mutual TLS — or an external Mosquitto/EMQX with --mqtt-url), storage (embedded
 * SQLite WAL — or PostgreSQL with --database-url, shared by several instances), artifacts on local disk.
 * Each concern is a fastify plugin in server/plugins/; they share one ServerContext (passed as plugin options).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import Fastify, { LogController, type FastifyError, type FastifyInstance } from 'fastify';
import rateLimit from '@fastify/rate-limit';
import { pino, type Logger } from 'pino';
import { UzError, isUzError } from '../lib/errors.js';
import { ArtifactStore } from './artifacts.js';
import { DeviceAuth, UrlSigner, createApiToken } from './auth.js';
import { EmbeddedBroker, defaultMaxConnections, openFileLimit, type ServerBroker } from './broker.js';
import { ExternalBroker, redactMqttUrl } from './broker-external.js';
import { trustRootPath, type ServerConfig } from './config.js';
import { EnrollmentService } from './enrollment.js';
import { enrollmentPlugin } from './plugins/enrollment.js';
import { PostgresStorage, redactDatabaseUrl } from './storage/postgres.js';
import { issueServerCertificate, loadCaDir } from '../firmware/ca/index.js';
import type { ServerContext } from './context.js';
import { DeviceService } from './devices.js';
import { SERVER_ERRORS, httpError, statusOf } from './errors.js';
import { Metrics } from './metrics.js';
import { artifactsPlugin } from './plugins/artifacts.js';
import { authPlugin } from './plugins/auth.js';
import { brokerPlugin, configPlugin, storagePlugin } from './plugins/core.js';
import { dashboardPlugin } from './plugins/dashboard.js';
import { devicesPlugin } from './plugins/devices.js';
import { metricsPlugin } from './plugins/metrics.js';
import { openapiRoutes, registerOpenapi } from './plugins/openapi.js';
import { releasesPlugin } from './plugins/releases.js';
import { rolloutsPlugin } from './plugins/rollouts.js';
import { tufPlugin } from './tuf/plugin.js';
import { RolloutService } from './rollouts.js';
import { SqliteStorage } from './storage/sqlite.js';
import type { Storage } from './storage/types.js';

export interface CreateServerOptions {
  /** Clock (tests use a fake one). */
  now?: () => number;
  /** Log destination (default stdout). */
  logStream?: NodeJS.WritableStream;
  storage?: Storage;
}

export interface StartedUrls {
  http: string;
  /** Device-facing MQTT URL (embedded TCP listener, or the external broker's URL). */
  mqtt: string;
  /** Embedded broker's mutual-TLS listener (mqtt.tlsPort), if enabled. */
  mqtts: string | null;
  ws: string | null;
  dashboard: string;
}

export interface UzServer {
  app: FastifyInstance;
  ctx: ServerContext;
  /** Set when this start created the first admin token (also written to {dataDir}/admin.token, mode 0600). */
  bootstrapToken: string | null;
  start(): Promise<StartedUrls>;
  close(): Promise<void>;
}

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

/** Human-readable log lines (default); --json-logs writes pino JSON instead. */
function humanStream(out: NodeJS.WritableStream): Writable {
  return new Writable({
    write(chunk: Buffer, _e, cb) {
      try {
        const { level, time, msg, pid: _p, hostname: _h, ...rest } = JSON.parse(chunk.toString()) as Record<string, unknown>;
        const extra = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ');
        out.write(`${new Date(time as number).toISOString().slice(11, 23)} ${(LEVELS[level as number] ?? level)!.toString().padEnd(5)} ${msg ?? ''}${extra ? ' ' + extra : ''}\n`);
      } catch {
        out.write(chunk);
      }
      cb();
    },
  });
}

async function loadOrCreateKey(path: string): Promise<Buffer> {
  try {
    const k = Buffer.from((await readFile(path, 'utf8')).trim(), 'base64url');
    if (k.length >= 32) return k;
  } catch {
    /* create below */
  }
  const k = randomBytes(32);
  await writeFile(path, k.toString('base64url') + '\n', { mode: 0o600 });
  return k;
}

export async function createServer(config: Readonly<ServerConfig>, o: CreateServerOptions = {}): Promise<UzServer> {
  const now = o.now ?? Date.now;
  try {
    await mkdir(config.dataDir, { recursive: true, mode: 0o750 });
  } catch (e) {
    throw new UzError('DATA_DIR', `cannot create data directory ${config.dataDir}: ${(e as Error).message}`, { path: config.dataDir });
  }
  const out = o.logStream ?? process.stdout;
  const logger: Logger = pino({ level: config.logLevel, base: undefined }, config.jsonLogs ? (out as unknown as pino.DestinationStream) : (humanStream(out) as unknown as pino.DestinationStream));
  let storage: Storage;
  if (o.storage) storage = o.storage;
  else if (config.databaseUrl) {
    try {
      storage = await PostgresStorage.connect(config.databaseUrl);
    } catch (e) {
      throw new UzError('DATABASE_UNREACHABLE', `cannot use the database ${redactDatabaseUrl(config.databaseUrl)}: ${(e as Error).message}`, { url: redactDatabaseUrl(config.databaseUrl) });
    }
  } else {
    try {
      storage = new SqliteStorage(join(config.dataDir, 'uz.db'));
    } catch (e) {
      throw new UzError('DATA_DIR', `cannot open the database in ${config.dataDir}: ${(e as Error).message}`, { path: config.dataDir });
    }
  }
  const artifacts = new ArtifactStore(config.dataDir);
  await artifacts.init();
  // With the embedded broker this process IS the broker: nobody is connected before it starts. With an
  // external broker, devices stay connected across server restarts (and other instances share the database).
  if (!config.mqtt.url) await storage.markAllOffline();
  const signer = new UrlSigner(await loadOrCreateKey(join(config.dataDir, 'url-signing.key')));
  let bootstrapToken: string | null = null;
  if ((await storage.countTokens()) === 0) {
    bootstrapToken = (await createApiToken(storage, 'admin', 'admin', now())).token;
    const p = join(config.dataDir, 'admin.token');
    await writeFile(p, bootstrapToken + '\n', { mode: 0o600 });
    await chmod(p, 0o600);
  }

  let httpBase = config.http.publicUrl ?? `http://${config.http.host}:${config.http.port}`;
  const ctx = {} as ServerContext;
  const metricsRef: { m?: Metrics } = {};
  const deviceAuth = new DeviceAuth(storage, config.mqtt.autoRegister, now);
  const brokerRef: { b?: ServerBroker } = {};
  const enrollment = new EnrollmentService({
    storage, caDir: config.caDir ?? null, tokenTtlSec: config.enrollTokenTtlSec, now, log: logger,
    onRevoked: (id, crlPem) => {
      deviceAuth.forget(id);
      const b = brokerRef.b;
      if (b instanceof EmbeddedBroker) b.setCrl(crlPem);
      b?.kick(id);
    },
  });
  let broker: ServerBroker;
  if (config.mqtt.url) {
    broker = new ExternalBroker({
      url: config.mqtt.url, clientId: config.mqtt.clientId, username: config.mqtt.username, password: config.mqtt.password,
      caFile: config.mqtt.caFile, certFile: config.mqtt.certFile, keyFile: config.mqtt.keyFile, sharedGroup: config.mqtt.sharedGroup,
      ratePerSec: config.mqtt.deviceMsgPerSec, burst: config.mqtt.deviceMsgBurst, log: logger,
      onRejected: (reason) => metricsRef.m?.rejected.inc({ reason }),
    });
  } else {
    broker = await EmbeddedBroker.create({
      // a revoked device is refused whatever credential it still has
      authenticate: async (id, pw) => (await deviceAuth.check(id, pw)) && (await storage.getDevice(id))?.enrollment !== 'revoked',
      authenticateCert: (id, serial) => enrollment.certValid(id, serial),
      ...(config.caDir ? { authenticateEnroll: (id: string, token: string) => enrollment.canEnroll(id, token) } : {}),
      ratePerSec: config.mqtt.deviceMsgPerSec,
      burst: config.mqtt.deviceMsgBurst,
      maxConnections: config.mqtt.maxConnections ?? defaultMaxConnections(openFileLimit()),
      log: logger,
      onRejected: (reason) => metricsRef.m?.rejected.inc({ reason }),
    });
  }
  brokerRef.b = broker;
  const metrics = new Metrics(storage, () => broker.connectedCount());
  metricsRef.m = metrics;
  const devices = new DeviceService({
    storage, broker: () => broker, artifacts, signer, metrics, rollouts: () => ctx.rollouts, enrollment: () => (enrollment.enabled ? enrollment : null),
    publicUrl: () => httpBase, urlTtlSec: config.artifactUrlTtlSec, now, log: logger,
  });
  const rollouts = new RolloutService(storage, {
    now,
    publishDesired: (id, d) => devices.publishDesired(id, d),
    releaseRef: (rel, id) => devices.releaseRef(rel, id),
    log: logger,
    onOutcome: (outcome, n) => metrics.rolloutEvents.inc({ outcome }, n),
  });
  Object.assign(ctx, {
    config, storage, artifacts, metrics, signer, deviceAuth, devices, rollouts, broker, enrollment, trustRootPath: trustRootPath(config), now, publicUrl: () => httpBase, log: logger,
  } satisfies ServerContext);
  if (broker instanceof ExternalBroker) {
    // The external broker authenticated the sender (its ACL pins the topic to the identity). Dev mode
    // (autoRegister) registers ids it has not seen; otherwise unknown ids are simply not tracked.
    // A revoked device is ignored (re-checked every 10 s, so a revocation on any instance takes effect everywhere);
    // keeping it off the broker is the broker's CRL.
    const checked = new Map<string, { at: number; revoked: boolean }>();
    const admit = async (id: string): Promise<boolean> => {
      const c = checked.get(id);
      if (c && Date.now() - c.at < 10_000) return !c.revoked;
      let dev = await storage.getDevice(id);
      if (!dev && config.mqtt.autoRegister) {
        await storage.registerDevice({ id, secretHash: null, now: now() });
        dev = await storage.getDevice(id);
      }
      if (checked.size > 200_000) checked.clear();
      const revoked = dev?.enrollment === 'revoked';
      checked.set(id, { at: Date.now(), revoked });
      if (revoked) metrics.rejected.inc({ reason: 'revoked' });
      return !revoked;
    };
    broker.onMessage((id, topic, payload, session) => void admit(id).then((ok) => (ok ? devices.onMessage(id, topic, payload, session) : undefined)).catch((e: unknown) => logger.warn({ device: id, err: (e as Error).message }, 'device message handling failed')));
    broker.onPresence((id, online) => void admit(id).then((ok) => (ok ? devices.onPresence(id, online) : undefined)).catch(() => undefined));
    broker.onReconnect(() => void devices.republishAll().catch(() => undefined));
  } else {
    broker.onMessage((id, topic, payload, session) => void devices.onMessage(id, topic, payload, session));
    broker.onPresence((id, online) => void devices.onPresence(id, online));
  }

  const app: FastifyInstance = Fastify({ logController: new LogController({ disableRequestLogging: true }), loggerInstance: logger as unknown as import('fastify').FastifyBaseLogger, bodyLimit: 1024 * 1024, trustProxy: false, forceCloseConnections: true });
  // Bodies are validated with zod in the handlers; route JSON schemas are documentation (OpenAPI) only.
  app.setValidatorCompiler(() => (data) => ({ value: data }));
  app.addHook('onResponse', async (req, reply) => {
    // per-request lines only at debug level (fastify's own request logging is off via logger level routing)
    req.log.debug({ method: req.method, url: req.url.split('?')[0], status: reply.statusCode, ms: Math.round(reply.elapsedTime) }, 'request');
  });
  app.setErrorHandler((err: FastifyError | UzError, req, reply) => {
    let code: string;
    let message = err.message;
    if (isUzError(err)) code = err.code in SERVER_ERRORS ? err.code : 'BAD_REQUEST';
    else if ((err as FastifyError).code === 'FST_ERR_CTP_BODY_TOO_LARGE') code = 'BODY_TOO_LARGE';
    else if ((err as FastifyError).statusCode === 429) code = 'RATE_LIMITED';
    else if ((err as FastifyError).statusCode && (err as FastifyError).statusCode! < 500) {
      code = (err as FastifyError).statusCode === 404 ? 'NOT_FOUND' : (err as FastifyError).statusCode === 413 ? 'BODY_TOO_LARGE' : 'BAD_REQUEST';
    } else {
      code = 'INTERNAL';
      req.log.error({ err, url: req.url }, 'request failed');
      message = `internal error (request ${req.id})`;
    }
    if (reply.sent || reply.raw.headersSent) return;
    reply.status(statusOf(code)).send({ error: { code, message } });
  });
  app.setNotFoundHandler((req, reply) => {
    reply.status(404).send({ error: { code: 'NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` } });
  });

  await registerOpenapi(app);
  await app.register(rateLimit, {
    max: config.http.rateLimitPerMinute,
    timeWindow: 60_000,
    allowList: (req) => !req.url.startsWith('/api/'),
    errorResponseBuilder: (_req, c) => httpError('RATE_LIMITED', `rate limit of ${c.max} requests per ${c.after} exceeded`),
  });
  const plugins = [configPlugin, storagePlugin, brokerPlugin, authPlugin, devicesPlugin, enrollmentPlugin, releasesPlugin, artifactsPlugin, rolloutsPlugin, metricsPlugin, dashboardPlugin, tufPlugin];
  for (const p of plugins) await app.register(p, { ctx });
  await app.register(openapiRoutes);

  let timer: NodeJS.Timeout | null = null;
  let closed = false;
  const server: UzServer = {
    app,
    ctx,
    bootstrapToken,
    async start() {
      try {
        await app.listen({ host: config.http.host, port: config.http.port });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EADDRINUSE') throw new UzError('PORT_IN_USE', `HTTP port ${config.http.host}:${config.http.port} is already in use (choose another with --http-port)`, { port: config.http.port });
        throw e;
      }
      // accept errors (EMFILE: out of file descriptors) are logged; an 'error' event without a listener would
      // be thrown and end the process
      app.server.on('error', (e: NodeJS.ErrnoException) => logger.warn({ err: e.message, code: e.code, openFileLimit: openFileLimit() }, 'HTTP listener error'));
      const addr = app.server.address();
      const httpPort = typeof addr === 'object' && addr ? addr.port : config.http.port;
      if (!config.http.publicUrl) httpBase = `http://${config.http.host}:${httpPort}`;
      let mqttUrl: string;
      let mqttsUrl: string | null = null;
      try {
        if (broker instanceof ExternalBroker) {
          await broker.connect();
          mqttUrl = redactMqttUrl(config.mqtt.url!);
        } else {
          const b = broker as EmbeddedBroker;
          mqttUrl = `mqtt://${config.mqtt.host}:${await b.listen(config.mqtt.host, config.mqtt.port)}`;
          if (config.mqtt.tlsPort !== undefined) {
            const tls = await brokerTlsMaterial(config, enrollment);
            mqttsUrl = `mqtts://${config.mqtt.host}:${await b.listenTls(config.mqtt.host, config.mqtt.tlsPort, { ...tls, enrollment: true })}`;
          }
        }
      } catch (e) {
        await app.close();
        throw e;
      }
      const fdLimit = openFileLimit();
      if (broker instanceof EmbeddedBroker && fdLimit !== null && fdLimit < 4096) {
        const cap = config.mqtt.maxConnections ?? defaultMaxConnections(fdLimit);
        logger.warn({ openFileLimit: fdLimit, maxConnections: cap }, `the open-file limit is ${fdLimit}: the embedded broker takes at most ${cap || fdLimit} device connections; for a larger fleet raise it (ulimit -n, systemd LimitNOFILE)`);
      }
      const republished = await devices.republishAll();
      const tickLogged = (): void => void rollouts.tick().catch((e: unknown) => logger.warn({ err: (e as Error).message }, 'rollout tick failed'));
      timer = setInterval(tickLogged, config.rolloutTickMs);
      timer.unref();
      tickLogged();
      const urls: StartedUrls = {
        http: httpBase,
        mqtt: mqttUrl,
        mqtts: mqttsUrl,
        ws: config.mqtt.wsPath && broker.handleStream ? `${httpBase.replace(/^http/, 'ws')}${config.mqtt.wsPath}` : null,
        dashboard: `${httpBase}/`,
      };
      logger.info({ ...urls, republished, dataDir: config.dataDir, storage: storage.kind, broker: broker.kind, enrollment: enrollment.enabled }, 'uz server started');
      return urls;
    },
    async close() {
      if (closed) return;
      closed = true;
      if (timer) clearInterval(timer);
      rollouts.stop();
      await app.close();
      logger.flush?.();
    },
  };
  return server;
}

/**
 * Key, certificate, CA and CRL for the embedded broker's TLS listener: the configured files, or a broker
 * certificate issued once from the fleet CA into <dataDir>/broker-tls/ (hosts: mqtt.host, localhost, 127.0.0.1).
 */
async function brokerTlsMaterial(config: Readonly<ServerConfig>, enrollment: EnrollmentService): Promise<{ keyPem: string; certPem: string; caPem: string; crlPem?: string }> {
  const caPem = await enrollment.caPem();
  const crlPem = await enrollment.crlPem();
  if (config.mqtt.tlsCertFile && config.mqtt.tlsKeyFile) {
    return { certPem: await readFile(config.mqtt.tlsCertFile, 'utf8'), keyPem: await readFile(config.mqtt.tlsKeyFile, 'utf8'), caPem, crlPem };
  }
  const dir = join(config.dataDir, 'broker-tls');
  const certPath = join(dir, 'server.crt');
  const keyPath = join(dir, 'server.key');
  try {
    return { certPem: await readFile(certPath, 'utf8'), keyPem: await readFile(keyPath, 'utf8'), caPem, crlPem };
  } catch {
    /* issue below */
  }
  const ca = await loadCaDir(config.caDir!);
  const hosts = [...new Set([config.mqtt.host, 'localhost', '127.0.0.1'].filter((h) => h !== '0.0.0.0' && h !== '::'))];
  const issued = await issueServerCertificate(ca, { hosts });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(keyPath, issued.keyPem, { mode: 0o600 });
  await writeFile(certPath, issued.certPem);
  return { certPem: issued.certPem, keyPem: issued.keyPem, caPem, crlPem };
}
