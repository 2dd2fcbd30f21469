/**
 * The same bytes a board would flash, booted by the real boot chain of the reference board:
 * qemu-system-aarch64 (virt, Cortex-A72, TCG) -> Debian's U-Boot -> our boot.scr -> Debian's kernel ->
 * our initramfs -> the agent -> the workload's real health check -> UZ-READY.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { statSync, truncateSync } from 'node:fs';
import { ensureImage, copyImage, readPartition, writeAt } from '../helpers/images.js';
import { tool } from '../fs/helpers.js';
import { runQemu } from '../../firmware/qemu.js';
import { overwriteFat32File, readFat32 } from '../../firmware/fs/fat32.js';
import { formatBootEnv, parseBootEnv } from '../../firmware/boot/uboot-script.js';
import { inspectImage } from '../../firmware/inspect.js';

const BOOT_TIMEOUT_MS = 240_000;

async function setBootState(image: string, env: string): Promise<void> {
  const { buf, offset } = await readPartition(image, 1);
  overwriteFat32File(buf, 'uzboot.env', Buffer.from(env));
  await writeAt(image, offset, buf);
}

function uzLines(lines: string[]): string[] {
  return lines.filter((l) => l.startsWith('UZ-'));
}

describe('booting the qemu-virt image under real U-Boot', () => {
  let image = '';
  beforeAll(async () => {
    tool('qemu-system-aarch64');
    image = (await ensureImage('qemu-virt')).image;
  }, 600_000);

  it('boots slot A to UZ-READY, grows and formats the blank data partition, and marks A good', async () => {
    const img = await copyImage(image, 'bootA');
    // A bigger "card" than the image: the first boot extends the data partition to its end.
    truncateSync(img, statSync(img).size + 512 * 1024 * 1024);
    // An ordinary boot of the committed slot prints UZ-READY at the health check; the bootloader's attempt
    // is given back right after (updater/engine.ts readyDuty), and that line says when it is on the disk.
    const r = await runQemu({ image: img, until: /^UZ-AGENT slot A marked good/, timeoutMs: BOOT_TIMEOUT_MS });
    expect(r.ok, uzLines(r.lines).join('\n') + `\n(${r.reason})`).toBe(true);
    expect(uzLines(r.lines).filter((l) => l.startsWith('UZ-READY'))).toEqual(['UZ-READY slot=A version=1.0.0']);
    // The emulated board's flash holds U-Boot's environment with bootdelay=0 (firmware/qemu.ts): U-Boot
    // accepted its CRC and did not wait for a key.
    expect(r.lines.some((l) => l.includes('Loading Environment from Flash... OK')), r.lines.slice(0, 12).join('\n')).toBe(true);
    expect(r.lines.some((l) => /Hit any key to stop autoboot:\s+0\s*$/.test(l))).toBe(true);
    const uz = uzLines(r.lines);
    expect(uz).toContain('UZ-BOOT slot=A version=1.0.0 board=qemu-virt');
    // The agent came up from its V8 start-up snapshot (firmware/node-snapshot.ts), not the plain bundle.
    expect(uz.filter((l) => l.startsWith('UZ-AGENT start'))).toEqual(['UZ-AGENT start slot=A version=1.0.0 app=demo from=snapshot']);
    expect(uz.some((l) => l.startsWith('UZ-DATA grown'))).toBe(true);
    expect(uz.some((l) => l.startsWith('UZ-DATA formatting'))).toBe(true);
    expect(uz.some((l) => l.startsWith('UZ-DATA mounted'))).toBe(true);
    expect(uz.some((l) => l.startsWith('UZ-ERROR'))).toBe(false);
    expect(uz.some((l) => l.startsWith('UZ-WATCHDOG armed'))).toBe(true);
    // U-Boot charged one attempt before booting; the agent gave it back after the health check.
    expect(uz).toContain('UZ-UBOOT slot=A order=A B left_a=2 left_b=3');
    const after = await inspectImage(img);
    expect(after.bootControl).toMatchObject({ scheme: 'uboot-bootcount', state: { order: ['A', 'B'], left: { A: 3, B: 3 } } });
    expect(after.data.ext4).toBe(true);
    const p4 = after.partitions[3]!;
    expect(p4.startLba * 512 + p4.sizeBytes).toBe(after.sizeBytes); // data now ends at the end of the disk
  }, BOOT_TIMEOUT_MS + 30_000);

  it('boots slot B when the boot-control state selects it', async () => {
    const img = await copyImage(image, 'bootB');
    await setBootState(img, formatBootEnv({ order: ['B', 'A'], left: { A: 3, B: 3 } }));
    const r = await runQemu({ image: img, until: /^UZ-READY/, timeoutMs: BOOT_TIMEOUT_MS });
    expect(r.ok, uzLines(r.lines).join('\n')).toBe(true);
    expect(r.match).toBe('UZ-READY slot=B version=1.0.0');
    expect(uzLines(r.lines)).toContain('UZ-BOOT slot=B version=1.0.0 board=qemu-virt');
  }, BOOT_TIMEOUT_MS + 30_000);

  it('falls back to slot A when slot B cannot boot (corrupted kernel), by the bootcount', async () => {
    const img = await copyImage(image, 'fallback');
    await setBootState(img, formatBootEnv({ order: ['B', 'A'], left: { A: 3, B: 2 } }));
    const { buf, offset } = await readPartition(img, 3);
    const kernelSize = readFat32(buf).readFile('Image').length;
    overwriteFat32File(buf, 'Image', Buffer.alloc(kernelSize, 0xa5));
    await writeAt(img, offset, buf);

    // U-Boot already boots A from now on (B has no attempts left), so UZ-READY comes at the health check and
    // the agent rewrites the order to "A B" right after: wait for that line before reading the state.
    const r = await runQemu({ image: img, until: /^UZ-AGENT slot A marked good/, timeoutMs: BOOT_TIMEOUT_MS });
    const uz = uzLines(r.lines);
    expect(r.ok, uz.join('\n')).toBe(true);
    expect(uz.filter((l) => l.startsWith('UZ-UBOOT boot-failed slot=B')).length).toBe(2);
    expect(uz).toContain('UZ-UBOOT slot=A order=B A left_a=2 left_b=0');
    expect(uz.filter((l) => l.startsWith('UZ-READY'))).toEqual(['UZ-READY slot=A version=1.0.0']);
    const state = (await inspectImage(img)).bootControl;
    expect(state.scheme === 'uboot-bootcount' && state.state).toEqual({ order: ['A', 'B'], left: { A: 3, B: 0 } });
    expect(parseBootEnv('BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=0\n')).toEqual({ order: ['A', 'B'], left: { A: 3, B: 0 } });
  }, BOOT_TIMEOUT_MS + 30_000);
});
