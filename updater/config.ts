/**
 * Agent configuration: one strict zod schema (unknown keys rejected, like RAUC's check_remaining_keys),
 * defaults in the schema, environment overrides derived from the schema (UZ_AGENT_<KEY>), validated once and
 * frozen. Production needs TLS with a client certificate; `devMode: true` allows plain TCP and http bundle
 * URLs (a lab broker, or the host seen from the emulated board at 10.0.2.100).
 */
import { readFile, stat } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { UzError } from '../lib/errors.js';
import { DeviceId } from '../lib/protocol.js';
import { formatZodError } from '../lib/validate.js';

const MAX_CONFIG_BYTES = 64 * 1024;
const Path = z.string().min(1).max(1024);

const AgentConfigObject = z
  .object({
    /** Format version of this file; bump with a migration when a key changes meaning. */
    configVersion: z.literal(1).default(1),
    deviceId: DeviceId,
    /** mqtts://host:8883 (or mqtt://host:1883 in dev mode). */
    brokerUrl: z.string().regex(/^(mqtts?|tcp|tls):\/\/[^/\s]+$/, 'must be mqtt://host:port or mqtts://host:port'),
    /** Update server base URL (bundle URLs in desired releases must be on it). */
    serverUrl: z.url().refine((u) => /^https?:/.test(u), 'must be http(s)'),
    /** Trusted root metadata (root.json); relative paths are relative to this file. */
    trustRoot: Path,
    channel: z.string().regex(/^[a-z0-9][a-z0-9._-]{0,31}$/).default('stable'),
    devMode: z.boolean().default(false),
    tls: z.object({ ca: Path.optional(), cert: Path, key: Path }).strict().optional(),
    /** Where state.json / progress.json live: on the data partition. */
    stateDir: Path.default('/data/uz'),
    /** How bundles are fetched: HTTP Range (default) or MQTT blocks for broker-only networks. */
    transport: z.enum(['http', 'mqtt']).default('http'),
    /** TUF metadata base URL (e.g. https://updates.example/tuf): follow root rotations and check freshness before installing. */
    tufUrl: z.url().refine((u) => /^https?:/.test(u), 'must be http(s)').optional(),
    keepaliveSeconds: z.number().int().min(5).max(1200).default(30),
    /** Seconds a trial boot has to become healthy (overrides the app manifest's startupDeadlineSeconds). */
    healthDeadlineSeconds: z.number().int().min(5).max(3600).optional(),
  })
  .strict();

export const AgentConfigSchema = AgentConfigObject.superRefine((c, ctx) => {
    if (c.devMode) return;
    if (!/^(mqtts|tls):/.test(c.brokerUrl)) ctx.addIssue({ code: 'custom', path: ['brokerUrl'], message: 'must use mqtts:// unless devMode is true' });
    if (!c.tls) ctx.addIssue({ code: 'custom', path: ['tls'], message: 'a client certificate (tls.cert, tls.key) is required unless devMode is true' });
    if (!c.serverUrl.startsWith('https:')) ctx.addIssue({ code: 'custom', path: ['serverUrl'], message: 'must be https:// unless devMode is true' });
});
export type AgentConfig = Readonly<z.infer<typeof AgentConfigSchema>>;

const ENV_PREFIX = 'UZ_AGENT_';

/** UZ_AGENT_BROKER_URL → brokerUrl, derived from the schema's top-level keys (scalars only). */
export function envOverrides(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(AgentConfigObject.shape)) {
    const name = ENV_PREFIX + key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase();
    const v = env[name];
    if (v === undefined) continue;
    out[key] = v === 'true' ? true : v === 'false' ? false : /^\d+$/.test(v) ? Number(v) : v;
  }
  return out;
}

/** Validates config data (already parsed) with env overrides applied; throws CONFIG_INVALID. */
export function parseConfig(data: unknown, source: string, env: NodeJS.ProcessEnv = {}): AgentConfig {
  if (typeof data !== 'object' || data === null || Array.isArray(data)) throw new UzError('CONFIG_INVALID', `${source}: expected a JSON object`, { source });
  const r = AgentConfigSchema.safeParse({ ...data, ...envOverrides(env) });
  if (!r.success) throw new UzError('CONFIG_INVALID', `${source}: ${formatZodError(r.error)}`, { source });
  return Object.freeze(r.data);
}

/** Reads and validates a config file; relative paths inside it are resolved against its folder. */
export async function loadConfig(path: string, env: NodeJS.ProcessEnv = process.env): Promise<AgentConfig> {
  let text: string;
  try {
    if ((await stat(path)).size > MAX_CONFIG_BYTES) throw new UzError('CONFIG_INVALID', `${path}: larger than ${MAX_CONFIG_BYTES} bytes`, { path });
    text = await readFile(path, 'utf8');
  } catch (e) {
    if (e instanceof UzError) throw e;
    throw new UzError('CONFIG_NOT_FOUND', `cannot read agent config ${path}: ${(e as Error).message}`, { path });
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new UzError('CONFIG_INVALID', `${path}: not JSON (${(e as Error).message})`, { path });
  }
  const c = parseConfig(data, path, env);
  const base = dirname(resolve(path));
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(base, p));
  return Object.freeze({
    ...c,
    trustRoot: abs(c.trustRoot),
    stateDir: abs(c.stateDir),
    ...(c.tls ? { tls: { cert: abs(c.tls.cert), key: abs(c.tls.key), ...(c.tls.ca ? { ca: abs(c.tls.ca) } : {}) } } : {}),
  });
}

/** The subset of the provisioned uz-device.json (firmware/provision/config.ts) the agent needs. */
export interface ProvisionedDevice {
  deviceName: string;
  server: { httpUrl: string; mqttUrl: string; caCert?: string };
  channel: string;
}

/**
 * Agent config for a card provisioned with `uz provision` (uz-device.json in p1) and no agent.json: the device
 * name is the device id; the client certificate is the one enrollment stored on the data partition, when
 * present. A plain mqtt:// broker, or no certificate, means a lab network (dev mode); so does a plain http://
 * update server (`uz server` speaks HTTP): the broker session is still mutual TLS, and bundles fetched over
 * http are verified against the trust root like any other, but the URL rule is relaxed.
 */
export function agentConfigFromDevice(
  dev: ProvisionedDevice,
  o: { trustRoot: string; stateDir?: string; tls?: { cert: string; key: string; ca?: string } },
): AgentConfig {
  const plain = /^(mqtt|tcp):/.test(dev.server.mqttUrl) || dev.server.httpUrl.startsWith('http:');
  return parseConfig(
    {
      deviceId: dev.deviceName,
      brokerUrl: dev.server.mqttUrl,
      serverUrl: dev.server.httpUrl,
      trustRoot: o.trustRoot,
      channel: dev.channel,
      devMode: plain || !o.tls,
      ...(o.stateDir ? { stateDir: o.stateDir } : {}),
      ...(o.tls ? { tls: o.tls } : {}),
    },
    'uz-device.json',
  );
}
