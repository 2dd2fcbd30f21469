// The Storage contract suite (MQTT.js abstract_store idea): every implementation runs exactly these tests.
import { describe, expect, it } from 'vitest';
import type { RolloutRow, Storage } from '../../server/storage/types.js';

const status = (id: string, version = '1.0.0') => ({
  v: 1 as const, deviceId: id, ts: 1, board: 'rpi4', version, slot: 'A' as const, rollbackCounter: 1,
  bootControl: { primary: 'A' as const, tryPending: null, bad: [] }, state: 'idle' as const,
  workload: { name: 'app', version: '1', healthy: true, detail: '', restarts: 0 },
});

export function rolloutRow(id: string, over: Partial<RolloutRow> = {}): RolloutRow {
  return {
    id, releaseId: 'rel-1', target: { channel: 'stable' },
    policy: { stages: [{ percent: 50 }, { percent: 100 }], successThreshold: 1, failureThreshold: { percent: 50 }, minDevices: 1, onFailure: 'pause', maxInFlight: 10, ratePerMinute: 100, timeoutSec: 60, retries: 1, offlineGraceSec: 60 },
    state: 'running', stageIndex: 0, stageCutoffs: [2, 4], reason: null, ackFailed: 0, ackDecided: 0, gateOverride: null,
    lastStageAt: 0, createdAt: 0, updatedAt: 0, createdBy: 'test', rev: 0, ...over,
  };
}

export function storageContract(name: string, make: () => Promise<Storage>): void {
  describe(`Storage contract: ${name}`, () => storageContractTests(make));
}

