/**
 * `uz flash <img> <device>`: writes a disk image to an SD card / USB disk (or a regular file standing in
 * for one), fsyncs, reads it back and compares SHA-256 over the image's length.
 *
 * Refuses, before opening anything for writing:
 *   - the host's system disk (the disk(s) under `/`, `/boot`, `/boot/firmware`, `/boot/efi`, `/usr`, found
 *     from /proc/mounts, the mount point's device number and /sys/class/block, through dm/md slaves);
 *   - a disk with any mounted partition (or mounted itself), and a partition instead of a whole disk;
 *   - a target smaller than the image, and the image itself.
 * Block devices are opened O_EXCL, so the kernel also refuses a disk that is in use (swap, RAID, mounted
 * behind our back). All system look-ups go through a HostProbe, so tests can stage any host.
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readFile, readdir, readlink, realpath, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { UzError } from '../../lib/errors.js';

const MiB = 1024 * 1024;
const CHUNK = 4 * MiB;
/** Block devices: flush every this many bytes so progress reflects the card, not the page cache. */
const SYNC_EVERY = 64 * MiB;
const SYSTEM_MOUNTS = ['/', '/boot', '/boot/firmware', '/boot/efi', '/usr'];

export interface HostProbe {
  /** Kernel name of the block device at `path` (sdb, mmcblk0, …), null for a regular file. Throws ENOENT. */
  blockDeviceName(path: string): Promise<string | null>;
  /** Whether /sys/class/block/<name> exists. */
  knownBlockDevice(name: string): Promise<boolean>;
  /** True for a partition (sdb1, mmcblk0p1). */
  isPartition(name: string): Promise<boolean>;
  /** Whole disks under a block device: itself, its parent disk, or (dm/md) its slaves' disks. */
  wholeDisks(name: string): Promise<string[]>;
  /** Capacity of a block device in bytes. */
  blockDeviceSize(name: string): Promise<number>;
  /** Vendor/model text for the confirmation prompt, if the kernel knows it. */
  describe(name: string): Promise<string | null>;
  /** Text of /proc/mounts. */
  readMounts(): Promise<string>;
  /** Block device holding a mount point (by its device number), or null. */
  mountPointDevice(mountpoint: string): Promise<string | null>;
}

function majorMinor(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

/** The real Linux host. Paths are injectable so tests can stage a fake /proc/mounts and /sys. */
export function linuxHostProbe(o: { procMounts?: string; sysfs?: string } = {}): HostProbe {
  const sysfs = o.sysfs ?? '/sys';
  const procMounts = o.procMounts ?? '/proc/mounts';
  const classDir = (name: string) => join(sysfs, 'class', 'block', name);
  const exists = (p: string) => stat(p).then(() => true, () => false);
  const byDevNumber = async (dev: bigint): Promise<string | null> => {
    try {
      return basename(await readlink(join(sysfs, 'dev', 'block', majorMinor(dev))));
    } catch {
      return null;
    }
  };
  const probe: HostProbe = {
    async blockDeviceName(path) {
      const st = await stat(path, { bigint: true });
      if (st.isFile()) return null;
      if (!st.isBlockDevice()) throw new UzError('FLASH_TARGET_INVALID', `${path} is neither a block device nor a regular file`, { target: path });
      if (process.platform !== 'linux') {
        throw new UzError('FLASH_UNSUPPORTED_OS', `uz flash writes to disks on Linux only; on ${process.platform} use Raspberry Pi Imager (docs/flashing.md)`, { target: path });
      }
      const name = await byDevNumber(st.rdev);
      return name ?? basename(await realpath(path));
    },
    knownBlockDevice: (name) => exists(classDir(name)),
    isPartition: (name) => exists(join(classDir(name), 'partition')),
    async wholeDisks(name) {
      const seen = new Set<string>();
      const walk = async (n: string, depth: number): Promise<string[]> => {
        if (depth > 16 || seen.has(n)) return [];
        seen.add(n);
        if (await exists(join(classDir(n), 'partition'))) {
          const parent = basename(dirname(await realpath(classDir(n))));
          return walk(parent, depth + 1);
        }
        const slaves = await readdir(join(classDir(n), 'slaves')).catch(() => [] as string[]);
        if (slaves.length) return (await Promise.all(slaves.map((s) => walk(s, depth + 1)))).flat();
        return [n];
      };
      return [...new Set(await walk(name, 0))];
    },
    async blockDeviceSize(name) {
      const sectors = Number((await readFile(join(classDir(name), 'size'), 'utf8')).trim());
      return sectors * 512;
    },
    async describe(name) {
      const read = (f: string) => readFile(join(classDir(name), 'device', f), 'utf8').then((s) => s.trim(), () => '');
      const text = `${await read('vendor')} ${await read('model')}`.trim();
      return text || null;
    },
    readMounts: () => readFile(procMounts, 'utf8'),
    async mountPointDevice(mountpoint) {
      try {
        return await byDevNumber((await stat(mountpoint, { bigint: true })).dev);
      } catch {
        return null;
      }
    },
  };
  return probe;
}

interface MountEntry {
  source: string;
  mountpoint: string;
}

/** /proc/mounts lines; octal escapes (\040 for space) decoded. */
export function parseMounts(text: string): MountEntry[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 2 && f[0] !== '')
    .map((f) => ({ source: unescape(f[0]!), mountpoint: unescape(f[1]!) }));
}

