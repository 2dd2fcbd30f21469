/**
 * Pure rollout core: no I/O, no clock of its own. The service (rollouts.ts) feeds it counts from storage and
 * `now`, and applies what it returns. Tested with a fake clock in test/server/rollout-engine.test.ts.
 *
 * How a rollout decides (docs/rollouts.md has a worked example):
 *  - Members are frozen at creation and ordered by sha256(seed + deviceId); stage k covers positions below the
 *    cumulative cutoff k (percent → ceil(n·p/100), count → min(n, count)).
 *  - Failure brake (any time while running): with failed' = failed − ackFailed and decided' = decided − ackDecided
 *    (what an operator already acknowledged by resuming is not counted again), once decided' ≥ minDevices and
 *    failed' ≥ failureThreshold.count or failed'/decided' ≥ failureThreshold.percent, the rollout pauses (or
 *    aborts, per onFailure).
 *  - Stage gate: a stage is finished when nothing is in flight and no ONLINE member of stages ≤ k is pending.
 *    Then succeeded/decided over stages ≤ k must be ≥ successThreshold to advance (else pause/abort; resuming
 *    overrides the gate for that stage). A stage in which nobody decided yet does not advance (offline canaries
 *    prove nothing). The last stage also waits offlineGraceSec for offline members, then skips them.
 *  - Dispatch budget = min(maxInFlight − inFlight, ratePerMinute − dispatchedLastMinute, online pending), and
 *    0 outside the maintenance window.
 */
import { createHash } from 'node:crypto';
import type { MemberRow, RolloutPolicy, RolloutRow, Stage, StageStats } from './storage/types.js';

export const DEFAULT_POLICY: RolloutPolicy = {
  stages: [{ percent: 1 }, { percent: 10 }, { percent: 50 }, { percent: 100 }],
  successThreshold: 0.95,
  failureThreshold: { percent: 10 },
  minDevices: 10,
  onFailure: 'pause',
  maxInFlight: 50,
  ratePerMinute: 600,
  timeoutSec: 1800,
  retries: 1,
  offlineGraceSec: 86_400,
};

/** "1%" → {percent:1}; "25" → {count:25}. */
export function parseStage(s: string): Stage | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$/.exec(s);
  if (!m) return null;
  const n = Number(m[1]);
  if (m[2] === '%') return n > 0 && n <= 100 ? { percent: n } : null;
  return Number.isInteger(n) && n > 0 ? { count: n } : null;
}

/** Cumulative member counts per stage; non-decreasing, last one = n (a final 100% is implied). */
export function stageCutoffs(stages: readonly Stage[], n: number): number[] {
  const out: number[] = [];
  let prev = 0;
  for (const s of stages) {
    const raw = s.percent !== undefined ? Math.ceil((n * s.percent) / 100) : Math.min(n, s.count ?? n);
    const c = Math.max(prev, Math.min(n, raw));
    out.push(c);
    prev = c;
  }
  if (out.length === 0 || out[out.length - 1]! < n) out.push(n);
  return out;
}

/** Normalises the stage list so that its cutoffs line up with stageCutoffs (adds the implied final 100%). */
export function normaliseStages(stages: readonly Stage[], n: number): Stage[] {
  const c = stageCutoffs(stages, n);
  return c.length > stages.length ? [...stages, { percent: 100 }] : [...stages];
}

/** Deterministic order of members: sha256(seed + id), then stage by cutoff. */
export function assignMembers(seed: string, deviceIds: readonly string[], cutoffs: readonly number[]): { deviceId: string; position: number; stage: number }[] {
  const keyed = deviceIds.map((id) => ({ id, k: createHash('sha256').update(seed).update('\0').update(id).digest('hex') }));
  keyed.sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : 0));
  let stage = 0;
  return keyed.map((x, position) => {
    while (stage < cutoffs.length - 1 && position >= cutoffs[stage]!) stage++;
    return { deviceId: x.id, position, stage };
  });
}

function minutesOf(hhmm: string): number {
  const m = /^([01]\d|2[0-3]):([0-5]\d)$/.exec(hhmm);
  if (!m) throw new Error(`bad time ${hhmm}`);
  return Number(m[1]) * 60 + Number(m[2]);
}

export function validWindowTime(s: string): boolean {
  return /^([01]\d|2[0-3]):([0-5]\d)$/.test(s);
}

/** True when `now` (ms) falls in the UTC window [start, end); a window may wrap midnight (22:00–04:00). */
export function inWindow(w: RolloutPolicy['window'], now: number): boolean {
  if (!w) return true;
  const d = new Date(now);
  const mins = d.getUTCHours() * 60 + d.getUTCMinutes();
  const s = minutesOf(w.start);
  const e = minutesOf(w.end);
  let day = d.getUTCDay();
  let inside: boolean;
  if (s === e) inside = true;
  else if (s < e) inside = mins >= s && mins < e;
  else {
    inside = mins >= s || mins < e;
    if (mins < e) day = (day + 6) % 7; // the window opened the day before
  }
  return inside && (!w.days || w.days.length === 0 || w.days.includes(day));
}