/** The contract's tests, for `describe.each` over implementations (test/server/storage.test.ts). */
export function storageContractTests(make: () => Promise<Storage>): void {
  {
    it('registers devices once, tracks presence, status and desired', async () => {
      const s = await make();
      expect(await s.registerDevice({ id: 'dev-a', secretHash: 'h1', now: 1 })).toBe(true);
      expect(await s.registerDevice({ id: 'dev-a', secretHash: 'h2', now: 2 })).toBe(false);
      expect(await s.deviceSecretHash('dev-a')).toBe('h1');
      expect(await s.deviceSecretHash('nope')).toBeUndefined();
      await s.registerDevice({ id: 'dev-b', secretHash: null, channel: 'beta', tags: ['lab', 'eu'], now: 3 });
      await s.setPresence('dev-a', true, 10);
      await s.setStatus('dev-b', status('dev-b'), 11);
      let a = await s.getDevice('dev-a');
      expect(a).toMatchObject({ id: 'dev-a', channel: 'stable', online: true, lastSeen: 10, status: null, desired: null });
      expect((await s.getDevice('dev-b'))!.status!.version).toBe('1.0.0');
      expect((await s.listDevices({ channel: 'beta' })).map((d) => d.id)).toEqual(['dev-b']);
      expect((await s.listDevices({ tag: 'eu' })).map((d) => d.id)).toEqual(['dev-b']);
      expect((await s.listDevices({ ids: ['dev-a', 'zzz'] })).map((d) => d.id)).toEqual(['dev-a']);
      expect(await s.listDevices({ ids: [] })).toEqual([]);
      expect(await s.updateDeviceMeta('dev-a', { tags: ['x'] })).toBe(true);
      expect(await s.updateDeviceMeta('nope', { tags: ['x'] })).toBe(false);
      const desired = { v: 1 as const, txid: 't1', deploymentId: null, issuedAt: 5, release: null };
      await s.setDesired('dev-a', desired);
      a = await s.getDevice('dev-a');
      expect(a!.desired).toEqual(desired);
      expect(a!.tags).toEqual(['x']);
      await s.markAllOffline();
      expect((await s.listDevices()).every((d) => !d.online)).toBe(true);
      await s.appendDeviceEvent('dev-a', 1, 'event', { phase: 'accepted' });
      await s.appendDeviceEvent('dev-a', 2, 'rejected', { code: 'MSG_INVALID' });
      const ev = await s.listDeviceEvents('dev-a', 10);
      expect(ev.map((e) => e.kind)).toEqual(['rejected', 'event']);
      await s.close();
    });

    it('pages the device list (limit + after, in id order) and aggregates the fleet in the database', async () => {
      const s = await make();
      const ids = ['dev-03', 'dev-01', 'dev-10', 'dev-02', 'dev-a1'];
      for (const id of ids) await s.registerDevice({ id, secretHash: null, channel: id === 'dev-a1' ? 'beta' : 'stable', tags: id === 'dev-02' ? ['eu'] : [], now: 1 });
      const pages: string[][] = [];
      let after: string | undefined;
      for (;;) {
        const page = await s.listDevices({ limit: 2, ...(after !== undefined ? { after } : {}) });
        if (!page.length) break;
        pages.push(page.map((d) => d.id));
        after = page.at(-1)!.id;
      }
      expect(pages).toEqual([['dev-01', 'dev-02'], ['dev-03', 'dev-10'], ['dev-a1']]);
      expect((await s.listDevices({ channel: 'stable', after: 'dev-02', limit: 10 })).map((d) => d.id)).toEqual(['dev-03', 'dev-10']);
      expect((await s.listDevices({ enrollment: 'none', limit: 1 })).map((d) => d.id)).toEqual(['dev-01']);
      expect(await s.listDevices({ enrollment: 'pending' })).toEqual([]);

      expect(await s.deviceSummary()).toEqual({ total: 5, online: 0, reporting: 0, versions: {}, states: {}, slots: {}, unhealthy: 0, withError: 0 });
      await s.setStatus('dev-01', status('dev-01', '2.0.0'), 2);
      await s.setStatus('dev-02', status('dev-02', '2.0.0'), 2);
      await s.setStatus('dev-03', { ...status('dev-03'), state: 'downloading', workload: { ...status('dev-03').workload, healthy: false }, lastError: { code: 'X', message: 'y' } }, 2);
      await s.setPresence('dev-03', false, 3);
      expect(await s.deviceSummary()).toEqual({
        total: 5, online: 2, reporting: 3, versions: { '2.0.0': 2, '1.0.0': 1 }, states: { idle: 2, downloading: 1 }, slots: { A: 3 }, unhealthy: 1, withError: 1,
      });
      expect(await s.deviceSummary({ channel: 'beta' })).toEqual({ total: 1, online: 0, reporting: 0, versions: {}, states: {}, slots: {}, unhealthy: 0, withError: 0 });
      expect((await s.listDevices({ search: 'DOWNLOADING' })).map((d) => d.id)).toEqual(['dev-03']);
      expect((await s.listDevices({ search: '2.0.0', limit: 1 })).map((d) => d.id)).toEqual(['dev-01']);
      expect((await s.listDevices({ search: 'dev-0' })).map((d) => d.id)).toEqual(['dev-01', 'dev-02', 'dev-03']);
      expect(await s.deviceSummary({ tag: 'eu' })).toMatchObject({ total: 1, online: 1, reporting: 1, versions: { '2.0.0': 1 } });
      await s.close();
    });

    it('stores releases and channels; yanks', async () => {
      const s = await make();
      const rel = { id: 'rel-1', sha256: 'a'.repeat(64), size: 10, board: 'rpi4', version: '1.0.0', rollbackCounter: 1, workload: { name: 'app', version: '1' }, manifest: { x: 1 }, signedBy: ['k'], createdAt: 1, yanked: false, yankedReason: null };
      await s.insertRelease(rel);
      await expect(s.insertRelease({ ...rel, id: 'rel-2', sha256: 'b'.repeat(64) })).rejects.toThrow(); // same board+version
      expect(await s.getRelease('rel-1')).toEqual(rel);
      expect((await s.getReleaseBySha('a'.repeat(64)))!.id).toBe('rel-1');
      expect((await s.findRelease('rpi4', '1.0.0'))!.id).toBe('rel-1');
      expect(await s.yankRelease('rel-1', 'bad')).toBe(true);
      expect(await s.getRelease('rel-1')).toMatchObject({ yanked: true, yankedReason: 'bad' });
      await s.setChannel('stable', 'rel-1', 5);
      await s.setChannel('stable', null, 6);
      expect(await s.getChannel('stable')).toEqual({ name: 'stable', releaseId: null, updatedAt: 6 });
      expect((await s.listChannels()).length).toBe(1);
      await s.close();
    });

    it('claims members atomically, once, online first, stores desired in the same step', async () => {
      const s = await make();
      for (const id of ['dev-1', 'dev-2', 'dev-3', 'dev-4']) await s.registerDevice({ id, secretHash: null, now: 0 });
      await s.setPresence('dev-2', true, 0);
      await s.setPresence('dev-3', true, 0);
      await s.setPresence('dev-4', true, 0);
      await s.createRollout(rolloutRow('ro-1'), [
        { deviceId: 'dev-1', position: 0, stage: 0 }, { deviceId: 'dev-2', position: 1, stage: 0 },
        { deviceId: 'dev-3', position: 2, stage: 1 }, { deviceId: 'dev-4', position: 3, stage: 1 },
      ]);
      const first = await s.claimForDispatch('ro-1', 0, 10, 100, true, (m) => ({ v: 1, txid: m.txid!, deploymentId: m.rolloutId, issuedAt: 100, release: null }));
      expect(first.map((m) => [m.deviceId, m.state, m.attempts, m.txid])).toEqual([['dev-2', 'dispatched', 1, 'ro-1-a1']]);
      expect((await s.getDevice('dev-2'))!.desired!.txid).toBe('ro-1-a1');
      expect(await s.claimForDispatch('ro-1', 0, 10, 100, true)).toEqual([]); // dev-1 offline, dev-2 taken
      const all = await s.claimForDispatch('ro-1', 1, 10, 101, false);
      expect(all.map((m) => m.deviceId)).toEqual(['dev-3', 'dev-4', 'dev-1']); // online first, then position
      expect(await s.dispatchedSince('ro-1', 101)).toBe(3);
      // concurrent claimers never share a member
      await s.createRollout(rolloutRow('ro-2'), Array.from({ length: 4 }, (_, i) => ({ deviceId: `dev-${i + 1}`, position: i, stage: 0 })));
      const racers = await Promise.all([1, 2, 3, 4].map(() => s.claimForDispatch('ro-2', 0, 2, 5, false)));
      const ids = racers.flat().map((m) => m.deviceId);
      expect(ids.length).toBe(4);
      expect(new Set(ids).size).toBe(4);
      await s.close();
    });

    it('finishes members only from dispatched (idempotent), times out and requeues, stage stats', async () => {
      const s = await make();
      for (const id of ['dev-1', 'dev-2', 'dev-3']) await s.registerDevice({ id, secretHash: null, now: 0 });
      await s.createRollout(rolloutRow('ro-1'), ['dev-1', 'dev-2', 'dev-3'].map((deviceId, i) => ({ deviceId, position: i, stage: i === 2 ? 1 : 0 })));
      await s.setPresence('dev-1', true, 0);
      await s.setPresence('dev-3', true, 0);
      expect(await s.countOnlinePending('ro-1', 0)).toBe(1); // dev-1 (dev-3 is in stage 1, dev-2 offline)
      expect(await s.countOnlinePending('ro-1', 1)).toBe(2);
      await s.claimForDispatch('ro-1', 1, 3, 1000, false);
      expect(await s.countOnlinePending('ro-1', 1)).toBe(0);
      expect((await s.activeMemberships('dev-1')).map((m) => m.rolloutId)).toEqual(['ro-1']);
      expect(await s.finishMember('ro-1', 'dev-1', 'succeeded', null, 1001)).toBe(true);
      expect(await s.finishMember('ro-1', 'dev-1', 'failed', 'late', 1002)).toBe(false);
      expect(await s.activeMemberships('dev-1')).toEqual([]);
      expect((await s.timedOut('ro-1', 1001)).map((m) => m.deviceId)).toEqual(['dev-2', 'dev-3']);
      expect(await s.requeueMember('ro-1', 'dev-2', 'TIMEOUT')).toBe(true);
      expect(await s.requeueMember('ro-1', 'dev-2', 'TIMEOUT')).toBe(false);
      const again = await s.claimForDispatch('ro-1', 0, 5, 2000, false);
      expect(again.map((m) => [m.deviceId, m.attempts, m.txid])).toEqual([['dev-2', 2, 'ro-1-a2']]);
      expect(await s.finishMember('ro-1', 'dev-3', 'failed', 'HEALTH', 2001)).toBe(true);
      expect(await s.stageStats('ro-1')).toEqual([
        { stage: 0, total: 2, pending: 0, dispatched: 1, succeeded: 1, failed: 0, skipped: 0 },
        { stage: 1, total: 1, pending: 0, dispatched: 0, succeeded: 0, failed: 1, skipped: 0 },
      ]);
      await s.createRollout(rolloutRow('ro-3'), [{ deviceId: 'dev-1', position: 0, stage: 0 }]);
      await s.setPresence('dev-1', false, 3);
      expect(await s.countOnlinePending('ro-3', 0)).toBe(0); // dev-1 is offline
      await s.setPresence('dev-1', true, 4);
      expect(await s.countOnlinePending('ro-3', 0)).toBe(1);
      expect(await s.skipPending('ro-3', 0, 'offline', 5)).toBe(1);
      expect(await s.countOnlinePending('ro-3', 0)).toBe(0);
      expect((await s.listMembers('ro-3'))[0]).toMatchObject({ state: 'skipped', error: 'offline' });
      await s.close();
    });

    it('updates rollouts with optimistic concurrency', async () => {
      const s = await make();
      await s.createRollout(rolloutRow('ro-1'), []);
      const a = await s.updateRollout('ro-1', 0, { state: 'paused', reason: 'x' }, 5);
      expect(a).toMatchObject({ state: 'paused', reason: 'x', rev: 1, updatedAt: 5 });
      expect(await s.updateRollout('ro-1', 0, { state: 'running' }, 6)).toBeNull();
      expect((await s.listRollouts(['paused'])).map((r) => r.id)).toEqual(['ro-1']);
      expect(await s.listRollouts(['running'])).toEqual([]);
      await s.close();
    });

    it('keeps tokens and an audit log', async () => {
      const s = await make();
      await s.createToken({ id: 't1', name: 'ci', role: 'operator', hash: 'h', now: 1 });
      expect(await s.tokenByHash('h')).toMatchObject({ id: 't1', role: 'operator' });
      expect(await s.countTokens()).toBe(1);
      expect(await s.revokeToken('t1')).toBe(true);
      expect(await s.tokenByHash('h')).toBeNull();
      await s.appendAudit({ ts: 1, actor: 'ci', action: 'release.publish', target: 'rel-1', details: { a: 1 } });
      expect(await s.listAudit(10)).toEqual([{ id: 1, ts: 1, actor: 'ci', action: 'release.publish', target: 'rel-1', details: { a: 1 } }]);
      await s.close();
    });

    it('caps a claim at the policy budget (maxInFlight, ratePerMinute) whatever the caller asks', async () => {
      const s = await make();
      for (let i = 0; i < 6; i++) await s.registerDevice({ id: `dev-${i}`, secretHash: null, now: 0 });
      const base = rolloutRow('ro-1');
      await s.createRollout({ ...base, policy: { ...base.policy, maxInFlight: 2 } }, Array.from({ length: 6 }, (_, i) => ({ deviceId: `dev-${i}`, position: i, stage: 0 })));
      expect((await s.claimForDispatch('ro-1', 0, 10, 1000, false)).map((m) => m.deviceId)).toEqual(['dev-0', 'dev-1']);
      expect(await s.claimForDispatch('ro-1', 0, 10, 1001, false)).toEqual([]);
      expect(await s.finishMember('ro-1', 'dev-0', 'succeeded', null, 1002)).toBe(true);
      expect((await s.claimForDispatch('ro-1', 0, 10, 1003, false)).map((m) => m.deviceId)).toEqual(['dev-2']);
      await s.createRollout({ ...rolloutRow('ro-2'), policy: { ...base.policy, maxInFlight: 100, ratePerMinute: 3 } }, Array.from({ length: 6 }, (_, i) => ({ deviceId: `dev-${i}`, position: i, stage: 0 })));
      expect((await s.claimForDispatch('ro-2', 0, 10, 10_000, false)).length).toBe(3);
      expect((await s.claimForDispatch('ro-2', 0, 10, 10_001, false)).length).toBe(0); // 3 in the last minute
      expect((await s.claimForDispatch('ro-2', 0, 10, 70_001, false)).length).toBe(3); // a minute later
      expect(await s.claimForDispatch('nope', 0, 10, 1, false)).toEqual([]);
      await s.close();
    });

    it('keeps enrollment state and one-time enrollment tokens', async () => {
      const s = await make();
      expect(await s.registerDevice({ id: 'dev-e', secretHash: null, now: 1, enrollment: 'pending' })).toBe(true);
      expect(await s.getDevice('dev-e')).toMatchObject({ enrollment: 'pending', certSerial: null });
      expect(await s.setEnrollment('dev-e', { state: 'approved', certSerial: 'abc1' })).toBe(true);
      expect(await s.getDevice('dev-e')).toMatchObject({ enrollment: 'approved', certSerial: 'abc1' });
      expect(await s.setEnrollment('dev-e', { state: 'revoked' })).toBe(true);
      expect(await s.getDevice('dev-e')).toMatchObject({ enrollment: 'revoked', certSerial: 'abc1' });
      expect(await s.setEnrollment('nope', { state: 'approved' })).toBe(false);
      await s.registerDevice({ id: 'dev-p', secretHash: 'h', now: 1 });
      expect((await s.getDevice('dev-p'))!.enrollment).toBe('none');

      await s.createEnrollToken({ id: 'e1', hash: 'h1', deviceId: null, preApproved: false, expiresAt: 100, createdBy: 'op', now: 1 });
      await s.createEnrollToken({ id: 'e2', hash: 'h2', deviceId: 'dev-x', preApproved: true, expiresAt: 100, createdBy: 'op', now: 2 });
      await s.createEnrollToken({ id: 'e3', hash: 'h3', deviceId: null, preApproved: false, expiresAt: 10, createdBy: 'op', now: 3 });
      expect(await s.enrollTokenByHash('h1')).toEqual({ id: 'e1', deviceId: null, preApproved: false, expiresAt: 100, usedAt: null, createdBy: 'op', createdAt: 1 });
      // first use binds; the same device may use it again (enrollment retries); another device may not
      expect(await s.useEnrollToken('h1', 'dev-a', 50)).toMatchObject({ id: 'e1', deviceId: 'dev-a', usedAt: 50 });
      expect(await s.useEnrollToken('h1', 'dev-a', 60)).toMatchObject({ id: 'e1', deviceId: 'dev-a', usedAt: 50 });
      expect(await s.useEnrollToken('h1', 'dev-b', 61)).toBeNull();
      // a token made for one device works only for it
      expect(await s.useEnrollToken('h2', 'dev-y', 50)).toBeNull();
      expect(await s.useEnrollToken('h2', 'dev-x', 50)).toMatchObject({ id: 'e2', preApproved: true });
      // expired before first use; unknown
      expect(await s.useEnrollToken('h3', 'dev-c', 11)).toBeNull();
      expect(await s.useEnrollToken('zz', 'dev-c', 1)).toBeNull();
      // concurrent first uses by different devices: exactly one wins
      await s.createEnrollToken({ id: 'e4', hash: 'h4', deviceId: null, preApproved: false, expiresAt: 100, createdBy: 'op', now: 4 });
      const race = await Promise.all(['dev-1', 'dev-2', 'dev-3', 'dev-4'].map((d) => s.useEnrollToken('h4', d, 5)));
      expect(race.filter(Boolean).length).toBe(1);
      expect((await s.listEnrollTokens()).map((t) => t.id)).toEqual(['e1', 'e2', 'e3', 'e4']);
      expect(await s.deleteEnrollToken('e3')).toBe(true);
      expect(await s.deleteEnrollToken('e3')).toBe(false);
      await s.close();
    });
  }
}
