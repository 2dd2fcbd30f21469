/**
 * The update engine: runs the state machine (state/machine.ts) against real actions. Rules it keeps:
 *  - a state is persisted (state/store.ts) BEFORE its action runs; start-up recovery comes from the table;
 *  - one update at a time (ExclusiveRunner); a newer desired release cancels a download/install in progress
 *    (cancel is not an error), but never a trial boot in motion: it waits until that one is decided;
 *  - transient errors retry with capped, jittered backoff; fatal ones are reported and leave the bootloader on
 *    the running slot (the target stays marked bad); caps on saves, retries and trial boots end in failure;
 *  - every boot-control call goes through one queue (bootctl/serialized.ts).
 * The engine has no MQTT, HTTP or workload code: the agent and the device entry inject those.
 */
import { UzError, isUzError } from '../lib/errors.js';
import type { Desired, ReleaseRef, UpdateEvent as WireEvent } from '../lib/protocol.js';
import type { z } from 'zod';
import type { UpdatePhase } from '../lib/protocol.js';
import { MAX_HEADER_BYTES, PREAMBLE_BYTES } from '../firmware/bundle/format.js';
import type { VerifyPolicy } from '../firmware/bundle/verify.js';
import type { RootMetadata } from '../firmware/trust/root.js';
import { serialized } from './bootctl/serialized.js';
import { type BootControl, type Slot, otherSlot } from './bootctl/types.js';
import type { Storage } from './io/storage.js';
import { downloadIntoSlot, readBackSlot } from './install/pipeline.js';
import { ProgressStore } from './install/progress.js';
import type { SlotLayout } from './install/slots.js';
import type { RangeSource } from './install/source.js';
import { ExclusiveRunner } from './state/exclusive.js';
import { CANCELLABLE, IN_TRY, RESTING, recover, transition, type State, type UpdateEvent } from './state/machine.js';
import { DEFAULT_BACKOFF, backoffDelay, classify, sleep as realSleep, type BackoffPolicy } from './state/retry.js';
import { DEFAULT_LIMITS, StateStore, overSaveCap, requireUpdate, type Limits, type StateRecord, type UpdateInfo } from './state/store.js';

export type Phase = z.infer<typeof UpdatePhase>;

export type EngineNotice =
  | { kind: 'state'; record: StateRecord }
  | { kind: 'phase'; event: Omit<WireEvent, 'v' | 'ts'> }
  /** The running slot is healthy and recorded as good: the device prints UZ-READY. */
  | { kind: 'ready'; slot: Slot; version: string }
  | { kind: 'reboot'; reason: string; rollback: boolean }
  | { kind: 'log'; line: string };

export interface HealthVerdict {
  ok: boolean;
  detail: string;
}

export interface EngineDeps {
  storage: Storage;
  /** Folder on the data partition for state.json, progress.json, target.uzh. */
  stateDir: string;
  bootctl: BootControl;
  slots: SlotLayout;
  /** root null: no trusted root on this device; every release is refused (TRUST_ROOT_MISSING). */
  trust: { root: RootMetadata | null; board: string; hardwareId?: string };
  /** What the booted slot runs (from its image.json). */
  running: { version: string; rollbackCounter?: number };
  sourceFor: (release: ReleaseRef) => RangeSource;
  /** Resolves once the workload is healthy, or with ok:false when its deadline passed. */
  waitHealthy: (signal: AbortSignal) => Promise<HealthVerdict>;
  notify?: (n: EngineNotice) => void;
  now?: () => number;
  random?: () => number;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  limits?: Limits;
  backoff?: BackoffPolicy;
  syncEveryBytes?: number;
  /**
   * TUF (agent config `tufUrl`; absent = only the provisioned root): returns the newest trusted root before a
   * bundle is verified — online (follow root rotations, check timestamp/snapshot/targets freshness) before a
   * download, offline (persisted root) when the stored header is re-verified. See updater/trust/refresh.ts.
   */
  refreshTrust?: (release: ReleaseRef, mode: { offline: boolean }) => Promise<RootMetadata>;
}

