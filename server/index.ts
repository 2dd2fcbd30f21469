/**
 * createServer(config): one update server = HTTP API + dashboard (fastify), embedded MQTT broker (Aedes, TCP and
 * WebSocket), embedded durable storage (SQLite WAL), artifacts on local disk. Each concern is a fastify plugin
 * in server/plugins/; they share one ServerContext (passed as plugin options).
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
import { EmbeddedBroker } from './broker.js';
import { trustRootPath, type ServerConfig } from './config.js';
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
  mqtt: string;
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
  try {
    storage = o.storage ?? new SqliteStorage(join(config.dataDir, 'uz.db'));
  } catch (e) {
    throw new UzError('DATA_DIR', `cannot open the database in ${config.dataDir}: ${(e as Error).message}`, { path: config.dataDir });
  }
  const artifacts = new ArtifactStore(config.dataDir);
  await artifacts.init();
  await storage.markAllOffline();
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
  const broker = await EmbeddedBroker.create({
    authenticate: (id, pw) => deviceAuth.check(id, pw),
    ratePerSec: config.mqtt.deviceMsgPerSec,
    burst: config.mqtt.deviceMsgBurst,
    log: logger,
    onRejected: (reason) => metricsRef.m?.rejected.inc({ reason }),
  });
  const metrics = new Metrics(storage, () => broker.connectedCount());
  metricsRef.m = metrics;
  const devices = new DeviceService({
    storage, broker: () => broker, artifacts, signer, metrics, rollouts: () => ctx.rollouts, publicUrl: () => httpBase, urlTtlSec: config.artifactUrlTtlSec, now, log: logger,
  });
  const rollouts = new RolloutService(storage, {
    now,
    publishDesired: (id, d) => devices.publishDesired(id, d),
    releaseRef: (rel, id) => devices.releaseRef(rel, id),
    log: logger,
    onOutcome: (outcome, n) => metrics.rolloutEvents.inc({ outcome }, n),
  });
  Object.assign(ctx, {
    config, storage, artifacts, metrics, signer, deviceAuth, devices, rollouts, broker, trustRootPath: trustRootPath(config), now, publicUrl: () => httpBase, log: logger,
  } satisfies ServerContext);
  broker.onMessage((id, topic, payload) => void devices.onMessage(id, topic, payload));
  broker.onPresence((id, online) => void devices.onPresence(id, online));

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
  const plugins = [configPlugin, storagePlugin, brokerPlugin, authPlugin, devicesPlugin, releasesPlugin, artifactsPlugin, rolloutsPlugin, metricsPlugin, dashboardPlugin];
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
      const addr = app.server.address();
      const httpPort = typeof addr === 'object' && addr ? addr.port : config.http.port;
      if (!config.http.publicUrl) httpBase = `http://${config.http.host}:${httpPort}`;
      let mqttPort: number;
      try {
        mqttPort = await broker.listen(config.mqtt.host, config.mqtt.port);
      } catch (e) {
        await app.close();
        throw e;
      }
      const republished = await devices.republishAll();
      timer = setInterval(() => void rollouts.tick(), config.rolloutTickMs);
      timer.unref();
      void rollouts.tick();
      const urls: StartedUrls = {
        http: httpBase,
        mqtt: `mqtt://${config.mqtt.host}:${mqttPort}`,
        ws: config.mqtt.wsPath ? `${httpBase.replace(/^http/, 'ws')}${config.mqtt.wsPath}` : null,
        dashboard: `${httpBase}/`,
      };
      logger.info({ ...urls, republished, dataDir: config.dataDir }, 'uz server started');
      return urls;
    },
    async close() {
      if (closed) return;
      closed = true;
      if (timer) clearInterval(timer);
      await app.close();
      logger.flush?.();
    },
  };
  return server;
}
