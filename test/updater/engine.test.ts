// The engine end to end on a simulated board (no power cuts here; see powercut.test.ts): the flow, rollback
// on a failed health check, cancellation, retries with backoff, caps, and queueing during a trial boot.
import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { UzError } from '../../lib/errors.js';
import type { Desired } from '../../lib/protocol.js';
import { UpdateEngine, type EngineDeps, type EngineNotice } from '../../updater/engine.js';
import { fileSlots } from '../../updater/install/slots.js';
import { memorySource, type RangeSource } from '../../updater/install/source.js';
import { CrashStorage } from '../../updater/sim/crash-storage.js';
import { SimMachine, type SimScheme } from '../../updater/sim/machine.js';
import { provisionSim } from '../../updater/sim/provision.js';
import { simBundle, simSlotImage, simTrust } from '../../updater/sim/releases.js';

const NOW = new Date('2031-06-01T00:00:00Z');
const trust = simTrust(NOW);
const v1 = simBundle({ payload: simSlotImage('1.0.0', 30_000), version: '1.0.0', rollbackCounter: 1, keys: [trust.releaseKey], now: NOW });
const v2 = simBundle({ payload: randomBytes(70_000), version: '2.0.0', rollbackCounter: 2, keys: [trust.releaseKey], now: NOW });
const v3 = simBundle({ payload: randomBytes(40_000), version: '3.0.0', rollbackCounter: 3, keys: [trust.releaseKey], now: NOW });
const desired = (txid: string, b = v2, over: Partial<Desired['release'] & object> = {}): Desired => ({ v: 1, txid, deploymentId: 'dep', issuedAt: 1, release: { ...b.release('http://127.0.0.1/b.uzb'), ...over } });

async function board(scheme: SimScheme = 'uboot-bootcount') {
  const crash = new CrashStorage();
  const m = new SimMachine(scheme, crash, '/m');
  const pad = (b: Buffer) => Buffer.concat([b, Buffer.alloc(128 * 1024 - b.length)]);
  await provisionSim(m, { A: pad(v1.slotContent), B: pad(v1.slotContent) });
  const versionOf = (slot: 'A' | 'B') => {
    const c = crash.peek(m.paths.slotFile(slot))!;
    for (const b of [v1, v2, v3]) if (c.subarray(0, b.slotContent.length).equals(b.slotContent)) return b.manifest;
    throw new Error(`slot ${slot} holds no known release`);
  };
  const bootAndStart = async (over: Partial<EngineDeps> = {}) => {
    const run = await m.boot({ A: true, B: true });
    const notices: EngineNotice[] = [];
    const man = versionOf(run.slot!);
    const e = new UpdateEngine({
      storage: crash,
      stateDir: m.paths.dataDir,
      bootctl: m.bootControl(),
      slots: fileSlots(m.paths.slotFile),
      trust: { root: trust.root, board: 'qemu-virt' },
      running: { version: man.version, rollbackCounter: man.rollbackCounter },
      sourceFor: (r) => memorySource([v1, v2, v3].find((b) => b.manifest.version === r.version)!.bytes),
      waitHealthy: async () => ({ ok: true, detail: 'ok' }),
      notify: (n) => notices.push(n),
      now: () => NOW.getTime(),
      sleep: async () => {},
      ...over,
    });
    await e.start();
    return { e, notices, slot: run.slot! };
  };
  return { crash, m, bootAndStart };
}

const phases = (n: EngineNotice[]) => n.flatMap((x) => (x.kind === 'phase' ? [x.event.phase + (x.event.error ? `:${x.event.error.code}` : '')] : []));
const dedupe = (a: string[]) => a.filter((x, i) => x !== a[i - 1]);

