/**
 * The agent's V8 start-up snapshot (firmware/node-snapshot.ts): built by the image's own Node.js under
 * qemu-user, byte-for-byte reproducible, specific to the CPU it is built for; and on a board whose CPU V8
 * rejects it, the agent still starts (from its plain bundle) and the board still reaches UZ-READY.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readLock, fetchLocked } from '../../firmware/debian/lock.js';
import { extractDeb } from '../../firmware/debian/deb.js';
import { FileTree } from '../../firmware/initramfs/tree.js';
import { addPackage } from '../../firmware/initramfs/compose.js';
import { bundleAgentSnapshotScript } from '../../firmware/agent-bundle.js';
import { buildAgentSnapshot, findStaticQemuUser, isStaticElf, snapshotKey } from '../../firmware/node-snapshot.js';
import { buildImage } from '../../firmware/build.js';
import { getBoard } from '../../boards/index.js';
import { runQemu } from '../../firmware/qemu.js';
import { buildOnce, copyImage, runDir, TEST_EPOCH } from '../helpers/images.js';
import { tool } from '../fs/helpers.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('the agent start-up snapshot', () => {
  let tree: FileTree;
  let script: string;
  beforeAll(async () => {
    const lock = await readLock();
    tree = new FileTree();
    for (const d of await fetchLocked(lock, 'nodejs')) addPackage(tree, d.name, (await extractDeb(d.path, { name: d.name, version: d.version })).entries);
    script = await bundleAgentSnapshotScript();
  }, 300_000);

  it('finds a static qemu-aarch64 and tells static from dynamic ELF files', async () => {
    const qemu = await findStaticQemuUser();
    expect(isStaticElf(readFileSync(qemu))).toBe(true);
    expect(isStaticElf(readFileSync(process.execPath))).toBe(false); // the host's node is dynamically linked
    expect(isStaticElf(Buffer.from('#!/bin/sh\n'))).toBe(false);
  });

  it('says how to install qemu-user when there is none', async () => {
    await expect(findStaticQemuUser({ PATH: '/nonexistent' })).rejects.toThrow(/apt-get install qemu-user-static/);
    await expect(findStaticQemuUser({ PATH: '/nonexistent' })).rejects.toMatchObject({ code: 'SNAPSHOT_EMULATOR_MISSING' });
  });

  it('is the same bytes from two fresh builds, and differs per CPU', async () => {
    const caches = [0, 1, 2].map(() => mkdtempSync(join(tmpdir(), 'uz-snapcache-')));
    try {
      const a = await buildAgentSnapshot({ tree, script, cpu: 'cortex-a72', env: { ...process.env, UZ_CACHE_DIR: caches[0] } });
      const b = await buildAgentSnapshot({ tree, script, cpu: 'cortex-a72', env: { ...process.env, UZ_CACHE_DIR: caches[1] } });
      expect(a.length).toBeGreaterThan(1_000_000);
      expect(sha(a)).toBe(sha(b));
      // Cortex-A76 has LSE atomics: V8 bakes the CPU's features into what it accepts.
      const c = await buildAgentSnapshot({ tree, script, cpu: 'cortex-a76', env: { ...process.env, UZ_CACHE_DIR: caches[2] } });
      expect(sha(c)).not.toBe(sha(a));
      expect(snapshotKey({ tree, script, cpu: 'cortex-a76' })).not.toBe(snapshotKey({ tree, script, cpu: 'cortex-a72' }));
    } finally {
      for (const c of caches) rmSync(c, { recursive: true, force: true });
    }
  }, 300_000);

  it('is still built, with a warning and not cached, where user namespaces are not allowed', async () => {
    const cache = mkdtempSync(join(tmpdir(), 'uz-snapcache-'));
    try {
      const warnings: string[] = [];
      const env = { ...process.env, UZ_CACHE_DIR: cache, UZ_SNAPSHOT_NAMESPACES: '0' };
      const blob = await buildAgentSnapshot({ tree, script, cpu: 'cortex-a72', env, onWarn: (m) => warnings.push(m) });
      expect(blob.length).toBeGreaterThan(1_000_000);
      expect(warnings.join('\n')).toMatch(/not byte-for-byte reproducible/);
      expect(existsSync(join(cache, 'node-snapshot'))).toBe(false);
    } finally {
      rmSync(cache, { recursive: true, force: true });
    }
  }, 300_000);

  it('refuses, with the module named, a script that loads an unsnapshottable built-in while it is built', async () => {
    const bad = `${script}\nrequire('node:http').createServer;\n`;
    const cache = mkdtempSync(join(tmpdir(), 'uz-snapcache-'));
    try {
      await expect(buildAgentSnapshot({ tree, script: bad, cpu: 'cortex-a72', env: { ...process.env, UZ_CACHE_DIR: cache } })).rejects.toThrow(
        /node --build-snapshot of \/opt\/uz\/agent.blob failed[\s\S]*the agent uses node:http while its start-up snapshot is built/,
      );
    } finally {
      rmSync(cache, { recursive: true, force: true });
    }
  }, 300_000);

  it('runs the boot validation while it is built: an image info the agent would reject fails the build', async () => {
    // The warm-up (updater/device/warm-up.ts) parses the sample in the builder's Node.js; a sample that does
    // not validate must stop the build rather than ship a snapshot with the parsers still cold.
    const bad = await bundleAgentSnapshotScript({ imageInfo: { formatVersion: 1, board: 'qemu-virt' } });
    const cache = mkdtempSync(join(tmpdir(), 'uz-snapcache-'));
    try {
      await expect(buildAgentSnapshot({ tree, script: bad, cpu: 'cortex-a72', env: { ...process.env, UZ_CACHE_DIR: cache } })).rejects.toThrow(
        /agent snapshot warm-up: the image info does not validate/,
      );
    } finally {
      rmSync(cache, { recursive: true, force: true });
    }
  }, 300_000);
});

describe('a board whose CPU rejects the snapshot', () => {
  it('starts the agent from its plain bundle and still reaches UZ-READY', async () => {
    tool('qemu-system-aarch64');
    // The emulated board (Cortex-A72) with a snapshot made for a Cortex-A76, as a Pi whose core has other
    // features than the model the image was built for would see it.
    const board = { ...getBoard('qemu-virt'), cpu: 'cortex-a76' as const };
    const out = join(runDir(), 'qemu-virt-a76-snapshot');
    await buildOnce('qemu-virt-a76-snapshot', [join(out, 'qemu-virt-1.0.0.img')], () =>
      buildImage({ board, app: 'demo', version: '1.0.0', outDir: out, sourceDateEpoch: TEST_EPOCH }),
    );
    const img = await copyImage(join(out, 'qemu-virt-1.0.0.img'), 'a76snap');
    const r = await runQemu({ image: img, until: /^UZ-READY/, timeoutMs: 240_000 });
    const uz = r.lines.filter((l) => l.startsWith('UZ-'));
    expect(r.ok, `${uz.join('\n')}\n(${r.reason})`).toBe(true);
    expect(uz.some((l) => l.startsWith('UZ-WARN code=AGENT_SNAPSHOT_REJECTED'))).toBe(true);
    expect(uz.filter((l) => l.startsWith('UZ-AGENT start'))).toEqual(['UZ-AGENT start slot=A version=1.0.0 app=demo from=bundle']);
    rmSync(img, { force: true });
  }, 600_000);
});
