/**
 * Server configuration: ONE zod schema gives defaults, validation, the `UZ_SERVER_*` environment overrides
 * (derived from the schema's keys: http.port -> UZ_SERVER_HTTP_PORT, dataDir -> UZ_SERVER_DATA_DIR) and the
 * rejection of unknown keys (strict objects; an unknown UZ_SERVER_* variable is an error too). The result is
 * deep-frozen. Precedence: defaults < config file < environment < command-line flags.
 */
import { readFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { z } from 'zod';
import { UzError } from '../lib/errors.js';
import { formatZodError } from '../lib/validate.js';

export const CONFIG_VERSION = 1;
const port = z.number().int().min(0).max(65535);

function isPostgresUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return (u.protocol === 'postgres:' || u.protocol === 'postgresql:') && u.hostname !== '';
  } catch {
    return false;
  }
}

function isMqttUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return (u.protocol === 'mqtt:' || u.protocol === 'mqtts:') && u.hostname !== '';
  } catch {
    return false;
  }
}

export const ServerConfigSchema = z.strictObject({
  configVersion: z.literal(CONFIG_VERSION).default(CONFIG_VERSION),
  /** Directory for the database, artifacts, the URL-signing secret and the first admin token. */
  dataDir: z.string().min(1),
  http: z
    .strictObject({
      host: z.string().default('127.0.0.1'),
      port: port.default(8080),
      /** Base URL devices use for artifact downloads; default http://{host}:{port}. */
      publicUrl: z.url().optional(),
      /** Requests per minute per client IP on /api (@fastify/rate-limit). */
      rateLimitPerMinute: z.number().int().positive().default(1200),
    })
    .default({ host: '127.0.0.1', port: 8080, rateLimitPerMinute: 1200 }),
  mqtt: z
    .strictObject({
      host: z.string().default('127.0.0.1'),
      port: port.default(1883),
      /** MQTT over WebSocket path on the HTTP port ('' disables it). */
      wsPath: z.string().default('/mqtt'),
      /** Per-device message budget: sustained messages/second and burst; beyond it the device is disconnected. */
      deviceMsgPerSec: z.number().positive().default(20),
      deviceMsgBurst: z.number().int().positive().default(100),
      /**
       * Embedded broker: at most this many MQTT connections per listener; more are closed at once and logged
       * ("connection limit reached"). Default: the process's open-file limit minus a reserve for the database,
       * the HTTP API and artifact downloads (each connection is a file descriptor); 0 = no cap.
       */
      maxConnections: z.number().int().min(0).optional(),
      /** Dev mode: an unknown device id that connects is registered with the password it presented (TOFU). */
      autoRegister: z.boolean().default(true),
      /**
       * External broker (Mosquitto, EMQX): mqtt:// or mqtts:// URL. The server then connects to it as a
       * privileged client instead of embedding Aedes (host/port/wsPath/tls* are not used).
       */
      url: z.string().refine(isMqttUrl, 'an mqtt:// or mqtts:// URL').optional(),
      /** Client id towards the external broker (default uz-server-<host>-<pid>; must differ per instance). */
      clientId: z.string().min(1).max(64).optional(),
      username: z.string().min(1).max(256).optional(),
      password: z.string().min(1).max(1024).optional(),
      /** PEM files for mqtts:// (CA to trust; client certificate + key for brokers that require one). */
      caFile: z.string().optional(),
      certFile: z.string().optional(),
      keyFile: z.string().optional(),
      /** Shared-subscription group: each device message goes to ONE instance of the group ('' = every instance). */
      sharedGroup: z.string().regex(/^[A-Za-z0-9_-]*$/).max(64).default('uz-server'),
      /**
       * Embedded broker: also listen with TLS on this port, requiring client certificates from the fleet CA
       * (caDir); the device id is the certificate CN. Devices without a certificate may connect only to enroll.
       */
      tlsPort: port.optional(),
      /** Broker certificate + key for tlsPort (default: issued from the fleet CA into <dataDir>/broker-tls/). */
      tlsCertFile: z.string().optional(),
      tlsKeyFile: z.string().optional(),
    })
    .default({ host: '127.0.0.1', port: 1883, wsPath: '/mqtt', deviceMsgPerSec: 20, deviceMsgBurst: 100, autoRegister: true, sharedGroup: 'uz-server' }),
  /**
   * PostgreSQL (postgres://user:password@host:5432/db) instead of the embedded SQLite database; several server
   * instances may share it (dispatch is coordinated with row locks). Migrations run at start.
   */
  databaseUrl: z.string().refine(isPostgresUrl, 'a postgres:// or postgresql:// URL with a host').optional(),
  /** Fleet CA directory (uz ca init): enables certificate enrollment, device revocation (CRL) and mqtt.tlsPort. */
  caDir: z.string().optional(),
  /** Default lifetime of enrollment tokens. */
  enrollTokenTtlSec: z.number().int().positive().max(365 * 86_400).default(86_400),
  /** root.json of the fleet (default {dataDir}/root.json); uploads are verified against it. */
  trustRoot: z.string().optional(),
  maxBundleBytes: z.number().int().positive().default(8 * 1024 ** 3),
  /**
   * TUF repository metadata served at /tuf/ (server/tuf/): `dir` is what `uz repo publish --dir` wrote (its
   * metadata/ folder, or a folder of N.root.json + snapshot.json + targets.json signed offline). The server
   * holds ONLY the timestamp key and re-signs timestamp.json every timestampIntervalSec, valid timestampTtlSec.
   */
  tuf: z
    .strictObject({
      dir: z.string().min(1),
      timestampKey: z.string().min(1),
      timestampIntervalSec: z.number().int().positive().default(3600),
      timestampTtlSec: z.number().int().positive().default(86_400),
    })
    .optional(),
  /** Lifetime of signed artifact URLs put in desired state (refreshed when a device reconnects). */
  artifactUrlTtlSec: z.number().int().positive().default(6 * 3600),
  rolloutTickMs: z.number().int().positive().default(500),
  jsonLogs: z.boolean().default(false),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});
