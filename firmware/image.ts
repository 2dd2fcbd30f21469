import { createHash } from 'node:crypto';
import { open, rename, rm, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Board } from '../boards/schema.js';
import { UzError } from '../lib/errors.js';
import { buildFat32, type Fat32File } from './fs/fat32.js';
import { buildMbr, layoutPartitions, layoutDiskSizeLba, MBR_TYPE_FAT32_LBA, MBR_TYPE_LINUX, SECTOR_SIZE } from './fs/mbr.js';
import { BOOT_ENV_FILE, BOOT_SCRIPT_FILE, FACTORY_STATE, bootScriptText, formatBootEnv, mkimageScript } from './boot/uboot-script.js';
import { AUTOBOOT_FILE, autobootTxt, slotCmdline, slotConfigTxt, ubootChainConfigTxt } from './boot/tryboot.js';

/**
 * The disk image: MBR, p1 boot-control (FAT32 "UZBOOT"), p2 slot A and p3 slot B (FAT32, identical at the
 * factory: everything that boots), p4 data (left blank; the device formats it on first boot).
 * See docs/image-layout.md.
 */
export const SLOT_RELEASE_FILE = 'uz-release.json';
const MiB = 1024 * 1024;

export interface SlotInputs {
  board: Board;
  kernelImage: Buffer;
  initrd: Buffer;
  dtbs: Map<string, Buffer>;
  /** Pi firmware blobs by file name (from raspi-firmware). */
  firmware: Map<string, Buffer>;
  release: Record<string, unknown>;
}

