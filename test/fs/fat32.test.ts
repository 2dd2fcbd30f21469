import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isUzError } from '../../lib/errors.js';
import {
  FAT32_MIN_SIZE_BYTES,
  buildFat32,
  fat32Layout,
  addFat32File,
  overwriteFat32File,
  readFat32,
  type Fat32File,
  type Fat32Options,
} from '../../firmware/fs/fat32.js';
import { bytes, pattern } from './helpers.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const MTIME = new Date('2024-03-15T12:34:56.780Z');

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    if (isUzError(e)) return e.code;
    throw e;
  }
  return undefined;
}

function errOf(fn: () => unknown): { code: string; context: Record<string, unknown> } {
  try {
    fn();
  } catch (e) {
    if (isUzError(e)) return { code: e.code, context: e.context };
    throw e;
  }
  throw new Error('expected an error');
}

function build(files: Fat32File[], extra: Partial<Fat32Options> = {}): Buffer {
  return buildFat32({ sizeBytes: 40 * MiB, volumeLabel: 'UZBOOT', volumeId: 0x1234abcd, mtime: MTIME, files, ...extra });
}

function expectRoundTrip(img: Buffer, files: Fat32File[]): void {
  const r = readFat32(img);
  const listed = r.list();
  const listedFiles = new Map(listed.filter((e) => !e.isDir).map((e) => [e.path, e.size]));
  expect(listedFiles.size).toBe(files.length);
  for (const f of files) {
    expect(listedFiles.get(f.path), f.path).toBe(f.data.length);
    expect(r.readFile(f.path).equals(Buffer.from(f.data)), f.path).toBe(true);
  }
  // Every parent directory is listed as a directory.
  const dirs = new Set(listed.filter((e) => e.isDir).map((e) => e.path));
  for (const f of files) {
    const parts = f.path.split('/');
    for (let i = 1; i < parts.length; i++) expect(dirs.has(parts.slice(0, i).join('/'))).toBe(true);
  }
}

/** Short-entry names ("NAME    EXT") of the directory stored at `cluster` (contiguous, as buildFat32 writes). */
function rawShortEntries(img: Buffer, cluster: number): Array<{ raw: string; attr: number; cluster: number; size: number; ntRes: number }> {
  const l = fat32Layout(img.length);
  const out = [];
  for (let off = (l.dataStartSector + (cluster - 2) * l.sectorsPerCluster) * 512; ; off += 32) {
    if (img[off] === 0) break;
    const attr = img[off + 11]!;
    if ((attr & 0x3f) === 0x0f) continue;
    out.push({
      raw: img.toString('latin1', off, off + 11),
      attr,
      cluster: (img.readUInt16LE(off + 20) << 16) | img.readUInt16LE(off + 26),
      size: img.readUInt32LE(off + 28),
      ntRes: img[off + 12]!,
    });
  }
  return out;
}

function subdirCluster(img: Buffer, parentCluster: number, raw: string): number {
  const e = rawShortEntries(img, parentCluster).find((x) => x.raw === raw);
  if (!e) throw new Error(`no ${raw}`);
  return e.cluster;
}

