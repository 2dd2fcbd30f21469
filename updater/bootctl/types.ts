/**
 * Boot control behind one interface (RAUC's boot chooser idea): the agent speaks in slots and intents,
 * each backend maps them onto its bootloader. Backends: `uboot-bootcount` (U-Boot script + env file),
 * `rpi-tryboot` (autoboot.txt + one-shot tryboot flag), and the same U-Boot env format in a plain directory
 * for host simulation. One contract suite (test/updater/bootctl-contract.test.ts) runs against all of them.
 */
export type Slot = 'A' | 'B';

export const otherSlot = (s: Slot): Slot => (s === 'A' ? 'B' : 'A');

export interface BootSelection {
  /** The slot a normal (non-try) boot starts. */
  primary: Slot;
  /** A slot armed for exactly one trial boot, if any. */
  tryPending: Slot | null;
  /** Slots the bootloader will not pick again until rewritten. */
  bad: Slot[];
}

export interface BootControl {
  readonly scheme: 'uboot-bootcount' | 'rpi-tryboot';
  /** Slot this boot came from, as the bootloader reported it. */
  bootedSlot(): Promise<Slot>;
  read(): Promise<BootSelection>;
  /** The booted slot is healthy: make it the primary and give it its full attempts. */
  markGood(slot: Slot): Promise<void>;
  /** Never boot this slot (before writing into it, and after a failed try). */
  markBad(slot: Slot): Promise<void>;
  /** Arm one trial boot of `slot`; a failed trial returns to the current primary. */
  armTry(slot: Slot): Promise<void>;
  /**
   * Restart the machine so the bootloader acts on the selection (tryboot needs its one-shot flag passed to
   * the reboot itself, so rebooting belongs to the backend). Resolves when the reboot was requested.
   */
  reboot(): Promise<void>;
}

export const SLOTS: readonly Slot[] = ['A', 'B'];

/** MBR partition number of a slot on every board: p2 = A, p3 = B (p1 boot-control, p4 data). */
export const partitionOf = (s: Slot): 2 | 3 => (s === 'A' ? 2 : 3);
export const slotOfPartition = (n: number): Slot | null => (n === 2 ? 'A' : n === 3 ? 'B' : null);

/** Runs a write with the boot-control partition made writable (a no-op on hosts and in tests). */
export type WithWritable = <T>(fn: () => Promise<T>) => Promise<T>;
export const alwaysWritable: WithWritable = (fn) => fn();
