/**
 * Rollout service: the impure shell around rollout-engine.ts. Creates rollouts (freezing members), runs the
 * tick (timeouts → decisions → atomic claims → desired-state publishes), maps device events/status to member
 * outcomes, and applies operator actions. All state lives in Storage, so a restart resumes where it stopped.
 */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import type { Desired, ReleaseRef, Status, UpdateEvent } from '../lib/protocol.js';
import { httpError } from './errors.js';
import { DEFAULT_POLICY, assignMembers, decide, normaliseStages, onTimeout, parseStage, stageCutoffs, sumStats, validWindowTime } from './rollout-engine.js';
import type { DeviceRow, MemberRow, ReleaseRow, RolloutPolicy, RolloutRow, Stage, StageStats, Storage } from './storage/types.js';

export const RolloutCreateSchema = z.strictObject({
  releaseId: z.string().min(1).max(128).optional(),
  /** Target: exactly one of channel / tag / devices. */
  channel: z.string().min(1).max(64).optional(),
  tag: z.string().min(1).max(64).optional(),
  devices: z.array(z.string().min(3).max(64)).min(1).max(100_000).optional(),
  stages: z.array(z.union([z.string().max(16), z.strictObject({ percent: z.number().gt(0).max(100) }), z.strictObject({ count: z.number().int().positive() })])).min(1).max(20).optional(),
  successThreshold: z.number().gt(0).max(1).optional(),
  failureThreshold: z.strictObject({ count: z.number().int().positive().optional(), percent: z.number().gt(0).max(100).optional() }).optional(),
  minDevices: z.number().int().min(1).max(1_000_000).optional(),
  onFailure: z.enum(['pause', 'abort']).optional(),
  maxInFlight: z.number().int().positive().max(1_000_000).optional(),
  ratePerMinute: z.number().int().positive().max(10_000_000).optional(),
  timeoutSec: z.number().int().positive().max(30 * 86_400).optional(),
  retries: z.number().int().min(0).max(100).optional(),
  window: z.strictObject({ start: z.string().refine(validWindowTime, 'HH:MM (UTC)'), end: z.string().refine(validWindowTime, 'HH:MM (UTC)'), days: z.array(z.number().int().min(0).max(6)).max(7).optional() }).optional(),
  offlineGraceSec: z.number().int().min(0).max(365 * 86_400).optional(),
  /** Ordering seed (default: the rollout id); fixed seeds make canary selection reproducible. */
  seed: z.string().min(1).max(128).optional(),
});
export type RolloutCreate = z.infer<typeof RolloutCreateSchema>;

export interface RolloutDeps {
  now(): number;
  /** Publishes a device's desired state (retained, QoS 1). Must not throw. */
  publishDesired(deviceId: string, desired: Desired): void;
  releaseRef(release: ReleaseRow, deviceId: string): ReleaseRef;
  log: { info(o: object, m?: string): void; warn(o: object, m?: string): void };
  onOutcome?(outcome: 'dispatched' | 'succeeded' | 'failed' | 'timeout', n: number): void;
}

export interface RolloutStatus {
  rollout: RolloutRow;
  release: ReleaseRow | null;
  stages: (StageStats & { cutoff: number; label: string })[];
  totals: ReturnType<typeof sumStats>;
}

function stageLabel(s: Stage | undefined): string {
  if (!s) return '100%';
  return s.percent !== undefined ? `${s.percent}%` : `${s.count}`;
}

/** Longest wait of an event-triggered tick (see RolloutService.poke). */
const POKE_MS = 20;

export class RolloutService {
  private ticking: Promise<void> | null = null;
  private again = false;

  constructor(private readonly s: Storage, private readonly d: RolloutDeps) {}