export type ServerConfig = z.infer<typeof ServerConfigSchema>;
export type ServerConfigInput = z.input<typeof ServerConfigSchema>;

type Leaf = 'string' | 'number' | 'boolean' | 'enum' | 'literal';

/** Unwraps default/optional wrappers to the underlying zod type name. */
function baseOf(t: z.ZodType): z.ZodType {
  let cur = t as unknown as { _zod: { def: { type: string; innerType?: z.ZodType } } };
  while (cur._zod.def.type === 'default' || cur._zod.def.type === 'optional' || cur._zod.def.type === 'prefault') {
    cur = cur._zod.def.innerType as unknown as typeof cur;
  }
  return cur as unknown as z.ZodType;
}

/** Every leaf key of the schema with its env variable name: [path, ENV, leaf type]. */
export function envKeys(): { path: string[]; env: string; type: Leaf }[] {
  const out: { path: string[]; env: string; type: Leaf }[] = [];
  const walk = (shape: Record<string, z.ZodType>, prefix: string[]): void => {
    for (const [k, v] of Object.entries(shape)) {
      const b = baseOf(v) as unknown as { _zod: { def: { type: string; shape?: Record<string, z.ZodType> } } };
      const type = b._zod.def.type;
      if (type === 'object') walk(b._zod.def.shape!, [...prefix, k]);
      else {
        const path = [...prefix, k];
        const env = 'UZ_SERVER_' + path.map((p) => p.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_');
        out.push({ path, env, type: (type === 'string' || type === 'number' || type === 'boolean' || type === 'enum' || type === 'literal' ? type : 'string') as Leaf });
      }
    }
  };
  walk(ServerConfigSchema.shape as unknown as Record<string, z.ZodType>, []);
  return out;
}

function setPath(obj: Record<string, unknown>, path: string[], value: unknown): void {
  let cur = obj;
  for (const p of path.slice(0, -1)) {
    if (typeof cur[p] !== 'object' || cur[p] === null) cur[p] = {};
    cur = cur[p] as Record<string, unknown>;
  }
  cur[path[path.length - 1]!] = value;
}

function deepMerge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    if (v === undefined) continue;
    if (v && typeof v === 'object' && !Array.isArray(v) && out[k] && typeof out[k] === 'object') out[k] = deepMerge(out[k] as Record<string, unknown>, v as Record<string, unknown>);
    else out[k] = v;
  }
  return out;
}

