/**
 * Which agent configuration a booting device uses, and what it tells about the provisioning file. Pure file
 * logic with injectable paths, so the host tests run exactly what the device runs (updater/device/main.ts).
 *
 * uz-device.json in the boot-control partition is ALWAYS read and validated, so a malformed file is reported
 * (`UZ-ERROR code=DEVICE_CONFIG_INVALID field=<path>`, never a value from it) even when another config wins.
 * The device never bricks on it: the workload runs regardless, and the agent still connects with the best
 * config it has. Precedence:
 *   1. /data/uz/agent.json      per-device override on the data partition
 *   2. /etc/uz/agent.json       baked into the image
 *   3. uz-device.json           a card provisioned with `uz provision` (valid)
 *   4. the last good uz-device.json, remembered on the data partition (only when 3 is malformed)
 * A malformed file (or agent.json) becomes the `lastError` of the status the device reports.
 *
 * The remembered copy keeps only what the agent needs to reach its server (device name, server URLs, CA,
 * channel): never the Wi-Fi PSK or the enroll token.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { DEVICE_CONFIG_FILE, DeviceConfigSchema, deviceConfigConsoleLine, loadDeviceConfig } from '../../firmware/provision/config.js';
import { UzError } from '../../lib/errors.js';
import { agentConfigFromDevice, loadConfig, type AgentConfig, type ProvisionedDevice } from '../config.js';
import { existingEnrollment, type TlsPaths } from '../enroll.js';
import { writeFileDurable } from '../fsutil.js';

export interface BootConfigPaths {
  /** agent.json candidates, highest precedence first. */
  agentJson: string[];
  /** uz-device.json in the mounted boot-control partition. */
  deviceFile: string;
  /** Data partition: the remembered last good provisioning (no secrets). */
  lastGood: string;
  /** Data partition: device.key, device.crt, ca.crt (enrollment). */
  tlsDir: string;
  /** tmpfs: where the provisioned CA certificate is written for the TLS options. */
  runDir: string;
  trustRoot: string;
}

export const DEVICE_PATHS: BootConfigPaths = {
  agentJson: ['/data/uz/agent.json', '/etc/uz/agent.json'],
  deviceFile: `/run/uz/boot/${DEVICE_CONFIG_FILE}`,
  lastGood: '/data/uz/device-last-good.json',
  tlsDir: '/data/uz/tls',
  runDir: '/run/uz',
  trustRoot: '/etc/uz/trust/root.json',
};

export interface EnrollPlan {
  deviceId: string;
  token: string;
  brokerUrl: string;
  serverUrl: string;
  caPem?: string;
  tlsDir: string;
}

export interface BootConfig {
  config: AgentConfig | null;
  source: 'agent.json' | 'uz-device.json' | 'last-good' | 'none';
  /** For the status report: the provisioning (or agent.json) problem found at boot. */
  configError?: { code: string; message: string };
  /** Set when the device must enroll before its first session (then `config` is the post-enrollment one). */
  enroll?: EnrollPlan;
  /** The provisioned device (valid or remembered) the config was derived from. */
  device?: ProvisionedDevice;
  /** No CA was provisioned: trust the system roots plus the fleet CA stored at enrollment. */
  systemRoots?: boolean;
}

const LastGood = z
  .object({ v: z.literal(1), deviceName: DeviceConfigSchema.shape.deviceName, server: DeviceConfigSchema.shape.server, channel: DeviceConfigSchema.shape.channel })
  .strict();

/** The non-secret part of a provisioning, as remembered on the data partition. */
export function lastGoodOf(dev: ProvisionedDevice): z.infer<typeof LastGood> {
  return { v: 1, deviceName: dev.deviceName, server: { httpUrl: dev.server.httpUrl, mqttUrl: dev.server.mqttUrl, ...(dev.server.caCert ? { caCert: dev.server.caCert } : {}) }, channel: dev.channel };
}

async function readLastGood(path: string): Promise<ProvisionedDevice | null> {
  try {
    const r = LastGood.safeParse(JSON.parse(await readFile(path, 'utf8')));
    return r.success ? r.data : null;
  } catch {
    return null;
  }
}

async function rememberLastGood(path: string, dev: ProvisionedDevice): Promise<void> {
  const text = `${JSON.stringify(lastGoodOf(dev), null, 2)}\n`;
  if ((await readFile(path, 'utf8').catch(() => '')) === text) return;
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  await writeFileDurable(path, text);
}

/** mqtts:// or tls:// */
const isTlsBroker = (url: string) => /^(mqtts|tls):/.test(url);

