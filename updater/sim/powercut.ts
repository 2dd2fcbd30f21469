/**
 * The power-cut harness: the whole install → reboot → verify → commit flow runs in-process on a SimMachine
 * over CrashStorage. Power is cut at random mutating operations (every write not fsynced is dropped; in half
 * the trials a random subset of dirty pages lands anyway, as a write-back cache may do), the simulated
 * bootloader "boots" from what survived, and a fresh agent starts. After every cut and every boot we check:
 *
 *   1. the bootloader never chooses a slot whose content does not verify against a signed manifest, and a
 *      valid slot comes up ("unbootable" otherwise);
 *   2. the committed record names a slot whose content is the committed version's signed payload;
 *   3. the update completes (the new version committed and booted) after the restarts.
 *
 * Seeded: the same seed replays the same cuts. Used by test/updater/powercut.test.ts and bench/powercut.ts.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { UzError } from '../../lib/errors.js';
import type { Desired } from '../../lib/protocol.js';
import type { Manifest } from '../../firmware/bundle/manifest.js';
import type { Slot } from '../bootctl/types.js';
import { UpdateEngine } from '../engine.js';
import { fileSlots } from '../install/slots.js';
import { memorySource } from '../install/source.js';
import { STATE_FILE, StateRecordSchema } from '../state/store.js';
import { CrashStorage, isPowerCut } from './crash-storage.js';
import { SimMachine, type SimScheme } from './machine.js';
import { provisionSim } from './provision.js';
import { simBundle, simSlotImage, simTrust, type SimBundle, type SimTrust } from './releases.js';

export interface PowerCutOptions {
  trials: number;
  seed?: number;
  schemes?: SimScheme[];
  /** Cuts per trial, 1..maxCuts (more than the trial-boot cap could legitimately end in rollback). */
  maxCuts?: number;
  /** Probability that a piece of the download fails (dropped connection) to exercise resume. */
  netFaultRate?: number;
  log?: (line: string) => void;
  /** Every engine notice, for debugging one seed. */
  trace?: (line: string) => void;
}

export interface TrialResult {
  seed: number;
  scheme: SimScheme;
  cuts: number;
  boots: number;
  completed: boolean;
  unbootable: boolean;
  violations: string[];
  finalState: string;
}

export interface PowerCutSummary {
  trials: number;
  unbootable: number;
  completed: number;
  cuts: number;
  violations: string[];
  results: TrialResult[];
}

const NOW = Date.parse('2031-06-01T00:00:00Z');
const SLOT_BYTES = 64 * 1024;

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Fixture {
  trust: SimTrust;
  v1: SimBundle;
  v2: SimBundle;
  manifests: Manifest[];
}