describe('fat32Layout', () => {
  it('picks the largest cluster (≤ 4 KiB) that keeps ≥ 65541 clusters', () => {
    const cases: Array<[number, number]> = [
      [FAT32_MIN_SIZE_BYTES, 512],
      [40 * MiB, 512],
      [64 * MiB, 512],
      [128 * MiB, 1024],
      [256 * MiB, 2048],
      [260 * MiB, 4096],
      [1 * GiB, 4096],
      [8 * GiB, 4096],
      [16 * GiB, 8192],
    ];
    for (const [size, cs] of cases) {
      const l = fat32Layout(size);
      expect(l.clusterSize, `${size}`).toBe(cs);
      expect(l.clusterCount).toBeGreaterThanOrEqual(65541);
      expect((l.clusterCount + 2) * 4).toBeLessThanOrEqual(l.fatSectors * 512);
      // The FAT is not oversized by more than the cluster-alignment padding.
      expect((l.clusterCount + 2) * 4).toBeGreaterThan((l.fatSectors - l.sectorsPerCluster - 2) * 512);
      expect(l.dataStartSector).toBe(32 + 2 * l.fatSectors);
      expect(l.dataStartSector % l.sectorsPerCluster).toBe(0);
      expect(l.dataStartSector + l.clusterCount * l.sectorsPerCluster).toBeLessThanOrEqual(l.totalSectors);
      expect(l.dataStartSector + (l.clusterCount + 1) * l.sectorsPerCluster).toBeGreaterThan(l.totalSectors);
    }
  });

  it('rejects volumes too small for FAT32 and bad options', () => {
    const e = errOf(() => fat32Layout(32 * MiB));
    expect(e.code).toBe('FAT_TOO_SMALL');
    expect(e.context['minSizeBytes']).toBe(FAT32_MIN_SIZE_BYTES);
    expect(codeOf(() => fat32Layout(FAT32_MIN_SIZE_BYTES - 512))).toBe('FAT_TOO_SMALL');
    expect(codeOf(() => fat32Layout(FAT32_MIN_SIZE_BYTES))).toBeUndefined();
    expect(codeOf(() => fat32Layout(64 * MiB, 1024))).toBe('FAT_TOO_SMALL');
    expect(codeOf(() => fat32Layout(64 * MiB, 3000))).toBe('FAT_INVALID_OPTION');
    expect(codeOf(() => fat32Layout(64 * MiB + 1))).toBe('FAT_INVALID_OPTION');
    expect(fat32Layout(1 * GiB, 512).clusterSize).toBe(512);
  });
});

