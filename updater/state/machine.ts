/**
 * The update state machine as data: one table of (from, event, to) rows and one recovery table that maps the
 * last persisted state (plus what the bootloader did) to where the agent continues after a restart. Both are
 * pure and unit-tested row by row; the engine (updater/engine.ts) persists each state BEFORE running its action
 * (Mender's rule), so a power cut at any point leaves a saved state whose recovery row is correct.
 */
import type { z } from 'zod';
import { UzError } from '../../lib/errors.js';
import type { AgentState } from '../../lib/protocol.js';

export type State = z.infer<typeof AgentState>;

export type UpdateEvent =
  | 'desired' // a new desired release arrived
  | 'up-to-date' // it is what we run (or no release is pinned)
  | 'accepted'
  | 'rejected' // not for us: wrong board, rollback, too large
  | 'downloaded' // every verified chunk is in the target slot
  | 'retry' // transient failure: back off and resume
  | 'fatal' // report and roll back (before the try: target stays bad, selection untouched)
  | 'cancel' // a newer desired release or shutdown; not an error
  | 'installed' // slot synced and read back against the signed manifest
  | 'reinstall' // read-back mismatch: write again from the start
  | 'try-armed' // bootloader armed for one trial boot
  | 'healthy' // the workload passed its health check on the try slot
  | 'unhealthy' // it did not within the deadline
  | 'committed' // try slot is now primary, rollback floor raised
  | 'give-up'; // caps on saves/attempts/retries reached

export interface Transition {
  from: State;
  on: UpdateEvent;
  to: State;
}

const row = (from: State, on: UpdateEvent, to: State): Transition => ({ from, on, to });

/** Every legal move. Anything else is a bug and throws (INVALID_TRANSITION). */
export const TRANSITIONS: readonly Transition[] = [
  row('idle', 'desired', 'checking'),
  row('failed', 'desired', 'checking'),
  row('rolled-back', 'desired', 'checking'),
  row('checking', 'up-to-date', 'idle'),
  row('checking', 'accepted', 'downloading'),
  row('checking', 'rejected', 'failed'),
  row('checking', 'cancel', 'idle'),
  row('checking', 'fatal', 'failed'),
  row('checking', 'give-up', 'failed'),
  row('downloading', 'downloaded', 'installing'),
  row('downloading', 'retry', 'downloading'),
  row('downloading', 'fatal', 'failed'),
  row('downloading', 'cancel', 'idle'),
  row('downloading', 'give-up', 'failed'),
  row('installing', 'installed', 'armed'),
  row('installing', 'reinstall', 'downloading'),
  row('installing', 'retry', 'installing'),
  row('installing', 'fatal', 'failed'),
  row('installing', 'cancel', 'idle'),
  row('installing', 'give-up', 'failed'),
  row('armed', 'try-armed', 'rebooting'),
  row('armed', 'retry', 'armed'),
  row('armed', 'fatal', 'failed'),
  row('armed', 'give-up', 'failed'),
  // rebooting -> verifying/installing happen at start-up: see RECOVERY.
  row('rebooting', 'give-up', 'rolled-back'),
  row('rebooting', 'fatal', 'rolled-back'),
  row('verifying', 'healthy', 'committing'),
  row('verifying', 'unhealthy', 'rolled-back'),
  row('verifying', 'give-up', 'rolled-back'),
  row('verifying', 'fatal', 'rolled-back'),
  row('committing', 'committed', 'idle'),
  row('committing', 'retry', 'committing'),
  row('committing', 'give-up', 'rolled-back'),
  row('committing', 'fatal', 'rolled-back'),
];

export function transition(from: State, on: UpdateEvent): State {
  const t = TRANSITIONS.find((r) => r.from === from && r.on === on);
  if (!t) throw new UzError('INVALID_TRANSITION', `no transition from ${from} on ${on}`, { from, on });
  return t.to;
}

/** States in which a cancel (newer desired release, shutdown) may interrupt the action. */
export const CANCELLABLE: ReadonlySet<State> = new Set<State>(['checking', 'downloading', 'installing']);
/** States whose action is running a trial boot: a new desired release waits until it is decided. */
export const IN_TRY: ReadonlySet<State> = new Set<State>(['armed', 'rebooting', 'verifying', 'committing']);
/** States that need no action: the agent waits for a desired release here. */
export const RESTING: ReadonlySet<State> = new Set<State>(['idle', 'failed', 'rolled-back']);