function fixture(): Fixture {
  const trust = simTrust(new Date(NOW));
  // Payload sizes that are not a multiple of the chunk size; syncs every 2 chunks give many resume points.
  const v1 = simBundle({ payload: simSlotImage('1.0.0', 40 * 1024 + 123), version: '1.0.0', rollbackCounter: 1, keys: [trust.releaseKey], now: new Date(NOW) });
  const v2 = simBundle({ payload: simSlotImage('2.0.0', 52 * 1024 + 77), version: '2.0.0', rollbackCounter: 2, keys: [trust.releaseKey], now: new Date(NOW) });
  return { trust, v1, v2, manifests: [v1.manifest, v2.manifest] };
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** The signed manifest whose payload the slot holds, or null (junk, half-written). */
export function contentManifest(slot: Buffer | null, manifests: Manifest[]): Manifest | null {
  if (!slot) return null;
  return manifests.find((m) => m.payload.size <= slot.length && sha(slot.subarray(0, m.payload.size)) === m.payload.sha256) ?? null;
}

function padded(b: Buffer): Buffer {
  const out = Buffer.alloc(SLOT_BYTES);
  b.copy(out);
  return out;
}

/** One trial: returns what happened. `cutPoints` are global mutating-operation indexes (sorted). */
async function runTrial(f: Fixture, scheme: SimScheme, seed: number, cutPoints: number[], o: PowerCutOptions): Promise<TrialResult & { ops: number }> {
  const random = mulberry32(seed);
  const crash = new CrashStorage(random, seed % 2 === 1 ? 0.5 : 0);
  const m = new SimMachine(scheme, crash, '/m');
  await provisionSim(m, { A: padded(f.v1.slotContent), B: padded(f.v1.slotContent) });
  const release = f.v2.release('http://sim.invalid/v2.uzb');
  const desired: Desired = { v: 1, txid: `tx-${seed}`, deploymentId: 'dep-1', issuedAt: NOW, release };
  const violations: string[] = [];
  const cuts = [...cutPoints];
  let cutsDone = 0;
  let boots = 0;
  let unbootable = false;
  let completed = false;
  let finalState = 'none';
  const validity = (): Record<Slot, boolean> => ({
    A: contentManifest(crash.peek(m.paths.slotFile('A')), f.manifests) !== null,
    B: contentManifest(crash.peek(m.paths.slotFile('B')), f.manifests) !== null,
  });
  const checkCommitted = (when: string) => {
    const raw = crash.peek(join(m.paths.dataDir, STATE_FILE));
    if (!raw) return;
    const r = StateRecordSchema.safeParse(JSON.parse(raw.toString('utf8')));
    if (!r.success) return violations.push(`${when}: state record unreadable`);
    const man = contentManifest(crash.peek(m.paths.slotFile(r.data.committed.slot)), f.manifests);
    if (!man || man.version !== r.data.committed.version) violations.push(`${when}: committed slot ${r.data.committed.slot} does not hold ${r.data.committed.version}`);
    return undefined;
  };
  const netRandom = mulberry32(seed ^ 0x5eed);

  while (boots < 40) {
    boots++;
    crash.disarm();
    const run = await m.boot(validity());
    if (!run.slot || !run.neverChoseInvalid) {
      unbootable = true;
      violations.push(`boot ${boots}: bootloader chose a slot without valid content (${JSON.stringify(run.steps)})`);
      break;
    }
    const bootedContent = contentManifest(crash.peek(m.paths.slotFile(run.slot)), f.manifests)!;
    while (cuts.length && cuts[0]! <= crash.ops) cuts.shift();
    if (cuts.length) crash.armCut(cuts[0]! - crash.ops);
    const engine = new UpdateEngine({
      storage: crash,
      stateDir: m.paths.dataDir,
      bootctl: m.bootControl(),
      slots: fileSlots(m.paths.slotFile),
      trust: { root: f.trust.root, board: 'qemu-virt' },
      running: { version: bootedContent.version, rollbackCounter: bootedContent.rollbackCounter },
      sourceFor: () =>
        memorySource(f.v2.bytes, {
          piece: 5000,
          beforePiece: () => {
            if (netRandom() < (o.netFaultRate ?? 0.03)) throw new UzError('TRUNCATED', 'simulated dropped connection', {});
          },
        }),
      waitHealthy: async () => ({ ok: true, detail: 'sim' }),
      now: () => NOW,
      random,
      sleep: async () => {},
      syncEveryBytes: 8192,
      ...(o.trace ? { notify: (n) => o.trace!(`boot ${boots} slot ${run.slot}: ${n.kind === 'log' ? n.line : n.kind === 'state' ? `state ${n.record.state}` : n.kind === 'phase' ? `phase ${n.event.phase}${n.event.error ? ` ${n.event.error.code}` : ''}` : n.kind}`) } : {}),
    });
    let crashed = false;
    try {
      await engine.start();
      await engine.offer(desired);
      await engine.settled();
    } catch (e) {
      if (!isPowerCut(e)) throw e;
    }
    if (crash.dead) crashed = true;
    engine.shutdown();
    if (crashed) {
      cutsDone++;
      crash.powerCut();
      m.powerLoss();
      checkCommitted(`after cut ${cutsDone}`);
      continue;
    }
    checkCommitted(`boot ${boots}`);
    finalState = engine.record.state;
    if (engine.rebooting || m.rebootRequested) {
      // `reboot` syncs; dropping the page cache anyway is the stricter model. The Pi's tryboot flag survives
      // a reboot (it is what the reboot carries), so no powerLoss() here.
      crash.powerCut();
      continue;
    }
    const rec = engine.record;
    if (rec.state === 'idle' && rec.committed.version === '2.0.0' && bootedContent.version === '2.0.0' && rec.committed.slot === run.slot) {
      // One more cold boot must come back to the same committed slot.
      crash.powerCut();
      m.powerLoss();
      const again = await m.boot(validity());
      if (again.slot !== rec.committed.slot) violations.push(`after commit the board booted ${again.slot}, committed is ${rec.committed.slot}`);
      else completed = true;
      break;
    }
    if (rec.state !== 'idle') break; // failed / rolled-back: reported, not completed
  }
  if (!completed) o.log?.(`trial seed=${seed} scheme=${scheme} not completed: state=${finalState} boots=${boots} cuts=${cutsDone} ${violations.join('; ')}`);
  return { seed, scheme, cuts: cutsDone, boots, completed, unbootable, violations, finalState, ops: crash.ops };
}

export async function runPowerCutTrials(o: PowerCutOptions): Promise<PowerCutSummary> {
  const f = fixture();
  const schemes = o.schemes ?? ['uboot-bootcount', 'rpi-tryboot'];
  const base = o.seed ?? 1;
  // Calibrate: how many mutating operations does an uninterrupted update take on each scheme?
  const total = new Map<SimScheme, number>();
  for (const s of schemes) {
    const r = await runTrial(f, s, base, [], { ...o, netFaultRate: 0 });
    if (!r.completed) throw new Error(`uninterrupted update did not complete on ${s}: ${r.violations.join('; ')} (state ${r.finalState})`);
    total.set(s, r.ops);
  }
  const results: TrialResult[] = [];
  for (let t = 0; t < o.trials; t++) {
    const seed = base * 1_000_003 + t;
    const scheme = schemes[t % schemes.length]!;
    const r = mulberry32(seed ^ 0xc0ffee);
    const n = 1 + Math.floor(r() * (o.maxCuts ?? 3));
    const span = Math.ceil(total.get(scheme)! * 1.2);
    const points = Array.from({ length: n }, () => 1 + Math.floor(r() * span)).sort((a, b) => a - b);
    const { ops: _ops, ...res } = await runTrial(f, scheme, seed, points, o);
    void _ops;
    results.push(res);
  }
  return {
    trials: results.length,
    unbootable: results.filter((r) => r.unbootable).length,
    completed: results.filter((r) => r.completed).length,
    cuts: results.reduce((n, r) => n + r.cuts, 0),
    violations: results.flatMap((r) => r.violations.map((v) => `seed ${r.seed} (${r.scheme}): ${v}`)),
    results,
  };
}
