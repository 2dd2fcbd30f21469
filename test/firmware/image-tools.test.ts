/**
 * Real tools check what our TypeScript writers produced: sfdisk reads the MBR, fsck.fat checks every FAT
 * partition, mtools reads files back, cpio lists the initramfs. (Booting is in boot.test.ts.)
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync, readFileSync, mkdtempSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { ensureImage, readPartition, TEST_EPOCH, runDir } from '../helpers/images.js';
import { run } from '../fs/helpers.js';
import { readFat32 } from '../../firmware/fs/fat32.js';
import { inspectImage } from '../../firmware/inspect.js';
import { buildImage } from '../../firmware/build.js';
import { readCpio } from '../../firmware/initramfs/cpio.js';

const tmp = mkdtempSync(join(tmpdir(), 'uz-imgtools-'));

function fsckPartition(buf: Buffer, name: string): void {
  const f = join(tmp, `${name}.fat`);
  writeFileSync(f, buf);
  const r = run('fsck.fat', ['-n', '-v', f]);
  expect(r.stdout + r.stderr).not.toMatch(/Dirty bit|differ|corrupt|Free cluster summary wrong/i);
  expect(r.status, r.stdout + r.stderr).toBe(0);
}

describe('qemu-virt image checked with real tools', () => {
  let image = '';
  beforeAll(async () => {
    image = (await ensureImage('qemu-virt')).image;
  }, 600_000);

  it('has the MBR layout sfdisk reads: boot-control, slot A, slot B, data', () => {
    const r = run('sfdisk', ['--json', image]);
    expect(r.status).toBe(0);
    const pt = JSON.parse(r.stdout).partitiontable;
    expect(pt.label).toBe('dos');
    expect(pt.partitions.map((p: { type: string }) => p.type)).toEqual(['c', 'c', 'c', '83']);
    expect(pt.partitions.map((p: { start: number }) => p.start % 8192)).toEqual([0, 0, 0, 0]); // 4 MiB aligned
  });

  it('passes fsck.fat on every FAT partition and mtools reads the slot files back', async () => {
    for (const [i, name] of [[1, 'boot'], [2, 'slotA'], [3, 'slotB']] as const) {
      const { buf, offset } = await readPartition(image, i);
      fsckPartition(buf, name);
      const listing = run('mdir', ['-i', `${image}@@${offset}`, '-/', '-b', '::']);
      expect(listing.status, listing.stderr).toBe(0);
      if (i > 1) {
        expect(listing.stdout).toMatch(/::\/Image/);
        expect(listing.stdout).toMatch(/::\/initrd\.img/);
        const out = join(tmp, `Image-${name}`);
        expect(run('mcopy', ['-n', '-i', `${image}@@${offset}`, '::/Image', out]).status).toBe(0);
        const fat = readFat32(buf);
        expect(createHash('sha256').update(readFileSync(out)).digest('hex')).toBe(createHash('sha256').update(fat.readFile('Image')).digest('hex'));
      } else {
        expect(listing.stdout).toMatch(/::\/boot\.scr/);
        expect(listing.stdout).toMatch(/::\/uzboot\.env/);
      }
    }
  });

  it('holds an initramfs that cpio lists, with init, busybox, node, the agent and the app', async () => {
    const { buf } = await readPartition(image, 2);
    const cpioFile = join(tmp, 'initrd.cpio');
    // The emulated board stores the archive uncompressed (its CPU is slow, its "card" fast: docs/boards.md).
    const stored = readFat32(buf).readFile('initrd.img');
    expect(stored.subarray(0, 6).toString('latin1')).toBe('070701');
    writeFileSync(cpioFile, stored);
    const r = run('cpio', ['-t', '--quiet', '-F', cpioFile]);
    expect(r.status, r.stderr).toBe(0);
    const files = new Set(r.stdout.split('\n'));
    for (const f of ['init', 'etc/inittab', 'etc/uz/rcS', 'usr/bin/busybox', 'usr/bin/node', 'usr/sbin/mke2fs', 'usr/sbin/e2fsck', 'opt/uz/agent.mjs', 'opt/uz/agent.blob', 'usr/lib/uz/node-runtime.blob', 'opt/app/demo-node.mjs', 'etc/uz/app/config.json', 'dev/console', 'lib']) {
      expect(files.has(f), `${f} in initramfs`).toBe(true);
    }
    // Trimmed from Debian's packages: glibc's iconv modules, and /usr/share/nodejs except what libnode loads.
    expect([...files].some((f) => f.includes('/gconv/'))).toBe(false);
    expect([...files].filter((f) => f.startsWith('usr/share/nodejs/') && f.endsWith('.js')).sort()).toEqual([
      'usr/share/nodejs/acorn-walk/dist/walk.js',
      'usr/share/nodejs/acorn/dist/acorn.js',
      'usr/share/nodejs/cjs-module-lexer/dist/lexer.js',
      'usr/share/nodejs/cjs-module-lexer/lexer.js',
      'usr/share/nodejs/minimatch/dist/cjs/index.bundle.js',
      'usr/share/nodejs/undici/undici-fetch.js',
    ]);
    // No login, no getty, no package manager, no ssh.
    for (const f of ['usr/bin/login', 'usr/sbin/getty', 'usr/bin/dpkg', 'usr/bin/apt', 'usr/sbin/sshd', 'usr/sbin/dropbear']) expect(files.has(f), f).toBe(false);
    const entries = readCpio(readFileSync(cpioFile));
    // Network and watchdog modules load after the data partition is mounted (board lateModules), off the
    // path to the workload's start; the disk's modules before.
    const listed = (p: string) => entries.find((e) => e.path === p)!.data.toString().split('\n').filter(Boolean).map((l) => l.split('/').pop());
    expect(listed('etc/uz/modules.list')).toEqual(expect.arrayContaining(['virtio_blk.ko', 'ext4.ko', 'vfat.ko']));
    expect(listed('etc/uz/modules.list')).not.toContain('virtio_net.ko');
    expect(listed('etc/uz/modules-late.list')).toEqual(expect.arrayContaining(['virtio_net.ko', 'i6300esb.ko'])); // af_packet is built in
    const inittab = entries.find((e) => e.path === 'etc/inittab')!.data.toString();
    expect(inittab).toContain('::respawn:/etc/uz/agent');
    expect(inittab).not.toContain('askfirst'); // no console shell in a release build
  });

  it('is described by uz inspect', async () => {
    const r = await inspectImage(image);
    expect(r.partitions.map((p) => p.role)).toEqual(['boot-control', 'slot-A', 'slot-B', 'data']);
    expect(r.bootControl).toMatchObject({ scheme: 'uboot-bootcount', state: { order: ['A', 'B'], left: { A: 3, B: 3 } } });
    expect(r.slots.map((s) => (s.release as { version: string }).version)).toEqual(['1.0.0', '1.0.0']);
    expect(r.slots[0]!.release).toMatchObject({ startupSnapshots: { cpu: 'cortex-a72', agent: true, workload: true } });
    expect(r.data).toEqual({ blank: true, ext4: false });
  });

  it('is bit-identical when built again from the same inputs and SOURCE_DATE_EPOCH', async () => {
    const again = await buildImage({ board: 'qemu-virt', app: 'demo', version: '1.0.0', outDir: join(runDir(), 'repro'), sourceDateEpoch: TEST_EPOCH });
    const h = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
    expect(h(again.image)).toBe(h(image));
  }, 300_000);
});

describe('Raspberry Pi images (layout and contents; booting needs hardware)', () => {
  it('rpi4: Pi 4 firmware -> U-Boot in p1 with the bootcount script; kernel and Pi 4 DTBs in each slot', async () => {
    const { image } = await ensureImage('rpi4');
    const { buf } = await readPartition(image, 1);
    fsckPartition(buf, 'rpi4-boot');
    const boot = readFat32(buf);
    const names = boot.list().map((e) => e.path);
    for (const f of ['start4.elf', 'fixup4.dat', 'u-boot.bin', 'config.txt', 'boot.scr', 'uzboot.env', 'bcm2711-rpi-4-b.dtb']) expect(names, f).toContain(f);
    const config = boot.readFile('config.txt').toString();
    expect(config).toMatch(/^kernel=u-boot\.bin$/m);
    expect(config).toMatch(/^arm_64bit=1$/m);
    for (const i of [2, 3]) {
      const { buf: slotBuf } = await readPartition(image, i);
      fsckPartition(slotBuf, `rpi4-p${i}`);
      const slot = readFat32(slotBuf).list().map((e) => e.path);
      for (const f of ['Image', 'initrd.img', 'broadcom/bcm2711-rpi-4-b.dtb', 'broadcom/bcm2711-rpi-400.dtb', 'broadcom/bcm2711-rpi-cm4-io.dtb']) expect(slot, f).toContain(f);
      // A real board reads the slot from an SD card: the initramfs is gzip'd, and it is still a cpio archive.
      const rd = gunzipSync(readFat32(slotBuf).readFile('initrd.img'));
      expect(rd.subarray(0, 6).toString('latin1')).toBe('070701');
    }
  }, 600_000);

  it('rpi5: tryboot autoboot.txt, and config.txt, cmdline.txt, kernel_2712.img and the bcm2712 DTB in each slot', async () => {
    const { image } = await ensureImage('rpi5');
    expect(readFat32((await readPartition(image, 1)).buf).readFile('autoboot.txt').toString()).toBe('[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n');
    for (const i of [2, 3]) {
      const { buf } = await readPartition(image, i);
      fsckPartition(buf, `rpi5-p${i}`);
      const fat = readFat32(buf);
      const names = fat.list().map((e) => e.path);
      for (const f of ['kernel_2712.img', 'initrd.img', 'config.txt', 'cmdline.txt', 'bcm2712-rpi-5-b.dtb']) expect(names).toContain(f);
      const config = fat.readFile('config.txt').toString();
      expect(config).toMatch(/^kernel=kernel_2712\.img$/m);
      expect(config).toMatch(/^initramfs initrd\.img followkernel$/m);
      expect(fat.readFile('cmdline.txt').toString()).toMatch(/console=ttyAMA10,115200 .*panic=5/);
    }
  }, 600_000);

  it('rpi3: Pi firmware -> U-Boot in p1 with the bootcount script; kernel and DTBs in the slots', async () => {
    const { image } = await ensureImage('rpi3');
    const { buf } = await readPartition(image, 1);
    fsckPartition(buf, 'rpi3-boot');
    const boot = readFat32(buf);
    const names = boot.list().map((e) => e.path);
    for (const f of ['bootcode.bin', 'start.elf', 'fixup.dat', 'u-boot.bin', 'config.txt', 'boot.scr', 'uzboot.env', 'bcm2837-rpi-3-b.dtb']) expect(names).toContain(f);
    expect(boot.readFile('config.txt').toString()).toMatch(/^kernel=u-boot\.bin$/m);
    expect(boot.readFile('boot.scr').subarray(72).toString()).toContain('load mmc 0:${uz_part}');
    const slot = readFat32((await readPartition(image, 2)).buf).list().map((e) => e.path);
    for (const f of ['Image', 'initrd.img', 'broadcom/bcm2837-rpi-3-b.dtb', 'broadcom/bcm2837-rpi-3-b-plus.dtb']) expect(slot).toContain(f);
  }, 600_000);
});
