import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { assignMembers, decide, inWindow, normaliseStages, onTimeout, parseStage, stageCutoffs } from '../../server/rollout-engine.js';
import { RolloutService } from '../../server/rollouts.js';
import { SqliteStorage } from '../../server/storage/sqlite.js';
import type { Desired, UpdateEvent } from '../../lib/protocol.js';
import type { StageStats } from '../../server/storage/types.js';
import { rolloutRow } from './storage-contract.js';

const st = (stage: number, o: Partial<StageStats>): StageStats => ({ stage, total: 0, pending: 0, dispatched: 0, succeeded: 0, failed: 0, skipped: 0, ...o });

describe('rollout engine (pure)', () => {
  it('parses stages and computes cumulative cutoffs', () => {
    expect(['1%', '10%', '50%', '100%', '25', 'x', '0%', '101%'].map(parseStage)).toEqual([
      { percent: 1 }, { percent: 10 }, { percent: 50 }, { percent: 100 }, { count: 25 }, null, null, null,
    ]);
    expect(stageCutoffs([{ percent: 1 }, { percent: 10 }, { percent: 50 }, { percent: 100 }], 200)).toEqual([2, 20, 100, 200]);
    expect(stageCutoffs([{ count: 5 }, { percent: 50 }], 8)).toEqual([5, 5, 8]); // implied final 100%
    expect(normaliseStages([{ count: 5 }, { percent: 50 }], 8)).toHaveLength(3);
    fc.assert(fc.property(fc.array(fc.oneof(fc.record({ percent: fc.integer({ min: 1, max: 100 }) }), fc.record({ count: fc.integer({ min: 1, max: 500 }) })), { minLength: 1, maxLength: 6 }), fc.integer({ min: 0, max: 1000 }), (stages, n) => {
      const c = stageCutoffs(stages, n);
      for (let i = 1; i < c.length; i++) expect(c[i]!).toBeGreaterThanOrEqual(c[i - 1]!);
      expect(c[c.length - 1]).toBe(n);
    }));
  });

  it('assigns members deterministically per seed', () => {
    const ids = Array.from({ length: 50 }, (_, i) => `dev-${i}`);
    const a = assignMembers('s1', ids, [5, 50]);
    expect(assignMembers('s1', [...ids].reverse(), [5, 50])).toEqual(a);
    expect(a.filter((m) => m.stage === 0)).toHaveLength(5);
    expect(assignMembers('s2', ids, [5, 50]).slice(0, 5)).not.toEqual(a.slice(0, 5));
  });

  it('maintenance windows (UTC, wrapping midnight, weekdays)', () => {
    const at = (iso: string) => Date.parse(iso);
    const w = { start: '22:00', end: '04:00' };
    expect(inWindow(w, at('2030-01-01T23:00:00Z'))).toBe(true);
    expect(inWindow(w, at('2030-01-01T03:59:00Z'))).toBe(true);
    expect(inWindow(w, at('2030-01-01T04:00:00Z'))).toBe(false);
    expect(inWindow({ start: '01:00', end: '02:00', days: [6] }, at('2030-01-05T01:30:00Z'))).toBe(true); // Saturday
    expect(inWindow({ start: '01:00', end: '02:00', days: [6] }, at('2030-01-06T01:30:00Z'))).toBe(false);
    expect(inWindow({ start: '22:00', end: '02:00', days: [6] }, at('2030-01-06T01:30:00Z'))).toBe(true); // opened Saturday night
    expect(inWindow(undefined, 0)).toBe(true);
  });

  it('failure brake applies only after minDevices, by count or percent, minus acknowledged failures', () => {
    const r = rolloutRow('ro', { stageCutoffs: [20, 200], policy: { ...rolloutRow('x').policy, minDevices: 10, failureThreshold: { percent: 10 }, maxInFlight: 50 } });
    const base = { rollout: r, onlinePendingEligible: 10, dispatchedLastMinute: 0, now: 0 };
    expect(decide({ ...base, stats: [st(0, { total: 20, succeeded: 6, failed: 3, pending: 11 })] }).kind).toBe('dispatch'); // 9 decided < 10
    const d = decide({ ...base, stats: [st(0, { total: 20, succeeded: 7, failed: 3, pending: 10 })] });
    expect(d).toMatchObject({ kind: 'halt', state: 'paused' });
    expect((d as { reason: string }).reason).toContain('3 of 10');
    // acknowledged by a resume: only new failures count
    expect(decide({ ...base, rollout: { ...r, ackFailed: 3, ackDecided: 10 }, stats: [st(0, { total: 20, succeeded: 16, failed: 3, pending: 1 })] }).kind).toBe('dispatch');
    // count threshold + abort
    const byCount = { ...r, policy: { ...r.policy, failureThreshold: { count: 2 }, minDevices: 1, onFailure: 'abort' as const } };
    expect(decide({ ...base, rollout: byCount, stats: [st(0, { total: 20, succeeded: 1, failed: 2 })] })).toMatchObject({ kind: 'halt', state: 'aborted' });
  });

  it('stage gate: advance, halt on low success, override after resume, complete; offline canaries wait', () => {
    const r = rolloutRow('ro', { stageCutoffs: [2, 4], policy: { ...rolloutRow('x').policy, successThreshold: 0.9, failureThreshold: { percent: 100 }, minDevices: 100 } });
    const base = { rollout: r, onlinePendingEligible: 0, dispatchedLastMinute: 0, now: 0 };
    expect(decide({ ...base, stats: [st(0, { total: 2, succeeded: 2 }), st(1, { total: 2, pending: 2 })] })).toEqual({ kind: 'advance', stageIndex: 1 });
    expect(decide({ ...base, stats: [st(0, { total: 2, succeeded: 1, failed: 1 })] })).toMatchObject({ kind: 'halt' });
    expect(decide({ ...base, rollout: { ...r, gateOverride: 0 }, stats: [st(0, { total: 2, succeeded: 1, failed: 1 })] })).toEqual({ kind: 'advance', stageIndex: 1 });
    expect(decide({ ...base, stats: [st(0, { total: 2, pending: 2 })] })).toMatchObject({ kind: 'idle' }); // all canaries offline
    expect(decide({ ...base, now: 61_000, stats: [st(0, { total: 2, pending: 2 })] })).toEqual({ kind: 'advance', stageIndex: 1 }); // grace over
    const last = { ...r, stageIndex: 1 };
    expect(decide({ ...base, rollout: last, stats: [st(0, { total: 2, succeeded: 2 }), st(1, { total: 2, succeeded: 2 })] })).toEqual({ kind: 'complete', skipOffline: false });
    expect(decide({ ...base, rollout: last, stats: [st(0, { total: 2, succeeded: 2 }), st(1, { total: 2, succeeded: 1, pending: 1 })] })).toMatchObject({ kind: 'idle' });
    expect(decide({ ...base, rollout: last, now: 60_000, stats: [st(0, { total: 2, succeeded: 2 }), st(1, { total: 2, succeeded: 1, pending: 1 })] })).toEqual({ kind: 'complete', skipOffline: true });
  });

  it('dispatch budget: max in flight, rate per minute, window; paused rollouts do nothing; timeouts retry then fail', () => {
    const r = rolloutRow('ro', { stageCutoffs: [100], policy: { ...rolloutRow('x').policy, maxInFlight: 5, ratePerMinute: 8, window: { start: '01:00', end: '02:00' } } });
    const t = Date.parse('2030-01-01T01:30:00Z');
    const stats = [st(0, { total: 100, pending: 97, dispatched: 3 })];
    expect(decide({ rollout: r, stats, onlinePendingEligible: 97, dispatchedLastMinute: 0, now: t })).toEqual({ kind: 'dispatch', count: 2, maxStage: 0 });
    expect(decide({ rollout: { ...r, policy: { ...r.policy, maxInFlight: 50 } }, stats, onlinePendingEligible: 97, dispatchedLastMinute: 7, now: t })).toEqual({ kind: 'dispatch', count: 1, maxStage: 0 });
    expect(decide({ rollout: r, stats, onlinePendingEligible: 97, dispatchedLastMinute: 0, now: t + 3600_000 })).toMatchObject({ kind: 'idle', why: 'outside the maintenance window' });
    expect(decide({ rollout: { ...r, state: 'paused' }, stats, onlinePendingEligible: 97, dispatchedLastMinute: 0, now: t })).toMatchObject({ kind: 'idle' });
    expect(onTimeout({ attempts: 1 }, { retries: 1 })).toBe('retry');
    expect(onTimeout({ attempts: 2 }, { retries: 1 })).toBe('fail');
    expect(onTimeout({ attempts: 1 }, { retries: 0 })).toBe('fail');
  });
});