describe.each(['uboot-bootcount', 'rpi-tryboot'] as const)('engine on %s', (scheme) => {
  it('installs, reboots into the try slot, verifies, commits; the next boots stay there', async () => {
    const b = await board(scheme);
    let r = await b.bootAndStart();
    expect(r.slot).toBe('A');
    expect(await r.e.offer(desired('t1'))).toBe('started');
    await r.e.settled();
    expect(r.e.record.state).toBe('rebooting');
    expect(b.m.rebootRequested).toBe(true);
    expect(dedupe(phases(r.notices))).toEqual(['accepted', 'downloading', 'installing', 'rebooting']);
    b.crash.powerCut();
    r = await b.bootAndStart();
    await r.e.settled();
    expect(r.slot).toBe('B');
    expect(r.e.record).toMatchObject({ state: 'idle', committed: { slot: 'B', version: '2.0.0', rollbackCounter: 2 }, floor: 2, done: { txid: 't1', outcome: 'success' }, update: null });
    expect(dedupe(phases(r.notices))).toEqual(['verifying', 'success']);
    expect(r.notices.filter((n) => n.kind === 'ready')).toEqual([{ kind: 'ready', slot: 'B', version: '2.0.0' }]);
    // The retained desired message arrives again after reconnecting: nothing happens.
    expect(await r.e.offer(desired('t1'))).toBe('duplicate');
    for (let i = 0; i < 3; i++) {
      b.crash.powerCut();
      r = await b.bootAndStart();
      await r.e.settled();
      expect(r.slot).toBe('B');
    }
  });

  it('a try slot failing its health check is marked bad and rolled back; the same txid is not retried', async () => {
    const b = await board(scheme);
    let r = await b.bootAndStart();
    await r.e.offer(desired('t1'));
    await r.e.settled();
    b.crash.powerCut();
    r = await b.bootAndStart({ waitHealthy: async () => ({ ok: false, detail: 'port 8080 refused' }) });
    await r.e.settled();
    expect(r.slot).toBe('B');
    expect(r.e.record.state).toBe('rolled-back');
    expect(r.e.record.lastError?.code).toBe('HEALTH_DEADLINE');
    expect(b.m.rebootRequested).toBe(true);
    expect(phases(r.notices)).toContain('rolled-back:HEALTH_DEADLINE');
    b.crash.powerCut();
    r = await b.bootAndStart();
    await r.e.settled();
    expect(r.slot).toBe('A');
    expect(r.e.record).toMatchObject({ state: 'rolled-back', committed: { slot: 'A', version: '1.0.0' }, done: { txid: 't1', outcome: 'rolled-back' } });
    expect((await b.m.bootControl().read()).bad).toContain('B');
    expect(await r.e.offer(desired('t1'))).toBe('duplicate');
    expect(await r.e.offer(desired('t2', v3))).toBe('started');
    await r.e.settled();
    expect(r.e.record.state).toBe('rebooting');
  });
});

describe('when UZ-READY is announced relative to marking the slot good', () => {
  /** The sim board's boot control, with its markGood calls recorded in the same timeline as the notices. */
  const timed = (b: Awaited<ReturnType<typeof board>>, events: string[]) => {
    const bc = b.m.bootControl();
    return {
      ...bc,
      scheme: bc.scheme,
      bootedSlot: () => bc.bootedSlot(),
      read: () => bc.read(),
      markBad: (s: 'A' | 'B') => bc.markBad(s),
      armTry: (s: 'A' | 'B') => bc.armTry(s),
      reboot: () => bc.reboot(),
      markGood: async (s: 'A' | 'B') => {
        await bc.markGood(s);
        events.push(`marked-good:${s}`);
      },
    };
  };

  /** Boots and starts the engine, recording `ready` notices and completed markGood calls in one timeline. */
  const bootRecording = async (b: Awaited<ReturnType<typeof board>>) => {
    const events: string[] = [];
    const r = await b.bootAndStart({ bootctl: timed(b, events), notify: (n) => n.kind === 'ready' && events.push(`ready:${n.slot}`) });
    return { r, events };
  };

  it('an ordinary boot of the committed slot announces ready before the attempts are refreshed, and refreshes them', async () => {
    const b = await board();
    const { r, events } = await bootRecording(b);
    await r.e.settled();
    expect(events).toEqual(['ready:A', 'marked-good:A']);
    // The refresh happened: U-Boot's attempts for A are full again after the settle.
    b.crash.powerCut();
    const run = await b.m.boot({ A: true, B: true });
    expect(run.slot).toBe('A');
    expect(await b.m.bootControl().read()).toEqual({ primary: 'A', tryPending: null, bad: [] });
  });

  it('a trial armed outside the agent is marked good before ready is announced (UZ-READY then says it stays)', async () => {
    const b = await board();
    await b.m.boot({ A: true, B: true });
    await b.m.bootControl().armTry('B');
    b.crash.powerCut();
    const { r, events } = await bootRecording(b);
    await r.e.settled();
    expect(r.slot).toBe('B');
    expect(events).toEqual(['marked-good:B', 'ready:B']);
  });

  it('a tracked update commits before ready is announced', async () => {
    const b = await board();
    let r = await b.bootAndStart();
    await r.e.offer(desired('t1'));
    await r.e.settled();
    b.crash.powerCut();
    const rec = await bootRecording(b);
    r = rec.r;
    const events = rec.events;
    await r.e.settled();
    expect(r.slot).toBe('B');
    expect(events[0]).toBe('marked-good:B');
    expect(events.filter((e) => e.startsWith('ready'))).toEqual(['ready:B']);
  });
});

