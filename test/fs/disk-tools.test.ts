/**
 * A whole A/B-style disk image: MBR + three FAT32 partitions + an empty Linux partition, checked with sfdisk and
 * mtools at partition offsets. Missing tools make these tests FAIL with an install hint; they never skip.
 */
import { closeSync, ftruncateSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildFat32, readFat32, type Fat32File } from '../../firmware/fs/fat32.js';
import { buildMbr, layoutDiskSizeLba, layoutPartitions, parseMbr } from '../../firmware/fs/mbr.js';
import { makeTempDir, pattern, run, writeSparse } from './helpers.js';

const MiB = 1024 * 1024;

let tmp: { dir: string; cleanup: () => void };
beforeAll(() => {
  tmp = makeTempDir('disk');
});
afterAll(() => tmp.cleanup());

describe('MBR disk image vs. sfdisk and mtools', () => {
  it('four partitions: FAT32 boot + A + B, empty Linux data', () => {
    const layout = layoutPartitions([34 * MiB, 40 * MiB, 40 * MiB, 16 * MiB]);
    const types = [0x0c, 0x0c, 0x0c, 0x83];
    const partitions = layout.map((p, i) => ({ ...p, type: types[i]!, bootable: i === 0 }));
    const mbr = buildMbr({ diskSignature: 0x5a17c0de, partitions });
    const diskLba = layoutDiskSizeLba(layout);
    const path = join(tmp.dir, 'disk.img');
    const contents: Fat32File[][] = [];
    const fd = openSync(path, 'w');
    try {
      writeSparse(fd, mbr, 0);
      for (let i = 0; i < 3; i++) {
        const p = layout[i]!;
        const files: Fat32File[] = [
          { path: 'config.txt', data: Buffer.from(`slot=${i}\n`) },
          { path: `slot-${i}/kernel8.img`, data: pattern(i, 2 * MiB + i) },
        ];
        contents.push(files);
        const fs = buildFat32({
          sizeBytes: p.sizeLba * 512,
          volumeLabel: ['BOOT', 'SLOT_A', 'SLOT_B'][i]!,
          volumeId: 0x1000 + i,
          mtime: new Date('2024-01-01T00:00:00Z'),
          files,
          hiddenSectors: p.startLba,
        });
        writeSparse(fd, fs, p.startLba * 512);
      }
      ftruncateSync(fd, diskLba * 512);
    } finally {
      closeSync(fd);
    }

    // Our own parser reads the table back.
    const disk = readFileSync(path);
    expect(parseMbr(disk).partitions).toEqual(partitions.map((p, i) => ({ index: i + 1, ...p })));

    const sf = run('sfdisk', ['--json', path]);
    expect(sf.status, sf.stderr).toBe(0);
    const table = JSON.parse(sf.stdout).partitiontable as {
      label: string;
      id: string;
      unit: string;
      partitions: Array<{ node: string; start: number; size: number; type: string; bootable?: boolean }>;
    };
    expect(table.label).toBe('dos');
    expect(table.id).toBe('0x5a17c0de');
    expect(table.unit).toBe('sectors');
    expect(table.partitions.map((p) => ({ start: p.start, size: p.size, type: p.type, bootable: p.bootable ?? false }))).toEqual(
      partitions.map((p) => ({ start: p.startLba, size: p.sizeLba, type: p.type.toString(16), bootable: p.bootable })),
    );
    const verify = run('sfdisk', ['--verify', path]);
    expect(verify.status, verify.stdout + verify.stderr).toBe(0);
    expect(verify.stdout + verify.stderr).toMatch(/No errors detected/);
    expect(verify.stdout + verify.stderr).not.toMatch(/overlap|exceeds|not aligned|warning/i);

    for (let i = 0; i < 3; i++) {
      const p = layout[i]!;
      const target = `${path}@@${p.startLba * 512}`;
      const dir = run('mdir', ['-i', target, '-/', '::']);
      expect(dir.status, dir.stderr).toBe(0);
      expect(dir.stdout).toContain(`Volume in drive : is ${['BOOT', 'SLOT_A', 'SLOT_B'][i]}`);
      expect(dir.stdout).toMatch(new RegExp(`kernel8\\.img`, 'i'));
      for (const f of contents[i]!) {
        const out = join(tmp.dir, `p${i}-${f.path.replace(/\//g, '_')}`);
        const cp = run('mcopy', ['-i', target, `::${f.path}`, out]);
        expect(cp.status, cp.stderr).toBe(0);
        expect(readFileSync(out).equals(Buffer.from(f.data)), f.path).toBe(true);
      }
      // Our reader works on the partition slice, and the hidden-sectors field matches the partition start.
      const slice = disk.subarray(p.startLba * 512, (p.startLba + p.sizeLba) * 512);
      expect(slice.readUInt32LE(28)).toBe(p.startLba);
      expect(readFat32(slice).readFile('config.txt').toString()).toBe(`slot=${i}\n`);
    }
  });
});
