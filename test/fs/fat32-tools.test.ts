/**
 * Checks our FAT32 writer against real implementations: dosfstools' fsck.fat and mtools (mdir/mcopy).
 * Missing tools make these tests FAIL with an install hint; they never skip.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  FAT32_MIN_SIZE_BYTES,
  buildFat32,
  fat32Layout,
  overwriteFat32File,
  readFat32,
  type Fat32File,
} from '../../firmware/fs/fat32.js';
import { bytes, pattern, fsckClean, fsckSummary, makeTempDir, readTree, run, writeImage } from './helpers.js';

const MiB = 1024 * 1024;
const MTIME = new Date('2024-03-15T12:34:56Z');

let tmp: { dir: string; cleanup: () => void };
beforeAll(() => {
  tmp = makeTempDir('fat32');
});
afterAll(() => tmp.cleanup());

function richTree(cs: number): Fat32File[] {
  const files: Fat32File[] = [
    { path: 'config.txt', data: Buffer.from('arm_64bit=1\nkernel=kernel8.img\n') },
    { path: 'CMDLINE.TXT', data: Buffer.from('console=serial0,115200\n') },
    { path: 'empty', data: Buffer.alloc(0) },
    { path: 'd1/d2/d3/d4/d5/deep.txt', data: Buffer.from('five deep') },
    { path: 'd1/d2/d3/d4/d5/d6/deeper.bin', data: bytes(1, 3 * cs + 7) },
    { path: 'long/' + 'a'.repeat(14) + '.txt', data: Buffer.from('14') },
    { path: 'long/' + 'n'.repeat(200) + '.data', data: Buffer.from('205') },
    { path: 'long/Ελληνικά αρχεία.txt', data: Buffer.from('el') },
    { path: 'long/日本語のファイル名.bin', data: bytes(2, 999) },
    { path: 'long/snow ☃ man ünïcødé.txt', data: Buffer.from('☃') },
    { path: 'long/.hidden', data: Buffer.from('h') },
    { path: 'long/archive.tar.gz', data: bytes(3, 1234) },
    { path: 'long/a+b=c;d,e[f].txt', data: Buffer.from('odd') },
    { path: 'case/Mixed.Case.Name.txt', data: Buffer.from('mixed') },
    { path: 'case/UPPER.TXT', data: Buffer.from('upper') },
    { path: 'case/lower.txt', data: Buffer.from('lower') },
    { path: 'prefix/LONGPR~1.TXT', data: Buffer.from('real 8.3') },
  ];
  for (let i = 0; i < 25; i++) files.push({ path: `prefix/longprefix_${i}.txt`, data: Buffer.from(`p${i}`) });
  for (let i = 0; i < 500; i++) files.push({ path: `many/file-${String(i).padStart(3, '0')}.dat`, data: bytes(1000 + i, (i * 53) % 700) });
  const sizes = [0, 1, cs - 1, cs, cs + 1, 2 * cs, 3 * MiB + 5];
  sizes.forEach((n, i) => files.push({ path: `sizes/s${i}-${n}.bin`, data: pattern(2000 + i, n) }));
  return files;
}

/** mcopy everything out of `img` (optionally `img@@offset`) and compare with `files`, byte for byte. */
function expectMcopyMatches(img: string, files: Fat32File[], name: string): void {
  const out = join(tmp.dir, `${name}-out`);
  mkdirSync(out);
  const r = run('mcopy', ['-s', '-i', img, '::*', out + '/']);
  expect(r.status, r.stderr).toBe(0);
  const got = readTree(out);
  expect([...got.keys()].sort()).toEqual(files.map((f) => f.path).sort());
  for (const f of files) expect(got.get(f.path)!.equals(Buffer.from(f.data)), f.path).toBe(true);
}

function dataClusters(files: Fat32File[], cs: number): number {
  return files.reduce((n, f) => n + Math.ceil(f.data.length / cs), 0);
}

