/**
 * The agent's entry point inside the image (bundled by esbuild to /opt/uz/agent.mjs, respawned by init).
 * It owns the workload and the whole A/B update flow:
 *   - starts the workload (Supervisor) and probes its real health check;
 *   - runs the update engine: start-up recovery from the saved state, then desired releases from MQTT;
 *   - prints `UZ-READY slot=X version=V` only after the health check passed AND the slot was recorded good
 *     (a trial boot is committed at that moment);
 *   - a trial boot that is not healthy within the deadline is marked bad and rebooted, so the bootloader
 *     returns to the previous slot (also for a trial armed by hand, as the QEMU bootcount test does).
 * Without an agent config (no /data/uz/agent.json nor /etc/uz/agent.json) it still runs the workload, the
 * recovery and the good/bad marking; it just does not talk to a broker.
 */
import { existsSync, readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { DEVICE_CONFIG_FILE, deviceConfigConsoleLine, loadDeviceConfig } from '../../firmware/provision/config.js';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ImageInfoSchema, IMAGE_INFO_PATH } from './image-info.js';
import { Supervisor } from '../workload/supervisor.js';
import { probeHealth, type HealthResult } from '../workload/health.js';
import { UbootEnvBootControl } from '../bootctl/uboot-env.js';
import { RpiTrybootControl } from '../bootctl/rpi-tryboot.js';
import type { BootControl, Slot } from '../bootctl/types.js';
import { loadTrustedRoot } from '../../firmware/trust/io.js';
import type { RootMetadata } from '../../firmware/trust/root.js';
import { MqttAgent } from '../agent.js';
import { agentConfigFromDevice, loadConfig, type AgentConfig } from '../config.js';
import { UpdateEngine, type EngineNotice, type HealthVerdict } from '../engine.js';
import { nodeStorage } from '../io/storage.js';
import { slotPathsFromBootPartition } from '../install/slots.js';
import type { RangeSource } from '../install/source.js';
import { UzError } from '../../lib/errors.js';

const run = promisify(execFile);
const say = (line: string) => process.stdout.write(`${line}\n`);

/** Per-device config on the data partition wins over the one baked into the image. */
export const CONFIG_PATHS = ['/data/uz/agent.json', '/etc/uz/agent.json'];
/** The trust root the builder embeds (firmware/build.ts TRUST_ROOT_PATH), used when the config names none. */
export const DEFAULT_TRUST_ROOT = '/etc/uz/trust/root.json';

/** The board's device-tree compatible string (first entry), matched against a bundle's hardwareIds. */
function deviceHardwareId(): string | undefined {
  try {
    const first = readFileSync('/proc/device-tree/compatible', 'latin1').split('\0')[0];
    return first || undefined;
  } catch {
    return undefined;
  }
}
const BOOT_MOUNT = '/run/uz/boot';

function readSlot(): Slot | null {
  try {
    const s = readFileSync('/run/uz/slot', 'utf8').trim();
    return s === 'A' || s === 'B' ? s : null;
  } catch {
    return null;
  }
}

/** The FAT boot-control partition is mounted read-only; writes remount it briefly (and sync). */
async function withWritableBoot<T>(fn: () => Promise<T>): Promise<T> {
  await run('mount', ['-o', 'remount,rw', BOOT_MOUNT]);
  try {
    return await fn();
  } finally {
    await run('sync').catch(() => {});
    await run('mount', ['-o', 'remount,ro', BOOT_MOUNT]).catch(() => {});
  }
}

function bootControlFor(scheme: string, slot: Slot): BootControl {
  if (scheme === 'uboot-bootcount') {
    return new UbootEnvBootControl({ dir: BOOT_MOUNT, booted: async () => slot, withWritable: withWritableBoot, reboot: () => run('reboot').then(() => {}) });
  }
  // `reboot "0 tryboot"` needs a reboot(2) with RESTART2 and that argument (systemd's reboot passes it;
  // busybox's ignores arguments): the image must ship a reboot that does.
  return new RpiTrybootControl({ dir: BOOT_MOUNT, withWritable: withWritableBoot, reboot: (tryboot) => run('reboot', tryboot ? ['0 tryboot'] : []).then(() => {}) });
}