describe('buildFat32 + readFat32', () => {
  it('writes a valid boot sector, FSInfo, backups and FATs', () => {
    const img = build([{ path: 'config.txt', data: Buffer.from('arm_64bit=1\n') }], { hiddenSectors: 8192, volumeLabel: 'uz-boot' });
    const l = fat32Layout(img.length);
    expect(img.length).toBe(40 * MiB);
    expect(img.toString('latin1', 82, 90)).toBe('FAT32   ');
    expect(img.toString('latin1', 71, 82)).toBe('UZ-BOOT    ');
    expect(img.readUInt16LE(11)).toBe(512);
    expect(img[13]).toBe(l.sectorsPerCluster);
    expect(img.readUInt16LE(14)).toBe(32);
    expect(img[16]).toBe(2);
    expect(img[21]).toBe(0xf8);
    expect(img.readUInt32LE(28)).toBe(8192);
    expect(img.readUInt32LE(32)).toBe(l.totalSectors);
    expect(img.readUInt32LE(36)).toBe(l.fatSectors);
    expect(img.readUInt32LE(44)).toBe(2);
    expect(img.readUInt16LE(48)).toBe(1);
    expect(img.readUInt16LE(50)).toBe(6);
    expect(img.readUInt32LE(67)).toBe(0x1234abcd);
    expect(img[66]).toBe(0x29);
    expect(img.readUInt16LE(510)).toBe(0xaa55);
    expect(img.subarray(6 * 512, 7 * 512).equals(img.subarray(0, 512))).toBe(true);
    expect(img.subarray(7 * 512, 8 * 512).equals(img.subarray(512, 1024))).toBe(true);
    // FSInfo: root dir + one file cluster used.
    expect(img.readUInt32LE(512)).toBe(0x41615252);
    expect(img.readUInt32LE(512 + 484)).toBe(0x61417272);
    expect(img.readUInt32LE(512 + 488)).toBe(l.clusterCount - 2);
    expect(img.readUInt32LE(512 + 492)).toBe(4);
    // FAT: media, EOC, root chain, file chain; both copies equal.
    const fat = 32 * 512;
    expect(img.readUInt32LE(fat)).toBe(0x0ffffff8);
    expect(img.readUInt32LE(fat + 4)).toBe(0x0fffffff);
    expect(img.readUInt32LE(fat + 8)).toBe(0x0fffffff);
    expect(img.readUInt32LE(fat + 12)).toBe(0x0fffffff);
    expect(img.readUInt32LE(fat + 16)).toBe(0);
    const fatBytes = l.fatSectors * 512;
    expect(img.subarray(fat, fat + fatBytes).equals(img.subarray(fat + fatBytes, fat + 2 * fatBytes))).toBe(true);
    // Root: volume label entry, then the file with the plain short alias CONFIG.TXT (boot ROMs look it up).
    const root = rawShortEntries(img, 2);
    expect(root.map((e) => [e.raw, e.attr])).toEqual([
      ['UZ-BOOT    ', 0x08],
      ['CONFIG  TXT', 0x20],
    ]);
    const r = readFat32(img);
    expect(r.label).toBe('UZ-BOOT');
    expect(r.volumeId).toBe(0x1234abcd);
    expect(r.clusterSize).toBe(512);
    expect(r.list()).toEqual([{ path: 'config.txt', size: 12, isDir: false }]);
  });

  it('encodes mtime (UTC) in every entry and clamps pre-1980 dates', () => {
    const img = build([{ path: 'D/F', data: Buffer.from('x') }]);
    const off = l2off(img, 2) + 32; // first entry after the label: "D" (exact 8.3, no LFN)
    expect(img.toString('latin1', off, off + 11)).toBe('D          ');
    const date = ((2024 - 1980) << 9) | (3 << 5) | 15;
    const time = (12 << 11) | (34 << 5) | (56 >> 1);
    expect(img.readUInt16LE(off + 16)).toBe(date);
    expect(img.readUInt16LE(off + 24)).toBe(date);
    expect(img.readUInt16LE(off + 22)).toBe(time);
    expect(img.readUInt16LE(off + 14)).toBe(time);
    expect(img[off + 13]).toBe(78); // 10 ms units: even second (0) + 780 ms
    const old = build([{ path: 'F', data: Buffer.from('x') }], { mtime: new Date(0) });
    const o2 = l2off(old, 2) + 32;
    expect(old.readUInt16LE(o2 + 24)).toBe((0 << 9) | (1 << 5) | 1);
    expect(old.readUInt16LE(o2 + 22)).toBe(0);
  });

  it('stores many files in one directory and nests directories 5 deep', () => {
    const files: Fat32File[] = [];
    for (let i = 0; i < 500; i++) files.push({ path: `many/file number ${i}.dat`, data: bytes(i, (i * 97) % 1500) });
    files.push({ path: 'a/b/c/d/e/leaf.txt', data: Buffer.from('deep') });
    files.push({ path: 'a/b/c/d/e/f/g/h/deeper.bin', data: bytes(9, 4097) });
    files.push({ path: 'a/b/sibling.txt', data: Buffer.from('sib') });
    const img = build(files);
    expectRoundTrip(img, files);
    const many = rawShortEntries(img, subdirCluster(img, 2, 'MANY       '));
    expect(many.length).toBe(502); // . .. + 500
    expect(new Set(many.map((e) => e.raw)).size).toBe(502);
    // '..' of a first-level directory is 0; deeper ones point at the parent's cluster.
    const aCl = subdirCluster(img, 2, 'A          ');
    const bCl = subdirCluster(img, aCl, 'B          ');
    const bEntries = rawShortEntries(img, bCl);
    expect(bEntries[0]).toMatchObject({ raw: '.          ', cluster: bCl, attr: 0x10 });
    expect(bEntries[1]).toMatchObject({ raw: '..         ', cluster: aCl, attr: 0x10 });
    expect(rawShortEntries(img, aCl)[1]).toMatchObject({ raw: '..         ', cluster: 0 });
  });

  it('handles long and unicode names, names up to 255 units', () => {
    const files: Fat32File[] = [
      { path: 'fourteen-chars', data: Buffer.from('14') },
      { path: 'exactly13char', data: Buffer.from('13') },
      { path: 'x'.repeat(251) + '.txt', data: Buffer.from('255') },
      { path: 'ü'.repeat(255), data: Buffer.from('255u') },
      { path: 'Ελληνικά/日本語のファイル名.txt', data: Buffer.from('ja') },
      { path: 'snow ☃ man.t x t', data: Buffer.from('snow') },
      { path: '.hidden', data: Buffer.from('h') },
      { path: 'archive.tar.gz', data: Buffer.from('tgz') },
      { path: 'a+b=c;d,e[f].txt', data: Buffer.from('odd') },
      { path: ' leading space', data: Buffer.from('ls') },
    ];
    const img = build(files);
    expectRoundTrip(img, files);
    const root = rawShortEntries(img, 2).map((e) => e.raw);
    expect(root).toContain('ARCHIV~1GZ ');
    expect(root).toContain('HIDDEN~1   ');
    expect(root).toContain('A_B_C_~1TXT');
    expect(new Set(root).size).toBe(root.length);
    expect(codeOf(() => build([{ path: 'y'.repeat(256), data: Buffer.alloc(0) }]))).toBe('FAT_NAME_INVALID');
  });

  it('rejects invalid names and case-insensitive conflicts', () => {
    for (const bad of ['a:b', 'q?', 'star*', 'x\\y', 'pipe|', 'lt<', 'quote"', 'ctl\u0001', 'dot.', 'space ', 'a//b', 'dir/', '.', '..', '']) {
      expect(codeOf(() => build([{ path: bad, data: Buffer.alloc(1) }])), JSON.stringify(bad)).toBe('FAT_NAME_INVALID');
    }
    const dup = (a: string, b: string): string | undefined =>
      codeOf(() =>
        build([
          { path: a, data: Buffer.from('1') },
          { path: b, data: Buffer.from('2') },
        ]),
      );
    expect(dup('Readme.txt', 'README.TXT')).toBe('FAT_NAME_CONFLICT');
    expect(dup('same', 'same')).toBe('FAT_NAME_CONFLICT');
    expect(dup('dir/x', 'DIR/y')).toBe('FAT_NAME_CONFLICT');
    expect(dup('node', 'node/child')).toBe('FAT_NAME_CONFLICT');
    expect(dup('node/child', 'node')).toBe('FAT_NAME_CONFLICT');
    expect(dup('ä.txt', 'Ä.TXT')).toBe('FAT_NAME_CONFLICT');
    expect(codeOf(() => build([], { volumeLabel: 'TWELVE_CHARS' }))).toBe('FAT_LABEL_INVALID');
    expect(codeOf(() => build([], { volumeLabel: 'bad:label' }))).toBe('FAT_LABEL_INVALID');
  });

  it('generates unique 8.3 aliases for names sharing a prefix without stealing real 8.3 names', () => {
    const files: Fat32File[] = [];
    for (let i = 0; i < 120; i++) files.push({ path: `longprefix_${i}.txt`, data: Buffer.from(String(i)) });
    files.push({ path: 'LONGPR~1.TXT', data: Buffer.from('real 8.3') });
    files.push({ path: 'LONGPR~7.TXT', data: Buffer.from('real 8.3 #7') });
    files.push({ path: 'config.txt', data: Buffer.from('lower') });
    files.push({ path: 'Config.Bak', data: Buffer.from('mixed') });
    files.push({ path: 'CONFIG.TX', data: Buffer.from('upper, exact 8.3') });
    const img = build(files);
    expectRoundTrip(img, files);
    const root = rawShortEntries(img, 2).filter((e) => e.attr !== 0x08);
    const raws = root.map((e) => e.raw);
    expect(new Set(raws).size).toBe(raws.length);
    expect(raws).toContain('LONGPR~1TXT');
    expect(raws).toContain('LONGPR~2TXT');
    expect(raws).toContain('LONGP~10TXT');
    expect(raws).toContain('LONGP~99TXT');
    expect(raws).toContain('LONG~100TXT');
    expect(raws).toContain('CONFIG  TXT');
    expect(raws).toContain('CONFIG  BAK');
    expect(raws).toContain('CONFIG  TX ');
    const r = readFat32(img);
    // The exact 8.3 names kept their own entries; lookups are case-insensitive (by long or short name).
    expect(r.readFile('longpr~1.txt').toString()).toBe('real 8.3');
    expect(r.readFile('LONGPR~7.TXT').toString()).toBe('real 8.3 #7');
    expect(r.readFile('CONFIG.TXT').toString()).toBe('lower');
    expect(r.readFile('LONGPREFIX_0.TXT').toString()).toBe('0');
    expect(r.readFile('LONGPR~2.TXT').toString()).toBe('0'); // alias of the first long name
  });

  it('stores files of sizes around cluster boundaries contiguously; empty files get cluster 0', () => {
    const size = 300 * MiB;
    const cs = fat32Layout(size).clusterSize;
    expect(cs).toBe(4096);
    const sizes = [0, 1, cs - 1, cs, cs + 1, 2 * cs, 3 * MiB + 5, 7 * MiB];
    const files = sizes.map((n, i) => ({ path: `sizes/s${i}_${n}`, data: pattern(100 + i, n) }));
    const img = buildFat32({ sizeBytes: size, volumeLabel: 'SIZES', volumeId: 1, mtime: MTIME, files });
    expectRoundTrip(img, files);
    const entries = rawShortEntries(img, subdirCluster(img, 2, 'SIZES      ')).slice(2);
    const l = fat32Layout(size);
    const fat = 32 * 512;
    for (const e of entries) {
      const n = Math.ceil(e.size / cs);
      if (n === 0) {
        expect(e.cluster).toBe(0);
        continue;
      }
      for (let i = 0; i < n - 1; i++) expect(img.readUInt32LE(fat + (e.cluster + i) * 4)).toBe(e.cluster + i + 1);
      expect(img.readUInt32LE(fat + (e.cluster + n - 1) * 4)).toBe(0x0fffffff);
      // Slack after the data in the last cluster is zero.
      const end = (l.dataStartSector + (e.cluster - 2) * l.sectorsPerCluster) * 512 + e.size;
      expect(img.subarray(end, end + (n * cs - e.size)).every((b) => b === 0)).toBe(true);
    }
  });

  it('fills a volume exactly and reports FAT_FULL one byte later', () => {
    const size = FAT32_MIN_SIZE_BYTES;
    const l = fat32Layout(size);
    const capacity = (l.clusterCount - 1) * l.clusterSize; // root directory takes one cluster
    const nearlyFull = build([{ path: 'big.bin', data: pattern(1, capacity - l.clusterSize) }], { sizeBytes: size });
    expect(nearlyFull.readUInt32LE(512 + 488)).toBe(1);
    expect(nearlyFull.readUInt32LE(512 + 492)).toBe(l.clusterCount + 1);
    const full = build([{ path: 'big.bin', data: pattern(1, capacity) }], { sizeBytes: size });
    expect(full.readUInt32LE(512 + 488)).toBe(0);
    expect(full.readUInt32LE(512 + 492)).toBe(0xffffffff);
    expect(readFat32(full).readFile('big.bin').equals(pattern(1, capacity))).toBe(true);
    const e = errOf(() => build([{ path: 'big.bin', data: Buffer.alloc(capacity + 1) }], { sizeBytes: size }));
    expect(e.code).toBe('FAT_FULL');
    expect(e.context).toMatchObject({ needed: l.clusterCount + 1, available: l.clusterCount });
    // Directory clusters count too: a second (empty) directory no longer fits.
    expect(codeOf(() => build([{ path: 'big.bin', data: Buffer.alloc(capacity) }, { path: 'd/empty', data: Buffer.alloc(0) }], { sizeBytes: size }))).toBe(
      'FAT_FULL',
    );
  });

  it('is reproducible: same input → identical bytes, regardless of input order', () => {
    const files: Fat32File[] = [];
    for (let i = 0; i < 60; i++) files.push({ path: `d${i % 4}/n${i}-${'z'.repeat(i % 20)}.bin`, data: bytes(i, i * 13) });
    const a = build(files);
    const b = build([...files].reverse());
    expect(a.equals(b)).toBe(true);
    expect(build(files, { mtime: new Date(MTIME.getTime() + 2000) }).equals(a)).toBe(false);
  });

  it('round-trips random trees (property)', () => {
    const nameArb = fc
      .string({ unit: fc.constantFrom(...'aAbB_-.+ é☃0Z'.split('')), minLength: 1, maxLength: 20 })
      .filter((s) => !s.endsWith('.') && !s.endsWith(' '));
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(fc.array(nameArb, { minLength: 1, maxLength: 3 }), fc.nat(3000)), {
          maxLength: 25,
          selector: ([p]) => p.join('/').toUpperCase(),
        }),
        (entries) => {
          const files = entries.map(([p, n], i) => ({ path: p.join('/'), data: bytes(i, n) }));
          let img: Buffer;
          try {
            img = build(files);
          } catch (e) {
            if (isUzError(e, 'FAT_NAME_CONFLICT')) return; // e.g. 'a' as file and 'a/b'
            throw e;
          }
          expectRoundTrip(img, files);
        },
      ),
      { numRuns: 30, seed: 42 },
    );
  });
});

