/** Shared helpers for the CA and provisioning tests: a small synthetic image, the CLI harness, real tools. */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getBoard } from '../../boards/index.js';
import { bootPartitionFiles, buildSlotVolume, writeDiskImage, type DiskLayout } from '../../firmware/image.js';
import { SECTOR_SIZE, parseMbr } from '../../firmware/fs/mbr.js';
import { bytes, pattern } from '../fs/helpers.js';

const TOOL_PACKAGES: Record<string, string> = { openssl: 'openssl', 'fsck.fat': 'dosfstools', 'mkfs.fat': 'dosfstools', mcopy: 'mtools', mdir: 'mtools' };

/** Absolute path of a host tool; throws (the test FAILS, never skips) with an install hint when missing. */
export function tool(name: string): string {
  for (const d of [...(process.env['PATH'] ?? '').split(':'), '/usr/local/sbin', '/usr/sbin', '/sbin']) {
    if (d && existsSync(join(d, name))) return join(d, name);
  }
  throw new Error(`${name} not found: install it with apt-get install ${TOOL_PACKAGES[name] ?? name}`);
}

export function run(name: string, args: string[], input?: string | Buffer): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(tool(name), args, { encoding: 'utf8', input, env: { ...process.env, LC_ALL: 'C.UTF-8', LANG: 'C.UTF-8' }, maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `fsck.fat -n -v` must exit 0 and propose no repair. */
export function fsckClean(img: string): string {
  const r = run('fsck.fat', ['-n', '-v', img]);
  const all = r.stdout + r.stderr;
  const problems = /dirty bit|differences between boot sector|wrong|invalid|truncat|auto-correct|bad |warning|error|not in/i;
  if (r.status !== 0 || problems.test(all.replace(/Checking/g, ''))) throw new Error(`fsck.fat -n -v ${img} is not clean (exit ${r.status}):\n${all}`);
  return all;
}


export const TEST_EPOCH = 1764000000;
const MiB = 1024 * 1024;

export function tempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `uz-${prefix}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * A real unikernel-z disk image made with the builder's own writer (firmware/image.ts), minus the Debian
 * payload: p1 is the board's real boot-control partition (UZBOOT), p2/p3 hold a small slot with a real
 * uz-release.json, p4 is blank. Partitions are shrunk (64/40/40/8 MiB) to keep tests fast. Recognisable
 * bytes are put into p4 and into the gap before p1, so a stray write anywhere shows.
 */
export async function makeTestImage(path: string, o: { board?: string; version?: string } = {}): Promise<DiskLayout> {
  const base = getBoard(o.board ?? 'rpi4');
  const board = { ...base, partitions: { bootMiB: 64, slotMiB: 40, dataMiB: 8 } };
  const version = o.version ?? '1.2.3';
  const identity = `${board.id}-${version}-test`;
  const release = { formatVersion: 1, board: board.id, version, app: { name: 'demo', version: '1.0.0' }, kernel: '6.12.0-test', buildEpoch: TEST_EPOCH, debug: false };
  const slotFiles = [
    { path: board.kernel.fileName, data: pattern(7, 3 * MiB + 11) },
    { path: 'uz-release.json', data: Buffer.from(`${JSON.stringify(release, null, 2)}\n`) },
  ];
  const slot = buildSlotVolume(board, slotFiles, TEST_EPOCH, identity);
  const bootFiles = bootPartitionFiles({
    board,
    buildEpoch: TEST_EPOCH,
    firmware: new Map(board.boot.kind === 'rpi-firmware-uboot' ? board.boot.firmwareFiles.map((f) => [f, bytes(3, 1000)] as const) : []),
    dtbs: new Map(),
    ubootBinary: bytes(4, 5000),
  });
  const layout = await writeDiskImage({ board, bootFiles, slotFiles, buildEpoch: TEST_EPOCH, identity }, slot, path);
  const fh = await open(path, 'r+');
  try {
    const p4 = layout.partitions[3]!;
    await fh.write(bytes(11, MiB), 0, MiB, p4.startLba * SECTOR_SIZE);
    await fh.write(bytes(12, 4096), 0, 4096, 1 * MiB);
  } finally {
    await fh.close();
  }
  return layout;
}

export async function partitionInfo(image: string, index: number): Promise<{ offset: number; size: number }> {
  const fh = await open(image, 'r');
  try {
    const mbr = Buffer.alloc(SECTOR_SIZE);
    await fh.read(mbr, 0, SECTOR_SIZE, 0);
    const p = parseMbr(mbr).partitions.find((x) => x.index === index)!;
    return { offset: p.startLba * SECTOR_SIZE, size: p.sizeLba * SECTOR_SIZE };
  } finally {
    await fh.close();
  }
}

export async function readRange(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(length);
    await fh.read(b, 0, length, offset);
    return b;
  } finally {
    await fh.close();
  }
}

/** SHA-256 of a file with the byte range [skipFrom, skipTo) left out. */
export async function hashExcept(path: string, skipFrom: number, skipTo: number): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const h = createHash('sha256');
    const { size } = await fh.stat();
    const buf = Buffer.alloc(4 * MiB);
    for (const [a, b] of [[0, skipFrom], [skipTo, size]] as const) {
      for (let pos = a; pos < b; ) {
        const n = Math.min(buf.length, b - pos);
        await fh.read(buf, 0, n, pos);
        h.update(buf.subarray(0, n));
        pos += n;
      }
    }
    return h.digest('hex');
  } finally {
    await fh.close();
  }
}

// The real CLI, the one users run (bin/uz.js registers tsx itself).
const uzBin = fileURLToPath(new URL('../../bin/uz.js', import.meta.url));

/** Runs the real `uz` CLI (bin/uz.js) with <args> in `cwd`. */
export function uz(cwd: string, ...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, [uzBin, ...args], { cwd, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}
