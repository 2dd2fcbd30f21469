/**
 * The agent inside the image, after entry.ts (bundled by esbuild to /opt/uz/agent.mjs, respawned by init) has
 * started the workload. It owns the workload and the whole A/B update flow:
 *   - supervises the workload (the Supervisor entry.ts started) and probes its real health check;
 *   - runs the update engine: start-up recovery from the saved state, then desired releases from MQTT;
 *   - prints `UZ-READY slot=X version=V` only after the health check passed; a trial boot is committed before
 *     it, an ordinary boot of the committed slot gets its bootloader attempts back right after it
 *     (docs/agent.md, "When UZ-READY is printed");
 *   - a trial boot that is not healthy within the deadline is marked bad and rebooted, so the bootloader
 *     returns to the previous slot (also for a trial armed by hand, as the QEMU bootcount test does).
 * Without an agent config (no /data/uz/agent.json nor /etc/uz/agent.json, no valid or remembered uz-device.json:
 * see boot-config.ts) it still runs the workload, the recovery and the good/bad marking; it just does not talk
 * to a broker. A card provisioned with an enroll token first enrolls (updater/enroll.ts) in the background,
 * then connects with its new certificate; the workload and the boot marking never wait for it.
 */
import { readFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ImageInfoSchema } from './image-info.js';
import type { Supervisor } from '../workload/supervisor.js';
import { probeHealth, STARTUP_PROBE_INTERVAL_MS, untilProbeDue, warmUpHttp, type HealthResult } from '../workload/health.js';
import { UbootEnvBootControl } from '../bootctl/uboot-env.js';
import { RpiTrybootControl } from '../bootctl/rpi-tryboot.js';
import type { BootControl, Slot } from '../bootctl/types.js';
import { loadTrustedRoot } from '../../firmware/trust/io.js';
import type { RootMetadata } from '../../firmware/trust/root.js';
import { MqttAgent } from '../agent.js';
import type { AgentConfig } from '../config.js';
import { enrollDevice, loadTlsMaterial } from '../enroll.js';
import { DEVICE_PATHS, resolveBootConfig } from './boot-config.js';
import { sleep } from '../state/retry.js';
import { UpdateEngine, type EngineNotice, type HealthVerdict } from '../engine.js';
import { nodeStorage } from '../io/storage.js';
import { slotPathsFromBootPartition } from '../install/slots.js';
import type { RangeSource } from '../install/source.js';
import { UzError } from '../../lib/errors.js';
import { ClockKeeper } from '../clock.js';
import { judge, measureData } from '../workload/data-guard.js';
import { httpTufFetch, tufTrustRefresher } from '../trust/refresh.js';
import { join } from 'node:path';

// Made per call rather than at module load: nothing runs while the start-up snapshot is built.
const run = (file: string, args: string[] = []) => promisify(execFile)(file, args);

/** The trust root the builder embeds (firmware/build.ts TRUST_ROOT_PATH), used when the config names none. */
export const DEFAULT_TRUST_ROOT = DEVICE_PATHS.trustRoot;

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


/**
 * The FAT boot-control partition is mounted read-only; writes remount it briefly. Going back to read-only
 * writes everything out (the kernel syncs a filesystem it remounts read-only); only if that remount fails is
 * a separate `sync` needed. One process fewer on the way to UZ-READY.
 */
