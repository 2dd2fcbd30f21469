/**
 * Simulated bootloaders: pure functions that say which slot the next boot starts and how the persisted boot
 * state changes, so the power-cut harness and the contract tests can "boot" without hardware.
 *
 *  - U-Boot (boot.scr, firmware/boot/uboot-script.ts): import BOOT_ORDER/BOOT_*_LEFT over factory defaults,
 *    take the first slot in the order with attempts left, DECREMENT AND SAVE BEFORE BOOTING (exporting only
 *    those three variables), then load the kernel; a load or kernel failure resets and counts as a used attempt.
 *    No attempts left anywhere: reset both counters, save, reset.
 *  - Pi tryboot firmware: the one-shot tryboot flag (set by `reboot "0 tryboot"`, lost on power cut) selects
 *    the [tryboot] partition once; otherwise [all]. A slot that fails to boot resets the board (watchdog),
 *    which clears the flag, so the next boot is the primary.
 */
import { DEFAULT_ATTEMPTS } from '../../firmware/boot/uboot-script.js';
import { parseAutoboot } from '../../firmware/boot/tryboot.js';
import { formatUbootEnv, parseUbootEnv } from './uboot-env.js';
import { type Slot, slotOfPartition } from './types.js';

/** Which slots hold content that boots (verifies against a signed manifest, in the harness). */
export type SlotValidity = Record<Slot, boolean>;

export type BootStep =
  /** The kernel of `slot` started. */
  | { kind: 'booted'; slot: Slot; tryboot: boolean }
  /** `slot` was chosen but did not boot (bad content); the board resets. */
  | { kind: 'failed'; slot: Slot | null }
  /** Nothing had attempts left: counters reset, board resets. */
  | { kind: 'reset' };

/** One U-Boot run of boot.scr: the env text after it (what fatwrite saved) and what happened. */
export function ubootStep(envText: string | null, valid: SlotValidity): { env: string; step: BootStep } {
  const s = parseUbootEnv(envText);
  const chosen = s.order.find((x) => s.left[x] > 0);
  // boot.scr exports only these three variables, so UZ_TRY disappears at the first boot after arming.
  if (!chosen) {
    return { env: formatUbootEnv({ order: s.order, left: { A: DEFAULT_ATTEMPTS, B: DEFAULT_ATTEMPTS }, tryArmed: null }), step: { kind: 'reset' } };
  }
  const left = { ...s.left, [chosen]: s.left[chosen] - 1 };
  const env = formatUbootEnv({ order: s.order, left, tryArmed: null });
  return { env, step: valid[chosen] ? { kind: 'booted', slot: chosen, tryboot: false } : { kind: 'failed', slot: chosen } };
}

/** One Pi firmware boot: the flag is consumed whatever happens. */
export function trybootStep(autoboot: string | null, tryFlag: boolean, valid: SlotValidity): { tryFlag: false; step: BootStep } {
  const p = autoboot !== null ? parseAutoboot(autoboot) : null;
  if (!p) return { tryFlag: false, step: { kind: 'failed', slot: null } };
  const slot = slotOfPartition(tryFlag ? p.tryboot : p.primary);
  if (!slot) return { tryFlag: false, step: { kind: 'failed', slot: null } };
  return { tryFlag: false, step: valid[slot] ? { kind: 'booted', slot, tryboot: tryFlag } : { kind: 'failed', slot } };
}

export interface BootRun {
  /** The slot finally running, or null when no valid slot came up within the step budget. */
  slot: Slot | null;
  tryboot: boolean;
  /** Every step, for diagnostics. */
  steps: BootStep[];
  /** No step chose a slot without valid content (the strict invariant: selection never names junk). */
  neverChoseInvalid: boolean;
}

/** Boots until a valid slot runs, feeding each step's persisted state into the next (max `budget` resets). */
export function bootUntilUp<S>(
  state: S,
  step: (s: S) => { state: S; step: BootStep },
  budget = 12,
): { run: BootRun; state: S } {
  const steps: BootStep[] = [];
  let cur = state;
  for (let i = 0; i < budget; i++) {
    const r = step(cur);
    cur = r.state;
    steps.push(r.step);
    if (r.step.kind === 'booted') {
      return { run: { slot: r.step.slot, tryboot: r.step.tryboot, steps, neverChoseInvalid: !steps.some((x) => x.kind === 'failed') }, state: cur };
    }
  }
  return { run: { slot: null, tryboot: false, steps, neverChoseInvalid: false }, state: cur };
}