/** Reads UZ_SERVER_* variables into a partial config; unknown variables are CONFIG_INVALID. */
export function configFromEnv(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const keys = envKeys();
  const byEnv = new Map(keys.map((k) => [k.env, k]));
  const out: Record<string, unknown> = {};
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith('UZ_SERVER_') || raw === undefined) continue;
    const k = byEnv.get(name);
    if (!k) throw new UzError('CONFIG_INVALID', `unknown environment variable ${name} (known: ${keys.map((x) => x.env).join(', ')})`, { name });
    let v: unknown = raw;
    if (k.type === 'number' || k.type === 'literal') {
      v = Number(raw);
      if (raw.trim() === '' || !Number.isFinite(v)) throw new UzError('CONFIG_INVALID', `${name}=${raw}: not a number`, { name });
    } else if (k.type === 'boolean') {
      if (!/^(1|0|true|false|yes|no)$/i.test(raw)) throw new UzError('CONFIG_INVALID', `${name}=${raw}: expected true/false`, { name });
      v = /^(1|true|yes)$/i.test(raw);
    }
    setPath(out, k.path, v);
  }
  return out;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

export interface LoadConfigOptions {
  /** Parsed config file contents (JSON). */
  file?: Record<string, unknown>;
  env?: NodeJS.ProcessEnv;
  /** Command-line overrides (already shaped like the schema). */
  flags?: Record<string, unknown>;
}

/** defaults < file < env < flags; validated, paths made absolute, frozen. Throws CONFIG_INVALID. */
export function loadConfig(o: LoadConfigOptions = {}): Readonly<ServerConfig> {
  let raw: Record<string, unknown> = {};
  if (o.file) raw = deepMerge(raw, o.file);
  raw = deepMerge(raw, configFromEnv(o.env ?? {}));
  if (o.flags) raw = deepMerge(raw, o.flags);
  const r = ServerConfigSchema.safeParse(raw);
  if (!r.success) throw new UzError('CONFIG_INVALID', `server config: ${formatZodError(r.error)}`, {});
  const c = r.data;
  c.dataDir = resolve(c.dataDir);
  if (c.trustRoot !== undefined && !isAbsolute(c.trustRoot)) c.trustRoot = resolve(c.trustRoot);
  if (c.caDir !== undefined) c.caDir = resolve(c.caDir);
  for (const k of ['caFile', 'certFile', 'keyFile', 'tlsCertFile', 'tlsKeyFile'] as const) if (c.mqtt[k] !== undefined) c.mqtt[k] = resolve(c.mqtt[k]);
  if (c.mqtt.url && c.mqtt.tlsPort !== undefined) throw new UzError('CONFIG_INVALID', 'server config: mqtt.tlsPort is for the embedded broker; with mqtt.url the external broker terminates TLS', {});
  if (c.mqtt.tlsPort !== undefined && !c.caDir) throw new UzError('CONFIG_INVALID', 'server config: mqtt.tlsPort needs caDir (the fleet CA whose client certificates it accepts)', {});
  if ((c.mqtt.tlsCertFile === undefined) !== (c.mqtt.tlsKeyFile === undefined)) throw new UzError('CONFIG_INVALID', 'server config: give both mqtt.tlsCertFile and mqtt.tlsKeyFile, or neither', {});
  return deepFreeze(c);
}

export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new UzError('CONFIG_INVALID', `cannot read config file ${path}`, { path }, { cause: e });
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new UzError('CONFIG_INVALID', `config file ${path} is not a JSON object: ${(e as Error).message}`, { path });
  }
}

export function trustRootPath(c: ServerConfig): string {
  return c.trustRoot ?? join(c.dataDir, 'root.json');
}

/** The config with secrets masked (database password, MQTT password), for GET /api/v1/config and logs. */
export function redactConfig(c: Readonly<ServerConfig>): ServerConfig {
  const out = structuredClone(c) as ServerConfig;
  if (out.mqtt.password !== undefined) out.mqtt.password = '***';
  if (out.databaseUrl !== undefined) {
    try {
      const u = new URL(out.databaseUrl);
      if (u.password) u.password = '***';
      out.databaseUrl = u.toString();
    } catch {
      out.databaseUrl = '***';
    }
  }
  return out;
}