describe('FAT32 images vs. fsck.fat and mtools', () => {
  it('a rich tree on a 4 KiB-cluster volume passes fsck.fat and reads back via mcopy', () => {
    const size = 300 * MiB;
    const l = fat32Layout(size);
    expect(l.clusterSize).toBe(4096);
    const files = richTree(l.clusterSize);
    const img = buildFat32({ sizeBytes: size, volumeLabel: 'UZBOOT', volumeId: 0xcafe1234, mtime: MTIME, files });
    const path = join(tmp.dir, 'rich.img');
    writeImage(path, img);

    const fsck = fsckClean(path);
    const s = fsckSummary(fsck.stdout);
    const entries = readFat32(img).list();
    expect(s.total).toBe(l.clusterCount);
    expect(s.files).toBe(entries.length + 1); // fsck counts the root too
    // many/ needs (2 + 500 * 2) * 32 bytes → 8 clusters; every other directory fits in one.
    const dirCount = entries.filter((e) => e.isDir).length + 1;
    expect(s.used).toBe(dataClusters(files, l.clusterSize) + dirCount + 7);
    expect(img.readUInt32LE(512 + 488)).toBe(l.clusterCount - s.used);

    const dir = run('mdir', ['-i', path, '-/', '::']);
    expect(dir.status, dir.stderr).toBe(0);
    expect(dir.stdout).toContain('Volume in drive : is UZBOOT');
    expect(dir.stdout).toContain('Volume Serial Number is CAFE-1234');
    expect(dir.stdout).toMatch(/CONFIG\s+TXT\s+31\s+2024-03-15\s+12:34\s+config\.txt/);
    expect(dir.stdout).toMatch(/LONGPR~1\s+TXT\s+8 /); // the real 8.3 file kept its name
    expect(dir.stdout).toMatch(/LONGPR~2\s+TXT\s+2 .*longprefix_0\.txt/);
    expect(dir.stdout).toContain('日本語のファイル名.bin');
    expect(dir.stdout).toContain('n'.repeat(200) + '.data');

    expectMcopyMatches(path, files, 'rich');

    // Single-file mcopy by long name and by (case-insensitive) short alias.
    const one = join(tmp.dir, 'one.bin');
    expect(run('mcopy', ['-i', path, '::sizes/s6-3145733.bin', one]).status).toBe(0);
    expect(readFileSync(one).equals(Buffer.from(files.find((f) => f.path === 'sizes/s6-3145733.bin')!.data))).toBe(true);
    const cfg = join(tmp.dir, 'cfg.txt');
    expect(run('mcopy', ['-i', path, '::/CONFIG.TXT', cfg]).status).toBe(0);
    expect(readFileSync(cfg, 'utf8')).toBe('arm_64bit=1\nkernel=kernel8.img\n');
  });

  it.each([
    ['minimum size, 512 B clusters', FAT32_MIN_SIZE_BYTES, 512],
    ['100 MiB, 1 KiB clusters', 100 * MiB, 1024],
    ['200 MiB, 2 KiB clusters', 200 * MiB, 2048],
  ])('%s passes fsck.fat and mcopy', (name, size, cs) => {
    expect(fat32Layout(size).clusterSize).toBe(cs);
    const files: Fat32File[] = [
      { path: 'config.txt', data: Buffer.from('x=1\n') },
      { path: 'boundary/a', data: bytes(1, cs - 1) },
      { path: 'boundary/b', data: bytes(2, cs) },
      { path: 'boundary/c', data: bytes(3, cs + 1) },
      { path: 'boundary/empty', data: Buffer.alloc(0) },
      { path: 'overlays/some-very-long-overlay-name.dtbo', data: bytes(4, 5000) },
    ];
    const img = buildFat32({ sizeBytes: size, volumeLabel: 'B', volumeId: 7, mtime: MTIME, files, hiddenSectors: 8192 });
    const path = join(tmp.dir, `${cs}.img`);
    writeImage(path, img);
    fsckClean(path);
    expectMcopyMatches(path, files, `small-${cs}`);
  });

  it('a completely full volume passes fsck.fat (free count 0)', () => {
    const size = FAT32_MIN_SIZE_BYTES;
    const l = fat32Layout(size);
    const files = [
      { path: 'a.bin', data: pattern(5, 1000 * l.clusterSize) },
      { path: 'fill.bin', data: pattern(6, (l.clusterCount - 1 - 1000) * l.clusterSize) },
    ];
    const img = buildFat32({ sizeBytes: size, volumeLabel: 'FULL', volumeId: 1, mtime: MTIME, files });
    const path = join(tmp.dir, 'full.img');
    writeImage(path, img);
    const s = fsckSummary(fsckClean(path).stdout);
    expect(s.used).toBe(s.total);
    const dir = run('mdir', ['-i', path, '::']);
    expect(dir.status, dir.stderr).toBe(0);
    expect(dir.stdout).toMatch(/\b0 bytes free/);
  });

  it('the fsck harness is not vacuous: a wrong FSInfo free count is reported', () => {
    const img = buildFat32({ sizeBytes: 40 * MiB, volumeLabel: 'X', volumeId: 3, mtime: MTIME, files: [] });
    img.writeUInt32LE(5, 512 + 488);
    const path = join(tmp.dir, 'bad.img');
    writeImage(path, img);
    expect(() => fsckClean(path)).toThrow(/Free cluster summary wrong/);
  });

  it('in-place overwrite keeps the volume consistent for fsck.fat and mcopy', () => {
    const files: Fat32File[] = [
      { path: 'uz/boot-state.json', data: bytes(7, 4 * 512) },
      { path: 'uz/other.txt', data: Buffer.from('other') },
    ];
    const img = buildFat32({ sizeBytes: 40 * MiB, volumeLabel: 'STATE', volumeId: 2, mtime: MTIME, files });
    const next = Buffer.from('{"active":"b","tries":3}\n');
    overwriteFat32File(img, 'uz/boot-state.json', next, { mtime: new Date('2025-06-01T10:00:00Z') });
    const path = join(tmp.dir, 'overwrite.img');
    writeImage(path, img);
    const s = fsckSummary(fsckClean(path).stdout);
    expect(s.used).toBe(1 + 1 + 1 + 1); // root, uz/, boot-state.json (1 cluster now), other.txt
    expectMcopyMatches(path, [{ path: 'uz/boot-state.json', data: next }, files[1]!], 'overwrite');
    const dir = run('mdir', ['-i', path, '::uz']);
    expect(dir.stdout).toMatch(/BOOT-S~1\s+JSO\s+25\s+2025-06-01\s+10:00\s+boot-state\.json/);
  });
});
