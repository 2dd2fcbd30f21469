import { describe, expect, it } from 'vitest';
import { writeCpio, readCpio, normalizeCpioPath } from '../../firmware/initramfs/cpio.js';
import { FileTree } from '../../firmware/initramfs/tree.js';
import { parseBoard, listBoards, getBoard } from '../../boards/index.js';
import { AppManifestSchema } from '../../firmware/apps/schema.js';
import { loadManifest, resolveApp, deepMerge, checkElf } from '../../firmware/apps/index.js';
import { formatBootEnv, parseBootEnv, FACTORY_STATE, bootScriptText, mkimageScript } from '../../firmware/boot/uboot-script.js';
import { autobootTxt, parseAutoboot } from '../../firmware/boot/tryboot.js';
import { kernelCommandLine } from '../../firmware/boot/cmdline.js';
import type { Board } from '../../boards/schema.js';
import { crc32 } from 'node:zlib';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

describe('cpio newc writer', () => {
  it('round-trips files, dirs, symlinks and device nodes with fixed metadata', () => {
    const buf = writeCpio(
      [
        { path: 'etc', type: 'dir' },
        { path: './etc/a.txt', type: 'file', data: Buffer.from('hello'), mode: 0o600 },
        { path: 'init', type: 'symlink', target: 'usr/bin/busybox' },
        { path: 'dev/console', type: 'chardev', major: 5, minor: 1 },
      ],
      1234,
    );
    const back = readCpio(buf);
    expect(back.map((e) => e.path)).toEqual(['etc', 'etc/a.txt', 'init', 'dev/console']);
    expect(back[1]!.data.toString()).toBe('hello');
    expect(back[1]!.mode).toBe(0o100600);
    expect(back[2]!.data.toString()).toBe('usr/bin/busybox');
    expect(back[3]!.rdev).toEqual([5, 1]);
    expect(buf.length % 4).toBe(0);
  });
  it('rejects paths that escape and duplicates', () => {
    expect(() => normalizeCpioPath('../etc/passwd')).toThrow(/escapes/);
    expect(() => writeCpio([{ path: 'a', type: 'dir' }, { path: './a', type: 'dir' }], 0)).toThrow(/duplicate/);
  });
  it('detects truncation when reading', () => {
    const buf = writeCpio([{ path: 'x', type: 'file', data: Buffer.alloc(100, 1) }], 0);
    expect(() => readCpio(buf.subarray(0, 150))).toThrow(/truncated|trailer/);
  });
});

describe('root filesystem tree (merged /usr)', () => {
  it('stores /lib and /bin content under /usr and keeps the links', () => {
    const t = new FileTree();
    t.file('lib/ld-linux-aarch64.so.1', 'x');
    t.file('bin/tool', 'y');
    expect(t.has('usr/lib/ld-linux-aarch64.so.1')).toBe(true);
    expect(t.get('lib')).toEqual({ type: 'symlink', target: 'usr/lib' });
    const entries = t.toCpioEntries();
    expect(entries.find((e) => e.path === 'lib')).toEqual({ path: 'lib', type: 'symlink', target: 'usr/lib' });
    expect(entries.map((e) => e.path)).toEqual([...entries.map((e) => e.path)].sort());
  });
  it('makes a clash between two packages an error', () => {
    const t = new FileTree();
    t.add('usr/bin/x', { type: 'file', mode: 0o755, data: Buffer.from('1') });
    expect(() => t.add('usr/bin/x', { type: 'file', mode: 0o755, data: Buffer.from('2') })).toThrow(/two sources/);
  });
});

describe('boards as data', () => {
  it('ships the five boards, all valid', () => {
    expect(listBoards().map((b) => b.id)).toEqual(['qemu-virt', 'rpi-zero-2w', 'rpi3', 'rpi4', 'rpi5']);
    expect(getBoard('rpi5').bootControl).toBe('rpi-tryboot');
    expect(getBoard('rpi4').bootControl).toBe('uboot-bootcount');
    expect(getBoard('rpi3').bootControl).toBe('uboot-bootcount');
  });
  it('rejects bad board files with a named field', () => {
    const good = JSON.parse(readFileSync('boards/qemu-virt.json', 'utf8'));
    expect(() => parseBoard({ ...good, id: 'Bad Id' }, 'x.json')).toThrow(/BOARD|id/);
    expect(() => parseBoard({ ...good, extra: 1 }, 'x.json')).toThrow(/extra|Unrecognized/i);
    expect(() => parseBoard({ ...good, bootControl: 'grub' }, 'x.json')).toThrow(/bootControl/);
    expect(() => parseBoard({ ...good, partitions: { bootMiB: 0, slotMiB: 1, dataMiB: 1 } }, 'x.json')).toThrow(/partitions\.bootMiB/);
    expect(() => getBoard('nope')).toThrow(/unknown board "nope"/);
  });
});

