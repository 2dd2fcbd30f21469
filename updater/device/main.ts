/**
 * The agent's entry point inside the image (bundled to /opt/uz/agent.mjs, respawned by init).
 * Today it owns the workload and the "mark good" half of the A/B flow: it starts the workload, waits for
 * its real health check, prints UZ-READY and resets the slot's boot counter; a trial boot that never gets
 * healthy is marked bad and rebooted so the bootloader returns to the good slot.
 */
import { readFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ImageInfoSchema, IMAGE_INFO_PATH } from './image-info.js';
import { Supervisor } from '../workload/supervisor.js';
import { probeHealth } from '../workload/health.js';
import { UbootEnvBootControl } from '../bootctl/uboot-env.js';
import type { BootControl, Slot } from '../bootctl/types.js';

const run = promisify(execFile);
const say = (line: string) => process.stdout.write(`${line}\n`);

function readSlot(): Slot | null {
  try {
    const s = readFileSync('/run/uz/slot', 'utf8').trim();
    return s === 'A' || s === 'B' ? s : null;
  } catch {
    return null;
  }
}

function bootControlFor(scheme: string, slot: Slot): BootControl | null {
  if (scheme === 'uboot-bootcount') {
    return new UbootEnvBootControl(
      '/run/uz/boot',
      async () => slot,
      async (fn) => {
        await run('mount', ['-o', 'remount,rw', '/run/uz/boot']);
        try {
          return await fn();
        } finally {
          await run('sync');
          await run('mount', ['-o', 'remount,ro', '/run/uz/boot']).catch(() => {});
        }
      },
    );
  }
  return null; // rpi-tryboot: the agent issue adds the backend; until then the slot stays as the firmware chose.
}

async function main(): Promise<void> {
  const info = ImageInfoSchema.parse(JSON.parse(readFileSync(IMAGE_INFO_PATH, 'utf8')));
  const slot = readSlot();
  const app = info.app;
  say(`UZ-AGENT start slot=${slot ?? 'unknown'} version=${info.version} app=${app.name}`);

  const bootctl = slot ? bootControlFor(info.bootControl, slot) : null;
  const before = bootctl ? await bootctl.read().catch(() => null) : null;
  const isTrial = !!(bootctl && before && slot && before.bad.includes(slot));

  const sup = new Supervisor(app, (line) => say(`[${app.name}] ${line}`));
  sup.on('exited', (code, signal, wait) => say(`UZ-WORKLOAD exited code=${code} signal=${signal} restart_in_ms=${wait}`));
  sup.start();

  const deadline = Date.now() + app.health.startupDeadlineSeconds * 1000;
  let ready = false;
  const stop = async () => {
    await sup.stop();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  for (;;) {
    const h = await probeHealth(app.health.check);
    if (h.ok && !ready) {
      ready = true;
      if (bootctl && slot) {
        // A board that cannot record "good" still runs; the bootloader's counter then decides later.
        await bootctl.markGood(slot).catch((e) => say(`UZ-ERROR code=BOOTCTL_WRITE detail=${JSON.stringify((e as Error).message)}`));
      }
      say(`UZ-READY slot=${slot ?? 'unknown'} version=${info.version}`);
    } else if (!h.ok && !ready && Date.now() > deadline) {
      say(`UZ-ERROR code=HEALTH_DEADLINE slot=${slot} detail=${JSON.stringify(h.detail)}`);
      if (isTrial && bootctl && slot) {
        await bootctl.markBad(slot);
        say(`UZ-ROLLBACK slot=${slot} reason=HEALTH_DEADLINE`);
        await sup.stop();
        await run('reboot').catch(() => {});
        return;
      }
    }
    await new Promise((r) => setTimeout(r, ready ? app.health.intervalSeconds * 1000 : 1000));
  }
}

main().catch((e) => {
  say(`UZ-ERROR code=AGENT_CRASH detail=${JSON.stringify((e as Error).message)}`);
  process.exit(1);
});