type Patch = Partial<Omit<StateRecord, 'state' | 'update'>> & { update?: UpdateInfo | null };
/** What an action asks for: an event (with record changes), 'halt' (rebooting or cancelled in a try), or
 * 'moved' (it already entered a new state itself, e.g. failed). */
type Step = { event: UpdateEvent; patch?: Patch } | 'halt' | 'moved';

export class UpdateEngine {
  private rec!: StateRecord;
  private readonly store: StateStore;
  private readonly bootctl: BootControl;
  private readonly runner = new ExclusiveRunner();
  private readonly limits: Limits;
  private readonly backoff: BackoffPolicy;
  private booted!: Slot;
  private queued: Desired | null = null;
  private halted = false;
  private readonly stop = new AbortController();
  private lastProgressAt = 0;
  private readyAnnounced = false;
  private readyTask: Promise<void> = Promise.resolve();
  private bootedAsBad = false;

  constructor(private readonly d: EngineDeps) {
    this.store = new StateStore(d.storage, d.stateDir);
    this.bootctl = serialized(d.bootctl);
    this.limits = d.limits ?? DEFAULT_LIMITS;
    this.backoff = d.backoff ?? DEFAULT_BACKOFF;
  }

  get record(): StateRecord {
    return this.rec;
  }

  get bootedSlot(): Slot {
    return this.booted;
  }

  /** True once a reboot was requested: nothing else will be done by this instance. */
  get rebooting(): boolean {
    return this.halted;
  }

  private now(): number {
    return (this.d.now ?? Date.now)();
  }

  private log(line: string): void {
    this.d.notify?.({ kind: 'log', line });
  }

  private phase(phase: Phase, u: { txid: string; deploymentId: string | null; release: ReleaseRef | null }, extra: { progress?: { bytes: number; total: number }; error?: { code: string; message: string } } = {}): void {
    this.d.notify?.({ kind: 'phase', event: { txid: u.txid, deploymentId: u.deploymentId, phase, version: u.release?.version ?? '0.0.0', ...extra } });
  }

  private policy(): VerifyPolicy {
    if (!this.d.trust.root) throw new UzError('TRUST_ROOT_MISSING', 'no trusted root on this device: releases cannot be verified', {});
    return {
      root: this.d.trust.root,
      board: this.d.trust.board,
      ...(this.d.trust.hardwareId !== undefined ? { hardwareId: this.d.trust.hardwareId } : {}),
      minCounter: this.rec.floor,
      currentVersion: this.rec.committed.version,
      now: new Date(this.now()),
    };
  }

  /** Persist `state` (with the patch), then the caller runs its action. */
  private async enter(state: State, patch: Patch = {}): Promise<void> {
    const next: StateRecord = { ...this.rec, ...patch, state };
    this.rec = await this.store.save(next, this.now());
    this.d.notify?.({ kind: 'state', record: this.rec });
  }

