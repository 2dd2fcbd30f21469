import { join } from 'node:path';
import { UzError } from '../../lib/errors.js';
import { AUTOBOOT_FILE, autobootTxt, parseAutoboot } from '../../firmware/boot/tryboot.js';
import { nodeStorage, type Storage } from '../io/storage.js';
import {
  type BootControl,
  type BootSelection,
  type Slot,
  type WithWritable,
  SLOTS,
  alwaysWritable,
  otherSlot,
  partitionOf,
  slotOfPartition,
} from './types.js';

/**
 * `rpi-tryboot` (Pi 4/400/CM4/5): autoboot.txt in p1 names the primary slot partition in [all] and the other
 * one in [tryboot]; `reboot "0 tryboot"` sets a one-shot flag in the PMIC/PM register so exactly the next boot
 * uses [tryboot]. The firmware reports what it did in the device tree: chosen/bootloader/partition (u32 BE) and
 * chosen/bootloader/tryboot (u32 BE, 1 on a try boot).
 *
 * The firmware has no notion of "bad" or "armed", so we keep that intent in a small file next to
 * autoboot.txt (`uztry.env`): UZ_TRY=<slot> (remembered target; the flag itself lives only in the reboot
 * call) and UZ_BAD=<slots>. Commit = rewrite autoboot.txt with the partitions swapped. The flag does not
 * survive a power cut, so a cut during the try reboot simply boots the primary again and the agent re-arms
 * (bounded by its attempts cap).
 */
export const TRYBOOT_INTENT_FILE = 'uztry.env';
export const DEFAULT_DT_DIR = '/proc/device-tree/chosen/bootloader';

export interface TrybootIntent {
  tryArmed: Slot | null;
  bad: Slot[];
}

export function parseIntent(text: string | null): TrybootIntent {
  const t = text ?? '';
  const tryM = /^UZ_TRY=([AB])$/m.exec(t);
  const badM = /^UZ_BAD=([AB ]*)$/m.exec(t);
  const bad = SLOTS.filter((s) => (badM?.[1] ?? '').split(' ').includes(s));
  return { tryArmed: (tryM?.[1] as Slot | undefined) ?? null, bad };
}

export function formatIntent(i: TrybootIntent): string {
  return `${i.tryArmed ? `UZ_TRY=${i.tryArmed}\n` : ''}UZ_BAD=${i.bad.join(' ')}\n`;
}

/** Primary slot per autoboot.txt; a missing or damaged file reads as the factory layout (p2 = A). */
export function primaryOf(autoboot: string | null): Slot {
  const p = autoboot !== null ? parseAutoboot(autoboot) : null;
  return (p && slotOfPartition(p.primary)) ?? 'A';
}

export function u32be(buf: Buffer | null): number | null {
  return buf && buf.length >= 4 ? buf.readUInt32BE(0) : null;
}

export interface TrybootOptions {
  /** Where p1 (the FAT boot partition holding autoboot.txt) is mounted. */
  dir: string;
  /** Device-tree directory the firmware fills in; injectable for tests and the simulation. */
  dtDir?: string;
  storage?: Storage;
  withWritable?: WithWritable;
  /** Runs the reboot; `tryboot` true means `reboot "0 tryboot"`. */
  reboot?: (tryboot: boolean) => Promise<void>;
}

export class RpiTrybootControl implements BootControl {
  readonly scheme = 'rpi-tryboot' as const;
  private readonly storage: Storage;

  constructor(private readonly o: TrybootOptions) {
    this.storage = o.storage ?? nodeStorage;
  }

  private dt(name: string): string {
    return join(this.o.dtDir ?? DEFAULT_DT_DIR, name);
  }

  async bootedSlot(): Promise<Slot> {
    const part = u32be(await this.storage.readFile(this.dt('partition')));
    const slot = part === null ? null : slotOfPartition(part);
    if (!slot) throw new UzError('BOOTCTL_UNKNOWN_SLOT', `device tree reports boot partition ${part ?? '(none)'}, expected 2 or 3`, { partition: part });
    return slot;
  }

