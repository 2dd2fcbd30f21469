/**
 * addFat32File against real implementations: after every change `fsck.fat -n` must be clean and `mcopy`
 * must read every file back byte for byte (missing tools FAIL with an install hint).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addFat32File, buildFat32, readFat32, type Fat32File } from '../../firmware/fs/fat32.js';
import { bytes, readTree } from '../fs/helpers.js';
import { fsckClean, run, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const MTIME = new Date('2025-01-02T03:04:06Z');
let tmp: { dir: string; cleanup: () => void };
beforeAll(() => {
  tmp = tempDir('fat-add');
});
afterAll(() => tmp.cleanup());

let n = 0;
/** fsck.fat clean + mcopy of the whole tree equals `expected` (path → content). */
function checkWithRealTools(vol: Buffer, expected: Map<string, Buffer>): void {
  const img = join(tmp.dir, `v${++n}.img`);
  writeFileSync(img, vol);
  fsckClean(img);
  const out = join(tmp.dir, `v${n}-out`);
  mkdirSync(out);
  const r = run('mcopy', ['-s', '-i', img, '::*', `${out}/`]);
  expect(r.status, r.stderr).toBe(0);
  const got = readTree(out);
  expect([...got.keys()].sort()).toEqual([...expected.keys()].sort());
  for (const [p, data] of expected) expect(got.get(p)!.equals(data), p).toBe(true);
}

function volume(files: Fat32File[], sizeMiB = 40): Buffer {
  return buildFat32({ sizeBytes: sizeMiB * MiB, volumeLabel: 'UZBOOT', volumeId: 0x1234abcd, mtime: MTIME, files, hiddenSectors: 8192 });
}

/** Length of the root directory's cluster chain, read straight from the FAT. */
function rootClusters(v: Buffer): number {
  const fat = v.readUInt16LE(14) * v.readUInt16LE(11);
  let n = 0;
  for (let c = v.readUInt32LE(44); c < 0x0ffffff8; c = v.readUInt32LE(fat + c * 4) & 0x0fffffff) n++;
  return n;
}

const asMap = (files: Fat32File[]) => new Map(files.map((f) => [f.path, Buffer.from(f.data)]));

describe('addFat32File', () => {
  it('adds a long-named file next to existing ones without touching them', () => {
    const files: Fat32File[] = [
      { path: 'README.txt', data: Buffer.from('hello\r\n') },
      { path: 'autoboot.txt', data: Buffer.from('[all]\ntryboot_a_b=1\nboot_partition=2\n') },
      { path: 'overlays/x.dtbo', data: bytes(1, 3000) },
    ];
    const vol = volume(files);
    const before = Buffer.from(vol);
    const data = Buffer.from('{"formatVersion":1}\n');
    const r = addFat32File(vol, 'uz-device.json', data, { mtime: MTIME });
    expect(r.replaced).toBe(false);
    expect(r.shortName).toBe('UZ-DEV~1JSO');
    const fat = readFat32(vol);
    expect(fat.readFile('uz-device.json').equals(data)).toBe(true);
    for (const f of files) expect(fat.readFile(f.path).equals(Buffer.from(f.data))).toBe(true);
    checkWithRealTools(vol, asMap([...files, { path: 'uz-device.json', data }]));
    // the boot sector is untouched (label, serial, hidden sectors)
    expect(vol.subarray(0, 512).equals(before.subarray(0, 512))).toBe(true);
  });

  it('replaces a file (case-insensitively), growing and shrinking, and wipes the old content', () => {
    const vol = volume([{ path: 'a.txt', data: Buffer.from('a') }]);
    const secretOld = Buffer.from(`{"psk":"old-secret-${'x'.repeat(5000)}"}`);
    addFat32File(vol, 'uz-device.json', secretOld);
    const bigger = bytes(9, 3 * 4096 + 17);
    expect(addFat32File(vol, 'UZ-DEVICE.JSON', bigger).replaced).toBe(true);
    expect(readFat32(vol).list().filter((e) => e.path.toLowerCase() === 'uz-device.json')).toHaveLength(1);
    const small = Buffer.from('{}');
    addFat32File(vol, 'uz-device.json', small);
    expect(vol.indexOf(Buffer.from('old-secret-'))).toBe(-1);
    checkWithRealTools(vol, asMap([{ path: 'a.txt', data: Buffer.from('a') }, { path: 'uz-device.json', data: small }]));
  });

  it('grows a full root directory by a cluster, and writes into existing subdirectories', () => {
    // label + 127 short names + "SUB" = 129 root entries; top the last 512-byte cluster up to exactly full
    const files: Fat32File[] = Array.from({ length: 127 }, (_, i) => ({ path: `F${String(i).padStart(3, '0')}.BIN`, data: bytes(i, 100 + i) }));
    files.push({ path: 'SUB/DIR/keep.txt', data: Buffer.from('keep') });
    const vol = volume(files.slice());
    const perCluster = readFat32(vol).clusterSize / 32;
    expect(perCluster).toBe(16);
    const rootEntries = 1 + 127 + 1;
    const freeInLast = (perCluster - (rootEntries % perCluster)) % perCluster;
    const fillers: Fat32File[] = Array.from({ length: freeInLast }, (_, i) => ({ path: `G${i}.DAT`, data: Buffer.from(String(i)) }));
    expect((rootEntries + fillers.length) % perCluster).toBe(0);
    for (const f of fillers) addFat32File(vol, f.path, f.data);
    const data = bytes(77, 2 * MiB + 3);
    const rootBefore = rootClusters(vol);
    addFat32File(vol, 'uz-device.json', data);
    expect(rootClusters(vol)).toBe(rootBefore + 1);
    addFat32File(vol, 'sub/dir/new file.json', Buffer.from('{"x":1}'));
    expect(() => addFat32File(vol, 'nope/x.json', Buffer.from('1'))).toThrow(/not found/);
    expect(() => addFat32File(vol, 'sub', Buffer.from('1'))).toThrow(/is a directory/);
    checkWithRealTools(
      vol,
      asMap([...files, ...fillers, { path: 'uz-device.json', data }, { path: 'SUB/DIR/new file.json', data: Buffer.from('{"x":1}') }]),
    );
  });

  it('reports a full volume with FAT_FULL', () => {
    const vol = volume([{ path: 'big.bin', data: Buffer.alloc(36 * MiB, 1) }]);
    expect(() => addFat32File(vol, 'more.bin', Buffer.alloc(4 * MiB, 2))).toThrow(expect.objectContaining({ code: 'FAT_FULL' }));
  });

  it('keeps fsck clean on a volume made by mkfs.fat with files copied in by mtools', () => {
    const img = join(tmp.dir, 'mkfs.img');
    writeFileSync(img, Buffer.alloc(40 * MiB));
    const mk = run('mkfs.fat', ['-F', '32', '-n', 'UZBOOT', '-i', '12345678', img]);
    expect(mk.status, mk.stderr).toBe(0);
    const local = join(tmp.dir, 'Some Long Name.txt');
    writeFileSync(local, 'from mtools');
    expect(run('mcopy', ['-i', img, local, '::']).status).toBe(0);
    const vol = readFileSync(img);
    const data = Buffer.from('{"formatVersion":1,"deviceName":"abc"}\n');
    addFat32File(vol, 'uz-device.json', data);
    checkWithRealTools(vol, new Map([['Some Long Name.txt', Buffer.from('from mtools')], ['uz-device.json', data]]));
  });
});