  /**
   * Start-up: read the last state, take its recovery row, continue. Resolves when the engine is resting or has
   * asked for a reboot. A persisted update that was interrupted before its trial boot is offered again, so a
   * device without a broker connection still finishes what it started.
   */
  async start(): Promise<void> {
    this.booted = await this.bootctl.bootedSlot();
    // A boot of a slot the bootloader already counts as used up is a trial nobody recorded here (armed by hand
    // or by an older agent): if it never gets healthy, leave it like a tracked try.
    this.bootedAsBad = (await this.bootctl.read()).bad.includes(this.booted);
    const loaded = await this.store.load();
    this.rec = loaded ?? {
      v: 1,
      state: 'idle',
      update: null,
      committed: { slot: this.booted, version: this.d.running.version, rollbackCounter: this.d.running.rollbackCounter ?? 0 },
      floor: this.d.running.rollbackCounter ?? 0,
      done: null,
      lastError: null,
      savedAt: 0,
    };
    if (!loaded) this.log(`no saved state: starting idle on slot ${this.booted}`);
    if (!RESTING.has(this.rec.state) && !this.rec.update) this.rec = { ...this.rec, state: 'idle' }; // damaged: nothing to resume
    const u = this.rec.update;
    const row = recover(this.rec.state, {
      bootedTarget: u ? this.booted === u.targetSlot : null,
      attemptsLeft: u ? u.attempts < this.limits.maxTryAttempts : true,
    });
    this.log(`recovery: ${this.rec.state} → ${row.to} (${row.why})`);
    await this.runner.run(async (signal) => {
      if (row.to === 'rolled-back' && this.rec.state !== 'rolled-back' && u) {
        await this.fail(this.rec.state, 'give-up', u, new UzError('TRY_BOOT_FAILED', `slot ${u.targetSlot} did not stay up in ${u.attempts} trial boot(s)`, { attempts: u.attempts }));
        return;
      }
      if (row.to !== this.rec.state || row.action === 'resume') await this.enter(row.to);
      if (row.action === 'roll-back-again' && u) return this.rollBackNow(u, 'the rejected slot was booted again');
      await this.drive(signal);
    }, this.stop.signal);
    if (this.halted) return;
    this.d.notify?.({ kind: 'state', record: this.rec }); // the status after recovery, even when nothing changed
    const pending = this.rec.update;
    const queued = this.queued;
    this.queued = null;
    if (queued) void this.offer(queued); // arrived during start-up: newer than anything saved
    else if (this.rec.state === 'idle' && pending && this.rec.done?.txid !== pending.txid) {
      void this.offer({ v: 1, txid: pending.txid, deploymentId: pending.deploymentId, issuedAt: 0, release: pending.release });
    }
    this.readyTask = this.readyDuty();
  }

  /** Stops background work (tests, shutdown). */
  shutdown(): void {
    this.stop.abort();
    this.runner.cancel('shutdown');
  }

