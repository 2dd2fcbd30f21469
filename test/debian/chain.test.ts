/**
 * The whole trust chain against a mini archive served on 127.0.0.1 and signed by a key made here:
 * signed InRelease → Packages.xz hash → lock → .deb hash → cache.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PrivateKey, PublicKey } from 'openpgp';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { isUzError } from '../../lib/errors.js';
import { extractDeb } from '../../firmware/debian/deb.js';
import { fetchBytes } from '../../firmware/debian/fetch.js';
import { verifyInRelease } from '../../firmware/debian/inrelease.js';
import {
  buildLock,
  fetchLocked,
  readLock,
  updateLock,
  type DebianLock,
  type LockSpec,
} from '../../firmware/debian/lock.js';
import { clearsign, listFiles, makeArchive, makeTestKey, serveArchive, sha256, type FixtureArchive, type FixtureServer } from './helpers.js';

const SUITE = 'trixie';
const fast = { backoffMs: 1, timeoutMs: 5_000, progress: false } as const;

const spec: LockSpec = {
  suite: SUITE,
  arch: 'arm64',
  archiveComponents: ['main'],
  components: {
    hello: { roots: ['hello'], mode: 'closure', exclude: ['dpkg'] },
  },
};

const packages = [
  {
    name: 'hello',
    version: '2.10-3',
    depends: 'libc6 (>= 2.34), dpkg',
    files: [
      { name: './usr/', type: 'directory' as const },
      { name: './usr/bin/', type: 'directory' as const },
      { name: './usr/bin/hello', data: 'hello world binary', mode: 0o755 },
    ],
  },
  { name: 'libc6', version: '2.41-12', files: [{ name: './lib/', type: 'directory' as const }] },
  { name: 'dpkg', version: '1.22' },
];

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (e) {
    return isUzError(e) ? e.code : `not UzError: ${String(e)}`;
  }
  return undefined;
}

let key: PrivateKey;
let pub: PublicKey;
let other: PrivateKey;
let archive: FixtureArchive;
let server: FixtureServer;
let work: string;
let cacheDir: string;
const savedMirror = process.env.UZ_DEBIAN_MIRROR;

beforeAll(async () => {
  ({ privateKey: key, publicKey: pub } = await makeTestKey());
  ({ privateKey: other } = await makeTestKey('someone else'));
  archive = await makeArchive(SUITE, packages, key);
  server = await serveArchive(new Map(archive.files));
  process.env.UZ_DEBIAN_MIRROR = `${server.url}/`;
  work = mkdtempSync(join(tmpdir(), 'uz-deb-chain-'));
});

afterAll(async () => {
  await server.close();
  rmSync(work, { recursive: true, force: true });
  if (savedMirror === undefined) delete process.env.UZ_DEBIAN_MIRROR;
  else process.env.UZ_DEBIAN_MIRROR = savedMirror;
});

let n = 0;
beforeEach(() => {
  // Fresh server state and a fresh cache for every test.
  server.files.clear();
  for (const [k, v] of archive.files) server.files.set(k, v);
  server.behaviour.clear();
  server.hits.clear();
  cacheDir = join(work, `cache-${++n}`);
});

async function lockNow(): Promise<DebianLock> {
  return buildLock(spec, { keys: [pub], ...fast });
}

describe('signature chain (local fixture archive)', () => {
  it('happy path: signed InRelease → Packages → lock → verified .deb in the cache', async () => {
    const lockPath = join(work, 'debian.lock.json');
    const lock = await updateLock(spec, { keys: [pub], path: lockPath, ...fast });
    expect(await readLock(lockPath)).toEqual(lock);
    expect(lock.generatedFrom.inReleaseSha256).toBe(sha256(archive.inRelease));
    const pk = lock.components.hello!.packages;
    expect(pk.map((p) => `${p.name}=${p.version}`)).toEqual(['hello=2.10-3', 'libc6=2.41-12']);
    expect(pk[0]!.sha256).toBe(sha256(archive.debs.get('hello')!.data));

    const got = await fetchLocked(lock, 'hello', { cacheDir, ...fast });
    expect(got.map((g) => g.name)).toEqual(['hello', 'libc6']);
    expect(listFiles(cacheDir)).toEqual(pk.map((p) => `sha256/${p.sha256}.deb`).sort());
    const deb = await extractDeb(got[0]!.path, got[0]!);
    const bin = deb.entries.find((e) => e.path === 'usr/bin/hello');
    expect(bin?.data?.toString()).toBe('hello world binary');
    expect(bin?.mode).toBe(0o755);

    // Second fetch is served from the cache: no new requests.
    const before = server.hits.get(archive.debs.get('hello')!.path);
    await fetchLocked(lock, 'hello', { cacheDir, ...fast });
    expect(server.hits.get(archive.debs.get('hello')!.path)).toBe(before);
  });

  it('refuses to roll the lock back to an older InRelease unless allowed', async () => {
    const lockPath = join(work, 'rollback.lock.json');
    await updateLock(spec, { keys: [pub], path: lockPath, ...fast });
    const old = await makeArchive(SUITE, packages, key, '', new Date(Date.now() - 30 * 86400e3));
    server.files.clear();
    for (const [k, v] of old.files) server.files.set(k, v);
    expect(await codeOf(updateLock(spec, { keys: [pub], path: lockPath, ...fast }))).toBe('DEB_RELEASE_INVALID');
    expect((await readLock(lockPath)).generatedFrom.inReleaseSha256).toBe(sha256(archive.inRelease));
    const rolled = await updateLock(spec, { keys: [pub], path: lockPath, allowOlder: true, ...fast });
    expect(rolled.generatedFrom.inReleaseSha256).toBe(sha256(old.inRelease));
  });

  it('tampered InRelease → DEB_SIGNATURE', async () => {
    const tampered = archive.inRelease.replace(/^Origin: Test$/m, 'Origin: Evil');
    expect(tampered).not.toBe(archive.inRelease);
    server.files.set(`/dists/${SUITE}/InRelease`, Buffer.from(tampered));
    expect(await codeOf(lockNow())).toBe('DEB_SIGNATURE');
  });

  it('InRelease signed by an untrusted key, or not signed → DEB_SIGNATURE', async () => {
    const byOther = await clearsign(archive.releaseText, other);
    expect(await codeOf(verifyInRelease(byOther, [pub]))).toBe('DEB_SIGNATURE');
    expect(await codeOf(verifyInRelease(archive.releaseText, [pub]))).toBe('DEB_SIGNATURE');
    expect(await codeOf(verifyInRelease(archive.inRelease, []))).toBe('DEB_SIGNATURE');
    // Only the signed part counts: text added around the signature block is not returned.
    const v = await verifyInRelease(`Codename: evil\n\n${archive.inRelease}`, [pub]);
    expect(v.release.codename).toBe(SUITE);
    expect(v.cleartext).toBe(archive.releaseText);
  });

  it('InRelease dated in the future or expired → DEB_RELEASE_INVALID', async () => {
    const future = await clearsign(archive.releaseText.replace(/^Date: .*$/m, `Date: ${new Date(Date.now() + 3 * 86400e3).toUTCString()}`), key);
    expect(await codeOf(verifyInRelease(future, [pub]))).toBe('DEB_RELEASE_INVALID');
    const expired = await clearsign(
      archive.releaseText.replace(/^(Date: .*)$/m, `$1\nValid-Until: ${new Date(Date.now() - 86400e3).toUTCString()}`),
      key,
    );
    expect(await codeOf(verifyInRelease(expired, [pub]))).toBe('DEB_RELEASE_INVALID');
  });

  it('Packages.xz changed → DEB_HASH_MISMATCH; a correct by-hash copy is used instead', async () => {
    const path = `/dists/${SUITE}/main/binary-arm64/Packages.xz`;
    const changed = Buffer.from(archive.packagesXz);
    changed[changed.length - 20]! ^= 0xff;
    server.files.set(path, changed);
    expect(await codeOf(lockNow())).toBe('DEB_HASH_MISMATCH');
    // Mirror caught mid-sync: the plain path is out of step but by-hash has the signed content.
    server.files.set(`/dists/${SUITE}/main/binary-arm64/by-hash/SHA256/${sha256(archive.packagesXz)}`, archive.packagesXz);
    const lock = await lockNow();
    expect(lock.components.hello!.packages).toHaveLength(2);
  });

  it('.deb changed → DEB_HASH_MISMATCH and nothing left in the cache', async () => {
    const lock = await lockNow();
    const { path, data } = archive.debs.get('hello')!;
    const changed = Buffer.from(data);
    changed[changed.length - 1]! ^= 0x01;
    server.files.set(path, changed);
    expect(await codeOf(fetchLocked(lock, 'hello', { cacheDir, ...fast, concurrency: 1 }))).toBe('DEB_HASH_MISMATCH');
    expect(listFiles(join(cacheDir, 'tmp'))).toEqual([]);
    expect(listFiles(cacheDir).filter((f) => f.includes(sha256(data)) || f.includes(sha256(changed)))).toEqual([]);
    // Longer than locked: also refused.
    server.files.set(path, Buffer.concat([data, Buffer.from('trailing')]));
    expect(await codeOf(fetchLocked(lock, 'hello', { cacheDir, ...fast }))).toBe('DEB_HASH_MISMATCH');
    expect(listFiles(join(cacheDir, 'tmp'))).toEqual([]);
  });

  it('truncated download → retried, then DEB_FETCH, nothing cached', async () => {
    const lock = await lockNow();
    const { path, data } = archive.debs.get('hello')!;
    server.behaviour.set(path, 'truncate');
    expect(await codeOf(fetchLocked(lock, 'hello', { cacheDir, ...fast, attempts: 3 }))).toBe('DEB_FETCH');
    expect(server.hits.get(path)).toBe(3);
    expect(listFiles(cacheDir).filter((f) => f.includes(sha256(data)))).toEqual([]);
    expect(listFiles(join(cacheDir, 'tmp'))).toEqual([]);
    // A short body with a consistent Content-Length is refused too.
    server.behaviour.clear();
    server.files.set(path, data.subarray(0, 100));
    expect(await codeOf(fetchBytes(`${server.url}${path}`, { sha256: sha256(data), size: data.length }, fast))).toBe('DEB_FETCH');
  });

  it('5xx is retried and can recover', async () => {
    const lock = await lockNow();
    const { path } = archive.debs.get('hello')!;
    server.behaviour.set(path, 'status500-once');
    const got = await fetchLocked(lock, 'hello', { cacheDir, ...fast, attempts: 3 });
    expect(got).toHaveLength(2);
    expect(server.hits.get(path)).toBe(2);
    server.behaviour.set(path, 'status500');
    expect(await codeOf(fetchBytes(`${server.url}${path}`, undefined, { ...fast, attempts: 2 }))).toBe('DEB_FETCH');
  });

  it('404 for a locked file → DEB_LOCK_STALE', async () => {
    const lock = await lockNow();
    server.files.delete(archive.debs.get('libc6')!.path);
    const code = await codeOf(fetchLocked(lock, 'hello', { cacheDir, ...fast }));
    expect(code).toBe('DEB_LOCK_STALE');
    expect(await codeOf(fetchLocked(lock, 'no-such-component', { cacheDir, ...fast }))).toBe('DEB_NOT_FOUND');
  });

  it('corrupt cache entry → re-downloaded', async () => {
    const lock = await lockNow();
    const { path, data } = archive.debs.get('hello')!;
    const first = await fetchLocked(lock, 'hello', { cacheDir, ...fast });
    expect(server.hits.get(path)).toBe(1);
    const cached = first.find((f) => f.name === 'hello')!.path;
    writeFileSync(cached, Buffer.alloc(data.length, 0x55)); // same size, wrong content
    const second = await fetchLocked(lock, 'hello', { cacheDir, ...fast });
    expect(server.hits.get(path)).toBe(2);
    expect(second.find((f) => f.name === 'hello')!.path).toBe(cached);
    expect(sha256(readFileSync(cached))).toBe(sha256(data));
  });

  it('a lock entry whose .deb is another package → DEB_PACKAGE_MISMATCH', async () => {
    const lock = await lockNow();
    const hello = lock.components.hello!.packages.find((p) => p.name === 'hello')!;
    const forged: DebianLock = structuredClone(lock);
    forged.components.hello!.packages = [{ ...hello, name: 'not-hello' }];
    expect(await codeOf(fetchLocked(forged, 'hello', { cacheDir, ...fast }))).toBe('DEB_PACKAGE_MISMATCH');
  });
});