  async create(input: RolloutCreate, actor: string): Promise<RolloutRow> {
    const targets = [input.channel, input.tag, input.devices].filter((x) => x !== undefined).length;
    if (targets !== 1) throw httpError('BAD_REQUEST', 'give exactly one target: channel, tag or devices');
    let releaseId = input.releaseId;
    if (!releaseId) {
      if (!input.channel) throw httpError('BAD_REQUEST', 'releaseId is required unless the target is a channel (then the channel release is used)');
      const ch = await this.s.getChannel(input.channel);
      if (!ch?.releaseId) throw httpError('NOT_FOUND', `channel ${input.channel} has no release`);
      releaseId = ch.releaseId;
    }
    const release = await this.s.getRelease(releaseId);
    if (!release) throw httpError('NOT_FOUND', `no release ${releaseId}`);
    if (release.yanked) throw httpError('RELEASE_YANKED', `release ${releaseId} is yanked`);
    const stages: Stage[] = [];
    for (const st of input.stages ?? DEFAULT_POLICY.stages) {
      const parsed = typeof st === 'string' ? parseStage(st) : st;
      if (!parsed) throw httpError('BAD_REQUEST', `bad stage ${JSON.stringify(st)} (use "10%" or a device count)`);
      stages.push(parsed);
    }
    const ft = input.failureThreshold ?? DEFAULT_POLICY.failureThreshold;
    if (ft.count === undefined && ft.percent === undefined) throw httpError('BAD_REQUEST', 'failureThreshold needs count and/or percent');

    const devices: DeviceRow[] = await this.s.listDevices(input.channel !== undefined ? { channel: input.channel } : input.tag !== undefined ? { tag: input.tag } : { ids: input.devices! });
    if (input.devices) {
      const known = new Set(devices.map((d) => d.id));
      const missing = input.devices.filter((id) => !known.has(id));
      if (missing.length) throw httpError('NOT_FOUND', `unknown device(s): ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', …' : ''}`);
    }
    // Devices known to run another board never get this release.
    const eligible = devices.filter((d) => !d.status || d.status.board === release.board);
    if (eligible.length === 0) throw httpError('ROLLOUT_EMPTY', 'the target matches no device of this board');

    const id = 'ro-' + randomBytes(6).toString('hex');
    const now = this.d.now();
    const norm = normaliseStages(stages, eligible.length);
    const cutoffs = stageCutoffs(norm, eligible.length);
    const policy: RolloutPolicy = {
      stages: norm,
      successThreshold: input.successThreshold ?? DEFAULT_POLICY.successThreshold,
      failureThreshold: ft,
      minDevices: input.minDevices ?? DEFAULT_POLICY.minDevices,
      onFailure: input.onFailure ?? DEFAULT_POLICY.onFailure,
      maxInFlight: input.maxInFlight ?? DEFAULT_POLICY.maxInFlight,
      ratePerMinute: input.ratePerMinute ?? DEFAULT_POLICY.ratePerMinute,
      timeoutSec: input.timeoutSec ?? DEFAULT_POLICY.timeoutSec,
      retries: input.retries ?? DEFAULT_POLICY.retries,
      offlineGraceSec: input.offlineGraceSec ?? DEFAULT_POLICY.offlineGraceSec,
      ...(input.window ? { window: input.window } : {}),
    };
    const already = new Set(eligible.filter((d) => d.status?.version === release.version).map((d) => d.id));
    const members = assignMembers(input.seed ?? id, eligible.map((d) => d.id), cutoffs).map((m) => ({ ...m, state: already.has(m.deviceId) ? ('skipped' as const) : ('pending' as const) }));
    const row: RolloutRow = {
      id, releaseId, target: input.channel !== undefined ? { channel: input.channel } : input.tag !== undefined ? { tag: input.tag } : { devices: input.devices! },
      policy, state: 'running', stageIndex: 0, stageCutoffs: cutoffs, reason: null, ackFailed: 0, ackDecided: 0, gateOverride: null,
      lastStageAt: now, createdAt: now, updatedAt: now, createdBy: actor, rev: 0,
    };
    await this.s.createRollout(row, members);
    await this.s.appendAudit({ ts: now, actor, action: 'rollout.create', target: id, details: { releaseId, target: row.target, devices: members.length, stages: norm } });
    this.d.log.info({ rollout: id, release: releaseId, devices: members.length }, 'rollout created');
    this.tickNow();
    return row;
  }

  async status(id: string): Promise<RolloutStatus> {
    const r = await this.s.getRollout(id);
    if (!r) throw httpError('NOT_FOUND', `no rollout ${id}`);
    const stats = await this.s.stageStats(id);
    const byStage = new Map(stats.map((s) => [s.stage, s]));
    return {
      rollout: r,
      release: await this.s.getRelease(r.releaseId),
      stages: r.stageCutoffs.map((cutoff, stage) => ({
        ...(byStage.get(stage) ?? { stage, total: 0, pending: 0, dispatched: 0, succeeded: 0, failed: 0, skipped: 0 }),
        cutoff,
        label: stageLabel(r.policy.stages[stage]),
      })),
      totals: sumStats(stats),
    };
  }

