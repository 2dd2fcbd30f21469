/**
 * Classic DOS/MBR partition tables, built and parsed in memory (no fdisk, no root).
 *
 * Only the four primary slots are supported; extended/logical partitions are never written. CHS fields are
 * computed for a 255-head/63-sector geometry and saturate to the conventional "beyond 8 GiB" value
 * (0xFE 0xFF 0xFF), which is what fdisk/sfdisk write and what every LBA-aware reader ignores anyway.
 */
import { UzError } from '../../lib/errors.js';

export const SECTOR_SIZE = 512;
export const MBR_TYPE_FAT32_LBA = 0x0c;
export const MBR_TYPE_LINUX = 0x83;
/** Default partition alignment: 4 MiB, a common SD-card erase-block multiple. */
export const DEFAULT_PARTITION_ALIGN_BYTES = 4 * 1024 * 1024;

const MAX_U32 = 0xffffffff;
const TABLE_OFFSET = 446;
const ENTRY_SIZE = 16;
const SIGNATURE_OFFSET = 440;

export interface MbrPartitionSpec {
  startLba: number;
  sizeLba: number;
  /** Partition type byte, e.g. 0x0C (FAT32 LBA) or 0x83 (Linux). */
  type: number;
  bootable?: boolean;
}

export interface MbrPartition {
  /** 1-based slot number in the table (matches Linux `p1`..`p4`). */
  index: number;
  startLba: number;
  sizeLba: number;
  type: number;
  bootable: boolean;
}

export interface ParsedMbr {
  diskSignature: number;
  /** Non-empty slots only, in slot order. */
  partitions: MbrPartition[];
}

function isU32(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= MAX_U32;
}

/** CHS triple for an LBA (255 heads, 63 sectors/track), saturated to 1023/254/63 = FE FF FF. */
function chsBytes(lba: number): [number, number, number] {
  const spt = 63;
  const heads = 255;
  const c = Math.floor(lba / (spt * heads));
  if (c > 1023) return [0xfe, 0xff, 0xff];
  const h = Math.floor(lba / spt) % heads;
  const s = (lba % spt) + 1;
  return [h, (s & 0x3f) | ((c >> 2) & 0xc0), c & 0xff];
}

/** Build a 512-byte MBR sector. Partitions fill slots 1..n in the given order. */
export function buildMbr(opts: { diskSignature: number; partitions: MbrPartitionSpec[] }): Buffer {
  const { diskSignature, partitions } = opts;
  if (!isU32(diskSignature)) {
    throw new UzError('MBR_INVALID', 'disk signature must be a 32-bit unsigned integer', { diskSignature });
  }
  if (partitions.length > 4) {
    throw new UzError('MBR_TOO_MANY_PARTITIONS', `an MBR holds at most 4 primary partitions, got ${partitions.length}`, {
      count: partitions.length,
    });
  }
  partitions.forEach((p, i) => {
    const ctx = { index: i + 1, ...p };
    if (!Number.isInteger(p.type) || p.type < 1 || p.type > 0xff) {
      throw new UzError('MBR_INVALID', `partition ${i + 1}: type must be 0x01..0xFF`, ctx);
    }
    if (!isU32(p.startLba) || p.startLba < 1) {
      throw new UzError('MBR_OUT_OF_RANGE', `partition ${i + 1}: start LBA must be 1..2^32-1`, ctx);
    }
    if (!isU32(p.sizeLba) || p.sizeLba < 1) {
      throw new UzError('MBR_OUT_OF_RANGE', `partition ${i + 1}: size must be 1..2^32-1 sectors`, ctx);
    }
    if (p.startLba + p.sizeLba - 1 > MAX_U32) {
      throw new UzError('MBR_OUT_OF_RANGE', `partition ${i + 1}: ends beyond the 32-bit LBA limit (2 TiB)`, ctx);
    }
  });
  checkOverlap(partitions.map((p, i) => ({ index: i + 1, startLba: p.startLba, sizeLba: p.sizeLba })), 'MBR_OVERLAP');

  const buf = Buffer.alloc(SECTOR_SIZE);
  buf.writeUInt32LE(diskSignature, SIGNATURE_OFFSET);
  partitions.forEach((p, i) => {
    const o = TABLE_OFFSET + i * ENTRY_SIZE;
    buf[o] = p.bootable ? 0x80 : 0x00;
    const first = chsBytes(p.startLba);
    const last = chsBytes(p.startLba + p.sizeLba - 1);
    buf[o + 1] = first[0];
    buf[o + 2] = first[1];
    buf[o + 3] = first[2];
    buf[o + 4] = p.type;
    buf[o + 5] = last[0];
    buf[o + 6] = last[1];
    buf[o + 7] = last[2];
    buf.writeUInt32LE(p.startLba, o + 8);
    buf.writeUInt32LE(p.sizeLba, o + 12);
  });
  buf[510] = 0x55;
  buf[511] = 0xaa;
  return buf;
}