/** Client certificate and key written by enrollment (docs/provisioning.md). */
const TLS_DIR = '/data/uz/tls';

async function loadAgentConfig(): Promise<AgentConfig | null> {
  for (const p of CONFIG_PATHS) if (existsSync(p)) return loadConfig(p);
  // A card provisioned with `uz provision`: derive the agent config from uz-device.json in p1.
  const r = await loadDeviceConfig(`${BOOT_MOUNT}/${DEVICE_CONFIG_FILE}`);
  if (!r.ok) {
    if (r.code !== 'DEVICE_CONFIG_MISSING') say(deviceConfigConsoleLine(r));
    return null;
  }
  let ca: string | undefined;
  if (r.config.server.caCert) {
    ca = '/run/uz/fleet-ca.crt';
    await writeFile(ca, r.config.server.caCert, { mode: 0o644 });
  }
  const cert = `${TLS_DIR}/device.crt`;
  const key = `${TLS_DIR}/device.key`;
  const tls = existsSync(cert) && existsSync(key) ? { cert, key, ...(ca ? { ca } : {}) } : undefined;
  return agentConfigFromDevice(r.config, { trustRoot: DEFAULT_TRUST_ROOT, ...(tls ? { tls } : {}) });
}

/**
 * Dev-mode MQTT password: 32 random bytes made on the device on first use and kept on the data partition;
 * the server registers it the first time the device connects (trust on first use) and requires it after.
 */
async function devSecret(stateDir: string): Promise<string> {
  const path = `${stateDir}/mqtt-secret`;
  try {
    const s = (await readFile(path, 'utf8')).trim();
    if (s.length >= 32) return s;
  } catch {
    /* created below */
  }
  const { randomBytes } = await import('node:crypto');
  const { mkdir } = await import('node:fs/promises');
  const secret = randomBytes(32).toString('base64url');
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  await writeFile(path, `${secret}\n`, { mode: 0o600 });
  return secret;
}

