/**
 * Will the real boards accept the start-up snapshots built for them under qemu-user?
 *
 * V8 (through Node) refuses a snapshot whose version tag differs from its own, and the tag includes the CPU
 * features V8 detected (`v8.cachedDataVersionTag()`; node then exits 14 and the image falls back to the plain
 * start). V8 takes those features from the ELF HWCAP bits. QEMU models every Cortex core with the crypto
 * extensions, which the Pi 3, 4 and Zero 2 W lack, so the snapshot is built on a CPU that differs from theirs.
 * Without the boards at hand, this test runs the image's own Node.js under qemu-user with the HWCAP bits
 * narrowed to exactly the SoC's (board `hwcaps`, by an LD_PRELOAD shim over getauxval compiled here) and
 * compares the tag with the one of the model the snapshot is built for.
 */
import { beforeAll, afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readLock, fetchLocked } from '../../firmware/debian/lock.js';
import { extractDeb } from '../../firmware/debian/deb.js';
import { FileTree } from '../../firmware/initramfs/tree.js';
import { addPackage } from '../../firmware/initramfs/compose.js';
import { findStaticQemuUser, stageNodeRuntime } from '../../firmware/node-snapshot.js';
import { listBoards } from '../../boards/index.js';
import { HWCAP_NAMES } from '../../boards/schema.js';

const CROSS_CC = 'aarch64-linux-gnu-gcc';

/** getauxval(AT_HWCAP) & UZ_HWCAP_KEEP, getauxval(AT_HWCAP2) & UZ_HWCAP2_KEEP. */
const SHIM_C = `#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/auxv.h>
unsigned long getauxval(unsigned long type) {
  static unsigned long (*real)(unsigned long);
  if (!real) real = (unsigned long (*)(unsigned long))dlsym(RTLD_NEXT, "getauxval");
  unsigned long v = real(type);
  const char *keep = type == AT_HWCAP ? getenv("UZ_HWCAP_KEEP") : type == AT_HWCAP2 ? getenv("UZ_HWCAP2_KEEP") : 0;
  return keep ? v & strtoul(keep, 0, 0) : v;
}
`;

const mask = (names: readonly string[]) => names.reduce((m, n) => m + 2 ** HWCAP_NAMES.indexOf(n as (typeof HWCAP_NAMES)[number]), 0);

let root = '';
let qemu = '';

/** V8's version tag as the image's Node.js computes it on `cpu`, with HWCAP narrowed to `hwcaps` if given. */
function v8Tag(cpu: string, hwcaps?: readonly string[]): string {
  const env = hwcaps ? ['-E', 'LD_PRELOAD=/hwcap-shim.so', '-E', `UZ_HWCAP_KEEP=${mask(hwcaps)}`, '-E', 'UZ_HWCAP2_KEEP=0'] : [];
  const r = spawnSync(qemu, ['-cpu', cpu, '-L', root, ...env, join(root, 'usr/bin/node'), '-p', "require('node:v8').cachedDataVersionTag()"], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
  });
  if (r.status !== 0) throw new Error(`node under qemu-aarch64 -cpu ${cpu} failed: ${r.stderr}`);
  return r.stdout.trim();
}

beforeAll(async () => {
  const cc = spawnSync(CROSS_CC, ['--version']);
  if (cc.error) throw new Error(`${CROSS_CC} is missing: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross`);
  qemu = await findStaticQemuUser();
  root = mkdtempSync(join(tmpdir(), 'uz-v8tag-'));
  const lock = await readLock();
  const tree = new FileTree();
  for (const d of await fetchLocked(lock, 'nodejs')) addPackage(tree, d.name, (await extractDeb(d.path, { name: d.name, version: d.version })).entries);
  await stageNodeRuntime(root, tree);
  writeFileSync(join(root, 'shim.c'), SHIM_C);
  const built = spawnSync(CROSS_CC, ['-shared', '-fPIC', '-O2', '-o', join(root, 'hwcap-shim.so'), join(root, 'shim.c'), '-ldl'], { encoding: 'utf8' });
  if (built.status !== 0) throw new Error(`compiling the HWCAP shim failed: ${built.stderr}`);
}, 300_000);

afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

describe("V8's CPU check on the real boards", () => {
  it('sees the shim: taking LSE atomics away from a Cortex-A76 changes the tag', () => {
    // Without this, a shim that changed nothing would make every comparison below pass.
    const a76 = ['fp', 'asimd', 'evtstrm', 'aes', 'pmull', 'sha1', 'sha2', 'crc32', 'atomics', 'fphp', 'asimdhp', 'cpuid', 'asimdrdm', 'lrcpc', 'dcpop', 'asimddp'];
    expect(v8Tag('cortex-a76', a76)).toBe(v8Tag('cortex-a76'));
    expect(v8Tag('cortex-a76', a76.filter((f) => f !== 'atomics'))).not.toBe(v8Tag('cortex-a76'));
  }, 120_000);

  const boards = listBoards().filter((b) => b.hwcaps);
  it('covers every Pi board', () => {
    expect(boards.map((b) => b.id).sort()).toEqual(['rpi-zero-2w', 'rpi3', 'rpi4', 'rpi5']);
  });

  for (const b of boards) {
    it(`${b.id}: the SoC's features (${b.hwcaps!.join(' ')}) give the tag of the ${b.cpu} the snapshot is built for`, () => {
      expect(v8Tag(b.cpu, b.hwcaps)).toBe(v8Tag(b.cpu));
    }, 120_000);
  }
});