/** Everything one slot holds. Slot-agnostic: the same bytes are written to A or B. */
export function slotFiles(s: SlotInputs): Fat32File[] {
  const { board } = s;
  const files: Fat32File[] = [
    { path: board.kernel.fileName, data: s.kernelImage },
    { path: 'initrd.img', data: s.initrd },
  ];
  for (const dtb of board.dtbs) {
    const data = s.dtbs.get(dtb);
    if (!data) throw new UzError('BOARD_DTB_MISSING', `kernel package has no DTB ${dtb}`, { dtb });
    // The Pi firmware looks for DTBs at the partition root; U-Boot's ${fdtfile} keeps the vendor folder.
    files.push({ path: board.boot.kind === 'rpi-firmware' ? dtb.replace(/^.*\//, '') : dtb, data });
  }
  if (board.boot.kind === 'rpi-firmware') {
    for (const f of board.boot.firmwareFiles) {
      const data = s.firmware.get(f);
      if (!data) throw new UzError('BOARD_FIRMWARE_MISSING', `raspi-firmware has no ${f}`, { file: f });
      files.push({ path: f, data });
    }
    files.push({ path: 'config.txt', data: Buffer.from(slotConfigTxt(board, board.boot.configTxt)) });
    files.push({ path: 'cmdline.txt', data: Buffer.from(slotCmdline(board)) });
  }
  const hashes = Object.fromEntries(files.map((f) => [f.path, createHash('sha256').update(f.data).digest('hex')]));
  files.push({ path: SLOT_RELEASE_FILE, data: Buffer.from(`${JSON.stringify({ ...s.release, files: hashes }, null, 2)}\n`) });
  return files;
}

export interface BootPartInputs {
  board: Board;
  buildEpoch: number;
  firmware: Map<string, Buffer>;
  ubootBinary?: Buffer;
  dtbs: Map<string, Buffer>;
}

/** The boot-control partition: what the first-stage boot reads to pick a slot. */
export function bootPartitionFiles(b: BootPartInputs): Fat32File[] {
  const { board } = b;
  const readme = Buffer.from(
    'unikernel-z boot-control partition. Do not edit the boot files by hand.\r\n' +
      'A per-device configuration (uz-device.json) may be placed here: see docs/provisioning.md.\r\n',
  );
  const files: Fat32File[] = [{ path: 'README.txt', data: readme }];
  if (board.bootControl === 'uboot-bootcount') {
    files.push({ path: BOOT_SCRIPT_FILE, data: mkimageScript(bootScriptText(board), 'unikernel-z A/B', b.buildEpoch) });
    files.push({ path: BOOT_ENV_FILE, data: Buffer.from(formatBootEnv(FACTORY_STATE)) });
  } else {
    files.push({ path: AUTOBOOT_FILE, data: Buffer.from(autobootTxt(2)) });
  }
  if (board.boot.kind === 'rpi-firmware-uboot') {
    for (const f of board.boot.firmwareFiles) {
      const data = b.firmware.get(f);
      if (!data) throw new UzError('BOARD_FIRMWARE_MISSING', `raspi-firmware has no ${f}`, { file: f });
      files.push({ path: f, data });
    }
    if (!b.ubootBinary) throw new UzError('BOARD_UBOOT_MISSING', `u-boot-rpi has no ${board.boot.ubootBuild}/u-boot.bin`);
    files.push({ path: 'u-boot.bin', data: b.ubootBinary });
    files.push({ path: 'config.txt', data: Buffer.from(ubootChainConfigTxt(board.boot.configTxt)) });
    // U-Boot itself runs on the device tree the GPU firmware hands it; the kernel gets the slot's DTB.
    for (const dtb of board.dtbs) {
      const data = b.dtbs.get(dtb);
      if (data) files.push({ path: dtb.replace(/^.*\//, ''), data });
    }
  }
  return files;
}

/** Deterministic 32-bit ids (volume serials, disk signature) from the build identity. */
export function stableId(...parts: string[]): number {
  return createHash('sha256').update(parts.join('\0')).digest().readUInt32LE(0);
}

export interface DiskInputs {
  board: Board;
  bootFiles: Fat32File[];
  slotFiles: Fat32File[];
  buildEpoch: number;
  identity: string;
}

export interface DiskLayout {
  partitions: Array<{ index: number; name: string; startLba: number; sizeLba: number; type: number }>;
  sizeBytes: number;
  diskSignature: number;
}

export function diskLayout(board: Board, identity: string): DiskLayout {
  const p = board.partitions;
  const lay = layoutPartitions([p.bootMiB * MiB, p.slotMiB * MiB, p.slotMiB * MiB, p.dataMiB * MiB]);
  const names = ['boot-control', 'slot-A', 'slot-B', 'data'];
  const types = [MBR_TYPE_FAT32_LBA, MBR_TYPE_FAT32_LBA, MBR_TYPE_FAT32_LBA, MBR_TYPE_LINUX];
  return {
    partitions: lay.map((l, i) => ({ index: i + 1, name: names[i]!, startLba: l.startLba, sizeLba: l.sizeLba, type: types[i]! })),
    sizeBytes: layoutDiskSizeLba(lay) * SECTOR_SIZE,
    diskSignature: stableId(identity, 'disk'),
  };
}

/** Builds the FAT volume of one slot (also the payload of an update bundle). */
export function buildSlotVolume(board: Board, files: Fat32File[], buildEpoch: number, identity: string): Buffer {
  const layout = diskLayout(board, identity);
  const slot = layout.partitions[1]!;
  return buildFat32({
    sizeBytes: slot.sizeLba * SECTOR_SIZE,
    volumeLabel: 'UZSLOT',
    volumeId: stableId(identity, 'slot'),
    mtime: new Date(buildEpoch * 1000),
    files,
    hiddenSectors: slot.startLba,
  });
}

/**
 * Writes `buf` at `offset` skipping all-zero 1 MiB pieces: the file was truncated to size first, so those
 * stay holes and read back as zeros. A 256 MiB slot with 85 MiB of content costs 85 MiB of disk.
 */
export async function writeSparse(fh: Awaited<ReturnType<typeof open>>, buf: Buffer, offset: number): Promise<void> {
  const piece = 1024 * 1024;
  for (let at = 0; at < buf.length; at += piece) {
    const part = buf.subarray(at, Math.min(at + piece, buf.length));
    if (part.some((b) => b !== 0)) await fh.write(part, 0, part.length, offset + at);
  }
}

/** Copies an image keeping zero regions as holes (boot copies of an 850 MB image cost ~200 MB of disk). */
export async function copyImageSparse(src: string, dst: string): Promise<void> {
  const from = await open(src, 'r');
  const to = await open(dst, 'w');
  try {
    const size = (await from.stat()).size;
    await to.truncate(size);
    const buf = Buffer.alloc(1024 * 1024);
    for (let at = 0; at < size; at += buf.length) {
      const { bytesRead } = await from.read(buf, 0, buf.length, at);
      await writeSparse(to, buf.subarray(0, bytesRead), at);
    }
  } finally {
    await from.close();
    await to.close();
  }
}

/**
 * Writes the image to `outPath` via a temporary file renamed at the end: a failed build leaves no
 * half-written image behind. The data partition stays a hole (sparse) in the file.
 */
export async function writeDiskImage(inp: DiskInputs, slotVolume: Buffer, outPath: string): Promise<DiskLayout> {
  const layout = diskLayout(inp.board, inp.identity);
  const [p1, p2, p3] = layout.partitions;
  const boot = buildFat32({
    sizeBytes: p1!.sizeLba * SECTOR_SIZE,
    volumeLabel: 'UZBOOT',
    volumeId: stableId(inp.identity, 'boot'),
    mtime: new Date(inp.buildEpoch * 1000),
    files: inp.bootFiles,
    hiddenSectors: p1!.startLba,
  });
  const mbr = buildMbr({
    diskSignature: layout.diskSignature,
    partitions: layout.partitions.map((p) => ({ startLba: p.startLba, sizeLba: p.sizeLba, type: p.type, bootable: p.index === 1 })),
  });
  await mkdir(dirname(outPath), { recursive: true });
  const tmp = `${outPath}.partial`;
  const fh = await open(tmp, 'w');
  try {
    await fh.truncate(layout.sizeBytes);
    await fh.write(mbr, 0, mbr.length, 0);
    await writeSparse(fh, boot, p1!.startLba * SECTOR_SIZE);
    // Slot B starts life as a copy of A: a board whose A is damaged before its first update still boots.
    // The volume carries A's hidden-sector value; FAT drivers in Linux and U-Boot ignore it for partitions.
    await writeSparse(fh, slotVolume, p2!.startLba * SECTOR_SIZE);
    await writeSparse(fh, slotVolume, p3!.startLba * SECTOR_SIZE);
    await fh.sync();
  } catch (e) {
    await fh.close();
    await rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  await rename(tmp, outPath);
  return layout;
}