async function mountSourceDevice(probe: HostProbe, m: MountEntry): Promise<string | null> {
  if (m.source.startsWith('/dev/')) {
    const byPath = await probe.blockDeviceName(m.source).catch(() => null);
    if (byPath) return byPath;
    const name = basename(m.source);
    if (await probe.knownBlockDevice(name)) return name;
  }
  // /dev/root and friends: ask the mount point itself (only for the system mounts: stat on a dead NFS
  // mount could hang).
  if (SYSTEM_MOUNTS.includes(m.mountpoint)) return probe.mountPointDevice(m.mountpoint);
  return null;
}

export interface FlashPlan {
  image: string;
  target: string;
  imageBytes: number;
  targetBytes: number;
  /** Kernel name of the target disk, null for a regular file. */
  device: string | null;
  description: string | null;
}

/** All the refusals, without writing anything. */
export async function planFlash(image: string, target: string, probe: HostProbe = linuxHostProbe()): Promise<FlashPlan> {
  let ist;
  try {
    ist = await stat(image);
  } catch {
    throw new UzError('FLASH_IMAGE_NOT_FOUND', `image ${image} not found`, { image });
  }
  if (!ist.isFile() || ist.size === 0) throw new UzError('FLASH_IMAGE_NOT_FOUND', `image ${image} is not a non-empty regular file`, { image });
  let tst;
  try {
    tst = await stat(target);
  } catch {
    throw new UzError('FLASH_TARGET_NOT_FOUND', `target ${target} not found (list disks with: lsblk -d -o NAME,SIZE,MODEL,TRAN)`, { target });
  }
  if (tst.dev === ist.dev && tst.ino === ist.ino) throw new UzError('FLASH_TARGET_IS_IMAGE', `${target} is the image itself`, { target });
  const device = await probe.blockDeviceName(target);
  if (device === null && !tst.isFile()) throw new UzError('FLASH_TARGET_INVALID', `${target} is neither a block device nor a regular file`, { target });

  let targetDisks: string[] = [];
  if (device !== null) {
    if (await probe.isPartition(device)) {
      const parent = (await probe.wholeDisks(device))[0];
      throw new UzError('FLASH_TARGET_PARTITION', `${target} is a partition; flash the whole disk${parent ? ` (/dev/${parent})` : ''}`, { target, device });
    }
    targetDisks = await probe.wholeDisks(device);
  }

  if (targetDisks.length) {
    let mountsText: string;
    try {
      mountsText = await probe.readMounts();
    } catch (e) {
      throw new UzError('FLASH_PROBE_FAILED', `cannot read the mount table (/proc/mounts): ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}; refusing to write blind`, { target }, { cause: e });
    }
    const mounts = parseMounts(mountsText);
    const systemDisks = new Set<string>();
    for (const mp of SYSTEM_MOUNTS) {
      const devs: Array<string | null> = [];
      for (const m of mounts.filter((x) => x.mountpoint === mp)) devs.push(await mountSourceDevice(probe, m));
      if (mp === '/' || mp === '/boot') devs.push(await probe.mountPointDevice(mp));
      for (const d of devs) if (d) for (const w of await probe.wholeDisks(d)) systemDisks.add(w);
    }
    const hit = targetDisks.find((d) => systemDisks.has(d));
    if (hit) {
      throw new UzError('FLASH_SYSTEM_DISK', `${target} (${hit}) holds this computer's running system (/ or /boot); refusing to overwrite it`, { target, device: hit });
    }
    const mounted: string[] = [];
    for (const m of mounts) {
      const d = await mountSourceDevice(probe, m);
      if (!d) continue;
      const disks = await probe.wholeDisks(d);
      if (disks.some((x) => targetDisks.includes(x))) mounted.push(`${m.source} on ${m.mountpoint}`);
    }
    if (mounted.length) {
      throw new UzError('FLASH_TARGET_MOUNTED', `${target} has mounted partitions: ${mounted.join(', ')}; unmount them first (sudo umount …)`, { target, mounted });
    }
  }

  const targetBytes = device !== null ? await probe.blockDeviceSize(device) : tst.size;
  if (targetBytes < ist.size) {
    throw new UzError(
      'FLASH_TARGET_TOO_SMALL',
      `${target} holds ${targetBytes} bytes but the image needs ${ist.size}` + (device === null ? ' (a file target must already be at least as large as the image, like a card)' : ''),
      { target, targetBytes, imageBytes: ist.size },
    );
  }
  return { image, target, imageBytes: ist.size, targetBytes, device, description: device !== null ? await probe.describe(device) : null };
}

