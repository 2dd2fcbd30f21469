import { join } from 'node:path';
import { type BootControl, type BootSelection, type Slot, type WithWritable, SLOTS, alwaysWritable, otherSlot } from './types.js';
import { BOOT_ENV_FILE, DEFAULT_ATTEMPTS, FACTORY_STATE, formatBootEnv, parseBootEnv, type UbootBootState } from '../../firmware/boot/uboot-script.js';
import { nodeStorage, type Storage } from '../io/storage.js';

/**
 * `uboot-bootcount`: the state file the generated boot.scr reads and decrements (firmware/boot/uboot-script.ts).
 * `dir` is where the boot-control partition is mounted (read-write while we write), or a plain folder in host
 * simulation (the same class then IS the "sim" backend, driven by updater/bootctl/sim-bootloader.ts).
 *
 * Semantics (mirroring boot.scr): U-Boot boots the first slot in BOOT_ORDER whose counter is > 0, decrementing
 * it and saving BEFORE the kernel starts; when no slot has attempts left it resets both to DEFAULT_ATTEMPTS.
 *
 * Why UZ_TRY: a counter of 1 alone cannot tell "armed for one try" from "a normal slot that lost two attempts
 * to power cuts". We add `UZ_TRY=<slot>` when arming. boot.scr imports and exports only BOOT_ORDER and the two
 * counters, so the first boot after arming drops UZ_TRY: its presence means exactly "armed, not yet tried".
 */
export const TRY_VAR = 'UZ_TRY';

export interface UbootEnvState extends UbootBootState {
  tryArmed: Slot | null;
}

export function parseUbootEnv(text: string | null): UbootEnvState {
  const s = (text !== null ? parseBootEnv(text) : null) ?? FACTORY_STATE;
  const m = text !== null ? new RegExp(`^${TRY_VAR}=([AB])$`, 'm').exec(text) : null;
  return { order: [...s.order], left: { ...s.left }, tryArmed: (m?.[1] as Slot | undefined) ?? null };
}

export function formatUbootEnv(s: UbootEnvState): string {
  return formatBootEnv(s) + (s.tryArmed ? `${TRY_VAR}=${s.tryArmed}\n` : '');
}

/** The boot selection an env state means (pure; shared by the backend and the tests). */
export function selectionOf(s: UbootEnvState): BootSelection {
  const tryPending = s.tryArmed && s.order[0] === s.tryArmed && s.left[s.tryArmed] > 0 ? s.tryArmed : null;
  const normal = s.order.filter((x) => x !== tryPending);
  // After a failed try (or instead of a normal boot), U-Boot takes the first slot with attempts left; with none
  // left it resets the counters and starts over at the head of the order.
  const primary = normal.find((x) => s.left[x] > 0) ?? s.order.find((x) => x !== tryPending) ?? s.order[0] ?? 'A';
  const bad = SLOTS.filter((x) => x !== tryPending && (s.left[x] === 0 || !s.order.includes(x)));
  return { primary, tryPending, bad };
}

export interface UbootEnvOptions {
  dir: string;
  /** Slot this boot came from (kernel command line uz.slot=, written by init to /run/uz/slot). */
  booted: () => Promise<Slot>;
  storage?: Storage;
  withWritable?: WithWritable;
  reboot?: () => Promise<void>;
}

export class UbootEnvBootControl implements BootControl {
  readonly scheme = 'uboot-bootcount' as const;
  private readonly storage: Storage;
  private readonly path: string;

  constructor(private readonly o: UbootEnvOptions) {
    this.storage = o.storage ?? nodeStorage;
    this.path = join(o.dir, BOOT_ENV_FILE);
  }

  bootedSlot(): Promise<Slot> {
    return this.o.booted();
  }

  async state(): Promise<UbootEnvState> {
    const buf = await this.storage.readFile(this.path);
    return parseUbootEnv(buf ? buf.toString('utf8') : null);
  }

  async read(): Promise<BootSelection> {
    return selectionOf(await this.state());
  }

  private async write(next: UbootEnvState, prev: UbootEnvState): Promise<void> {
    // Identical content is not rewritten: fewer writes on SD cards and on the FAT boot partition.
    if (formatUbootEnv(next) === formatUbootEnv(prev)) return;
    await (this.o.withWritable ?? alwaysWritable)(() => this.storage.writeFileDurable(this.path, formatUbootEnv(next)));
  }

  async markGood(slot: Slot): Promise<void> {
    const s = await this.state();
    await this.write({ order: [slot, otherSlot(slot)], left: { ...s.left, [slot]: DEFAULT_ATTEMPTS }, tryArmed: null }, s);
  }

  async markBad(slot: Slot): Promise<void> {
    const s = await this.state();
    await this.write({ order: [otherSlot(slot), slot], left: { ...s.left, [slot]: 0 }, tryArmed: s.tryArmed === slot ? null : s.tryArmed }, s);
  }

  async armTry(slot: Slot): Promise<void> {
    const s = await this.state();
    const other = otherSlot(slot);
    // The fallback is the slot we are running on, so it is proven bootable: it gets its full attempts back.
    // Keeping only what was left would let repeated failed tries drain it to 0, and then boot.scr's counter
    // reset would boot the failing try slot again first.
    await this.write({ order: [slot, other], left: { [slot]: 1, [other]: DEFAULT_ATTEMPTS } as Record<Slot, number>, tryArmed: slot }, s);
  }

  async reboot(): Promise<void> {
    if (!this.o.reboot) throw new Error('no reboot command configured');
    await this.o.reboot();
  }
}
