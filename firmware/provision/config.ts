/**
 * The per-device configuration file `uz-device.json` in the boot-control partition (p1, FAT32 "UZBOOT").
 * One image serves the whole fleet; this small file makes a card one particular device. See
 * docs/provisioning.md.
 *
 * parseDeviceConfig() is what the agent runs at boot: it never throws, and its messages never contain the
 * Wi-Fi PSK, the enroll token or any other value from the file (only field paths and rules), because the
 * console and the server's logs are not secret.
 */
import { readFile, stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import { z } from 'zod';
import { UzError } from '../../lib/errors.js';

export const DEVICE_CONFIG_FILE = 'uz-device.json';
export const DEVICE_CONFIG_FORMAT_VERSION = 1;
export const MAX_DEVICE_CONFIG_BYTES = 64 * 1024;

/** RFC 1123 host label, lower-case, 3-63 chars: usable as hostname, DHCP name and device id. */
const HOST_LABEL_RE = /^[a-z0-9]([a-z0-9-]{1,61}[a-z0-9])$/;
const DNS_NAME_RE = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;
const CHANNEL_RE = /^[a-z0-9][a-z0-9._-]{0,31}$/;
const MQTT_URL_RE = /^(mqtts?|tcp|tls):\/\/[^/\s?#]+$/;
const TOKEN_RE = /^[A-Za-z0-9._~+/=-]+$/;

const Host = z
  .string()
  .max(253)
  .refine((h) => isIP(h) !== 0 || DNS_NAME_RE.test(h), 'must be a DNS name or an IP address');

const HttpUrl = z
  .string()
  .max(2048)
  .refine((u) => {
    try {
      const p = new URL(u);
      return (p.protocol === 'https:' || p.protocol === 'http:') && p.hostname !== '' && p.username === '' && p.password === '';
    } catch {
      return false;
    }
  }, 'must be an http:// or https:// URL without credentials');

const Psk = z
  .string()
  .refine((s) => /^[\x20-\x7e]{8,63}$/.test(s) || /^[0-9a-fA-F]{64}$/.test(s), 'must be a WPA passphrase of 8-63 printable ASCII characters or 64 hex digits');

const Ssid = z
  .string()
  .min(1)
  .refine((s) => Buffer.byteLength(s, 'utf8') <= 32, 'must be at most 32 bytes (UTF-8)')
  // eslint-disable-next-line no-control-regex
  .refine((s) => !/[\u0000-\u001f\u007f]/.test(s), 'must not contain control characters');

export const DeviceConfigSchema = z
  .object({
    /** Bumped only with a migration; the agent refuses versions it does not know. */
    formatVersion: z.literal(DEVICE_CONFIG_FORMAT_VERSION),
    /** Hostname and device id: 3-63 chars of a-z, 0-9 and '-', not starting or ending with '-'. */
    deviceName: z.string().regex(HOST_LABEL_RE, 'must be 3-63 chars of a-z, 0-9 and - (not at either end)'),
    server: z
      .object({
        /** Update server base URL (enrollment, bundles). */
        httpUrl: HttpUrl,
        /** Broker: mqtts://host:8883 (mqtt://host:1883 only on a lab network). */
        mqttUrl: z.string().max(512).regex(MQTT_URL_RE, 'must be mqtts://host:port or mqtt://host:port'),
        /** PEM of the fleet CA the device trusts for the broker and server (`uz ca init` → ca.crt). */
        caCert: z
          .string()
          .max(16 * 1024)
          .regex(/^-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----\s*$/, 'must be one PEM certificate')
          .optional(),
      })
      .strict(),
    wifi: z
      .object({
        ssid: Ssid,
        psk: Psk,
        /** ISO 3166 alpha-2 regulatory country (e.g. DE); unset = the kernel's world domain. */
        country: z.string().regex(/^[A-Z]{2}$/, 'must be a two-letter country code such as DE').optional(),
      })
      .strict()
      .optional(),
    /** One-time token the device presents with its CSR when it enrolls. */
    enrollToken: z.string().min(16).max(512).regex(TOKEN_RE, 'must be 16-512 URL-safe characters').optional(),
    /** Merged over the workload's config template on the device. */
    appConfig: z.record(z.string(), z.unknown()).optional(),
    ntpServers: z.array(Host).max(8).default([]),
    channel: z.string().regex(CHANNEL_RE, 'must be 1-32 chars of a-z, 0-9, . _ -').default('stable'),
  })
  .strict();

export type DeviceConfig = z.infer<typeof DeviceConfigSchema>;
/** What a person writes (defaults may be left out). */
export type DeviceConfigInput = z.input<typeof DeviceConfigSchema>;

export type DeviceConfigResult =
  | { ok: true; config: DeviceConfig }
  | {
      ok: false;
      code: 'DEVICE_CONFIG_INVALID' | 'DEVICE_CONFIG_MISSING';
      /** Dotted path of the first offending field ('(json)' for a syntax error, '(file)' for size/encoding). */
      field: string;
      /** Human-readable; names fields and rules, never values. */
      message: string;
    };

const SECRET_KEY_RE = /psk|token|password|passphrase|secret|key/i;
const ECHO_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]{0,23}$/;

/** Every string in the document that may be secret: wifi.psk, enrollToken, and values under secret-ish keys. */
function secretStrings(data: unknown): string[] {
  const out: string[] = [];
  const walk = (v: unknown, secret: boolean, depth: number): void => {
    if (depth > 32) return;
    if (typeof v === 'string') {
      if (secret && v.length >= 3) out.push(v);
    } else if (Array.isArray(v)) {
      for (const x of v) walk(x, secret, depth + 1);
    } else if (v && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) walk(x, secret || SECRET_KEY_RE.test(k), depth + 1);
    }
  };
  walk(data, false, 0);
  return out.sort((a, b) => b.length - a.length);
}

