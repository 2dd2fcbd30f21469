// Pure tests of the transition table, the recovery table, backoff and the exclusive runner.
import { describe, expect, it } from 'vitest';
import { AgentState } from '../../lib/protocol.js';
import { RECOVERY, TRANSITIONS, recover, transition, type State } from '../../updater/state/machine.js';
import { backoffDelay, classify } from '../../updater/state/retry.js';
import { ExclusiveRunner } from '../../updater/state/exclusive.js';
import { UzError } from '../../lib/errors.js';
import { CrashStorage } from '../../updater/sim/crash-storage.js';
import { StateStore, overSaveCap, type StateRecord } from '../../updater/state/store.js';
import { rng } from './helpers.js';

const STATES = AgentState.options as State[];

describe('transition table', () => {
  it.each(TRANSITIONS.map((t) => [t.from, t.on, t.to] as const))('%s --%s--> %s', (from, on, to) => {
    expect(transition(from, on)).toBe(to);
  });

  it('has no duplicate (from, event) rows', () => {
    const keys = TRANSITIONS.map((t) => `${t.from}/${t.on}`);
    expect(new Set(keys).size).toBe(keys.length);
  });

  it('anything not in the table is refused with INVALID_TRANSITION', () => {
    expect(() => transition('idle', 'installed')).toThrow(expect.objectContaining({ code: 'INVALID_TRANSITION' }));
    expect(() => transition('rebooting', 'healthy')).toThrow(expect.objectContaining({ code: 'INVALID_TRANSITION' }));
    expect(() => transition('armed', 'cancel')).toThrow(); // a try in motion is not cancellable
  });

  it('every state is reachable from idle and every non-resting state can end (failed/rolled-back/idle)', () => {
    const reach = new Set<State>(['idle']);
    // Recovery edges count as edges too (rebooting → verifying happens at start-up).
    const edges = [...TRANSITIONS.map((t) => [t.from, t.to]), ...RECOVERY.map((r) => [r.saved, r.to])] as [State, State][];
    for (let i = 0; i < 10; i++) for (const [a, b] of edges) if (reach.has(a)) reach.add(b);
    expect([...reach].sort()).toEqual([...STATES].sort());
    for (const s of STATES) {
      const ends = new Set<State>([s]);
      for (let i = 0; i < 10; i++) for (const [a, b] of edges) if (ends.has(a)) ends.add(b);
      expect(ends.has('idle') || ends.has('failed') || ends.has('rolled-back')).toBe(true);
    }
  });
});

describe('recovery table', () => {
  // The expected recovery, written out independently of the implementation's rows.
  const expected: [State, 'target' | 'other', boolean, State][] = [
    ['idle', 'other', true, 'idle'],
    ['checking', 'other', true, 'idle'],
    ['downloading', 'other', true, 'idle'],
    ['downloading', 'target', true, 'idle'],
    ['installing', 'other', true, 'idle'],
    ['armed', 'target', true, 'verifying'],
    ['armed', 'other', true, 'armed'],
    ['rebooting', 'target', true, 'verifying'],
    ['rebooting', 'other', true, 'installing'],
    ['rebooting', 'other', false, 'rolled-back'],
    ['verifying', 'target', true, 'verifying'],
    ['verifying', 'target', false, 'verifying'],
    ['verifying', 'other', true, 'installing'],
    ['verifying', 'other', false, 'rolled-back'],
    ['committing', 'target', true, 'committing'],
    ['committing', 'target', false, 'committing'],
    ['committing', 'other', true, 'installing'],
    ['committing', 'other', false, 'rolled-back'],
    ['rolled-back', 'other', true, 'rolled-back'],
    ['rolled-back', 'target', true, 'rolled-back'],
    ['failed', 'target', true, 'failed'],
    ['failed', 'other', false, 'failed'],
  ];
  it.each(expected)('saved %s, booted %s slot, attempts left %s → %s', (saved, booted, left, to) => {
    expect(recover(saved, { bootedTarget: booted === 'target', attemptsLeft: left }).to).toBe(to);
  });

  it('every row is the first match for its own facts (no dead rows)', () => {
    for (const r of RECOVERY) {
      const facts = { bootedTarget: r.booted === 'any' ? r.saved === 'rolled-back' ? false : true : r.booted === 'target', attemptsLeft: r.attemptsLeft ?? true };
      expect(recover(r.saved, facts)).toBe(r);
    }
  });

  it('every state and every combination of facts has a row', () => {
    for (const s of STATES) for (const bt of [true, false, null]) for (const left of [true, false]) expect(() => recover(s, { bootedTarget: bt, attemptsLeft: left })).not.toThrow();
  });

  it('a rollback that did not stick is redone; nothing before the try touches boot selection', () => {
    expect(recover('rolled-back', { bootedTarget: true, attemptsLeft: true }).action).toBe('roll-back-again');
    for (const s of ['idle', 'checking', 'downloading', 'installing'] as State[]) expect(recover(s, { bootedTarget: false, attemptsLeft: true }).action).toBe('none');
  });
});

