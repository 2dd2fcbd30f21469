// One contract for every boot-control backend, driven through its simulated bootloader (pure rules of
// boot.scr / the Pi tryboot firmware). Backend-specific behaviour is tested at the bottom.
import { afterEach, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { getBoard } from '../../boards/index.js';
import { bootScriptText } from '../../firmware/boot/uboot-script.js';
import { autobootTxt } from '../../firmware/boot/tryboot.js';
import { RpiTrybootControl } from '../../updater/bootctl/rpi-tryboot.js';
import { parseUbootEnv, selectionOf, formatUbootEnv } from '../../updater/bootctl/uboot-env.js';
import { trybootStep, ubootStep } from '../../updater/bootctl/sim-bootloader.js';
import type { Slot } from '../../updater/bootctl/types.js';
import { CrashStorage } from '../../updater/sim/crash-storage.js';
import { SimMachine } from '../../updater/sim/machine.js';
import { provisionSim } from '../../updater/sim/provision.js';
import { BACKENDS, type BackendWorld } from './helpers.js';

const ALL_VALID = { A: true, B: true };

describe.each(BACKENDS)('boot-control contract: $name', ({ make }) => {
  let w: BackendWorld;
  afterEach(() => w?.cleanup());

  async function bootOk(valid = ALL_VALID): Promise<Slot> {
    const run = await w.machine.boot(valid);
    expect(run.slot).not.toBeNull();
    return run.slot!;
  }

  it('factory image boots A with nothing armed or bad', async () => {
    w = await make();
    expect(await bootOk()).toBe('A');
    const bc = w.machine.bootControl();
    expect(await bc.bootedSlot()).toBe('A');
    expect(await bc.read()).toEqual({ primary: 'A', tryPending: null, bad: [] });
  });

  it('markBad: the slot is reported bad and never boots, however often the good slot reboots', async () => {
    w = await make();
    await bootOk();
    const bc = w.machine.bootControl();
    await bc.markBad('B');
    expect((await bc.read()).bad).toContain('B');
    expect((await bc.read()).primary).toBe('A');
    for (let i = 0; i < 8; i++) {
      expect(await bootOk()).toBe('A');
      if (i % 2 === 0) await w.machine.bootControl().markGood('A');
    }
  });

  it('armTry: exactly the next boot starts the try slot; without markGood the one after returns to the primary', async () => {
    w = await make();
    await bootOk();
    let bc = w.machine.bootControl();
    await bc.markBad('B');
    await bc.armTry('B');
    expect((await bc.read()).tryPending).toBe('B');
    expect((await bc.read()).primary).toBe('A');
    await bc.reboot();
    expect(w.machine.rebootRequested).toBe(true);
    expect(await bootOk()).toBe('B');
    bc = w.machine.bootControl();
    expect(await bc.bootedSlot()).toBe('B');
    const during = await bc.read();
    expect(during.tryPending).toBeNull();
    expect(during.primary).toBe('A');
    expect(await bootOk()).toBe('A');
    expect((await w.machine.bootControl().read()).primary).toBe('A');
  });

  it('commit: markGood after a try makes the try slot the primary for every later boot', async () => {
    w = await make();
    await bootOk();
    let bc = w.machine.bootControl();
    await bc.armTry('B');
    await bc.reboot();
    expect(await bootOk()).toBe('B');
    bc = w.machine.bootControl();
    await bc.markGood('B');
    expect(await bc.read()).toEqual({ primary: 'B', tryPending: null, bad: [] });
    for (let i = 0; i < 5; i++) {
      expect(await bootOk()).toBe('B');
      await w.machine.bootControl().markGood('B');
    }
  });

  it('a try slot whose kernel does not boot falls back to the primary', async () => {
    w = await make();
    await bootOk();
    const bc = w.machine.bootControl();
    await bc.armTry('B');
    await bc.reboot();
    const run = await w.machine.boot({ A: true, B: false });
    expect(run.slot).toBe('A');
  });

  it('markBad of an armed slot cancels the try', async () => {
    w = await make();
    await bootOk();
    const bc = w.machine.bootControl();
    await bc.armTry('B');
    await bc.markBad('B');
    expect((await bc.read()).tryPending).toBeNull();
    await bc.reboot();
    expect(await bootOk()).toBe('A');
  });

  it('markGood of the running primary is idempotent and does not rewrite unchanged state', async () => {
    w = await make();
    await bootOk();
    const bc = w.machine.bootControl();
    await bc.markGood('A');
    const sel = await bc.read();
    const ops = w.crash?.ops;
    await bc.markGood('A');
    expect(await bc.read()).toEqual(sel);
    if (w.crash) expect(w.crash.ops).toBe(ops);
  });
});

describe('uboot-bootcount specifics (against the generated boot.scr)', () => {
  it('boot.scr imports and exports only BOOT_ORDER and the counters, so UZ_TRY means "armed, not yet tried"', () => {
    const script = bootScriptText(getBoard('qemu-virt'));
    const io = script.split('\n').filter((l) => /env (import|export)/.test(l));
    expect(io.length).toBeGreaterThanOrEqual(2);
    for (const l of io) expect(l).toMatch(/BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT$/);
    // decrement happens before the kernel is loaded
    expect(script.indexOf('setexpr BOOT_A_LEFT')).toBeLessThan(script.indexOf('fatwrite'));
    expect(script.lastIndexOf('fatwrite')).toBeLessThan(script.indexOf('booti'));
  });

  it('a counter of 1 after power cuts is not mistaken for an armed try', () => {
    const s = parseUbootEnv('BOOT_ORDER=A B\nBOOT_A_LEFT=1\nBOOT_B_LEFT=3\n');
    expect(selectionOf(s)).toEqual({ primary: 'A', tryPending: null, bad: [] });
  });

  it('the armed try survives a power cut before the reboot (the env is on disk)', async () => {
    const crash = new CrashStorage();
    const m = new SimMachine('uboot-bootcount', crash, '/m');
    await provisionSim(m, { A: Buffer.alloc(10), B: Buffer.alloc(10) });
    await m.boot(ALL_VALID);
    await m.bootControl().armTry('B');
    crash.powerCut();
    m.powerLoss();
    expect((await m.boot(ALL_VALID)).slot).toBe('B');
  });

  it('every attempt is charged before booting: a slot that keeps failing runs out and the other boots', () => {
    let env: string | null = formatUbootEnv({ order: ['B', 'A'], left: { A: 3, B: 3 }, tryArmed: null });
    const seen: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = ubootStep(env, { A: true, B: false });
      env = r.env;
      seen.push(r.step.kind === 'reset' ? 'reset' : `${r.step.kind}:${r.step.slot}`);
    }
    expect(seen).toEqual(['failed:B', 'failed:B', 'failed:B', 'booted:A']);
  });

  it('no attempts left anywhere: counters reset, order kept', () => {
    const r = ubootStep('BOOT_ORDER=B A\nBOOT_A_LEFT=0\nBOOT_B_LEFT=0\n', ALL_VALID);
    expect(r.step.kind).toBe('reset');
    expect(parseUbootEnv(r.env)).toMatchObject({ order: ['B', 'A'], left: { A: 3, B: 3 } });
  });

  it('a damaged env reads as the factory state (A first), as boot.scr defaults do', () => {
    expect(selectionOf(parseUbootEnv('\0garbage'))).toEqual({ primary: 'A', tryPending: null, bad: [] });
  });
});

