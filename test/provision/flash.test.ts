/**
 * `uz flash`: writes to a regular file standing in for a card and verifies it; every refusal is exercised
 * with a staged host (fake /proc/mounts and /sys/class/block through linuxHostProbe's injectable paths) and
 * once against this machine's real system disk.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { explainOpenError, flashImage, linuxHostProbe, parseMounts, planFlash, type HostProbe } from '../../firmware/provision/flash.js';
import { isUzError } from '../../lib/errors.js';
import { makeTestImage, tempDir, uz } from './helpers.js';

let tmp: { dir: string; cleanup: () => void };
let image: string;
let imageSize: number;
let imageSha: string;

beforeAll(async () => {
  tmp = tempDir('flash');
  image = join(tmp.dir, 'rpi4.img');
  const layout = await makeTestImage(image);
  imageSize = layout.sizeBytes;
  imageSha = createHash('sha256').update(readFileSync(image)).digest('hex');
});
afterAll(() => tmp.cleanup());

function target(name: string, size: number, fill = 0x5a): string {
  const p = join(tmp.dir, name);
  writeFileSync(p, Buffer.alloc(Math.min(size, 4096), fill));
  truncateSync(p, size);
  return p;
}

/**
 * A staged host: /sys/class/block with disks sda (the system disk: sda1 on /boot, sda2 on /), sdz (the
 * "card", whose partitions we may mount) and a dm-0 on top of sdy1 — and a /proc/mounts we write per test.
 * `card` (a regular file) is presented as /dev/sdz.
 */
function stagedHost(mounts: string, card: string, cardName = 'sdz'): HostProbe {
  const sys = join(tmp.dir, `sys-${Math.random().toString(36).slice(2)}`);
  const dev = (disk: string, parts: string[], sizeSectors: number) => {
    const d = join(sys, 'devices', 'pci0', 'block', disk);
    mkdirSync(join(d, 'device'), { recursive: true });
    writeFileSync(join(d, 'size'), `${sizeSectors}\n`);
    writeFileSync(join(d, 'device', 'model'), `Model ${disk}\n`);
    mkdirSync(join(d, 'slaves'));
    mkdirSync(join(sys, 'class', 'block'), { recursive: true });
    symlinkSync(d, join(sys, 'class', 'block', disk));
    for (const p of parts) {
      mkdirSync(join(d, p));
      writeFileSync(join(d, p, 'partition'), '1\n');
      writeFileSync(join(d, p, 'size'), '2048\n');
      symlinkSync(join(d, p), join(sys, 'class', 'block', p));
    }
  };
  dev('sda', ['sda1', 'sda2'], 500_000_000);
  dev('sdz', ['sdz1', 'sdz2'], Math.ceil((imageSize * 2) / 512));
  dev('sdy', ['sdy1'], 1_000_000);
  dev('dm-0', [], 1000);
  symlinkSync(join(sys, 'class', 'block', 'sdy1'), join(sys, 'devices', 'pci0', 'block', 'dm-0', 'slaves', 'sdy1'));
  const procMounts = join(sys, 'mounts');
  writeFileSync(procMounts, mounts);
  const real = linuxHostProbe({ procMounts, sysfs: sys });
  return {
    ...real,
    blockDeviceName: async (p) => (p === card ? cardName : p.startsWith('/dev/') ? null : real.blockDeviceName(p)),
    mountPointDevice: async () => null,
  };
}

const SYSTEM = '/dev/sda2 / ext4 rw 0 0\n/dev/sda1 /boot vfat rw 0 0\nproc /proc proc rw 0 0\n';

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (isUzError(e)) return e.code;
    throw e;
  }
  return 'no error';
}

