/**
 * `uz provision`: writes uz-device.json into the boot-control partition (p1) of a unikernel-z disk image,
 * in place or into a copy. Only sectors of p1 that actually change are written; the MBR, the slots, the data
 * partition and the gaps between partitions stay byte-identical.
 */
import { constants } from 'node:fs';
import { copyFile, open, rm, stat } from 'node:fs/promises';
import { UzError } from '../../lib/errors.js';
import { addFat32File, readFat32 } from '../fs/fat32.js';
import { MBR_TYPE_FAT32_LBA, SECTOR_SIZE, parseMbr, type MbrPartition } from '../fs/mbr.js';
import { DEVICE_CONFIG_FILE, parseDeviceConfig, redactDeviceConfig, serializeDeviceConfig, type DeviceConfig, type DeviceConfigInput } from './config.js';

export const BOOT_LABEL = 'UZBOOT';
/** Compare/write granularity when putting p1 back. */
const BLOCK = 4096;

type Fh = Awaited<ReturnType<typeof open>>;

async function readExact(fh: Fh, length: number, position: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  if (done < length) throw new UzError('PROVISION_NOT_UZ_IMAGE', `image is truncated: wanted ${length} bytes at offset ${position}`, { position, length });
  return buf;
}

async function bootPartition(fh: Fh, path: string): Promise<{ part: MbrPartition; volume: Buffer }> {
  let mbr;
  try {
    mbr = parseMbr(await readExact(fh, SECTOR_SIZE, 0));
  } catch (e) {
    throw new UzError('PROVISION_NOT_UZ_IMAGE', `${path} has no valid MBR partition table: ${(e as Error).message}`, { path }, { cause: e });
  }
  const part = mbr.partitions.find((p) => p.index === 1);
  if (!part || (part.type !== MBR_TYPE_FAT32_LBA && part.type !== 0x0b)) {
    throw new UzError('PROVISION_NOT_UZ_IMAGE', `${path}: partition 1 is not a FAT32 boot-control partition`, { path });
  }
  const volume = await readExact(fh, part.sizeLba * SECTOR_SIZE, part.startLba * SECTOR_SIZE);
  let label: string;
  try {
    label = readFat32(volume).label;
  } catch (e) {
    throw new UzError('PROVISION_NOT_UZ_IMAGE', `${path}: partition 1 is not a readable FAT32 volume: ${(e as Error).message}`, { path }, { cause: e });
  }
  if (label.toUpperCase() !== BOOT_LABEL) {
    throw new UzError('PROVISION_NOT_UZ_IMAGE', `${path}: partition 1 is labelled "${label}", expected ${BOOT_LABEL} (not a unikernel-z image?)`, { path, label });
  }
  return { part, volume };
}

export interface ProvisionResult {
  image: string;
  file: string;
  bytes: number;
  replaced: boolean;
  /** Bytes of p1 rewritten (whole 4 KiB blocks that differ). */
  bytesWritten: number;
  partition: { index: number; startLba: number; sizeLba: number };
  /** The config with secrets replaced by "(set)": safe to print. */
  config: Record<string, unknown>;
}

/**
 * Writes `config` as uz-device.json into p1 of `image`, or of a new copy at `out` (never overwritten).
 * The config is validated first (PROVISION_CONFIG_INVALID, message without secrets).
 */