/** A tiny fleet on a fake clock driving the real service + SQLite storage. */
async function fleet(n: number, failing: (id: string) => boolean) {
  const s = new SqliteStorage(':memory:');
  let now = Date.parse('2030-01-01T00:00:00Z');
  const desired: { deviceId: string; d: Desired }[] = [];
  const svc = new RolloutService(s, {
    now: () => now,
    publishDesired: (deviceId, d) => desired.push({ deviceId, d }),
    releaseRef: (rel) => ({ version: rel.version, board: rel.board, rollbackCounter: 1, bundleUrl: 'http://127.0.0.1/a', size: rel.size, sha256: rel.sha256 }),
    log: { info() {}, warn() {} },
  });
  const ids = Array.from({ length: n }, (_, i) => `dev-${String(i).padStart(3, '0')}`);
  for (const id of ids) {
    await s.registerDevice({ id, secretHash: null, now });
    await s.setPresence(id, true, now);
  }
  await s.insertRelease({ id: 'rel-2', sha256: 'c'.repeat(64), size: 100, board: 'rpi4', version: '2.0.0', rollbackCounter: 1, workload: { name: 'a', version: '1' }, manifest: {}, signedBy: [], createdAt: now, yanked: false, yankedReason: null });
  /** Devices answer every desired they got since the last call (success or failure). */
  const answer = async (silent: Set<string> = new Set()) => {
    const batch = desired.splice(0);
    for (const { deviceId, d } of batch) {
      if (silent.has(deviceId)) continue;
      const ev: UpdateEvent = { v: 1, txid: d.txid, deploymentId: d.deploymentId, ts: now, phase: failing(deviceId) ? 'rolled-back' : 'success', version: d.release!.version, ...(failing(deviceId) ? { error: { code: 'HEALTH', message: 'unhealthy' } } : {}) };
      await svc.onDeviceEvent(deviceId, ev);
    }
    return batch;
  };
  return { s, svc, ids, answer, desired, advance: (ms: number) => (now += ms), now: () => now };
}