export interface FlashProgress {
  phase: 'write' | 'verify';
  done: number;
  total: number;
}

export interface FlashResult extends FlashPlan {
  sha256: string;
  verified: boolean;
  writeSeconds: number;
  verifySeconds: number;
}

export interface FlashOptions {
  image: string;
  target: string;
  /** Skip the confirmation. Without it `confirm` must approve (FLASH_CONFIRM_REQUIRED otherwise). */
  yes?: boolean;
  confirm?: (plan: FlashPlan) => Promise<boolean>;
  /** Read back and compare (default true). */
  verify?: boolean;
  probe?: HostProbe;
  onProgress?: (p: FlashProgress) => void;
}

/** Turns an open() failure into a coded error that says what to do (EACCES → sudo / disk group). */
export function explainOpenError(e: unknown, target: string, mode: string): never {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'EACCES' || code === 'EPERM') {
    throw new UzError('FLASH_PERMISSION', `cannot open ${target} for ${mode}: permission denied; run with sudo or add yourself to the disk group (sudo usermod -aG disk $USER, then log in again)`, { target });
  }
  if (code === 'EBUSY') throw new UzError('FLASH_TARGET_BUSY', `${target} is in use (mounted, swap, RAID or another program); close it first`, { target });
  if (code === 'EROFS') throw new UzError('FLASH_READ_ONLY', `${target} is read-only (SD adapter lock switch?)`, { target });
  throw new UzError('FLASH_IO', `cannot open ${target} for ${mode}: ${code ?? (e as Error).message}`, { target }, { cause: e });
}

