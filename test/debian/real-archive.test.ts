/**
 * Against the real Debian archive (mirror from UZ_DEBIAN_MIRROR or the host's apt sources; the test FAILS with
 * the setup hint when neither names one — the builder needs a mirror anyway): the committed keys verify trixie's InRelease, and busybox-static from the committed lock downloads,
 * verifies and extracts to an aarch64 ELF.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isUzError } from '../../lib/errors.js';
import { extractDeb } from '../../firmware/debian/deb.js';
import { fetchBytes } from '../../firmware/debian/fetch.js';
import { verifyInRelease } from '../../firmware/debian/inrelease.js';
import { loadDebianKeys } from '../../firmware/debian/keys.js';
import { fetchLocked, readLock } from '../../firmware/debian/lock.js';
import { resolveMirror } from '../../firmware/debian/mirror.js';

// Throws DEB_MIRROR_UNSET (set UZ_DEBIAN_MIRROR to a Debian mirror's base URL) when no mirror is known.
const mirror = resolveMirror();
const cacheDir = mkdtempSync(join(tmpdir(), 'uz-deb-real-'));
afterAll(() => rmSync(cacheDir, { recursive: true, force: true }));

describe('real Debian archive', () => {
  it('verifies trixie InRelease with the committed Debian keys', async () => {
    const keys = await loadDebianKeys();
    expect(keys.length).toBeGreaterThanOrEqual(3);
    const text = (await fetchBytes(`${mirror}/dists/trixie/InRelease`, undefined, { timeoutMs: 20_000 })).toString('utf8');
    const v = await verifyInRelease(text, keys);
    expect(v.release.codename).toBe('trixie');
    expect(v.signers.length).toBeGreaterThan(0);
    expect(v.release.files.get('main/binary-arm64/Packages.xz')?.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(v.release.files.get('non-free-firmware/binary-arm64/Packages.xz')).toBeDefined();
    // One flipped byte in the signed text breaks it.
    const bad = text.replace('Codename: trixie', 'Codename: trixiX');
    const code = await verifyInRelease(bad, keys).then(
      () => 'verified',
      (e: unknown) => (isUzError(e) ? e.code : 'other'),
    );
    expect(code).toBe('DEB_SIGNATURE');
  }, 30_000);

  it('fetches busybox-static from the lock and extracts an aarch64 ELF', async () => {
    const lock = await readLock();
    const [deb] = await fetchLocked(lock, 'busybox', { cacheDir, progress: false, mirror });
    expect(deb?.name).toBe('busybox-static');
    const { control, entries } = await extractDeb(deb!.path, deb!);
    expect(control.Architecture).toBe('arm64');
    const bin = entries.find((e) => e.path === 'bin/busybox' || e.path === 'usr/bin/busybox');
    expect(bin?.type).toBe('file');
    const elf = bin!.data!;
    expect(elf.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
    expect(elf[4]).toBe(2); // ELFCLASS64
    expect(elf[5]).toBe(1); // little-endian
    expect(elf.readUInt16LE(18)).toBe(0xb7); // EM_AARCH64
  }, 30_000);
});