describe('rpi-tryboot specifics', () => {
  async function world() {
    const crash = new CrashStorage();
    const m = new SimMachine('rpi-tryboot', crash, '/m');
    await provisionSim(m, { A: Buffer.alloc(10), B: Buffer.alloc(10) });
    await m.boot(ALL_VALID);
    return { crash, m };
  }

  it('bootedSlot reads the u32 BE partition from the device tree; bootedViaTry the tryboot flag', async () => {
    const { m } = await world();
    const bc = m.bootControl() as RpiTrybootControl;
    expect(await bc.bootedSlot()).toBe('A');
    expect(await bc.bootedViaTry()).toBe(false);
    await bc.armTry('B');
    await bc.reboot();
    await m.boot(ALL_VALID);
    expect(await bc.bootedSlot()).toBe('B');
    expect(await bc.bootedViaTry()).toBe(true);
  });

  it('reboot asks for "0 tryboot" only while a try is armed', async () => {
    const { m } = await world();
    const calls: boolean[] = [];
    const bc = new RpiTrybootControl({ dir: m.paths.bootDir, dtDir: m.paths.dtDir, storage: m.storage, reboot: async (t) => void calls.push(t) });
    await bc.reboot();
    await bc.armTry('B');
    await bc.reboot();
    expect(calls).toEqual([false, true]);
  });

  it('the one-shot flag is lost on a power cut: the primary boots and the try is still remembered (re-armable)', async () => {
    const { crash, m } = await world();
    const bc = m.bootControl();
    await bc.armTry('B');
    await bc.reboot();
    crash.powerCut();
    m.powerLoss();
    expect((await m.boot(ALL_VALID)).slot).toBe('A');
    expect((await m.bootControl().read()).tryPending).toBe('B');
  });

  it('commit rewrites autoboot.txt with the partitions swapped', async () => {
    const { m } = await world();
    const bc = m.bootControl();
    await bc.armTry('B');
    await bc.reboot();
    await m.boot(ALL_VALID);
    await m.bootControl().markGood('B');
    expect((await m.storage.readFile(join(m.paths.bootDir, 'autoboot.txt')))!.toString()).toBe(autobootTxt(3));
  });

  it('arming the primary is refused; a missing autoboot.txt never boots', async () => {
    const { m } = await world();
    await expect(m.bootControl().armTry('A')).rejects.toMatchObject({ code: 'BOOTCTL_TRY_PRIMARY' });
    expect(trybootStep(null, false, ALL_VALID).step.kind).toBe('failed');
  });
});