  /** True when this boot used the [tryboot] section (the one-shot flag was set). */
  async bootedViaTry(): Promise<boolean> {
    return u32be(await this.storage.readFile(this.dt('tryboot'))) === 1;
  }

  private async files(): Promise<{ autoboot: string | null; intent: TrybootIntent }> {
    const a = await this.storage.readFile(join(this.o.dir, AUTOBOOT_FILE));
    const i = await this.storage.readFile(join(this.o.dir, TRYBOOT_INTENT_FILE));
    return { autoboot: a ? a.toString('utf8') : null, intent: parseIntent(i ? i.toString('utf8') : null) };
  }

  async read(): Promise<BootSelection> {
    const { autoboot, intent } = await this.files();
    const primary = primaryOf(autoboot);
    // Running the try right now means the one-shot flag has been used: it is no longer pending.
    const inTry = (await this.bootedViaTry()) && (await this.bootedSlot().catch(() => null)) === intent.tryArmed;
    const tryPending = intent.tryArmed && intent.tryArmed !== primary && !inTry ? intent.tryArmed : null;
    return { primary, tryPending, bad: intent.bad.filter((s) => s !== tryPending) };
  }

  private async writeFiles(autoboot: string | null, prevAutoboot: string | null, intent: TrybootIntent, prevIntent: TrybootIntent): Promise<void> {
    const w = this.o.withWritable ?? alwaysWritable;
    await w(async () => {
      // autoboot.txt first: it alone decides what boots; the intent file only refines what we report.
      if (autoboot !== null && autoboot !== prevAutoboot) await this.storage.writeFileDurable(join(this.o.dir, AUTOBOOT_FILE), autoboot);
      if (formatIntent(intent) !== formatIntent(prevIntent)) await this.storage.writeFileDurable(join(this.o.dir, TRYBOOT_INTENT_FILE), formatIntent(intent));
    });
  }

  async markGood(slot: Slot): Promise<void> {
    const { autoboot, intent } = await this.files();
    const want = autobootTxt(partitionOf(slot));
    await this.writeFiles(primaryOf(autoboot) === slot && autoboot !== null && parseAutoboot(autoboot) ? autoboot : want, autoboot, { tryArmed: null, bad: intent.bad.filter((s) => s !== slot) }, intent);
  }

  async markBad(slot: Slot): Promise<void> {
    const { autoboot, intent } = await this.files();
    // The firmware boots [all] whatever we think of it: a bad primary must stop being the primary.
    const next = primaryOf(autoboot) === slot ? autobootTxt(partitionOf(otherSlot(slot))) : autoboot;
    const bad = SLOTS.filter((s) => s === slot || intent.bad.includes(s));
    await this.writeFiles(next, autoboot, { tryArmed: intent.tryArmed === slot ? null : intent.tryArmed, bad }, intent);
  }

  async armTry(slot: Slot): Promise<void> {
    const { autoboot, intent } = await this.files();
    const primary = primaryOf(autoboot);
    if (primary === slot) throw new UzError('BOOTCTL_TRY_PRIMARY', `slot ${slot} is already the primary; nothing to try`, { slot });
    // autobootTxt(primary) always names the other partition under [tryboot]; rewrite if the file says otherwise.
    const want = autobootTxt(partitionOf(primary));
    const p = autoboot !== null ? parseAutoboot(autoboot) : null;
    const next = p && p.tryboot === partitionOf(slot) ? autoboot : want;
    await this.writeFiles(next, autoboot, { tryArmed: slot, bad: intent.bad.filter((s) => s !== slot) }, intent);
  }

  async reboot(): Promise<void> {
    if (!this.o.reboot) throw new Error('no reboot command configured');
    const sel = await this.read();
    await this.o.reboot(sel.tryPending !== null);
  }
}