/** A rollout's counts summed over stages: the per-stage record without its stage number. */
export type Totals = Omit<StageStats, 'stage'>;

export function sumStats(stats: readonly StageStats[], maxStage = Infinity): Totals {
  const t: Totals = { total: 0, pending: 0, dispatched: 0, succeeded: 0, failed: 0, skipped: 0 };
  for (const s of stats) {
    if (s.stage > maxStage) continue;
    t.total += s.total;
    t.pending += s.pending;
    t.dispatched += s.dispatched;
    t.succeeded += s.succeeded;
    t.failed += s.failed;
    t.skipped += s.skipped;
  }
  return t;
}

export interface TickInput {
  rollout: RolloutRow;
  stats: readonly StageStats[];
  /** Pending members of stages ≤ stageIndex whose device is online now. */
  onlinePendingEligible: number;
  dispatchedLastMinute: number;
  now: number;
}

export type Decision =
  | { kind: 'idle'; why: string }
  | { kind: 'dispatch'; count: number; maxStage: number }
  | { kind: 'advance'; stageIndex: number }
  | { kind: 'complete'; skipOffline: boolean }
  | { kind: 'halt'; state: 'paused' | 'aborted'; reason: string }
  | { kind: 'skip-offline'; maxStage: number };

const pct = (x: number): string => `${Math.round(x * 1000) / 10}%`;

/** One decision for a running rollout. The caller applies it and asks again until it gets idle or dispatch. */
export function decide(i: TickInput): Decision {
  const r = i.rollout;
  const p = r.policy;
  if (r.state !== 'running') return { kind: 'idle', why: r.state };
  const all = sumStats(i.stats);

  // 1. failure brake
  const failed = all.failed - r.ackFailed;
  const decided = all.succeeded + all.failed - r.ackDecided;
  if (decided >= p.minDevices && decided > 0) {
    const byCount = p.failureThreshold.count !== undefined && failed >= p.failureThreshold.count;
    const byPct = p.failureThreshold.percent !== undefined && failed * 100 >= p.failureThreshold.percent * decided && failed > 0;
    if (byCount || byPct) {
      return {
        kind: 'halt',
        state: p.onFailure === 'abort' ? 'aborted' : 'paused',
        reason: `failure threshold reached in stage ${r.stageIndex + 1}: ${failed} of ${decided} decided devices failed (${pct(failed / decided)}; threshold ${[
          p.failureThreshold.count !== undefined ? `${p.failureThreshold.count} devices` : '',
          p.failureThreshold.percent !== undefined ? `${p.failureThreshold.percent}%` : '',
        ].filter(Boolean).join(' or ')}, after ≥ ${p.minDevices} decided)`,
      };
    }
  }

  // 2. stage gate
  const el = sumStats(i.stats, r.stageIndex);
  const last = r.stageIndex >= r.stageCutoffs.length - 1;
  if (el.dispatched === 0 && i.onlinePendingEligible === 0) {
    const offlinePending = el.pending;
    const graceOver = i.now - r.lastStageAt >= p.offlineGraceSec * 1000;
    const decidedEl = el.succeeded + el.failed;
    if (decidedEl === 0 && offlinePending > 0 && !graceOver) return { kind: 'idle', why: `waiting for ${offlinePending} offline device(s) of stage ${r.stageIndex + 1}` };
    const ratio = decidedEl === 0 ? 1 : el.succeeded / decidedEl;
    if (ratio < p.successThreshold && r.gateOverride !== r.stageIndex) {
      return {
        kind: 'halt',
        state: p.onFailure === 'abort' ? 'aborted' : 'paused',
        reason: `stage ${r.stageIndex + 1} finished with ${el.succeeded} of ${decidedEl} succeeded (${pct(ratio)}), below the success threshold ${pct(p.successThreshold)}`,
      };
    }
    if (!last) return { kind: 'advance', stageIndex: r.stageIndex + 1 };
    if (offlinePending > 0 && !graceOver) return { kind: 'idle', why: `waiting for ${offlinePending} offline device(s)` };
    return { kind: 'complete', skipOffline: offlinePending > 0 };
  }

  // 3. dispatch
  if (!inWindow(p.window, i.now)) return { kind: 'idle', why: 'outside the maintenance window' };
  const budget = Math.min(p.maxInFlight - all.dispatched, p.ratePerMinute - i.dispatchedLastMinute, i.onlinePendingEligible);
  if (budget <= 0) return { kind: 'idle', why: all.dispatched >= p.maxInFlight ? 'max in flight' : i.onlinePendingEligible === 0 ? 'waiting for in-flight devices' : 'rate limit' };
  return { kind: 'dispatch', count: budget, maxStage: r.stageIndex };
}

/** What to do with a member whose in-progress timeout expired. */
export function onTimeout(m: Pick<MemberRow, 'attempts'>, p: Pick<RolloutPolicy, 'retries'>): 'retry' | 'fail' {
  return m.attempts <= p.retries ? 'retry' : 'fail';
}
