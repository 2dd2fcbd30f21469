import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

// The first-boot grow step is a POSIX sh script (busybox in the image); here it runs under the host's sh on
// a disk file, with the disk size passed instead of read from /sys/block.
const script = fileURLToPath(new URL('../../firmware/initramfs/files/growdata', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'uz-growdata-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const P4 = 446 + 3 * 16;
function disk(name: string, o: { type?: number; start: number; size: number; sectors: number; signature?: boolean }): string {
  const mbr = Buffer.alloc(512);
  mbr[P4 + 4] = o.type ?? 0x83;
  mbr.writeUInt32LE(o.start, P4 + 8);
  mbr.writeUInt32LE(o.size, P4 + 12);
  if (o.signature !== false) { mbr[510] = 0x55; mbr[511] = 0xaa; }
  const f = join(dir, name);
  writeFileSync(f, mbr);
  truncateSync(f, o.sectors * 512);
  return f;
}
function grow(f: string, sectors: number) {
  const r = spawnSync('sh', [script, f, String(sectors)], { encoding: 'utf8', env: { ...process.env, TMPDIR: dir } });
  return { status: r.status, out: r.stdout.trim(), mbr: readFileSync(f).subarray(0, 512) };
}

describe('growdata (first-boot data partition growth)', () => {
  it('extends partition 4 to the last 4 MiB boundary of the disk in one sector write', () => {
    const sectors = 8192 * 100 + 1234; // not aligned: the tail below 4 MiB stays unused
    const f = disk('grow.img', { start: 8192 * 10, size: 8192 * 5, sectors });
    const r = grow(f, sectors);
    expect(r.status).toBe(0);
    expect(r.out).toBe(`UZ-DATA grown size_mib=${(90 * 8192 * 512) / 1048576}`);
    expect(r.mbr.readUInt32LE(P4 + 8)).toBe(8192 * 10);
    expect(r.mbr.readUInt32LE(P4 + 12)).toBe(8192 * 90);
    expect([...r.mbr.subarray(P4 + 5, P4 + 8)]).toEqual([0xfe, 0xff, 0xff]);
    expect(r.mbr.readUInt16LE(510)).toBe(0xaa55);
  });

  it('handles sizes above 2^31 sectors (a 2 TB card) without sign trouble', () => {
    const sectors = 2 ** 32 + 8192 * 3; // beyond what MBR can address: capped at 2^32 - 1 sectors
    const f = disk('big.img', { start: 8192 * 10, size: 8192, sectors: 8192 * 20 });
    const r = grow(f, sectors);
    expect(r.status).toBe(0);
    expect(r.mbr.readUInt32LE(P4 + 12)).toBe(0xffffffff - 8192 * 10);
  });

  it('leaves a partition that already reaches the end alone', () => {
    const f = disk('full.img', { start: 8192, size: 8192 * 9, sectors: 8192 * 10 });
    const before = readFileSync(f).subarray(0, 512);
    const r = grow(f, 8192 * 10);
    expect(r.status).toBe(0);
    expect(r.out).toBe('UZ-DATA grow skipped size_mib=36');
    expect(r.mbr.equals(before)).toBe(true);
  });

  it('refuses a disk whose partition 4 is not a Linux data partition, or without an MBR, and writes nothing', () => {
    const f = disk('foreign.img', { type: 0x0c, start: 8192, size: 8192, sectors: 8192 * 10 });
    const before = readFileSync(f).subarray(0, 512);
    const r = grow(f, 8192 * 10);
    expect(r.status).not.toBe(0);
    expect(r.out).toBe('UZ-WARN data-grow-failed reason=partition-4-not-data type=12');
    expect(r.mbr.equals(before)).toBe(true);
    const g = disk('nombr.img', { start: 8192, size: 8192, sectors: 8192 * 10, signature: false });
    expect(grow(g, 8192 * 10).out).toBe('UZ-WARN data-grow-failed reason=no-mbr-signature');
  });
});
