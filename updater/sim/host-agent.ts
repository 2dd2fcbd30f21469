/**
 * `uz agent --sim`: the same agent (MQTT loop + engine + install pipeline) on a host, with slots as files and
 * the boot partition as a folder (U-Boot env format, or autoboot.txt for --scheme rpi-tryboot). A "reboot" runs
 * the simulated bootloader on that folder and starts a fresh engine, exactly as a device restarts.
 */
import { existsSync } from 'node:fs';
import { mkdir, open } from 'node:fs/promises';
import { loadTrustedRoot } from '../../firmware/trust/io.js';
import { MqttAgent } from '../agent.js';
import type { AgentConfig } from '../config.js';
import { UpdateEngine, type EngineNotice, type HealthVerdict } from '../engine.js';
import { nodeStorage } from '../io/storage.js';
import { fileSlots } from '../install/slots.js';
import { StateStore } from '../state/store.js';
import type { Slot } from '../bootctl/types.js';
import { SimMachine, type SimScheme } from './machine.js';
import { factoryBootFiles } from './machine.js';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface SimAgentOptions {
  slotsDir: string;
  config: AgentConfig;
  scheme: SimScheme;
  board: string;
  /** Version the factory image in both slots runs. */
  factoryVersion: string;
  slotBytes: number;
  /** Health verdict for a version (default: healthy). */
  health?: (version: string) => HealthVerdict;
  log: (line: string) => void;
  signal: AbortSignal;
  /** Stop after this many boots (tests). */
  maxBoots?: number;
}

/** Creates the simulated board the first time: factory boot files and two zero-filled slot files. */
export async function provisionHostSim(m: SimMachine, slotBytes: number): Promise<void> {
  if (existsSync(m.paths.bootDir)) return;
  await mkdir(m.paths.bootDir, { recursive: true });
  for (const [name, text] of Object.entries(factoryBootFiles(m.scheme))) await writeFile(join(m.paths.bootDir, name), text);
  for (const s of ['A', 'B'] as Slot[]) {
    const fh = await open(m.paths.slotFile(s), 'w');
    await fh.truncate(slotBytes);
    await fh.close();
  }
  for (const d of [m.paths.dtDir, join(m.paths.root, 'run'), m.paths.dataDir]) await mkdir(d, { recursive: true });
}

/** What the booted slot runs, as far as the saved state knows (a host has no image.json per slot). */
async function runningVersion(m: SimMachine, stateDir: string, slot: Slot, factory: string): Promise<{ version: string; rollbackCounter: number }> {
  const rec = await new StateStore(nodeStorage, stateDir).load();
  if (rec?.update && rec.update.targetSlot === slot) return { version: rec.update.release.version, rollbackCounter: rec.update.release.rollbackCounter };
  if (rec && rec.committed.slot === slot) return { version: rec.committed.version, rollbackCounter: rec.committed.rollbackCounter };
  if (rec?.update && rec.update.fromSlot === slot) return { version: rec.committed.version, rollbackCounter: rec.committed.rollbackCounter };
  return { version: factory, rollbackCounter: 0 };
}

export async function runSimAgent(o: SimAgentOptions): Promise<{ boots: number }> {
  const m = new SimMachine(o.scheme, nodeStorage, o.slotsDir);
  await provisionHostSim(m, o.slotBytes);
  const root = await loadTrustedRoot(o.config.trustRoot);
  const stateDir = join(m.paths.dataDir, 'uz');
  let boots = 0;
  while (!o.signal.aborted && boots < (o.maxBoots ?? Number.POSITIVE_INFINITY)) {
    boots++;
    const run = await m.boot({ A: true, B: true });
    if (!run.slot) throw new Error('simulated bootloader found no slot to boot');
    const running = await runningVersion(m, stateDir, run.slot, o.factoryVersion);
    o.log(`UZ-BOOT slot=${run.slot} version=${running.version} scheme=${o.scheme}`);
    let engine!: UpdateEngine;
    const verdict = o.health?.(running.version) ?? { ok: true, detail: 'sim: healthy' };
    const agent = new MqttAgent({
      config: o.config,
      log: o.log,
      statusExtra: async () => ({
        board: o.board,
        version: running.version,
        workload: { name: 'sim', version: running.version, healthy: verdict.ok, detail: verdict.detail, restarts: 0 },
        bootControl: await m.bootControl().read(),
      }),
    });
    let rebooted!: () => void;
    const rebootRequested = new Promise<void>((r) => (rebooted = r));
    const notify = (n: EngineNotice) => {
      agent.notify(n);
      if (n.kind === 'log') o.log(`UZ-AGENT ${n.line}`);
      if (n.kind === 'phase') o.log(`UZ-UPDATE txid=${n.event.txid} phase=${n.event.phase} version=${n.event.version}${n.event.progress ? ` bytes=${n.event.progress.bytes}/${n.event.progress.total}` : ''}${n.event.error ? ` code=${n.event.error.code}` : ''}`);
      if (n.kind === 'ready') o.log(`UZ-READY slot=${n.slot} version=${n.version}`);
      if (n.kind === 'reboot') {
        o.log(`UZ-REBOOT ${n.reason}`);
        rebooted();
      }
    };
    engine = new UpdateEngine({
      storage: nodeStorage,
      stateDir,
      bootctl: m.bootControl(),
      slots: fileSlots(m.paths.slotFile),
      trust: { root, board: o.board },
      running,
      sourceFor: (r) => agent.sourceFor(r),
      waitHealthy: async () => verdict,
      notify,
    });
    agent.start();
    agent.attach(engine);
    await engine.start();
    await new Promise<void>((resolve) => {
      const done = () => resolve();
      if (o.signal.aborted) return done();
      void rebootRequested.then(done);
      o.signal.addEventListener('abort', done, { once: true });
    });
    await engine.settled().catch(() => {});
    engine.shutdown();
    await agent.stop();
  }
  return { boots };
}