  private async mutate(id: string, actor: string, action: 'pause' | 'resume' | 'abort'): Promise<RolloutRow> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const r = await this.s.getRollout(id);
      if (!r) throw httpError('NOT_FOUND', `no rollout ${id}`);
      const now = this.d.now();
      let patch: Parameters<Storage['updateRollout']>[2];
      if (action === 'pause') {
        if (r.state !== 'running') throw httpError('ROLLOUT_STATE', `rollout ${id} is ${r.state}; only a running rollout can be paused`);
        patch = { state: 'paused', reason: `paused by ${actor}` };
      } else if (action === 'resume') {
        if (r.state !== 'paused') throw httpError('ROLLOUT_STATE', `rollout ${id} is ${r.state}; only a paused rollout can be resumed`);
        const t = sumStats(await this.s.stageStats(id));
        // Failures so far are acknowledged; the stage gate of the current stage is overridden.
        patch = { state: 'running', reason: null, ackFailed: t.failed, ackDecided: t.failed + t.succeeded, gateOverride: r.stageIndex };
      } else {
        if (r.state === 'aborted' || r.state === 'completed') throw httpError('ROLLOUT_STATE', `rollout ${id} is already ${r.state}`);
        patch = { state: 'aborted', reason: `aborted by ${actor}` };
      }
      const updated = await this.s.updateRollout(id, r.rev, patch, now);
      if (updated) {
        await this.s.appendAudit({ ts: now, actor, action: `rollout.${action}`, target: id, details: { from: r.state, to: updated.state } });
        this.d.log.info({ rollout: id, actor }, `rollout ${action}`);
        if (action === 'resume') this.tickNow();
        return updated;
      }
    }
    throw httpError('ROLLOUT_STATE', `rollout ${id} kept changing; try again`);
  }
  pause(id: string, actor: string): Promise<RolloutRow> {
    return this.mutate(id, actor, 'pause');
  }
  resume(id: string, actor: string): Promise<RolloutRow> {
    return this.mutate(id, actor, 'resume');
  }
  abort(id: string, actor: string): Promise<RolloutRow> {
    return this.mutate(id, actor, 'abort');
  }

  private pokeTimer: NodeJS.Timeout | null = null;
  private stopped = false;

  /**
   * A tick soon: what device outcomes and devices coming online call. A burst of them (10,000 devices
   * reporting) shares one tick at most POKE_MS later instead of each paying for the stage statistics.
   */
  poke(): void {
    if (this.pokeTimer || this.stopped) return;
    this.pokeTimer = setTimeout(() => {
      this.pokeTimer = null;
      this.tickNow();
    }, POKE_MS);
    this.pokeTimer.unref();
  }

  private tickNow(): void {
    this.tick().catch((e: unknown) => this.d.log.warn({ err: (e as Error).message }, 'rollout tick failed'));
  }

  /** No more pokes (server shutdown). */
  stop(): void {
    this.stopped = true;
    if (this.pokeTimer) clearTimeout(this.pokeTimer);
    this.pokeTimer = null;
  }

  /** Runs one pass over every running (and paused, for timeouts) rollout. Single-flight; coalesces calls. */
  tick(): Promise<void> {
    if (this.ticking) {
      this.again = true;
      return this.ticking;
    }
    this.ticking = (async () => {
      try {
        do {
          this.again = false;
          for (const r of await this.s.listRollouts(['running', 'paused'])) {
            try {
              await this.tickOne(r);
            } catch (e) {
              this.d.log.warn({ rollout: r.id, err: (e as Error).message }, 'rollout tick failed');
            }
          }
        } while (this.again);
      } finally {
        this.ticking = null;
      }
    })();
    return this.ticking;
  }

  private async tickOne(r0: RolloutRow): Promise<void> {
    let r = r0;
    const now = this.d.now();
    // timeouts first (also while paused: in-flight devices still resolve)
    for (const m of await this.s.timedOut(r.id, now - r.policy.timeoutSec * 1000)) {
      if (onTimeout(m, r.policy) === 'retry' && r.state === 'running') {
        if (await this.s.requeueMember(r.id, m.deviceId, `TIMEOUT after ${r.policy.timeoutSec}s (attempt ${m.attempts})`)) this.d.onOutcome?.('timeout', 1);
      } else if (onTimeout(m, r.policy) === 'fail') {
        if (await this.s.finishMember(r.id, m.deviceId, 'failed', `TIMEOUT after ${r.policy.timeoutSec}s (attempt ${m.attempts})`, now)) this.d.onOutcome?.('failed', 1);
      }
    }
    if (r.state !== 'running') return;
    const release = await this.s.getRelease(r.releaseId);
    if (!release) return;
    for (let step = 0; step < 16; step++) {
      const stats = await this.s.stageStats(r.id);
      const onlinePending = await this.s.countOnlinePending(r.id, r.stageIndex);
      const dec = decide({ rollout: r, stats, onlinePendingEligible: onlinePending, dispatchedLastMinute: await this.s.dispatchedSince(r.id, now - 60_000), now });
      if (dec.kind === 'idle') return;
      let next: RolloutRow | null = null;
      if (dec.kind === 'dispatch') {
        const claimed = await this.s.claimForDispatch(r.id, dec.maxStage, dec.count, now, true, (m) => this.desiredFor(m, release, now));
        for (const m of claimed) this.d.publishDesired(m.deviceId, this.desiredFor(m, release, now));
        if (claimed.length) this.d.onOutcome?.('dispatched', claimed.length);
        return;
      }
      if (dec.kind === 'halt') next = await this.s.updateRollout(r.id, r.rev, { state: dec.state, reason: dec.reason }, now);
      else if (dec.kind === 'advance') next = await this.s.updateRollout(r.id, r.rev, { stageIndex: dec.stageIndex, lastStageAt: now }, now);
      else if (dec.kind === 'complete') {
        if (dec.skipOffline) await this.s.skipPending(r.id, r.stageIndex, 'offline when the rollout finished', now);
        next = await this.s.updateRollout(r.id, r.rev, { state: 'completed', reason: null }, now);
      } else if (dec.kind === 'skip-offline') {
        await this.s.skipPending(r.id, dec.maxStage, 'offline', now);
        continue;
      }
      if (!next) return; // lost a race with an operator action; next tick sees the new state
      await this.s.appendAudit({ ts: now, actor: 'system', action: `rollout.${dec.kind}`, target: r.id, details: dec });
      this.d.log.info({ rollout: r.id, decision: dec }, 'rollout decision');
      r = next;
      if (r.state !== 'running') return;
    }
  }

  desiredFor(m: MemberRow, release: ReleaseRow, now: number): Desired {
    return { v: 1, txid: m.txid!, deploymentId: m.rolloutId, issuedAt: now, release: this.d.releaseRef(release, m.deviceId) };
  }

  /** Maps an update event to the member outcome. Returns true if it changed a member. */
  async onDeviceEvent(deviceId: string, ev: UpdateEvent): Promise<boolean> {
    if (!ev.deploymentId) return false;
    if (ev.phase !== 'success' && ev.phase !== 'failure' && ev.phase !== 'rolled-back') return false;
    const m = (await this.s.activeMemberships(deviceId)).find((x) => x.rolloutId === ev.deploymentId);
    if (!m) return false;
    const r = await this.s.getRollout(m.rolloutId);
    const release = r ? await this.s.getRelease(r.releaseId) : null;
    if (!release || ev.version !== release.version) return false;
    const ok = ev.phase === 'success';
    const err = ok ? null : ev.error ? `${ev.error.code}: ${ev.error.message}` : ev.phase;
    const changed = await this.s.finishMember(m.rolloutId, deviceId, ok ? 'succeeded' : 'failed', err, this.d.now());
    if (changed) {
      this.d.onOutcome?.(ok ? 'succeeded' : 'failed', 1);
      this.poke();
    }
    return changed;
  }

  /** A status that shows the target version running and idle settles a dispatched member (missed event). */
  async onDeviceStatus(deviceId: string, st: Status): Promise<boolean> {
    if (st.state !== 'idle') return false;
    let changed = false;
    for (const m of await this.s.activeMemberships(deviceId)) {
      const r = await this.s.getRollout(m.rolloutId);
      const release = r ? await this.s.getRelease(r.releaseId) : null;
      if (release && st.version === release.version && (await this.s.finishMember(m.rolloutId, deviceId, 'succeeded', null, this.d.now()))) {
        this.d.onOutcome?.('succeeded', 1);
        changed = true;
      }
    }
    if (changed) this.poke();
    return changed;
  }
}
