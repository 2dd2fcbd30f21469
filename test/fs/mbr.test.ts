import { describe, expect, it } from 'vitest';
import { isUzError } from '../../lib/errors.js';
import { buildMbr, layoutDiskSizeLba, layoutPartitions, parseMbr } from '../../firmware/fs/mbr.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    if (isUzError(e)) return e.code;
    throw e;
  }
  return undefined;
}

describe('MBR', () => {
  const parts = [
    { startLba: 8192, sizeLba: 65536, type: 0x0c, bootable: true },
    { startLba: 73728, sizeLba: 65536, type: 0x0c },
    { startLba: 139264, sizeLba: 65536, type: 0x0c },
    { startLba: 204800, sizeLba: 32768, type: 0x83 },
  ];

  it('round-trips four partitions', () => {
    const mbr = buildMbr({ diskSignature: 0xdeadbeef, partitions: parts });
    expect(mbr.length).toBe(512);
    expect(mbr[510]).toBe(0x55);
    expect(mbr[511]).toBe(0xaa);
    expect(mbr.subarray(0, 440).every((b) => b === 0)).toBe(true);
    const parsed = parseMbr(mbr);
    expect(parsed.diskSignature).toBe(0xdeadbeef);
    expect(parsed.partitions).toEqual(parts.map((p, i) => ({ index: i + 1, bootable: p.bootable ?? false, ...p })));
  });

  it('writes fdisk-style CHS values, saturating beyond cylinder 1023', () => {
    const big = 1024 * 255 * 63 + 5;
    const mbr = buildMbr({
      diskSignature: 1,
      partitions: [
        { startLba: 2048, sizeLba: 2048, type: 0x0c },
        { startLba: big, sizeLba: 100, type: 0x83 },
      ],
    });
    // LBA 2048 = C0/H32/S33; LBA 4095 = C0/H65/S1 (4095 = 65*63 + 0).
    expect([...mbr.subarray(446 + 1, 446 + 4)]).toEqual([0x20, 0x21, 0x00]);
    expect([...mbr.subarray(446 + 5, 446 + 8)]).toEqual([0x41, 0x01, 0x00]);
    expect([...mbr.subarray(462 + 1, 462 + 4)]).toEqual([0xfe, 0xff, 0xff]);
    expect([...mbr.subarray(462 + 5, 462 + 8)]).toEqual([0xfe, 0xff, 0xff]);
  });

  it('leaves unused slots empty and keeps slot numbers when parsing', () => {
    const mbr = buildMbr({ diskSignature: 7, partitions: parts.slice(0, 2) });
    expect(mbr.subarray(478, 510).every((b) => b === 0)).toBe(true);
    // Move partition 2 into slot 4: the parser reports index 4.
    mbr.copy(mbr, 494, 462, 478);
    mbr.fill(0, 462, 478);
    expect(parseMbr(mbr).partitions.map((p) => p.index)).toEqual([1, 4]);
  });

  it('rejects overlapping partitions', () => {
    expect(
      codeOf(() =>
        buildMbr({
          diskSignature: 1,
          partitions: [
            { startLba: 2048, sizeLba: 1000, type: 0x0c },
            { startLba: 3047, sizeLba: 10, type: 0x83 },
          ],
        }),
      ),
    ).toBe('MBR_OVERLAP');
    // Out of order but touching is fine.
    expect(
      codeOf(() =>
        buildMbr({
          diskSignature: 1,
          partitions: [
            { startLba: 3048, sizeLba: 10, type: 0x83 },
            { startLba: 2048, sizeLba: 1000, type: 0x0c },
          ],
        }),
      ),
    ).toBeUndefined();
  });

  it('rejects too many, out-of-range and malformed partitions', () => {
    const p = { startLba: 2048, sizeLba: 10, type: 0x83 };
    const five = [0, 1, 2, 3, 4].map((i) => ({ ...p, startLba: 2048 + i * 10 }));
    expect(codeOf(() => buildMbr({ diskSignature: 1, partitions: five }))).toBe('MBR_TOO_MANY_PARTITIONS');
    expect(codeOf(() => buildMbr({ diskSignature: 1, partitions: [{ ...p, startLba: 0xffffffff, sizeLba: 2 }] }))).toBe('MBR_OUT_OF_RANGE');
    expect(codeOf(() => buildMbr({ diskSignature: 1, partitions: [{ ...p, sizeLba: 2 ** 32 }] }))).toBe('MBR_OUT_OF_RANGE');
    expect(codeOf(() => buildMbr({ diskSignature: 1, partitions: [{ ...p, startLba: 0 }] }))).toBe('MBR_OUT_OF_RANGE');
    expect(codeOf(() => buildMbr({ diskSignature: 1, partitions: [{ ...p, sizeLba: 0 }] }))).toBe('MBR_OUT_OF_RANGE');
    expect(codeOf(() => buildMbr({ diskSignature: 1, partitions: [{ ...p, type: 0 }] }))).toBe('MBR_INVALID');
    expect(codeOf(() => buildMbr({ diskSignature: -1, partitions: [p] }))).toBe('MBR_INVALID');
    // The largest legal partition ends exactly at LBA 2^32-1.
    expect(codeOf(() => buildMbr({ diskSignature: 1, partitions: [{ ...p, startLba: 1, sizeLba: 0xffffffff }] }))).toBeUndefined();
  });

  it('parseMbr rejects malformed sectors', () => {
    const good = buildMbr({ diskSignature: 1, partitions: parts });
    expect(codeOf(() => parseMbr(good.subarray(0, 511)))).toBe('MBR_INVALID');
    const noSig = Buffer.from(good);
    noSig[511] = 0;
    expect(codeOf(() => parseMbr(noSig))).toBe('MBR_INVALID');
    const badStatus = Buffer.from(good);
    badStatus[446] = 0x12;
    expect(codeOf(() => parseMbr(badStatus))).toBe('MBR_INVALID');
    const overlap = Buffer.from(good);
    overlap.writeUInt32LE(8193, 462 + 8); // p2 starts inside p1
    expect(codeOf(() => parseMbr(overlap))).toBe('MBR_INVALID');
    const zeroSize = Buffer.from(good);
    zeroSize.writeUInt32LE(0, 446 + 12);
    expect(codeOf(() => parseMbr(zeroSize))).toBe('MBR_INVALID');
  });

  it('lays partitions out on 4 MiB boundaries starting at 4 MiB', () => {
    const MiB = 1024 * 1024;
    const layout = layoutPartitions([64 * MiB, 64 * MiB + 1, 10 * MiB, 512]);
    expect(layout).toEqual([
      { startLba: 8192, sizeLba: 131072 },
      { startLba: 139264, sizeLba: 139264 }, // rounded up to 68 MiB
      { startLba: 278528, sizeLba: 24576 }, // 12 MiB
      { startLba: 303104, sizeLba: 8192 }, // 4 MiB
    ]);
    for (const p of layout) {
      expect((p.startLba * 512) % (4 * MiB)).toBe(0);
      expect((p.sizeLba * 512) % (4 * MiB)).toBe(0);
    }
    expect(layoutDiskSizeLba(layout)).toBe(311296);
    expect(layoutPartitions([MiB], MiB)).toEqual([{ startLba: 2048, sizeLba: 2048 }]);
    // The layout is accepted by buildMbr as-is.
    expect(codeOf(() => buildMbr({ diskSignature: 1, partitions: layout.map((l) => ({ ...l, type: 0x0c })) }))).toBeUndefined();
    expect(codeOf(() => layoutPartitions([1, 1, 1, 1, 1]))).toBe('MBR_TOO_MANY_PARTITIONS');
    expect(codeOf(() => layoutPartitions([0]))).toBe('MBR_INVALID');
    expect(codeOf(() => layoutPartitions([MiB], 1000))).toBe('MBR_INVALID');
    expect(codeOf(() => layoutPartitions([2 ** 41]))).toBe('MBR_OUT_OF_RANGE');
  });
});