function l2off(img: Buffer, cluster: number): number {
  const l = fat32Layout(img.length);
  return (l.dataStartSector + (cluster - 2) * l.sectorsPerCluster) * 512;
}

describe('readFat32 errors', () => {
  it('reports missing files, directories and non-FAT images', () => {
    const img = build([{ path: 'dir/file.txt', data: Buffer.from('x') }]);
    const r = readFat32(img);
    expect(codeOf(() => r.readFile('nope'))).toBe('FAT_NOT_FOUND');
    expect(codeOf(() => r.readFile('dir/file.txt/more'))).toBe('FAT_NOT_FOUND');
    expect(codeOf(() => r.readFile('DIR'))).toBe('FAT_IS_DIR');
    expect(codeOf(() => r.readFile('/'))).toBe('FAT_IS_DIR');
    expect(r.readFile('/Dir/FILE.TXT').toString()).toBe('x');
    expect(codeOf(() => readFat32(Buffer.alloc(4096)))).toBe('FAT_INVALID');
    expect(codeOf(() => readFat32(img.subarray(0, 1 * MiB)))).toBe('FAT_INVALID');
    // A chain that loops is reported, not followed forever.
    const looped = Buffer.from(img);
    const e = rawShortEntries(looped, subdirCluster(looped, 2, 'DIR        '))[2]!;
    looped.writeUInt32LE(e.cluster, 32 * 512 + e.cluster * 4);
    expect(codeOf(() => readFat32(looped).readFile('dir/file.txt'))).toBe('FAT_CORRUPT');
  });
});

