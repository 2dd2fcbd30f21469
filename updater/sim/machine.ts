/**
 * A simulated board: slots as files, a boot partition folder, a device-tree folder and a bootloader that follows
 * the real scheme's rules (sim-bootloader.ts). Used by the power-cut harness, the boot-control contract tests
 * and `uz agent --sim`. Everything goes through a Storage, so with CrashStorage a power cut drops what the
 * agent did not fsync, and the "bootloader" then reads only what survived.
 *
 * Layout under `root`:  boot/ (uzboot.env | autoboot.txt + uztry.env)   slot-A.img  slot-B.img
 *                       dt/ (partition, tryboot: u32 BE)                run/slot    data/ (the agent's state)
 */
import { join } from 'node:path';
import { DEFAULT_ATTEMPTS } from '../../firmware/boot/uboot-script.js';
import { BOOT_ENV_FILE } from '../../firmware/boot/uboot-script.js';
import { AUTOBOOT_FILE, autobootTxt } from '../../firmware/boot/tryboot.js';
import type { Storage } from '../io/storage.js';
import { RpiTrybootControl } from '../bootctl/rpi-tryboot.js';
import { UbootEnvBootControl, formatUbootEnv } from '../bootctl/uboot-env.js';
import { bootUntilUp, trybootStep, ubootStep, type BootRun, type SlotValidity } from '../bootctl/sim-bootloader.js';
import { type BootControl, type Slot, partitionOf } from '../bootctl/types.js';

export type SimScheme = 'uboot-bootcount' | 'rpi-tryboot';

export interface SimPaths {
  root: string;
  bootDir: string;
  dtDir: string;
  slotFile: (s: Slot) => string;
  runSlot: string;
  dataDir: string;
}

export function simPaths(root: string): SimPaths {
  return {
    root,
    bootDir: join(root, 'boot'),
    dtDir: join(root, 'dt'),
    slotFile: (s) => join(root, `slot-${s}.img`),
    runSlot: join(root, 'run', 'slot'),
    dataDir: join(root, 'data'),
  };
}

/** Factory boot-partition content of a freshly flashed image (slot A primary). */
export function factoryBootFiles(scheme: SimScheme): Record<string, string> {
  return scheme === 'uboot-bootcount'
    ? { [BOOT_ENV_FILE]: formatUbootEnv({ order: ['A', 'B'], left: { A: DEFAULT_ATTEMPTS, B: DEFAULT_ATTEMPTS }, tryArmed: null }) }
    : { [AUTOBOOT_FILE]: autobootTxt(partitionOf('A')) };
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}

export class SimMachine {
  readonly paths: SimPaths;
  /** Pi only: the one-shot flag lives in a register, not on disk, so a power cut clears it. */
  tryFlag = false;
  /** Set when the running agent asked for a reboot. */
  rebootRequested = false;
  current: Slot | null = null;

  constructor(
    readonly scheme: SimScheme,
    readonly storage: Storage,
    root: string,
  ) {
    this.paths = simPaths(root);
  }

  /** Boot control as the agent running on this machine sees it. */
  bootControl(): BootControl {
    const reboot = async (tryboot: boolean): Promise<void> => {
      if (tryboot) this.tryFlag = true;
      this.rebootRequested = true;
    };
    if (this.scheme === 'uboot-bootcount') {
      return new UbootEnvBootControl({
        dir: this.paths.bootDir,
        storage: this.storage,
        booted: async () => {
          const buf = await this.storage.readFile(this.paths.runSlot);
          const s = buf?.toString('utf8').trim();
          if (s !== 'A' && s !== 'B') throw new Error('sim: no booted slot recorded');
          return s;
        },
        reboot: () => reboot(false),
      });
    }
    return new RpiTrybootControl({ dir: this.paths.bootDir, dtDir: this.paths.dtDir, storage: this.storage, reboot });
  }

  /** A power cut (or a hard reset) clears the volatile flag. */
  powerLoss(): void {
    this.tryFlag = false;
  }

  /**
   * Runs the bootloader until a valid slot starts (or the budget is spent), persisting what the real one
   * persists, and records the booted slot where the agent looks for it (cmdline / device tree).
   */
  async boot(valid: SlotValidity): Promise<BootRun> {
    this.rebootRequested = false;
    let run: BootRun;
    if (this.scheme === 'uboot-bootcount') {
      const path = join(this.paths.bootDir, BOOT_ENV_FILE);
      const buf = await this.storage.readFile(path);
      const r = bootUntilUp<string | null>(buf ? buf.toString('utf8') : null, (env) => {
        const x = ubootStep(env, valid);
        return { state: x.env, step: x.step };
      });
      run = r.run;
      // U-Boot's fatwrite: modelled as atomic (see docs/agent.md for what a torn FAT write would mean).
      if (r.state !== null && (buf === null || r.state !== buf.toString('utf8'))) await this.storage.writeFileDurable(path, r.state);
    } else {
      const buf = await this.storage.readFile(join(this.paths.bootDir, AUTOBOOT_FILE));
      const r = bootUntilUp<boolean>(this.tryFlag, (flag) => {
        const x = trybootStep(buf ? buf.toString('utf8') : null, flag, valid);
        return { state: x.tryFlag, step: x.step };
      });
      run = r.run;
      this.tryFlag = false;
      if (run.slot) {
        await this.storage.writeFileDurable(join(this.paths.dtDir, 'partition'), u32(partitionOf(run.slot)));
        await this.storage.writeFileDurable(join(this.paths.dtDir, 'tryboot'), u32(run.tryboot ? 1 : 0));
      }
    }
    this.current = run.slot;
    if (run.slot) await this.storage.writeFileDurable(this.paths.runSlot, `${run.slot}\n`);
    return run;
  }
}