async function main(): Promise<void> {
  const info = ImageInfoSchema.parse(JSON.parse(readFileSync(IMAGE_INFO_PATH, 'utf8')));
  const slot = readSlot();
  const app = info.app;
  say(`UZ-AGENT start slot=${slot ?? 'unknown'} version=${info.version} app=${app.name}`);

  const sup = new Supervisor(app, (line) => say(`[${app.name}] ${line}`));
  sup.on('exited', (code, signal, wait) => say(`UZ-WORKLOAD exited code=${code} signal=${signal} restart_in_ms=${wait}`));
  sup.start();
  const stop = async () => {
    await sup.stop();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  let last: HealthResult = { ok: false, detail: 'not probed yet' };
  const config = await loadAgentConfig().catch((e: unknown) => {
    say(`UZ-ERROR code=${e instanceof UzError ? e.code : 'CONFIG_INVALID'} detail=${JSON.stringify((e as Error).message)}`);
    return null;
  });
  const deadlineMs = (config?.healthDeadlineSeconds ?? app.health.startupDeadlineSeconds) * 1000;
  const startedAt = Date.now();
  /** Resolves as soon as the workload is healthy, or not healthy when the start-up deadline has passed. */
  const waitHealthy = async (signal: AbortSignal): Promise<HealthVerdict> => {
    for (;;) {
      last = await probeHealth(app.health.check);
      if (last.ok) return { ok: true, detail: last.detail };
      if (Date.now() - startedAt > deadlineMs) {
        say(`UZ-ERROR code=HEALTH_DEADLINE slot=${slot} detail=${JSON.stringify(last.detail)}`);
        return { ok: false, detail: last.detail };
      }
      if (signal.aborted) return { ok: false, detail: 'aborted' };
      await new Promise((r) => setTimeout(r, 1000));
    }
  };

  if (!slot) {
    say('UZ-ERROR code=SLOT_UNKNOWN detail="no /run/uz/slot: updates and boot marking disabled"');
    const h = await waitHealthy(new AbortController().signal);
    if (h.ok) say(`UZ-READY slot=unknown version=${info.version}`);
    return keepProbing();
  }

  const bootctl = bootControlFor(info.bootControl, slot);
  let root: RootMetadata | null = null;
  try {
    root = await loadTrustedRoot(config?.trustRoot ?? DEFAULT_TRUST_ROOT);
  } catch (e) {
    say(`UZ-WARN code=${e instanceof UzError ? e.code : 'TRUST_ROOT'} detail=${JSON.stringify((e as Error).message)} updates-disabled`);
  }
  const slots = slotPathsFromBootPartition(await readFile('/run/uz/bootpart', 'utf8').catch(() => '/dev/vda1'));

  const tls = config?.tls
    ? { cert: await readFile(config.tls.cert), key: await readFile(config.tls.key), ...(config.tls.ca ? { ca: await readFile(config.tls.ca) } : {}) }
    : undefined;
  const password = config && !tls ? await devSecret(config.stateDir).catch(() => undefined) : undefined;
  const agent = config
    ? new MqttAgent({
        config,
        log: say,
        ...(tls ? { tls } : {}),
        ...(password ? { password } : {}),
        statusExtra: async () => ({
          board: info.board,
          version: info.version,
          workload: { name: app.name, version: app.version ?? info.version, healthy: last.ok, detail: last.detail.slice(0, 500), restarts: sup.restarts, ...(last.height !== undefined ? { height: last.height } : {}) },
          bootControl: await bootctl.read(),
        }),
      })
    : null;

  const notify = (n: EngineNotice) => {
    agent?.notify(n);
    switch (n.kind) {
      case 'ready':
        say(`UZ-READY slot=${n.slot} version=${n.version}`);
        break;
      case 'phase':
        say(`UZ-UPDATE txid=${n.event.txid} phase=${n.event.phase} version=${n.event.version}${n.event.error ? ` code=${n.event.error.code}` : ''}`);
        break;
      case 'reboot':
        say(n.rollback ? `UZ-ROLLBACK slot=${slot} reason=${JSON.stringify(n.reason)}` : `UZ-REBOOT slot=${slot} reason=${JSON.stringify(n.reason)}`);
        void sup.stop();
        break;
      case 'log':
        say(`UZ-AGENT ${n.line}`);
        break;
      case 'state':
        break;
    }
  };

  const hwid = deviceHardwareId();
  const noSource = (): RangeSource => {
    throw new UzError('AGENT_OFFLINE', 'no agent config: updates cannot be fetched', {});
  };
  const engine = new UpdateEngine({
    storage: nodeStorage,
    stateDir: config?.stateDir ?? '/data/uz',
    bootctl,
    slots,
    // Without a trusted root nothing verifies: every release is refused (fail closed).
    trust: { root, board: info.board, ...(hwid ? { hardwareId: hwid } : {}) },
    running: { version: info.version, rollbackCounter: info.rollbackCounter ?? 0 },
    sourceFor: (r) => (agent ? agent.sourceFor(r) : noSource()),
    waitHealthy,
    notify,
  });
  agent?.start();
  if (agent) agent.attach(engine);
  try {
    await engine.start();
  } catch (e) {
    // The workload must not depend on the updater: report, then do the minimal good/ready marking.
    say(`UZ-ERROR code=${e instanceof UzError ? e.code : 'ENGINE_START'} detail=${JSON.stringify((e as Error).message)}`);
    const h = await waitHealthy(new AbortController().signal);
    if (h.ok) {
      await bootctl.markGood(slot).catch((err: unknown) => say(`UZ-ERROR code=BOOTCTL_WRITE detail=${JSON.stringify((err as Error).message)}`));
      say(`UZ-READY slot=${slot} version=${info.version}`);
    }
  }
  await keepProbing();

  /** After start-up, keep the health fact fresh for status reports. */
  async function keepProbing(): Promise<void> {
    for (;;) {
      await new Promise((r) => setTimeout(r, app.health.intervalSeconds * 1000));
      last = await probeHealth(app.health.check);
    }
  }
}

main().catch((e) => {
  say(`UZ-ERROR code=AGENT_CRASH detail=${JSON.stringify((e as Error).message)}`);
  process.exit(1);
});