describe('overwriteFat32File', () => {
  const cs = 512;
  const base = (): Buffer =>
    build([
      { path: 'state/boot-state.json', data: bytes(1, 3 * cs) },
      { path: 'after.bin', data: bytes(2, 100) },
    ]);

  it('rewrites in place when the data fits, releasing surplus clusters', () => {
    const img = base();
    const freeBefore = img.readUInt32LE(512 + 488);
    const backupFsInfo = Buffer.from(img.subarray(7 * 512, 8 * 512));
    const stateDir = subdirCluster(img, 2, 'STATE      ');
    const before = rawShortEntries(img, stateDir).find((e) => e.size === 3 * cs)!;

    overwriteFat32File(img, 'state/boot-state.json', bytes(3, 3 * cs));
    expect(readFat32(img).readFile('state/boot-state.json').equals(bytes(3, 3 * cs))).toBe(true);
    expect(img.readUInt32LE(512 + 488)).toBe(freeBefore);

    overwriteFat32File(img, 'STATE/BOOT-STATE.JSON', Buffer.from('{"slot":"b"}'), { mtime: new Date('2025-01-01T00:00:00Z') });
    const r = readFat32(img);
    expect(r.readFile('state/boot-state.json').toString()).toBe('{"slot":"b"}');
    expect(r.readFile('after.bin').equals(bytes(2, 100))).toBe(true);
    const after = rawShortEntries(img, stateDir).find((e) => e.cluster === before.cluster)!;
    expect(after.size).toBe(12);
    const fat = 32 * 512;
    expect(img.readUInt32LE(fat + before.cluster * 4)).toBe(0x0fffffff);
    expect(img.readUInt32LE(fat + (before.cluster + 1) * 4)).toBe(0);
    expect(img.readUInt32LE(fat + (before.cluster + 2) * 4)).toBe(0);
    const l = fat32Layout(img.length);
    const fatBytes = l.fatSectors * 512;
    expect(img.subarray(fat, fat + fatBytes).equals(img.subarray(fat + fatBytes, fat + 2 * fatBytes))).toBe(true);
    expect(img.readUInt32LE(512 + 488)).toBe(freeBefore + 2);
    // Only the FSInfo sector BPB_FSInfo names is maintained; the copy in the backup boot area is not (spec).
    expect(img.subarray(7 * 512, 8 * 512).equals(backupFsInfo)).toBe(true);

    // Now only one cluster is owned.
    const e = errOf(() => overwriteFat32File(img, 'state/boot-state.json', Buffer.alloc(cs + 1)));
    expect(e.code).toBe('FAT_NO_ROOM');
    expect(e.context).toMatchObject({ neededClusters: 2, availableClusters: 1 });

    overwriteFat32File(img, 'state/boot-state.json', Buffer.alloc(0));
    expect(readFat32(img).readFile('state/boot-state.json').length).toBe(0);
    expect(rawShortEntries(img, stateDir).find((x) => x.raw.startsWith('BOOT-S'))!.cluster).toBe(0);
    expect(codeOf(() => overwriteFat32File(img, 'state/boot-state.json', Buffer.from('x')))).toBe('FAT_NO_ROOM');
  });

  it('refuses directories and missing files', () => {
    const img = base();
    expect(codeOf(() => overwriteFat32File(img, 'state', Buffer.from('x')))).toBe('FAT_IS_DIR');
    expect(codeOf(() => overwriteFat32File(img, 'missing', Buffer.from('x')))).toBe('FAT_NOT_FOUND');
  });
});