export type RecoveryAction =
  | 'none'
  | 'resume' // run the saved state's action again (idempotent)
  | 'roll-back-again'; // mark the target bad and reboot: a rollback that did not stick

export interface RecoveryFacts {
  /** Did this boot start the update's target slot? null when no update is recorded. */
  bootedTarget: boolean | null;
  /** Trial boots left for this update (attempts < cap). */
  attemptsLeft: boolean;
}

export interface RecoveryRow {
  saved: State;
  booted: 'target' | 'other' | 'any';
  attemptsLeft?: boolean;
  to: State;
  action: RecoveryAction;
  why: string;
}

const rec = (saved: State, booted: RecoveryRow['booted'], to: State, action: RecoveryAction, why: string, attemptsLeft?: boolean): RecoveryRow => ({
  saved,
  booted,
  to,
  action,
  why,
  ...(attemptsLeft !== undefined ? { attemptsLeft } : {}),
});

/**
 * Start-up recovery (Mender's initState, made explicit). Rows are matched in order; the first match wins.
 * "other" in a try state means the bootloader did not keep us on the target: the arm never reached the disk,
 * the Pi's one-shot flag was lost to a power cut, or the try was interrupted before commit (U-Boot charged the
 * attempt). None of these is a verdict on the release, so we re-verify the slot and try again, a bounded
 * number of times; only an explicit health failure (saved as rolled-back) or the cap ends in rollback.
 */
export const RECOVERY: readonly RecoveryRow[] = [
  rec('idle', 'any', 'idle', 'none', 'nothing was in progress'),
  rec('checking', 'any', 'idle', 'none', 'nothing was written; the desired release is checked again'),
  rec('downloading', 'any', 'idle', 'none', 'target slot stays marked bad; the next check resumes the download from the progress record'),
  rec('installing', 'any', 'idle', 'none', 'target slot stays marked bad; the next check finds all chunks written and reads the slot back again'),
  rec('armed', 'target', 'verifying', 'resume', 'the arm reached the disk and the board booted the try before we saved "rebooting"'),
  rec('armed', 'other', 'armed', 'resume', 'the arm may not have reached the disk; arming again is idempotent'),
  rec('rebooting', 'target', 'verifying', 'resume', 'the bootloader started the try slot'),
  rec('rebooting', 'other', 'installing', 'resume', 'the try did not happen or was cut short: re-verify the slot and arm again', true),
  rec('rebooting', 'other', 'rolled-back', 'none', 'trial boots exhausted: the bootloader keeps the old slot', false),
  rec('verifying', 'target', 'verifying', 'resume', 'still on the try slot: run the health check again'),
  rec('verifying', 'other', 'installing', 'resume', 'the try was interrupted before a verdict (power cut, watchdog): try again', true),
  rec('verifying', 'other', 'rolled-back', 'none', 'trial boots exhausted', false),
  rec('committing', 'target', 'committing', 'resume', 'commit is idempotent: run it again'),
  rec('committing', 'other', 'installing', 'resume', 'the commit did not reach the disk before the bootloader charged the try: try again', true),
  rec('committing', 'other', 'rolled-back', 'none', 'trial boots exhausted', false),
  rec('rolled-back', 'target', 'rolled-back', 'roll-back-again', 'the bootloader still started the rejected slot: mark it bad again and reboot'),
  rec('rolled-back', 'any', 'rolled-back', 'none', 'rollback done; waiting for a new desired release'),
  rec('failed', 'any', 'failed', 'none', 'failure reported; waiting for a new desired release'),
];

/** A non-resting state without an update in the record is damage: nothing can be resumed. */
export const NO_UPDATE_ROW: RecoveryRow = rec('idle', 'any', 'idle', 'none', 'state names an action but no update is recorded: start over');

export function recover(saved: State, f: RecoveryFacts): RecoveryRow {
  if (f.bootedTarget === null && !RESTING.has(saved)) return NO_UPDATE_ROW;
  for (const r of RECOVERY) {
    if (r.saved !== saved) continue;
    if (r.booted !== 'any' && (f.bootedTarget === null || (r.booted === 'target') !== f.bootedTarget)) continue;
    if (r.attemptsLeft !== undefined && r.attemptsLeft !== f.attemptsLeft) continue;
    return r;
  }
  // Unreachable for a valid State (a test checks every state/fact combination has a row).
  throw new UzError('INVALID_TRANSITION', `no recovery row for ${saved}`, { saved });
}