describe('app manifests', () => {
  it('loads the built-in apps', () => {
    for (const a of ['demo', 'storage-zapp', 'znnd']) expect(loadManifest(a).manifest.name).toBe(a);
    expect(loadManifest('storage-zapp').manifest.quota?.maxBytes).toBeGreaterThan(0);
  });
  it('keeps znnd RPC on loopback unless the operator opts in', () => {
    const fakeElf = Buffer.alloc(64);
    Buffer.from([0x7f, 0x45, 0x4c, 0x46]).copy(fakeElf);
    fakeElf.writeUInt16LE(183, 18);
    const r = resolveApp('znnd', { binaryBytes: fakeElf });
    const cfg = JSON.parse(r.config!.data.toString());
    expect(cfg.RPC.HTTPHost).toBe('127.0.0.1');
    expect(cfg.DataPath.startsWith('/data/')).toBe(true);
    const open = resolveApp('znnd', { binaryBytes: fakeElf, configOverrides: { RPC: { HTTPHost: '0.0.0.0' } } });
    const cfg2 = JSON.parse(open.config!.data.toString());
    expect(cfg2.RPC.HTTPHost).toBe('0.0.0.0');
    expect(cfg2.RPC.HTTPPort).toBe(35997);
  });
  it('rejects invalid manifests and wrong binaries with clear codes', () => {
    const base = JSON.parse(readFileSync('firmware/apps/demo/app.json', 'utf8'));
    expect(AppManifestSchema.safeParse({ ...base, dataDir: '/etc/x' }).success).toBe(false);
    expect(AppManifestSchema.safeParse({ ...base, unknown: true }).success).toBe(false);
    expect(AppManifestSchema.safeParse({ ...base, ports: [{ port: 70000, protocol: 'tcp', purpose: '', exposed: false }] }).success).toBe(false);
    const dir = mkdtempSync(join(tmpdir(), 'uz-app-'));
    writeFileSync(join(dir, 'app.json'), JSON.stringify({ ...base, command: 'relative/path' }));
    expect(() => loadManifest(join(dir, 'app.json'))).toThrow(/APP_MANIFEST_INVALID|command/);
    writeFileSync(join(dir, 'bad.json'), '{nope');
    expect(() => loadManifest(join(dir, 'bad.json'))).toThrow(/not valid JSON/);
    expect(() => resolveApp('znnd')).toThrow(/needs its arm64 binary/);
    const x86 = Buffer.alloc(64);
    Buffer.from([0x7f, 0x45, 0x4c, 0x46]).copy(x86);
    x86.writeUInt16LE(62, 18);
    expect(() => checkElf(x86, 183, 'znnd')).toThrow(/ELF machine 62/);
    expect(() => checkElf(Buffer.from('#!/bin/sh\n'), 183, 'znnd')).toThrow(/not an ELF/);
  });
  it('deep-merges config overrides (arrays replace)', () => {
    expect(deepMerge({ a: { b: 1, c: [1] } }, { a: { c: [2] } })).toEqual({ a: { b: 1, c: [2] } });
  });
});

describe('U-Boot bootcount script and state', () => {
  it('formats and parses the env file, including U-Boot export output', () => {
    expect(parseBootEnv(formatBootEnv(FACTORY_STATE))).toEqual(FACTORY_STATE);
    expect(parseBootEnv('BOOT_ORDER=B A\nBOOT_A_LEFT=3\nBOOT_B_LEFT=0\n\0')).toEqual({ order: ['B', 'A'], left: { A: 3, B: 0 } });
    expect(parseBootEnv('garbage')).toBeNull();
    expect(parseBootEnv('BOOT_ORDER=A A\nBOOT_A_LEFT=1\nBOOT_B_LEFT=1')).toBeNull();
  });
  it('wraps the script as a legacy U-Boot script image with valid CRCs', () => {
    const img = mkimageScript(bootScriptText(getBoard('qemu-virt')), 'test', 1000);
    expect(img.readUInt32BE(0)).toBe(0x27051956);
    const h = Buffer.from(img.subarray(0, 64));
    const hcrc = h.readUInt32BE(4);
    h.writeUInt32BE(0, 4);
    expect(crc32(h) >>> 0).toBe(hcrc);
    expect(crc32(img.subarray(64)) >>> 0).toBe(img.readUInt32BE(24));
    expect(img[30]).toBe(6); // IH_TYPE_SCRIPT
    const text = img.subarray(72).toString();
    expect(text).toContain('fatwrite virtio 0:1');
    expect(text).toContain('setexpr BOOT_A_LEFT');
  });
  it('Pi U-Boot boards load the DTB from the slot', () => {
    const text = bootScriptText(getBoard('rpi3'));
    expect(text).toContain('load mmc 0:${uz_part} ${fdt_addr_r} ${fdtfile}');
  });
});