describe('addFat32File (unit; real-tool checks are in test/provision/fat-add.test.ts)', () => {
  const fat = 32 * 512;

  it('keeps an upper-case 8.3 name without LFN entries, aliases the rest, and adjusts FSInfo', () => {
    const img = build([{ path: 'a.txt', data: Buffer.from('a') }]);
    const free = img.readUInt32LE(512 + 488);
    expect(addFat32File(img, 'CONFIG.TXT', Buffer.alloc(1500, 1), { mtime: MTIME })).toEqual({ replaced: false, shortName: 'CONFIG  TXT', clusters: 3 });
    expect(img.readUInt32LE(512 + 488)).toBe(free - 3);
    // "config.txt" now only differs by case: it replaces the file (case-insensitive names).
    expect(addFat32File(img, 'config.txt', Buffer.from('x')).replaced).toBe(true);
    expect(img.readUInt32LE(512 + 488)).toBe(free - 1);
    const r = readFat32(img);
    expect(r.list().map((e) => e.path).sort()).toEqual(['a.txt', 'config.txt']);
    expect(r.readFile('CONFIG.TXT').toString()).toBe('x');
    // The plain upper-cased name is still free after the old entry was deleted, so it is reused, with an LFN.
    expect(rawShortEntries(img, 2).map((e) => e.raw)).toContain('CONFIG  TXT');
  });

  it('folds case per UTF-16 unit, as Windows and Linux do: astral letters never match across case', () => {
    const img = build([]);
    addFat32File(img, '\u{10428}.txt', Buffer.from('lower'));
    expect(addFat32File(img, '\u{10400}.txt', Buffer.from('upper')).replaced).toBe(false);
    expect(readFat32(img).list()).toHaveLength(2);
  });

  it('writes only the active FAT when mirroring is off (BPB_ExtFlags bit 7)', () => {
    const img = build([{ path: 'a.txt', data: Buffer.from('a') }]);
    img.writeUInt16LE(0x81, 40); // mirroring off, FAT #1 active
    const fat0 = Buffer.from(img.subarray(fat, fat + fatBytes(img)));
    addFat32File(img, 'uz-device.json', Buffer.alloc(2000, 7));
    expect(img.subarray(fat, fat + fatBytes(img)).equals(fat0)).toBe(true);
    expect(img.subarray(fat + fatBytes(img), fat + 2 * fatBytes(img)).equals(fat0)).toBe(false);
    expect(readFat32(img).readFile('uz-device.json').equals(Buffer.alloc(2000, 7))).toBe(true);
    img.writeUInt16LE(0x8f, 40);
    expect(codeOf(() => readFat32(img))).toBe('FAT_INVALID');
  });

  it('turns an out-of-range FSInfo free count into "unknown" rather than clamping it', () => {
    const img = build([{ path: 'a.txt', data: Buffer.from('a') }]);
    img.writeUInt32LE(1, 512 + 488);
    addFat32File(img, 'b.bin', Buffer.alloc(2000));
    expect(img.readUInt32LE(512 + 488)).toBe(0xffffffff);
    expect(img.readUInt32LE(512 + 492)).toBeGreaterThan(2);
  });

  it('refuses bad names, missing directories and corrupt chains with coded errors', () => {
    const img = build([{ path: 'dir/file.txt', data: Buffer.from('x') }]);
    expect(codeOf(() => addFat32File(img, '', Buffer.from('x')))).toBe('FAT_NAME_INVALID');
    expect(codeOf(() => addFat32File(img, 'a?b', Buffer.from('x')))).toBe('FAT_NAME_INVALID');
    expect(codeOf(() => addFat32File(img, 'dir/..', Buffer.from('x')))).toBe('FAT_NAME_INVALID');
    expect(codeOf(() => addFat32File(img, 'nodir/x', Buffer.from('x')))).toBe('FAT_NOT_FOUND');
    expect(codeOf(() => addFat32File(img, 'dir/file.txt/x', Buffer.from('x')))).toBe('FAT_NOT_FOUND');
    expect(codeOf(() => addFat32File(img, 'DIR', Buffer.from('x')))).toBe('FAT_IS_DIR');
    expect(codeOf(() => addFat32File(Buffer.alloc(4096), 'x', Buffer.from('x')))).toBe('FAT_INVALID');
    const looped = Buffer.from(img);
    const e = rawShortEntries(looped, subdirCluster(looped, 2, 'DIR        '))[2]!;
    looped.writeUInt32LE(e.cluster, fat + e.cluster * 4);
    expect(codeOf(() => addFat32File(looped, 'dir/file.txt', Buffer.from('y')))).toBe('FAT_CORRUPT');
  });
});

function fatBytes(img: Buffer): number {
  return img.readUInt32LE(36) * 512;
}