describe('rollout service on a fake clock', () => {
  it('walks 1% → 10% → 50% → 100% with rate and in-flight limits, completes, dispatches each device once', async () => {
    const f = await fleet(200, () => false);
    const r = await f.svc.create({ channel: 'stable', releaseId: 'rel-2', stages: ['1%', '10%', '50%', '100%'], maxInFlight: 30, ratePerMinute: 60, minDevices: 5 }, 'test');
    const seen: string[] = [];
    for (let i = 0; i < 400; i++) {
      await f.svc.tick();
      seen.push(...(await f.answer()).map((x) => x.deviceId));
      if ((await f.s.getRollout(r.id))!.state === 'completed') break;
      f.advance(10_000);
    }
    const st = await f.svc.status(r.id);
    expect(st.rollout.state).toBe('completed');
    expect(st.totals.succeeded).toBe(200);
    expect(new Set(seen).size).toBe(200);
    expect(seen.length).toBe(200);
    // rate: never more than 60 dispatches in any 60 s window → at least ~3 minutes of fake time
    expect(f.now() - r.createdAt).toBeGreaterThanOrEqual(3 * 60_000);
    const audit = await f.s.listAudit(100);
    expect(audit.filter((a) => a.action === 'rollout.advance')).toHaveLength(3);
  });

  it('pauses in the canary stage when failures cross the threshold; resume acknowledges; abort stops', async () => {
    const bad = new Set(['dev-000', 'dev-001', 'dev-002', 'dev-003', 'dev-004', 'dev-005', 'dev-006', 'dev-007']);
    const f = await fleet(100, (id) => bad.has(id) || Number(id.slice(4)) % 4 === 0);
    // seeded so the canary (stage 1, 20 devices) holds ≥ 3 failing devices: checked below, not assumed
    const r = await f.svc.create({ channel: 'stable', releaseId: 'rel-2', stages: ['20%', '100%'], failureThreshold: { percent: 10 }, minDevices: 10, maxInFlight: 100, seed: 'fixed' }, 'op');
    const canary = (await f.s.listMembers(r.id)).filter((m) => m.stage === 0).map((m) => m.deviceId);
    const failingInCanary = canary.filter((id) => bad.has(id) || Number(id.slice(4)) % 4 === 0).length;
    expect(failingInCanary).toBeGreaterThanOrEqual(2);
    for (let i = 0; i < 20; i++) {
      await f.svc.tick();
      await f.answer();
      f.advance(1000);
    }
    const st = await f.svc.status(r.id);
    expect(st.rollout.state).toBe('paused');
    expect(st.rollout.reason).toMatch(/failure threshold/);
    expect(st.stages[1]!.pending).toBe(st.stages[1]!.total); // nobody outside the canary got it
    await expect(f.svc.pause(r.id, 'op')).rejects.toMatchObject({ code: 'ROLLOUT_STATE' });
    await f.svc.resume(r.id, 'op');
    expect((await f.s.getRollout(r.id))!.ackFailed).toBe(st.totals.failed);
    await f.svc.abort(r.id, 'op');
    await f.svc.tick();
    expect(f.desired).toHaveLength(0);
    await expect(f.svc.resume(r.id, 'op')).rejects.toMatchObject({ code: 'ROLLOUT_STATE' });
    expect((await f.s.listAudit(50)).map((a) => a.action)).toEqual(expect.arrayContaining(['rollout.create', 'rollout.halt', 'rollout.resume', 'rollout.abort']));
  });

  it('times out silent devices: retries once, then counts them failed', async () => {
    const f = await fleet(4, () => false);
    const r = await f.svc.create({ devices: ['dev-000', 'dev-001', 'dev-002', 'dev-003'], releaseId: 'rel-2', stages: ['100%'], timeoutSec: 60, retries: 1, successThreshold: 0.5, failureThreshold: { count: 4 }, minDevices: 1 }, 'op');
    const silent = new Set(['dev-002']);
    const got: string[] = [];
    for (let i = 0; i < 10; i++) {
      await f.svc.tick();
      got.push(...(await f.answer(silent)).map((x) => `${x.deviceId}:${x.d.txid}`));
      f.advance(61_000);
    }
    expect(got.filter((g) => g.startsWith('dev-002'))).toEqual([`dev-002:${r.id}-a1`, `dev-002:${r.id}-a2`]);
    const m = (await f.s.listMembers(r.id)).find((x) => x.deviceId === 'dev-002')!;
    expect(m).toMatchObject({ state: 'failed', attempts: 2 });
    expect(m.error).toMatch(/TIMEOUT/);
    expect((await f.s.getRollout(r.id))!.state).toBe('completed'); // 3/4 ≥ 0.5
  });

  it('state survives a restart of the service (new instance on the same storage)', async () => {
    const f = await fleet(20, () => false);
    const r = await f.svc.create({ channel: 'stable', releaseId: 'rel-2', stages: ['50%', '100%'], maxInFlight: 5, minDevices: 1 }, 'op');
    await f.svc.tick();
    const before = f.desired.length;
    expect(before).toBe(5);
    const svc2 = new RolloutService(f.s, { now: f.now, publishDesired: (deviceId, d) => f.desired.push({ deviceId, d }), releaseRef: (rel) => ({ version: rel.version, board: rel.board, rollbackCounter: 1, bundleUrl: 'http://127.0.0.1/a', size: rel.size, sha256: rel.sha256 }), log: { info() {}, warn() {} } });
    await svc2.tick();
    expect(f.desired.length).toBe(5); // nothing re-dispatched: 5 in flight already
    f.svc = svc2;
    for (let i = 0; i < 20 && (await f.s.getRollout(r.id))!.state !== 'completed'; i++) {
      await f.answer();
      await svc2.tick();
      f.advance(1000);
    }
    expect((await svc2.status(r.id)).totals.succeeded).toBe(20);
  });
});
