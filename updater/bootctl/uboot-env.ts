import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type BootControl, type BootSelection, type Slot, otherSlot } from './types.js';
import {
  BOOT_ENV_FILE,
  DEFAULT_ATTEMPTS,
  FACTORY_STATE,
  formatBootEnv,
  parseBootEnv,
  type UbootBootState,
} from '../../firmware/boot/uboot-script.js';
import { writeFileDurable } from '../fsutil.js';

/**
 * `uboot-bootcount`: the state file the generated boot.scr reads and decrements. `dir` is where the
 * boot-control partition is mounted (read-write while we write), or a plain folder in host simulation.
 */
export class UbootEnvBootControl implements BootControl {
  readonly scheme = 'uboot-bootcount' as const;

  constructor(
    private readonly dir: string,
    private readonly booted: () => Promise<Slot>,
    /** Called around writes so a read-only mount can be made writable briefly. */
    private readonly withWritable: <T>(fn: () => Promise<T>) => Promise<T> = (fn) => fn(),
  ) {}

  bootedSlot(): Promise<Slot> {
    return this.booted();
  }

  async state(): Promise<UbootBootState> {
    try {
      return parseBootEnv(await readFile(join(this.dir, BOOT_ENV_FILE), 'utf8')) ?? FACTORY_STATE;
    } catch {
      return FACTORY_STATE;
    }
  }

  async read(): Promise<BootSelection> {
    const s = await this.state();
    const primary = s.order[0] ?? 'A';
    const second = s.order[1];
    // A try is armed when the first slot in the order has exactly its single trial attempt.
    const tryPending = s.left[primary] === 1 && second !== undefined && s.left[second] > 0 ? primary : null;
    const bad = (['A', 'B'] as Slot[]).filter((x) => s.left[x] === 0 || !s.order.includes(x));
    return { primary: tryPending && second ? second : primary, tryPending, bad };
  }

  private async write(s: UbootBootState): Promise<void> {
    await this.withWritable(() => writeFileDurable(join(this.dir, BOOT_ENV_FILE), formatBootEnv(s)));
  }

  async markGood(slot: Slot): Promise<void> {
    const s = await this.state();
    const other = otherSlot(slot);
    await this.write({ order: [slot, other], left: { ...s.left, [slot]: DEFAULT_ATTEMPTS } as Record<Slot, number> });
  }

  async markBad(slot: Slot): Promise<void> {
    const s = await this.state();
    const other = otherSlot(slot);
    await this.write({ order: [other, slot], left: { ...s.left, [slot]: 0 } as Record<Slot, number> });
  }

  async armTry(slot: Slot): Promise<void> {
    const s = await this.state();
    const other = otherSlot(slot);
    await this.write({
      order: [slot, other],
      left: { [slot]: 1, [other]: Math.max(s.left[other], 1) } as Record<Slot, number>,
    });
  }
}