function redact(message: string, secrets: string[]): string {
  let m = message;
  for (const s of secrets) m = m.split(s).join('[redacted]');
  return m;
}

/** A field path that is safe on one console line: `wifi.psk`, `ntpServers.2`. */
function safeField(path: ReadonlyArray<PropertyKey>): string {
  const p = path.map((k) => String(k)).join('.');
  const clean = p.replace(/[^A-Za-z0-9._[\]-]/g, '_').slice(0, 80);
  return clean === '' ? '(root)' : clean;
}

function lineCol(text: string, pos: number): string {
  const before = text.slice(0, pos);
  const line = before.split('\n').length;
  return `line ${line} column ${pos - before.lastIndexOf('\n')}`;
}

/** Finds where JSON.parse stopped, without keeping V8's message (it quotes the input). */
function jsonErrorPosition(text: string, e: unknown): string {
  const m = /position (\d+)/.exec((e as Error)?.message ?? '');
  if (m) return ` (${lineCol(text, Number(m[1]))})`;
  if (/end of JSON input/i.test((e as Error)?.message ?? '')) return ' (unexpected end of file)';
  return '';
}

/**
 * Validates the text of uz-device.json (UTF-8, a leading BOM is allowed: Windows editors write one).
 * Never throws; on failure names the first offending field and the rule, never a value.
 */