  /** Resolves when no update job is running or queued. */
  async settled(): Promise<void> {
    for (;;) {
      await this.runner.idle();
      await this.readyTask;
      if (!this.runner.busy && (!this.queued || this.halted || !RESTING.has(this.rec.state))) return;
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /**
   * A desired release arrived (MQTT retained message, or replayed at start). Returns what was done with it.
   */
  offer(desired: Desired): Promise<'duplicate' | 'in-progress' | 'queued' | 'started'> {
    if (this.halted || !this.rec) {
      // Not started yet (a retained message raced start-up): start() picks it up.
      if (!this.halted) this.queued = desired;
      return Promise.resolve('queued');
    }
    if (this.rec.done?.txid === desired.txid) return Promise.resolve('duplicate');
    if (this.rec.update?.txid === desired.txid && !RESTING.has(this.rec.state)) return Promise.resolve('in-progress');
    this.queued = desired;
    if (IN_TRY.has(this.rec.state)) return Promise.resolve('queued');
    if (this.runner.busy && CANCELLABLE.has(this.rec.state)) this.runner.cancel('superseded by a newer desired release');
    this.kick();
    return Promise.resolve('started');
  }

  /** Runs the queued desired release once the runner is free and the state is resting. */
  private kick(): void {
    void this.runner
      .run(async (signal) => {
        const d = this.queued;
        if (!d || this.halted || !RESTING.has(this.rec.state)) return;
        this.queued = null;
        if (this.rec.done?.txid === d.txid) return;
        await this.begin(d, signal);
        if (this.queued && !this.halted && RESTING.has(this.rec.state)) this.kick();
      }, this.stop.signal)
      .catch((e: unknown) => this.log(`update job ended: ${(e as Error).message}`));
  }

  private async begin(d: Desired, signal: AbortSignal): Promise<void> {
    const target = otherSlot(this.booted);
    const resumed = this.rec.update && this.rec.update.txid === d.txid ? this.rec.update : null;
    const update: UpdateInfo | null = d.release
      ? resumed ?? { txid: d.txid, deploymentId: d.deploymentId, release: d.release, fromSlot: this.booted, targetSlot: target, attempts: 0, saves: 0, retries: 0 }
      : null;
    if (!update) {
      await this.enter(transition(this.rec.state, 'desired'), { update: null });
      await this.enter(transition('checking', 'up-to-date'), { done: { txid: d.txid, outcome: 'up-to-date' }, lastError: null });
      return;
    }
    await this.enter(transition(this.rec.state, 'desired'), { update: { ...update, retries: 0 }, lastError: null });
    await this.drive(signal);
  }

  /** Runs actions until a resting state, a reboot, or a cancel. */
  private async drive(signal: AbortSignal): Promise<void> {
    while (!this.halted && !RESTING.has(this.rec.state)) {
      const state = this.rec.state;
      const u = requireUpdate(this.rec, state);
      if (overSaveCap(this.rec, this.limits) && state !== 'rebooting') {
        await this.fail(state, 'give-up', u, new UzError('TOO_MANY_RESTARTS', `update ${u.txid} saved its state ${u.saves} times without finishing`, {}));
        continue;
      }
      const step = await this.act(state, u, signal);
      if (step === 'halt') return;
      if (step === 'moved') continue;
      await this.enter(transition(state, step.event), step.patch ?? {});
      if (this.rec.state === 'rolled-back' && this.booted === u.targetSlot) await this.rollBackNow(this.rec.update ?? u, 'health check failed on the try slot');
    }
  }

  private async fail(state: State, event: 'fatal' | 'give-up', u: UpdateInfo, e: UzError): Promise<void> {
    const to = transition(state, event);
    // A try may be armed: disarm it BEFORE recording the end, so no saved "failed" coexists with an armed try.
    if (IN_TRY.has(state) && this.booted !== u.targetSlot) await this.bootctl.markBad(u.targetSlot);
    const outcome = to === 'rolled-back' ? 'rolled-back' : 'failure';
    await this.enter(to, { lastError: { code: e.code, message: e.message.slice(0, 1000) }, done: { txid: u.txid, outcome } });
    this.phase(to === 'rolled-back' ? 'rolled-back' : 'failure', u, { error: { code: e.code, message: e.message.slice(0, 1000) } });
    if (to === 'rolled-back' && this.booted === u.targetSlot) await this.rollBackNow(u, e.message);
  }

  /** Leaves the try slot: never boot it again, restart into the old one. */
  private async rollBackNow(u: UpdateInfo, why: string): Promise<void> {
    await this.bootctl.markBad(u.targetSlot);
    this.d.notify?.({ kind: 'reboot', reason: why, rollback: true });
    this.halted = true;
    await this.bootctl.reboot();
  }

  private async act(state: State, u: UpdateInfo, signal: AbortSignal): Promise<Step> {
    try {
      if (signal.aborted) return { event: 'cancel' };
      if (this.d.refreshTrust && (state === 'downloading' || state === 'installing')) this.d.trust.root = await this.d.refreshTrust(u.release, { offline: state === 'installing' });
      switch (state) {
        case 'checking':
          return await this.check(u);
        case 'downloading':
          this.phase('downloading', u, { progress: { bytes: 0, total: u.release.size } });
          await downloadIntoSlot({
            storage: this.d.storage,
            stateDir: this.d.stateDir,
            source: this.d.sourceFor(u.release),
            release: u.release,
            target: u.targetSlot,
            slotPath: this.d.slots.pathOf(u.targetSlot),
            policy: this.policy(),
            bootctl: this.bootctl,
            signal,
            ...(this.d.syncEveryBytes !== undefined ? { syncEveryBytes: this.d.syncEveryBytes } : {}),
            onProgress: (bytes, total) => {
              if (this.now() - this.lastProgressAt < 2000 && bytes < total) return;
              this.lastProgressAt = this.now();
              this.phase('downloading', u, { progress: { bytes, total } });
            },
          });
          return { event: 'downloaded', patch: { update: { ...u, retries: 0 } } };
        case 'installing': {
          this.phase('installing', u);
          const r = await readBackSlot(this.d.storage, this.d.stateDir, u.release, u.targetSlot, this.d.slots.pathOf(u.targetSlot), this.policy(), signal);
          if (!r.ok) {
            this.log(`read-back of slot ${u.targetSlot} failed (${r.reason}): writing it again`);
            await new ProgressStore(this.d.storage, this.d.stateDir).clear();
            return { event: 'reinstall', patch: { update: { ...u, retries: u.retries + 1 } } };
          }
          return { event: 'installed', patch: { update: { ...u, retries: 0, attempts: u.attempts + 1 } } };
        }
        case 'armed':
          await this.bootctl.armTry(u.targetSlot);
          return { event: 'try-armed' };
        case 'rebooting':
          this.phase('rebooting', u);
          this.d.notify?.({ kind: 'reboot', reason: `trial boot of slot ${u.targetSlot} (${u.release.version})`, rollback: false });
          this.halted = true;
          await this.bootctl.reboot();
          return 'halt';
        case 'verifying': {
          this.phase('verifying', u);
          const h = await this.d.waitHealthy(signal);
          if (signal.aborted) return 'halt';
          if (h.ok) return { event: 'healthy' };
          const e = new UzError('HEALTH_DEADLINE', `workload not healthy on slot ${u.targetSlot}: ${h.detail}`, {});
          this.phase('rolled-back', u, { error: { code: e.code, message: e.message } });
          return { event: 'unhealthy', patch: { lastError: { code: e.code, message: e.message }, done: { txid: u.txid, outcome: 'rolled-back' } } };
        }
        case 'committing': {
          // Bootloader first: if we are cut after it, recovery finds us on the target and commits again.
          await this.bootctl.markGood(u.targetSlot);
          const counter = u.release.rollbackCounter;
          await new ProgressStore(this.d.storage, this.d.stateDir).clear();
          this.phase('success', u);
          this.readyAnnounced = true;
          this.d.notify?.({ kind: 'ready', slot: u.targetSlot, version: u.release.version });
          return {
            event: 'committed',
            patch: {
              committed: { slot: u.targetSlot, version: u.release.version, rollbackCounter: counter },
              floor: Math.max(this.rec.floor, counter),
              done: { txid: u.txid, outcome: 'success' },
              update: null,
              lastError: null,
            },
          };
        }
        default:
          throw new UzError('INVALID_TRANSITION', `no action for state ${state}`, { state });
      }
    } catch (e) {
      return this.onError(state, u, e, signal);
    }
  }

  private async check(u: UpdateInfo): Promise<{ event: UpdateEvent; patch?: Patch }> {
    const r = u.release;
    const reject = (code: string, message: string) => {
      this.phase('failure', u, { error: { code, message } });
      return { event: 'rejected' as const, patch: { lastError: { code, message }, done: { txid: u.txid, outcome: 'failure' as const } } };
    };
    if (!this.d.trust.root) return reject('TRUST_ROOT_MISSING', 'no trusted root on this device: releases cannot be verified');
    if (r.board !== this.d.trust.board) return reject('WRONG_BOARD', `release is for board ${r.board}, this device is ${this.d.trust.board}`);
    if (r.rollbackCounter < this.rec.floor) return reject('ROLLBACK', `release rollback counter ${r.rollbackCounter} is below the device floor ${this.rec.floor}`);
    if (r.version === this.rec.committed.version && this.booted === this.rec.committed.slot) {
      return { event: 'up-to-date', patch: { update: null, done: { txid: u.txid, outcome: 'up-to-date' } } };
    }
    const slot = await this.d.storage.openBlock(this.d.slots.pathOf(u.targetSlot));
    const slotSize = await slot.size().finally(() => slot.close());
    if (r.size > slotSize + PREAMBLE_BYTES + MAX_HEADER_BYTES) return reject('TOO_LARGE', `bundle of ${r.size} bytes cannot fit the ${slotSize}-byte slot`);
    this.phase('accepted', u);
    return { event: 'accepted' };
  }

  private async onError(state: State, u: UpdateInfo, e: unknown, signal: AbortSignal): Promise<Step> {
    const cls = classify(e, signal);
    if (cls === 'cancelled') {
      if (!CANCELLABLE.has(state)) return 'halt';
      this.log(`${state} cancelled`);
      return { event: 'cancel' };
    }
    const err = isUzError(e) ? e : new UzError('INTERNAL', (e as Error)?.message ?? String(e), {}, { cause: e });
    if (cls === 'transient' && TRANSITIONS_WITH_RETRY.has(state)) {
      if (u.retries + 1 > this.backoff.maxRetries) {
        await this.fail(state, 'give-up', u, new UzError(err.code, `${err.message} (gave up after ${u.retries} retries)`, err.context));
        return 'moved';
      }
      const wait = backoffDelay(u.retries, this.backoff, this.d.random);
      this.log(`${state}: ${err.toLine()} — retry ${u.retries + 1} in ${wait} ms`);
      await (this.d.sleep ?? realSleep)(wait, signal);
      if (signal.aborted) return CANCELLABLE.has(state) ? { event: 'cancel' } : 'halt';
      return { event: 'retry', patch: { update: { ...u, retries: u.retries + 1 }, lastError: { code: err.code, message: err.message.slice(0, 1000) } } };
    }
    await this.fail(state, 'fatal', u, err);
    return 'moved';
  }

  private announceReady(): void {
    if (!this.readyAnnounced) this.d.notify?.({ kind: 'ready', slot: this.booted, version: this.d.running.version });
    this.readyAnnounced = true;
  }

  /**
   * Once the running slot is healthy, record it as good (refreshes U-Boot's attempts) and announce readiness.
   * Skipped while a trial boot is armed: marking the running slot good would cancel the try.
   */
  private async readyDuty(): Promise<void> {
    if (this.halted || this.rec.state === 'verifying' || this.rec.state === 'committing') return;
    try {
      const h = await this.d.waitHealthy(this.stop.signal);
      if (this.stop.signal.aborted || this.halted) return;
      if (!h.ok) {
        this.log(`workload not healthy on slot ${this.booted}: ${h.detail}`);
        if (this.bootedAsBad && RESTING.has(this.rec.state) && !this.halted) {
          await this.bootctl.markBad(this.booted);
          this.d.notify?.({ kind: 'reboot', reason: `untracked trial boot of slot ${this.booted} not healthy (${h.detail})`, rollback: true });
          this.halted = true;
          await this.bootctl.reboot();
        }
        return;
      }
      if (IN_TRY.has(this.rec.state)) return;
      // An ordinary boot of the committed slot decides nothing: the bootloader only gets back the attempt it
      // counted for this boot, so readiness is announced at once and the refresh follows (it costs a remount
      // and fsyncs of the boot partition; a power cut before it ends merely leaves one attempt fewer, as one
      // before the health check would). "Ordinary" means the bootloader's next normal boot is this slot and
      // the saved state has it committed. Any other boot (a fallback away from the committed slot, an untracked
      // trial, a slot the bootloader counts as used up) is recorded good first: UZ-READY then also says which
      // slot boots next.
      const sel = await this.bootctl.read();
      const ordinary = sel.primary === this.booted && sel.tryPending === null && !sel.bad.includes(this.booted) && this.rec.committed.slot === this.booted;
      if (ordinary) this.announceReady();
      await this.bootctl.markGood(this.booted);
      this.log(`slot ${this.booted} marked good: the bootloader's attempts are refreshed`);
      if (this.rec.committed.slot !== this.booted && RESTING.has(this.rec.state)) {
        // The bootloader fell back on its own (the committed slot stopped booting): what runs is what is committed.
        await this.runner.run(async () => {
          if (RESTING.has(this.rec.state)) await this.enter(this.rec.state, { committed: { ...this.rec.committed, slot: this.booted, version: this.d.running.version } });
        });
      }
      this.announceReady();
    } catch (e) {
      this.log(`marking slot ${this.booted} good failed: ${(e as Error).message}`);
    }
  }
}

/** States whose action retries transient errors in place (a self-transition row exists). */
const TRANSITIONS_WITH_RETRY: ReadonlySet<State> = new Set<State>(['downloading', 'installing', 'armed', 'committing']);