/**
 * The agent config for a provisioned device: TLS with the enrolled certificate when there is one, and an
 * enrollment plan when a token is provisioned for a TLS broker and no usable certificate exists yet.
 */
async function fromDevice(dev: ProvisionedDevice, token: string | undefined, p: BootConfigPaths, say: (l: string) => void): Promise<Pick<BootConfig, 'config' | 'enroll' | 'systemRoots'>> {
  let ca: string | undefined;
  if (dev.server.caCert) {
    ca = join(p.runDir, 'fleet-ca.crt');
    await mkdir(p.runDir, { recursive: true });
    await writeFile(ca, dev.server.caCert, { mode: 0o644 });
  }
  const enrolled: TlsPaths | null = isTlsBroker(dev.server.mqttUrl) ? await existingEnrollment(p.tlsDir, dev.deviceName, token ? { token } : {}) : null;
  const certFiles = (t: TlsPaths) => ({ cert: t.cert, key: t.key, ...(ca ? { ca } : t.ca ? { ca: t.ca } : {}) });
  const systemRoots = ca ? {} : { systemRoots: true };
  if (enrolled) return { config: agentConfigFromDevice(dev, { trustRoot: p.trustRoot, tls: certFiles(enrolled) }), ...systemRoots };
  if (token && isTlsBroker(dev.server.mqttUrl)) {
    const planned: TlsPaths = { cert: join(p.tlsDir, 'device.crt'), key: join(p.tlsDir, 'device.key'), ca: join(p.tlsDir, 'ca.crt') };
    return {
      config: agentConfigFromDevice(dev, { trustRoot: p.trustRoot, tls: certFiles(planned) }),
      ...systemRoots,
      enroll: { deviceId: dev.deviceName, token, brokerUrl: dev.server.mqttUrl, serverUrl: dev.server.httpUrl, tlsDir: p.tlsDir, ...(dev.server.caCert ? { caPem: dev.server.caCert } : {}) },
    };
  }
  if (token) say(`UZ-WARN enroll-skipped reason=plain-mqtt-url detail="a certificate needs an mqtts:// broker"`);
  return { config: agentConfigFromDevice(dev, { trustRoot: p.trustRoot }) };
}

/** Never throws: every problem is a console line and, where it matters, `configError`. */
export async function resolveBootConfig(p: BootConfigPaths, say: (line: string) => void): Promise<BootConfig> {
  let configError: BootConfig['configError'];
  const r = await loadDeviceConfig(p.deviceFile);
  if (!r.ok && r.code === 'DEVICE_CONFIG_INVALID') {
    say(deviceConfigConsoleLine(r));
    configError = { code: r.code, message: `${DEVICE_CONFIG_FILE}: ${r.message}`.slice(0, 1000) };
  }
  if (r.ok) {
    await rememberLastGood(p.lastGood, r.config).catch((e: unknown) => say(`UZ-WARN device-config-not-remembered detail=${JSON.stringify((e as Error).message.slice(0, 200))}`));
  }

  for (const path of p.agentJson) {
    if (!existsSync(path)) continue;
    try {
      return { config: await loadConfig(path), source: 'agent.json', ...(configError ? { configError } : {}) };
    } catch (e) {
      const code = e instanceof UzError ? e.code : 'CONFIG_INVALID';
      say(`UZ-ERROR code=${code} detail=${JSON.stringify((e as Error).message.slice(0, 300))}`);
      configError ??= { code, message: (e as Error).message.slice(0, 1000) };
    }
  }

  const use = async (dev: ProvisionedDevice, token: string | undefined, source: BootConfig['source']): Promise<BootConfig> => {
    try {
      const c = await fromDevice(dev, token, p, say);
      return { ...c, source, device: dev, ...(configError ? { configError } : {}) };
    } catch (e) {
      const code = e instanceof UzError ? e.code : 'CONFIG_INVALID';
      say(`UZ-ERROR code=${code} detail=${JSON.stringify((e as Error).message.slice(0, 300))}`);
      return { config: null, source: 'none', configError: configError ?? { code, message: (e as Error).message.slice(0, 1000) } };
    }
  };
  if (r.ok) return use(r.config, r.config.enrollToken, 'uz-device.json');
  if (configError) {
    const last = await readLastGood(p.lastGood);
    if (last) {
      say(`UZ-WARN device-config-fallback source=last-good device=${last.deviceName}`);
      return use(last, undefined, 'last-good');
    }
  } else if (r.code === 'DEVICE_CONFIG_MISSING') {
    say(deviceConfigConsoleLine(r));
  }
  return { config: null, source: 'none', ...(configError ? { configError } : {}) };
}