describe('engine decisions', () => {
  it('a release for another board is rejected at checking: failed WRONG_BOARD, boot selection untouched', async () => {
    const b = await board();
    const r = await b.bootAndStart();
    await r.e.offer(desired('t1', v2, { board: 'rpi4' }));
    await r.e.settled();
    expect(r.e.record).toMatchObject({ state: 'failed', lastError: { code: 'WRONG_BOARD' }, done: { txid: 't1', outcome: 'failure' } });
    expect(await b.m.bootControl().read()).toEqual({ primary: 'A', tryPending: null, bad: [] });
    expect(phases(r.notices)).toEqual(['failure:WRONG_BOARD']);
  });

  it('the running version is up to date; null release means nothing to do', async () => {
    const b = await board();
    const r = await b.bootAndStart();
    await r.e.offer(desired('t1', v1));
    await r.e.settled();
    expect(r.e.record).toMatchObject({ state: 'idle', done: { outcome: 'up-to-date' } });
    await r.e.offer({ v: 1, txid: 't2', deploymentId: null, issuedAt: 1, release: null });
    await r.e.settled();
    expect(r.e.record).toMatchObject({ state: 'idle', done: { txid: 't2', outcome: 'up-to-date' } });
  });

  it('a newer desired release cancels a download in progress (cancel is not an error) and is installed instead', async () => {
    const b = await board();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow = (bytes: Buffer): RangeSource => ({
      describe: 'slow',
      async *read(start, end, signal) {
        yield bytes.subarray(start, Math.min(end, start + 20_000));
        await new Promise<void>((r) => signal.addEventListener('abort', () => r(), { once: true }));
        release();
        throw Object.assign(new Error('aborted'), { name: 'AbortError' });
      },
    });
    const r = await b.bootAndStart({ sourceFor: (rel) => (rel.version === '2.0.0' ? slow(v2.bytes) : memorySource(v3.bytes)) });
    await r.e.offer(desired('t1', v2));
    await new Promise((res) => setTimeout(res, 20));
    expect(r.e.record.state).toBe('downloading');
    expect(await r.e.offer(desired('t2', v3))).toBe('started');
    await gate;
    await r.e.settled();
    expect(r.e.record).toMatchObject({ state: 'rebooting', update: { txid: 't2' } });
    expect(phases(r.notices).filter((p) => p.startsWith('failure'))).toEqual([]);
    const states = r.notices.flatMap((n) => (n.kind === 'state' ? [n.record.state] : []));
    // (the first 'idle' is the state announced after start-up recovery)
    expect(states.slice(0, 6)).toEqual(['idle', 'checking', 'downloading', 'idle', 'checking', 'downloading']);
  });

  it('transient errors retry with capped jittered backoff, then give up with the reason code', async () => {
    const b = await board();
    const delays: number[] = [];
    const broken: RangeSource = {
      describe: 'broken',
      // eslint-disable-next-line require-yield
      async *read() {
        throw new UzError('TIMEOUT', 'no data for 30000 ms');
      },
    };
    const r = await b.bootAndStart({ sourceFor: () => broken, sleep: async (ms) => void delays.push(ms), backoff: { baseMs: 100, capMs: 1000, maxRetries: 6 }, random: () => 0.999 });
    await r.e.offer(desired('t1'));
    await r.e.settled();
    expect(r.e.record).toMatchObject({ state: 'failed', lastError: { code: 'TIMEOUT' } });
    expect(delays).toEqual([100, 200, 400, 799, 999, 999].map((x) => expect.closeTo(x, 0)));
    expect(await b.m.bootControl().read()).toMatchObject({ primary: 'A', tryPending: null });
  });

  it('a cap on state saves turns an endless loop into a reported failure', async () => {
    const b = await board();
    const r = await b.bootAndStart({ limits: { maxSaves: 3, maxTryAttempts: 5 }, sourceFor: () => ({ describe: 'x', async *read() { throw new UzError('TRUNCATED', 'dropped'); } }) });
    await r.e.offer(desired('t1'));
    await r.e.settled();
    expect(r.e.record).toMatchObject({ state: 'failed', lastError: { code: 'TOO_MANY_RESTARTS' } });
  });

  it('a desired release arriving during a trial boot waits until the try is decided', async () => {
    const b = await board();
    let r = await b.bootAndStart();
    await r.e.offer(desired('t1'));
    await r.e.settled();
    b.crash.powerCut();
    let healthy!: () => void;
    const gate = new Promise<void>((res) => (healthy = res));
    const run = await b.m.boot({ A: true, B: true });
    expect(run.slot).toBe('B');
    const notices: EngineNotice[] = [];
    const e = new UpdateEngine({
      storage: b.crash,
      stateDir: b.m.paths.dataDir,
      bootctl: b.m.bootControl(),
      slots: fileSlots(b.m.paths.slotFile),
      trust: { root: trust.root, board: 'qemu-virt' },
      running: { version: '2.0.0', rollbackCounter: 2 },
      sourceFor: () => memorySource(v3.bytes),
      waitHealthy: async () => {
        await gate;
        return { ok: true, detail: 'ok' };
      },
      notify: (n) => notices.push(n),
      now: () => NOW.getTime(),
      sleep: async () => {},
    });
    const started = e.start();
    await new Promise((res) => setTimeout(res, 10));
    expect(e.record.state).toBe('verifying');
    expect(await e.offer(desired('t2', v3))).toBe('queued');
    healthy();
    await started;
    await e.settled();
    expect(e.record).toMatchObject({ state: 'rebooting', committed: { slot: 'B', version: '2.0.0' }, update: { txid: 't2', targetSlot: 'A' } });
    r = { e, notices, slot: 'B' };
    expect(dedupe(phases(r.notices))).toEqual(['verifying', 'success', 'accepted', 'downloading', 'installing', 'rebooting']);
  });

  it('a trial armed outside the agent (no saved update) that never gets healthy is marked bad and left', async () => {
    const b = await board();
    await b.m.boot({ A: true, B: true });
    await b.m.bootControl().armTry('B'); // as the QEMU bootcount test or an older agent would
    b.crash.powerCut();
    const r = await b.bootAndStart({ waitHealthy: async () => ({ ok: false, detail: 'no answer on :8080' }) });
    await r.e.settled();
    expect(r.slot).toBe('B');
    expect(r.notices.find((n) => n.kind === 'reboot')).toMatchObject({ rollback: true });
    expect(r.notices.some((n) => n.kind === 'ready')).toBe(false);
    b.crash.powerCut();
    expect((await b.m.boot({ A: true, B: true })).slot).toBe('A');
    expect((await b.m.bootControl().read()).bad).toContain('B');
  });

  it('a healthy trial armed outside the agent is kept: marked good and recorded as committed', async () => {
    const b = await board();
    await b.m.boot({ A: true, B: true });
    await b.m.bootControl().armTry('B');
    b.crash.powerCut();
    const r = await b.bootAndStart();
    await r.e.settled();
    expect(r.notices.filter((n) => n.kind === 'ready')).toEqual([{ kind: 'ready', slot: 'B', version: '1.0.0' }]);
    expect(r.e.record.committed.slot).toBe('B');
    expect(await b.m.bootControl().read()).toEqual({ primary: 'B', tryPending: null, bad: [] });
  });
});