export function parseDeviceConfig(text: string | Buffer | Uint8Array): DeviceConfigResult {
  const fail = (field: string, message: string): DeviceConfigResult => ({ ok: false, code: 'DEVICE_CONFIG_INVALID', field, message });
  let s: string;
  if (typeof text === 'string') s = text;
  else {
    const b = Buffer.isBuffer(text) ? text : Buffer.from(text.buffer, text.byteOffset, text.byteLength);
    if (b.length > MAX_DEVICE_CONFIG_BYTES) return fail('(file)', `${DEVICE_CONFIG_FILE} is larger than ${MAX_DEVICE_CONFIG_BYTES} bytes`);
    try {
      s = new TextDecoder('utf-8', { fatal: true }).decode(b);
    } catch {
      return fail('(file)', `${DEVICE_CONFIG_FILE} is not valid UTF-8 text`);
    }
  }
  if (s.length > MAX_DEVICE_CONFIG_BYTES) return fail('(file)', `${DEVICE_CONFIG_FILE} is larger than ${MAX_DEVICE_CONFIG_BYTES} bytes`);
  if (s.charCodeAt(0) === 0xfeff) s = s.slice(1);
  let data: unknown;
  try {
    data = JSON.parse(s);
  } catch (e) {
    return fail('(json)', `${DEVICE_CONFIG_FILE} is not valid JSON${jsonErrorPosition(s, e)}`);
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return fail('(root)', `${DEVICE_CONFIG_FILE} must hold one JSON object`);
  const version = (data as Record<string, unknown>).formatVersion;
  if (version !== DEVICE_CONFIG_FORMAT_VERSION) {
    return fail('formatVersion', `formatVersion must be ${DEVICE_CONFIG_FORMAT_VERSION}` + (typeof version === 'number' && Number.isInteger(version) ? ` (this agent does not know version ${version})` : ''));
  }
  const r = DeviceConfigSchema.safeParse(data);
  if (r.success) return { ok: true, config: r.data };
  const secrets = secretStrings(data);
  // Unknown keys are echoed only when they look like field names: a secret pasted in the wrong place
  // (as a key) must not reach the console.
  const keyName = (k: string): string => (ECHO_KEY_RE.test(k) && !secrets.some((x) => k.includes(x)) ? k : '(unknown field)');
  const issues = r.error.issues.slice(0, 5).map((i) => {
    const path = i.code === 'unrecognized_keys' ? [...i.path, ...(i.keys.length === 1 ? [keyName(i.keys[0]!)] : [])] : i.path;
    const msg = i.code === 'unrecognized_keys' ? `unknown field${i.keys.length > 1 ? 's' : ''} ${i.keys.map((k) => keyName(k)).join(', ')}` : i.message;
    const field = safeField(path);
    return { field: secrets.some((x) => field.includes(x)) ? '(redacted)' : field, text: `${field}: ${msg}` };
  });
  const first = issues[0]!;
  return fail(first.field, redact(issues.map((x) => x.text).join('; '), secrets).slice(0, 1000));
}

/** The agent's console line for a failed parse: `UZ-ERROR code=DEVICE_CONFIG_INVALID field=<path>`. */
export function deviceConfigConsoleLine(r: Extract<DeviceConfigResult, { ok: false }>): string {
  return r.code === 'DEVICE_CONFIG_MISSING' ? `UZ-WARN device-config-missing file=${DEVICE_CONFIG_FILE}` : `UZ-ERROR code=DEVICE_CONFIG_INVALID field=${r.field}`;
}

/**
 * Reads and parses the file at `path` (on the device: the mounted boot-control partition). A missing file
 * is DEVICE_CONFIG_MISSING (an unprovisioned card: the device boots with image defaults); never throws.
 */
export async function loadDeviceConfig(path: string): Promise<DeviceConfigResult> {
  try {
    const st = await stat(path);
    if (st.size > MAX_DEVICE_CONFIG_BYTES) return { ok: false, code: 'DEVICE_CONFIG_INVALID', field: '(file)', message: `${DEVICE_CONFIG_FILE} is larger than ${MAX_DEVICE_CONFIG_BYTES} bytes` };
    return parseDeviceConfig(await readFile(path));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { ok: false, code: 'DEVICE_CONFIG_MISSING', field: '(file)', message: `no ${DEVICE_CONFIG_FILE}` };
    return { ok: false, code: 'DEVICE_CONFIG_INVALID', field: '(file)', message: `cannot read ${DEVICE_CONFIG_FILE} (${code ?? 'error'})` };
  }
}

/** Canonical text of a config: pretty JSON, keys in schema order, LF line ends, trailing newline. */
export function serializeDeviceConfig(config: DeviceConfigInput): string {
  const r = DeviceConfigSchema.safeParse(config);
  if (!r.success) {
    // Same redaction as the parser: build through it to get a safe message.
    const p = parseDeviceConfig(JSON.stringify(config));
    throw new UzError('PROVISION_CONFIG_INVALID', p.ok ? 'invalid device config' : p.message, { field: p.ok ? '(root)' : p.field });
  }
  return `${JSON.stringify(r.data, null, 2)}\n`;
}

/** A copy safe to print or log: secrets replaced by "(set)". */
export function redactDeviceConfig(c: DeviceConfig): Record<string, unknown> {
  return {
    ...c,
    ...(c.wifi ? { wifi: { ...c.wifi, psk: '(set)' } } : {}),
    ...(c.enrollToken !== undefined ? { enrollToken: '(set)' } : {}),
    ...(c.server.caCert ? { server: { ...c.server, caCert: '(PEM certificate)' } } : {}),
    ...(c.appConfig ? { appConfig: '(object)' } : {}),
  };
}