function checkOverlap(parts: Array<{ index: number; startLba: number; sizeLba: number }>, code: string): void {
  const sorted = [...parts].sort((a, b) => a.startLba - b.startLba);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (prev.startLba + prev.sizeLba > cur.startLba) {
      throw new UzError(code, `partitions ${prev.index} and ${cur.index} overlap`, {
        a: { index: prev.index, startLba: prev.startLba, endLba: prev.startLba + prev.sizeLba - 1 },
        b: { index: cur.index, startLba: cur.startLba, endLba: cur.startLba + cur.sizeLba - 1 },
      });
    }
  }
}

/** Parse the MBR in the first 512 bytes of `buf`. Throws MBR_INVALID on anything malformed. */
export function parseMbr(buf: Buffer | Uint8Array): ParsedMbr {
  const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < SECTOR_SIZE) {
    throw new UzError('MBR_INVALID', `MBR needs 512 bytes, got ${b.length}`, { length: b.length });
  }
  if (b[510] !== 0x55 || b[511] !== 0xaa) {
    throw new UzError('MBR_INVALID', 'missing 0x55AA boot signature', { signature: b.readUInt16BE(510) });
  }
  const partitions: MbrPartition[] = [];
  for (let i = 0; i < 4; i++) {
    const o = TABLE_OFFSET + i * ENTRY_SIZE;
    const status = b[o]!;
    const type = b[o + 4]!;
    const startLba = b.readUInt32LE(o + 8);
    const sizeLba = b.readUInt32LE(o + 12);
    if (type === 0) continue;
    if (status !== 0x00 && status !== 0x80) {
      throw new UzError('MBR_INVALID', `partition ${i + 1}: bad status byte 0x${status.toString(16)}`, { index: i + 1, status });
    }
    if (startLba === 0 || sizeLba === 0) {
      throw new UzError('MBR_INVALID', `partition ${i + 1}: zero start or size`, { index: i + 1, startLba, sizeLba });
    }
    if (startLba + sizeLba - 1 > MAX_U32) {
      throw new UzError('MBR_INVALID', `partition ${i + 1}: ends beyond the 32-bit LBA limit`, { index: i + 1, startLba, sizeLba });
    }
    partitions.push({ index: i + 1, startLba, sizeLba, type, bootable: status === 0x80 });
  }
  checkOverlap(partitions, 'MBR_INVALID');
  return { diskSignature: b.readUInt32LE(SIGNATURE_OFFSET), partitions };
}

export interface PartitionLayout {
  startLba: number;
  sizeLba: number;
}

/**
 * Lay partitions out back to back. The first starts at `alignBytes` (4 MiB by default), each size is rounded up
 * to a multiple of `alignBytes` so every partition starts on an erase-block boundary. Use the returned `sizeLba`
 * (not the requested size) when building the filesystem that goes in the partition.
 */
export function layoutPartitions(sizesBytes: number[], alignBytes: number = DEFAULT_PARTITION_ALIGN_BYTES): PartitionLayout[] {
  if (!Number.isInteger(alignBytes) || alignBytes < SECTOR_SIZE || alignBytes % SECTOR_SIZE !== 0) {
    throw new UzError('MBR_INVALID', 'alignment must be a positive multiple of 512 bytes', { alignBytes });
  }
  if (sizesBytes.length > 4) {
    throw new UzError('MBR_TOO_MANY_PARTITIONS', `an MBR holds at most 4 primary partitions, got ${sizesBytes.length}`, {
      count: sizesBytes.length,
    });
  }
  const alignLba = alignBytes / SECTOR_SIZE;
  let next = alignLba;
  return sizesBytes.map((size, i) => {
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new UzError('MBR_INVALID', `partition ${i + 1}: size must be a positive integer number of bytes`, { index: i + 1, size });
    }
    const sizeLba = Math.ceil(size / alignBytes) * alignLba;
    const startLba = next;
    if (startLba + sizeLba - 1 > MAX_U32) {
      throw new UzError('MBR_OUT_OF_RANGE', `partition ${i + 1}: layout ends beyond the 32-bit LBA limit (2 TiB)`, {
        index: i + 1,
        startLba,
        sizeLba,
      });
    }
    next = startLba + sizeLba;
    return { startLba, sizeLba };
  });
}

/** Disk size (in sectors) needed to hold a layout: the end of the last partition (already aligned). */
export function layoutDiskSizeLba(layout: PartitionLayout[], alignBytes: number = DEFAULT_PARTITION_ALIGN_BYTES): number {
  const end = layout.reduce((m, p) => Math.max(m, p.startLba + p.sizeLba), alignBytes / SECTOR_SIZE);
  const alignLba = alignBytes / SECTOR_SIZE;
  return Math.ceil(end / alignLba) * alignLba;
}