async function withWritableBoot<T>(fn: () => Promise<T>): Promise<T> {
  await run('mount', ['-o', 'remount,rw', BOOT_MOUNT]);
  try {
    return await fn();
  } finally {
    await run('mount', ['-o', 'remount,ro', BOOT_MOUNT]).catch(() => run('sync').catch(() => {}));
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
  const secret = randomBytes(32).toString('base64url');
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  await writeFile(path, `${secret}\n`, { mode: 0o600 });
  return secret;
}

/** What entry.ts hands over: the image info (not yet validated), the slot, and the already running workload. */
export interface EarlyStart {
  /** /etc/uz/image.json as parsed JSON; entry.ts checked only the workload's fields. */
  rawInfo: unknown;
  slot: Slot | null;
  sup: Supervisor;
  say: (line: string) => void;
  /** Set when entry.ts did not start the workload because the data partition was full or over quota. */
  heldForData?: { code: string; message: string };
}

export async function runAgent(early: EarlyStart): Promise<void> {
  const { slot, sup, say } = early;
  const parsed = ImageInfoSchema.safeParse(early.rawInfo);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new UzError('IMAGE_INFO_INVALID', `/etc/uz/image.json: ${issue?.path.join('.') || '(root)'}: ${issue?.message}`, {});
  }
  const info = parsed.data;
  const app = info.app;
  // While the workload starts: make the first real health probe (and so UZ-READY) quicker.
  if (app.health.check.type !== 'tcp') void warmUpHttp();

  let last: HealthResult = { ok: false, detail: 'not probed yet' };
  /** The MQTT agent, once there is one (declared here: keepProbing() may run before it exists). */
  let agent: MqttAgent | null = null;
  const boot = await resolveBootConfig(DEVICE_PATHS, say);
  const config = boot.config;
  const stateDir = config?.stateDir ?? '/data/uz';
  await mkdir(stateDir, { recursive: true }).catch(() => {});

  // No RTC on a Pi: never behind the last time this board saw, then SNTP against the provisioned servers.
  const ntp = (boot.device as { ntpServers?: string[] } | undefined)?.ntpServers ?? [];
  const clock = new ClockKeeper({ servers: (ntp.length ? ntp : ['pool.ntp.org']).map((host) => ({ host })), stateFile: join(stateDir, 'clock.json'), log: say });
  await clock.restoreLastSeen().catch(() => false);
  setInterval(() => void clock.saveLastSeen().catch(() => {}), 5 * 60_000).unref();
  const syncClock = () => void clock.sync().then(() => clock.saveLastSeen()).catch(() => {});
  setTimeout(syncClock, 5_000).unref();
  setInterval(syncClock, 3600_000).unref();

  // Disk-full protection and the data quota: stop the workload before the partition fills, resume with room.
  let dataUsage: { freeBytes: number; usedBytes: number; quotaBytes?: number } | undefined;
  let dataError: { code: string; message: string } | undefined = early.heldForData;
  let stoppedForData = early.heldForData !== undefined;
  const guardData = async () => {
    const usage = await measureData('/data', app.dataDir, app.quota?.maxBytes);
    dataUsage = usage;
    const v = judge(usage, { minFreeBytes: app.minFreeBytes, ...(app.quota ? { quotaBytes: app.quota.maxBytes } : {}) }, stoppedForData);
    if (!v.ok && !stoppedForData) {
      stoppedForData = true;
      dataError = { code: v.code, message: v.detail };
      say(`UZ-ERROR code=${v.code} detail=${JSON.stringify(v.detail)} workload-stopped`);
      await sup.stop();
      void agent?.publishStatus();
    } else if (v.ok && stoppedForData) {
      stoppedForData = false;
      dataError = undefined;
      say('UZ-DATA space-recovered workload-restarted');
      sup.start();
      void agent?.publishStatus();
    }
  };
  setInterval(() => void guardData().catch(() => {}), 60_000).unref();
  void guardData().catch(() => {});
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
      // A loopback probe is cheap; probing often during start-up makes UZ-READY (and the commit) prompt.
      await untilProbeDue(sup, STARTUP_PROBE_INTERVAL_MS);
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

  const makeAgent = async (c: AgentConfig): Promise<MqttAgent> => {
    const tls = c.tls ? await loadTlsMaterial(c.tls, { systemRoots: boot.systemRoots === true }) : undefined;
    const password = !tls ? await devSecret(c.stateDir).catch(() => undefined) : undefined;
    return new MqttAgent({
      config: c,
      log: say,
      ...(tls ? { tls } : {}),
      ...(password ? { password } : {}),
      statusExtra: async () => ({
        board: info.board,
        version: info.version,
        workload: { name: app.name, version: app.version ?? info.version, healthy: last.ok, detail: last.detail.slice(0, 500), restarts: sup.restarts, ...(last.height !== undefined ? { height: last.height } : {}) },
        bootControl: await bootctl.read(),
        ...(dataUsage ? { data: dataUsage } : {}),
        ...(dataError ? { lastError: dataError } : boot.configError ? { lastError: boot.configError } : {}),
      }),
    });
  };
  // Enrolling devices get their agent once the certificate is stored (below); the engine asks `agent` lazily.
  if (config && !boot.enroll) {
    agent = await makeAgent(config).catch((e: unknown) => {
      say(`UZ-ERROR code=${e instanceof UzError ? e.code : 'TLS_MATERIAL'} detail=${JSON.stringify((e as Error).message.slice(0, 300))}`);
      return null;
    });
  }

  const notify = (n: EngineNotice) => {
    agent?.notify(n);
    switch (n.kind) {
      case 'ready':
        say(`UZ-READY slot=${n.slot} version=${n.version}`);
        void agent?.publishStatus(); // healthy now: the retained status must not keep saying otherwise
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
    // With a TUF repository configured, follow root rotations and check timestamp/snapshot/targets first.
    ...(config?.tufUrl && root
      ? { refreshTrust: tufTrustRefresher({ storage: nodeStorage, dir: join(config.stateDir, 'trust'), fetch: httpTufFetch(config.tufUrl), embedded: root, log: say }) }
      : {}),
    sourceFor: (r) => (agent ? agent.sourceFor(r) : noSource()),
    waitHealthy,
    notify,
  });
  agent?.start();
  if (agent) agent.attach(engine);
  if (config && boot.enroll) {
    const plan = boot.enroll;
    void (async () => {
      // Keeps trying: a pending approval, a rejection an operator may undo, or a server that is not there yet.
      for (;;) {
        try {
          const paths = await enrollDevice({ ...plan, log: say });
          if (!paths) return;
          const a = await makeAgent(config);
          agent = a;
          a.start();
          a.attach(engine);
          return;
        } catch (e) {
          say(`UZ-ENROLL failed code=${e instanceof UzError ? e.code : 'ENROLL_ERROR'} detail=${JSON.stringify((e as Error).message.slice(0, 200))} retry_in_ms=300000`);
          await sleep(300_000);
        }
      }
    })();
  }
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
      const was = last.ok;
      last = await probeHealth(app.health.check);
      if (last.ok !== was) void agent?.publishStatus();
    }
  }
}
