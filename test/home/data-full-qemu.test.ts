// ONE boot of the emulated board whose data partition is already nearly full (a node that filled its card):
// the agent must not start the workload on it — a database that hits ENOSPC is how SD-card nodes get corrupted
// (docs/operations.md) — but keep running, say why on the console, and never print UZ-READY.
// The guard's decisions (reserve, quota, hysteresis, restart once space is back) are unit-tested in
// test/updater/data-guard.test.ts and early-start.test.ts; this checks them on the real board and kernel.
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { requireQemu } from '../../firmware/qemu.js';
import { parseMbr, SECTOR_SIZE } from '../../firmware/fs/mbr.js';
import { copyImage, ensureImage, runDir } from '../helpers/images.js';
import { QemuSession } from '../helpers/qemu-session.js';

const BOOT_MS = 5 * 60_000;
const DEMO_RESERVE = 16 * 1024 * 1024; // firmware/apps/demo minFreeBytes

function tool(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) throw new Error(`${cmd} not found: install it with "apt-get install e2fsprogs" (Debian/Ubuntu)`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Formats p4 the way the device does (rcS), but already holding a file that leaves `leaveFree` bytes. */
async function fillDataPartition(disk: string, leaveFree: number): Promise<void> {
  const fh = await open(disk, 'r');
  const mbr = Buffer.alloc(SECTOR_SIZE);
  await fh.read(mbr, 0, SECTOR_SIZE, 0);
  await fh.close();
  const p4 = parseMbr(mbr).partitions.find((p) => p.index === 4)!;
  const offset = p4.startLba * SECTOR_SIZE;
  const sizeK = `${(p4.sizeLba * SECTOR_SIZE) / 1024}k`;
  const mkfs = (dir?: string) =>
    tool('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'uzdata', '-E', `offset=${offset},lazy_itable_init=1,lazy_journal_init=1`, ...(dir ? ['-d', dir] : []), disk, sizeK]);
  mkfs();
  const header = tool('dumpe2fs', ['-h', `${disk}?offset=${offset}`]).split('\n');
  const field = (name: string) => Number(header.find((l) => l.startsWith(`${name}:`))!.split(':')[1]!.trim());
  const available = (field('Free blocks') - field('Reserved block count')) * field('Block size');
  const dir = join(runDir(), `datafull-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  // Not sparse: mke2fs -d must allocate every block. (Indirect/extent blocks take a little more.)
  writeFileSync(join(dir, 'filler'), Buffer.alloc(available - leaveFree, 0x55));
  mkfs(dir);
}

describe('emulated board: data partition already full', () => {
  let board: QemuSession | undefined;
  afterAll(async () => {
    await board?.stop();
  });

  it('holds the workload back with DATA_FULL, keeps the agent running, and is never READY', async () => {
    requireQemu(); // fails with the apt-get hint when QEMU is missing
    const { image } = await ensureImage('qemu-virt');
    const disk = await copyImage(image, 'home-datafull');
    await fillDataPartition(disk, 8 * 1024 * 1024);

    board = new QemuSession(disk, []);
    const mounted = await board.waitFor(/^UZ-DATA mounted /, BOOT_MS);
    const free = Number(/free_kib=(\d+)/.exec(mounted)![1]) * 1024;
    expect(free).toBeLessThan(DEMO_RESERVE);
    await board.waitFor(/^UZ-ERROR code=DATA_FULL detail=".* bytes free on the data partition, 16777216 kept in reserve" workload-held$/, BOOT_MS);
    // The rest of the agent loads and runs its recovery; give the workload every chance to (wrongly) appear.
    await board.waitFor(/^UZ-AGENT recovery: /, BOOT_MS);
    await new Promise((r) => setTimeout(r, 15_000));
    expect(board.lines.filter((l) => l.startsWith('[demo] '))).toEqual([]);
    expect(board.uzLines().filter((l) => /^UZ-(READY|WORKLOAD)/.test(l) || l.startsWith('UZ-ERROR code=AGENT_CRASH'))).toEqual([]);
    expect(board.uzLines().filter((l) => l.startsWith('UZ-AGENT start')).length).toBe(1);
  }, BOOT_MS + 120_000);
});