describe('kernel command line', () => {
  it('turns page-table isolation off on every shipped board (their cores have no Meltdown), and says so in boot.scr', () => {
    for (const b of listBoards()) expect(kernelCommandLine(b), b.id).toContain('kpti=0');
    expect(bootScriptText(getBoard('qemu-virt'))).toMatch(/setenv bootargs "console=ttyAMA0 [^"]*kpti=0/);
  });
  it('leaves it on for a core not known to be free of Meltdown (a Cortex-A75, say)', () => {
    const a75 = { ...getBoard('rpi4'), cpu: 'cortex-a75' } as unknown as Board;
    const line = kernelCommandLine(a75);
    expect(line).not.toContain('kpti=0');
    expect(line).toContain('cryptomgr.notests');
  });
});

describe('tryboot autoboot.txt', () => {
  it('selects the primary partition and the one-shot try partition', () => {
    expect(autobootTxt(2)).toBe('[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n');
    expect(parseAutoboot(autobootTxt(3))).toEqual({ primary: 3, tryboot: 2 });
    expect(parseAutoboot('[all]\n')).toBeNull();
  });
});

describe('arm64 Image header (the emulated board boots its initramfs in place above the kernel)', () => {
  it('reads image_size and refuses what is not an arm64 Image', async () => {
    const { arm64ImageSize, QEMU_KERNEL_ROOM } = await import('../../firmware/boot/uboot-script.js');
    const h = Buffer.alloc(64);
    h.writeBigUInt64LE(37n * 1048576n, 16);
    h.writeUInt32LE(0x644d5241, 56);
    expect(arm64ImageSize(h)).toBe(37 * 1048576);
    expect(arm64ImageSize(h)).toBeLessThan(QEMU_KERNEL_ROOM);
    expect(() => arm64ImageSize(Buffer.alloc(64))).toThrow(/not an arm64 Image/);
  });
});

describe('app manifest: nodeStartupSnapshot', () => {
  it('is only for a script run by the image Node.js', async () => {
    const { loadManifest } = await import('../../firmware/apps/index.js');
    const demo = loadManifest('demo').manifest;
    expect(demo.nodeStartupSnapshot).toBe(true);
    expect(AppManifestSchema.safeParse({ ...demo }).success).toBe(true);
    for (const bad of [{ command: '/usr/bin/busybox' }, { args: ['--max-old-space-size=64', '/opt/app/x.mjs'] }, { args: [] }]) {
      const r = AppManifestSchema.safeParse({ ...demo, ...bad });
      expect(r.success, JSON.stringify(bad)).toBe(false);
      expect(JSON.stringify(r.error?.issues)).toMatch(/nodeStartupSnapshot needs command \/usr\/bin\/node/);
    }
    expect(AppManifestSchema.safeParse({ ...demo, command: '/usr/bin/busybox', nodeStartupSnapshot: false }).success).toBe(true);
  });
});

describe('serial console lines', () => {
  it('splits a kernel message printed between a line and its newline, so markers still match', async () => {
    const { consoleLines } = await import('../../firmware/qemu.js');
    const torn = 'UZ-NET wifi ssid="uz lab-ap" state=failed reason=wrong-key[   35.047361] hrtimer: interrupt took 20408032 ns';
    expect(consoleLines(torn)).toEqual(['UZ-NET wifi ssid="uz lab-ap" state=failed reason=wrong-key', '[   35.047361] hrtimer: interrupt took 20408032 ns']);
    expect(consoleLines('[    1.581493] Run /init as init process')).toEqual(['[    1.581493] Run /init as init process']);
    expect(consoleLines('UZ-READY slot=A version=1.0.0')).toEqual(['UZ-READY slot=A version=1.0.0']);
  });
});