describe('flashImage', () => {
  it('writes to a file standing in for a card, fsyncs and verifies; bytes past the image are left alone', async () => {
    const t = target('card.bin', imageSize + 1024 * 1024, 0x77);
    const { open } = await import('node:fs/promises');
    const fh = await open(t, 'r+');
    await fh.write(Buffer.alloc(1024 * 1024, 0x66), 0, 1024 * 1024, imageSize);
    await fh.close();
    const progress: number[] = [];
    const r = await flashImage({ image, target: t, yes: true, onProgress: (p) => p.phase === 'write' && progress.push(p.done) });
    expect(r.verified).toBe(true);
    expect(r.sha256).toBe(imageSha);
    expect(r.device).toBeNull();
    expect(progress.at(-1)).toBe(imageSize);
    const written = readFileSync(t);
    expect(createHash('sha256').update(written.subarray(0, imageSize)).digest('hex')).toBe(imageSha);
    expect(written.length).toBe(imageSize + 1024 * 1024);
    expect(written.subarray(imageSize).equals(Buffer.alloc(1024 * 1024, 0x66))).toBe(true);
  });

  it('refuses a target smaller than the image, the image itself, and a missing target', async () => {
    expect(await codeOf(flashImage({ image, target: target('small.bin', imageSize - 512), yes: true }))).toBe('FLASH_TARGET_TOO_SMALL');
    expect(await codeOf(flashImage({ image, target: image, yes: true }))).toBe('FLASH_TARGET_IS_IMAGE');
    expect(await codeOf(flashImage({ image, target: join(tmp.dir, 'nope'), yes: true }))).toBe('FLASH_TARGET_NOT_FOUND');
  });

  it('requires confirmation: no --yes and no prompt → refused; a "no" answer → nothing written', async () => {
    const t = target('unconfirmed.bin', imageSize, 0x33);
    expect(await codeOf(flashImage({ image, target: t }))).toBe('FLASH_CONFIRM_REQUIRED');
    expect(await codeOf(flashImage({ image, target: t, confirm: async () => false }))).toBe('FLASH_ABORTED');
    expect(readFileSync(t).subarray(0, 16).equals(Buffer.alloc(16, 0x33))).toBe(true);
  });

  it('staged host: flashes the card when nothing of it is mounted', async () => {
    const t = target('sdz.bin', imageSize);
    const probe = stagedHost(SYSTEM, t);
    const plan = await planFlash(image, t, probe);
    expect(plan.device).toBe('sdz');
    expect(plan.description).toBe('Model sdz');
    expect(plan.targetBytes).toBeGreaterThanOrEqual(imageSize);
    const r = await flashImage({ image, target: t, yes: true, probe });
    expect(r.verified).toBe(true);
  });

  it('staged host: refuses the system disk (/ and /boot), also through device-mapper slaves', async () => {
    const t = target('sda.bin', imageSize, 0x11);
    expect(await codeOf(flashImage({ image, target: t, yes: true, probe: stagedHost(SYSTEM, t, 'sda') }))).toBe('FLASH_SYSTEM_DISK');
    // only /boot on it
    const bootOnly = '/dev/mapper/root / ext4 rw 0 0\n/dev/sda1 /boot vfat rw 0 0\n';
    expect(await codeOf(flashImage({ image, target: t, yes: true, probe: stagedHost(bootOnly, t, 'sda') }))).toBe('FLASH_SYSTEM_DISK');
    // root on dm-0, whose slave is sdy1: the card "sdy" is the system disk
    const lvm = '/dev/dm-0 / ext4 rw 0 0\n';
    expect(await codeOf(flashImage({ image, target: t, yes: true, probe: stagedHost(lvm, t, 'sdy') }))).toBe('FLASH_SYSTEM_DISK');
    expect(readFileSync(t).subarray(0, 16).equals(Buffer.alloc(16, 0x11))).toBe(true);
  });

  it('staged host: refuses a card with a mounted partition (also with a space in the mount point), and a partition', async () => {
    const t = target('sdz-mounted.bin', imageSize, 0x22);
    const mounted = `${SYSTEM}/dev/sdz1 /media/me/UZBOOT\\040copy vfat rw 0 0\n`;
    const err = await flashImage({ image, target: t, yes: true, probe: stagedHost(mounted, t) }).catch((e: unknown) => e);
    expect(isUzError(err, 'FLASH_TARGET_MOUNTED')).toBe(true);
    expect((err as Error).message).toContain('/media/me/UZBOOT copy');
    expect(await codeOf(flashImage({ image, target: t, yes: true, probe: stagedHost(SYSTEM, t, 'sdz2') }))).toBe('FLASH_TARGET_PARTITION');
    expect(readFileSync(t).subarray(0, 16).equals(Buffer.alloc(16, 0x22))).toBe(true);
    expect(parseMounts('a b c\n\n/dev/x /m\\011t y\n')).toEqual([{ source: 'a', mountpoint: 'b' }, { source: '/dev/x', mountpoint: '/m\tt' }]);
  });

  it('real host: the disk under / of this machine is refused before anything is opened for writing', async () => {
    const root = parseMounts(readFileSync('/proc/mounts', 'utf8')).filter((m) => m.mountpoint === '/').at(-1);
    const probe = linuxHostProbe();
    const rootDev = (root?.source.startsWith('/dev/') ? await probe.blockDeviceName(root.source).catch(() => null) : null) ?? (await probe.mountPointDevice('/'));
    expect(rootDev, 'this test needs / on a block device (see /proc/mounts)').toBeTruthy();
    const disk = (await probe.wholeDisks(rootDev!))[0]!;
    expect(await codeOf(flashImage({ image, target: `/dev/${disk}`, yes: true }))).toBe('FLASH_SYSTEM_DISK');
  });
});

describe('open errors', () => {
  it('explain what to do (the tests run as root, so EACCES itself cannot be provoked here)', () => {
    const err = (code: string) => {
      try {
        explainOpenError(Object.assign(new Error(code), { code }), '/dev/sdb', 'writing');
      } catch (e) {
        return e as Error & { code: string };
      }
      throw new Error('no error');
    };
    expect(err('EACCES')).toMatchObject({ code: 'FLASH_PERMISSION', message: expect.stringMatching(/run with sudo or add yourself to the disk group/) });
    expect(err('EPERM').code).toBe('FLASH_PERMISSION');
    expect(err('EBUSY').code).toBe('FLASH_TARGET_BUSY');
    expect(err('EROFS').code).toBe('FLASH_READ_ONLY');
    expect(err('EIO').code).toBe('FLASH_IO');
  });
});

describe('uz flash CLI', () => {
  it('flashes with --yes --json; refuses without --yes when there is no terminal', () => {
    const t = target('cli-card.bin', imageSize);
    let r = uz(tmp.dir, 'flash', image, t);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^uz: FLASH_CONFIRM_REQUIRED: /);
    r = uz(tmp.dir, 'flash', image, t, '--yes', '--json');
    expect(r.code, r.err).toBe(0);
    const j = JSON.parse(r.out);
    expect(j).toMatchObject({ sha256: imageSha, verified: true, imageBytes: imageSize });
    expect(r.err).toBe(''); // no progress bar without a terminal
    r = uz(tmp.dir, 'flash', image, target('cli-small.bin', 4096), '--yes');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^uz: FLASH_TARGET_TOO_SMALL: /);
  });
});