describe('errors, backoff, one update at a time', () => {
  it('classifies by reason code; aborts are cancellations, not errors', () => {
    expect(classify(new UzError('TIMEOUT', 'x'))).toBe('transient');
    expect(classify(new UzError('TRUNCATED', 'x'))).toBe('transient');
    expect(classify(new UzError('WRONG_BOARD', 'x'))).toBe('fatal');
    expect(classify(new UzError('BAD_SIGNATURE', 'x'))).toBe('fatal');
    expect(classify(Object.assign(new Error('reset'), { code: 'ECONNRESET' }))).toBe('transient');
    const ac = new AbortController();
    ac.abort();
    expect(classify(new UzError('TIMEOUT', 'x'), ac.signal)).toBe('cancelled');
  });

  it('backoff is exponential, capped, jittered within [1, ceiling]', () => {
    const r = rng(3);
    const p = { baseMs: 100, capMs: 5000 };
    for (let a = 0; a < 40; a++) {
      const ceiling = Math.min(5000, 100 * 2 ** a);
      for (let i = 0; i < 20; i++) {
        const d = backoffDelay(a, p, r);
        expect(d).toBeGreaterThanOrEqual(1);
        expect(d).toBeLessThanOrEqual(ceiling);
      }
    }
    expect(backoffDelay(50, p, () => 1)).toBe(5000);
    expect(backoffDelay(0, p, () => 0.5)).toBe(50);
  });

  it('the exclusive runner runs one job at a time and cancel aborts only the running one', async () => {
    const ex = new ExclusiveRunner();
    const log: string[] = [];
    const a = ex.run(async (signal) => {
      log.push('a-start');
      await new Promise<void>((r) => signal.addEventListener('abort', () => r()));
      log.push('a-cancelled');
      return 'a';
    });
    const b = ex.run(async (signal) => {
      log.push(`b-start aborted=${signal.aborted}`);
      return 'b';
    });
    await new Promise((r) => setTimeout(r, 5));
    expect(ex.busy).toBe(true);
    ex.cancel();
    expect(await a).toBe('a');
    expect(await b).toBe('b');
    expect(log).toEqual(['a-start', 'a-cancelled', 'b-start aborted=false']);
  });
});

describe('state store', () => {
  const rec: StateRecord = {
    v: 1,
    state: 'idle',
    update: null,
    committed: { slot: 'A', version: '1.0.0', rollbackCounter: 1 },
    floor: 1,
    done: null,
    lastError: null,
    savedAt: 0,
  };

  it('saves durably and reads back; a damaged file reads as no record', async () => {
    const s = new CrashStorage();
    const store = new StateStore(s, '/data');
    await store.save(rec, 5);
    s.powerCut();
    expect(await store.load()).toEqual({ ...rec, savedAt: 5 });
    s.createDurable('/data/state.json', Buffer.from('{"v":1,"state":"idle"'));
    expect(await store.load()).toBeNull();
  });

  it('a cut at any step of a save leaves the old or the new record, never a mix', async () => {
    for (let cutAt = 1; cutAt <= 4; cutAt++) {
      const s = new CrashStorage();
      const store = new StateStore(s, '/data');
      await store.save(rec, 1);
      s.armCut(cutAt);
      await store.save({ ...rec, state: 'checking' as const, floor: 2 }, 2).catch(() => {});
      s.powerCut();
      const got = await store.load();
      expect([1, 2]).toContain(got!.savedAt);
      expect(got!.floor).toBe(got!.savedAt);
    }
  });

  it('counts saves per update; the cap is reported', async () => {
    const s = new CrashStorage();
    const store = new StateStore(s, '/data');
    let r: StateRecord = {
      ...rec,
      state: 'downloading',
      update: { txid: 't', deploymentId: null, release: { version: '2.0.0', board: 'b', rollbackCounter: 1, bundleUrl: 'http://x/y', size: 1, sha256: 'a'.repeat(64) }, fromSlot: 'A', targetSlot: 'B', attempts: 0, saves: 0, retries: 0 },
    };
    for (let i = 0; i < 3; i++) r = await store.save(r, i);
    expect(r.update!.saves).toBe(3);
    expect(overSaveCap(r, { maxSaves: 3, maxTryAttempts: 5 })).toBe(true);
    expect(overSaveCap(r, { maxSaves: 4, maxTryAttempts: 5 })).toBe(false);
  });
});