/** Plans (refusals), confirms, writes every byte, fsyncs, and verifies by reading back. */
export async function flashImage(o: FlashOptions): Promise<FlashResult> {
  const probe = o.probe ?? linuxHostProbe();
  const plan = await planFlash(o.image, o.target, probe);
  if (!o.yes) {
    if (!o.confirm) throw new UzError('FLASH_CONFIRM_REQUIRED', `writing ${o.target} erases it; pass --yes to confirm`, { target: o.target });
    if (!(await o.confirm(plan))) throw new UzError('FLASH_ABORTED', 'not confirmed; nothing was written', { target: o.target });
  }
  const isBlock = (await stat(o.target)).isBlockDevice();
  const src = await open(o.image, 'r');
  const chunkHashes: string[] = [];
  const whole = createHash('sha256');
  const t0 = Date.now();
  try {
    let dst;
    try {
      dst = await open(o.target, isBlock ? constants.O_RDWR | constants.O_EXCL : 'r+');
    } catch (e) {
      explainOpenError(e, o.target, 'writing');
    }
    try {
      const buf = Buffer.allocUnsafe(CHUNK);
      let sinceSync = 0;
      for (let pos = 0; pos < plan.imageBytes; ) {
        const want = Math.min(CHUNK, plan.imageBytes - pos);
        let got = 0;
        while (got < want) {
          const { bytesRead } = await src.read(buf, got, want - got, pos + got);
          if (bytesRead === 0) throw new UzError('FLASH_IO', `image ${o.image} changed size while flashing`, { image: o.image });
          got += bytesRead;
        }
        const chunk = buf.subarray(0, want);
        whole.update(chunk);
        chunkHashes.push(createHash('sha256').update(chunk).digest('hex'));
        let written = 0;
        while (written < want) {
          let bytesWritten: number;
          try {
            ({ bytesWritten } = await dst.write(chunk, written, want - written, pos + written));
          } catch (e) {
            throw new UzError('FLASH_IO', `write to ${o.target} failed at offset ${pos + written}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { target: o.target, offset: pos + written }, { cause: e });
          }
          if (bytesWritten === 0) throw new UzError('FLASH_IO', `${o.target} accepted no more data at offset ${pos + written} (card full or failing?)`, { target: o.target });
          written += bytesWritten;
        }
        pos += want;
        sinceSync += want;
        if (isBlock && sinceSync >= SYNC_EVERY) {
          await dst.datasync();
          sinceSync = 0;
        }
        o.onProgress?.({ phase: 'write', done: pos, total: plan.imageBytes });
      }
      try {
        await dst.sync();
      } catch (e) {
        throw new UzError('FLASH_IO', `fsync of ${o.target} failed: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { target: o.target }, { cause: e });
      }
    } finally {
      // For a block device the last close also drops the kernel's cached copy, so the read-back below
      // comes from the card.
      await dst.close();
    }
  } finally {
    await src.close();
  }
  const sha256 = whole.digest('hex');
  const writeSeconds = (Date.now() - t0) / 1000;
  const t1 = Date.now();
  if (o.verify === false) return { ...plan, sha256, verified: false, writeSeconds, verifySeconds: 0 };

  let rd;
  try {
    rd = await open(o.target, 'r');
  } catch (e) {
    explainOpenError(e, o.target, 'reading back');
  }
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    const back = createHash('sha256');
    for (let pos = 0, i = 0; pos < plan.imageBytes; i++) {
      const want = Math.min(CHUNK, plan.imageBytes - pos);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await rd.read(buf, got, want - got, pos + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      const chunk = buf.subarray(0, got);
      back.update(chunk);
      if (got < want || createHash('sha256').update(chunk).digest('hex') !== chunkHashes[i]) {
        throw new UzError('FLASH_VERIFY_FAILED', `read-back of ${o.target} differs from the image in bytes ${pos}..${pos + want - 1}; the card may be failing or fake-capacity`, {
          target: o.target,
          offset: pos,
        });
      }
      pos += want;
      o.onProgress?.({ phase: 'verify', done: pos, total: plan.imageBytes });
    }
    if (back.digest('hex') !== sha256) throw new UzError('FLASH_VERIFY_FAILED', `SHA-256 of ${o.target} differs from the image`, { target: o.target });
  } finally {
    await rd.close();
  }
  return { ...plan, sha256, verified: true, writeSeconds, verifySeconds: (Date.now() - t1) / 1000 };
}