export async function provisionImage(o: { image: string; config: DeviceConfigInput; out?: string; mtime?: Date }): Promise<ProvisionResult> {
  const st = await stat(o.image).catch(() => null);
  if (st?.isBlockDevice()) {
    // The kernel may have its FAT mounted or cached; writing under it corrupts the card.
    throw new UzError('PROVISION_TARGET_IS_DEVICE', `${o.image} is a disk, not an image file: provision the image before flashing, or edit uz-device.json on the mounted UZBOOT drive`, { image: o.image });
  }
  const text = serializeDeviceConfig(o.config);
  const check = parseDeviceConfig(text);
  if (!check.ok) throw new UzError('PROVISION_CONFIG_INVALID', check.message, { field: check.field });
  const data = Buffer.from(text, 'utf8');

  let target = o.image;
  if (o.out !== undefined) {
    try {
      // A reflink where the filesystem can; a plain copy otherwise. Never over an existing file.
      await copyFile(o.image, o.out, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') throw new UzError('PROVISION_OUT_EXISTS', `${o.out} already exists; refusing to overwrite it`, { out: o.out });
      if (code === 'ENOENT') throw new UzError('PROVISION_NOT_FOUND', `cannot copy ${o.image} to ${o.out}: no such file or directory`, { image: o.image, out: o.out });
      throw e;
    }
    target = o.out;
  }
  try {
    let fh: Fh;
    try {
      fh = await open(target, 'r+');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new UzError('PROVISION_NOT_FOUND', `image ${target} not found`, { image: target });
      if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') throw new UzError('PROVISION_PERMISSION', `cannot open ${target} for writing (${code})`, { image: target });
      throw e;
    }
    try {
      const { part, volume } = await bootPartition(fh, target);
      const updated = Buffer.from(volume);
      const r = addFat32File(updated, DEVICE_CONFIG_FILE, data, { mtime: o.mtime });
      // Read back through the independent reader before anything touches the disk.
      if (!readFat32(updated).readFile(DEVICE_CONFIG_FILE).equals(data)) {
        throw new UzError('PROVISION_VERIFY_FAILED', 'uz-device.json did not read back identically from the updated volume');
      }
      const base = part.startLba * SECTOR_SIZE;
      let bytesWritten = 0;
      for (let off = 0; off < updated.length; off += BLOCK) {
        const end = Math.min(off + BLOCK, updated.length);
        if (updated.subarray(off, end).equals(volume.subarray(off, end))) continue;
        await fh.write(updated, off, end - off, base + off);
        bytesWritten += end - off;
      }
      await fh.sync();
      const parsed = parseDeviceConfig(text) as { ok: true; config: DeviceConfig };
      return {
        image: target,
        file: DEVICE_CONFIG_FILE,
        bytes: data.length,
        replaced: r.replaced,
        bytesWritten,
        partition: { index: part.index, startLba: part.startLba, sizeLba: part.sizeLba },
        config: redactDeviceConfig(parsed.config),
      };
    } finally {
      await fh.close();
    }
  } catch (e) {
    if (o.out !== undefined) await rm(o.out, { force: true });
    throw e;
  }
}

export type CheckResult =
  | { ok: true; image: string; config: Record<string, unknown> }
  | { ok: false; image: string; code: 'DEVICE_CONFIG_INVALID' | 'DEVICE_CONFIG_MISSING'; field: string; message: string };

/** `uz provision --check`: reads uz-device.json from p1 and validates it exactly as the device will. */
export async function checkProvisionedImage(image: string): Promise<CheckResult> {
  let fh: Fh;
  try {
    fh = await open(image, 'r');
  } catch {
    throw new UzError('PROVISION_NOT_FOUND', `cannot open image ${image}`, { image });
  }
  try {
    const { volume } = await bootPartition(fh, image);
    const fat = readFat32(volume);
    const present = fat.list().some((e) => !e.isDir && e.path.toLowerCase() === DEVICE_CONFIG_FILE);
    if (!present) return { ok: false, image, code: 'DEVICE_CONFIG_MISSING', field: '(file)', message: `no ${DEVICE_CONFIG_FILE} in the boot-control partition (not provisioned)` };
    const r = parseDeviceConfig(fat.readFile(DEVICE_CONFIG_FILE));
    return r.ok ? { ok: true, image, config: redactDeviceConfig(r.config) } : { ok: false, image, code: r.code, field: r.field, message: r.message };
  } finally {
    await fh.close();
  }
}
