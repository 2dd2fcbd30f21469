// Device TUF client (updater/trust/): root rotation walk, freeze / replay / mixed-metadata detection,
// revoked release keys, persisted state. Host only; metadata served from memory.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { verifyBundleFile, writeBundle } from '../../firmware/bundle/index.js';
import { generateSigningKey } from '../../firmware/trust/keys.js';
import { parseRootMetadata } from '../../firmware/trust/root.js';
import { refreshTrust, trustPaths, tufTrustRefresher } from '../../updater/trust/refresh.js';
import { T0, days, memFetch, memStorage, newKeys, repoFiles, rootBytes, rootV1, rotate } from './trust-helpers.js';

const DIR = '/data/uz/trust';
const at = (d: Date) => () => d;
const codeOf = async (p: Promise<unknown>) => p.then(() => 'OK', (e: { code?: string }) => e.code ?? String(e));

function setup(rootN = 1, threshold = 1) {
  const k = newKeys(rootN);
  const v1 = rootV1(k, threshold);
  const files = new Map<string, Buffer>(Object.entries(repoFiles(k, { version: 1 })));
  const storage = memStorage();
  const { fetch, asked } = memFetch(files);
  const opts = { storage, dir: DIR, fetch, embedded: v1, now: at(T0) };
  return { k, v1, files, storage, asked, opts };
}

describe('device follows root rotation', () => {
  it('walks v1 → v2 → v3 in order, persists the newest, and starts from it next time', async () => {
    const s = setup(2, 2);
    const [a, b] = s.k.root as [ReturnType<typeof generateSigningKey>, ReturnType<typeof generateSigningKey>];
    const c = generateSigningKey();
    const d = generateSigningKey();
    const v2 = rotate(s.v1, { remove: { root: [b.keyid] }, add: { root: [c] } }, [a, b, c]); // old 2-of-{a,b} and new 2-of-{a,c}
    const v3 = rotate(v2, { remove: { root: [a.keyid] }, add: { root: [d] } }, [a, c, d]);
    s.files.set('2.root.json', rootBytes(v2));
    s.files.set('3.root.json', rootBytes(v3));
    const r = await refreshTrust(s.opts);
    expect(r.root.signed.version).toBe(3);
    expect(s.asked.slice(0, 3)).toEqual(['2.root.json', '3.root.json', '4.root.json']);
    const persisted = parseRootMetadata(s.storage.files.get(trustPaths(DIR).root)!);
    expect(persisted.signed.version).toBe(3);
    // next refresh: the embedded v1 is only the starting point; the persisted v3 is newer
    s.asked.length = 0;
    const r2 = await refreshTrust(s.opts);
    expect(r2.root.signed.version).toBe(3);
    expect(s.asked[0]).toBe('4.root.json');
  });

  it('refuses a v2 not signed by a threshold of v1 root keys (and keeps v1)', async () => {
    const s = setup(2, 2);
    const [a] = s.k.root;
    const c = generateSigningKey();
    const d = generateSigningKey();
    // signed by only ONE of v1's keys (a) plus new keys: new threshold met, old one not
    const v2 = rotate(s.v1, { remove: { root: [s.k.root[1]!.keyid] }, add: { root: [c, d] } }, [a!, c, d]);
    s.files.set('2.root.json', rootBytes(v2));
    expect(await codeOf(refreshTrust(s.opts))).toBe('THRESHOLD');
    expect(s.storage.files.has(trustPaths(DIR).root)).toBe(false);
  });

  it('refuses a version gap and a replayed old root version', async () => {
    const s = setup();
    const v2 = rotate(s.v1, {}, s.k.root);
    const v3 = rotate(v2, {}, s.k.root);
    s.files.set('2.root.json', rootBytes(v3)); // served under the wrong name: v3 where v2 belongs
    expect(await codeOf(refreshTrust(s.opts))).toBe('VERSION_GAP');
    s.files.set('2.root.json', rootBytes(s.v1));
    expect(await codeOf(refreshTrust(s.opts))).toBe('ROLLBACK');
  });

  it('a bundle signed by a release key revoked in v2 is refused once the device followed v2', async () => {
    const s = setup();
    const tmp = mkdtempSync(join(tmpdir(), 'uz-trust-'));
    try {
      const payload = join(tmp, 'fw.img');
      writeFileSync(payload, randomBytes(20_000));
      const bundle = join(tmp, 'fw.uzb');
      await writeBundle({ payload, out: bundle, keys: [s.k.release], manifest: { board: { id: 'rpi4' }, version: '1.0.0', rollbackCounter: 1, workload: { name: 'app', version: '1.0.0' } } });
      const policy = { board: 'rpi4', now: T0 };
      expect((await verifyBundleFile(bundle, { ...policy, root: s.v1 })).manifest.version).toBe('1.0.0');
      const newRelease = generateSigningKey();
      const v2 = rotate(s.v1, { remove: { release: [s.k.release.keyid] }, add: { release: [newRelease] } }, s.k.root);
      s.files.set('2.root.json', rootBytes(v2));
      const refresh = tufTrustRefresher(s.opts);
      const root = await refresh({ sha256: '0'.repeat(64), size: 1, board: 'rpi4', version: '1.0.0', rollbackCounter: 1 }, { offline: true });
      expect(root.signed.version).toBe(1); // offline: nothing fetched yet
      const { root: followed } = await refreshTrust(s.opts);
      expect(followed.signed.version).toBe(2);
      expect(await codeOf(verifyBundleFile(bundle, { ...policy, root: followed }))).toBe('REVOKED_KEY');
      // and after a restart, offline, the persisted v2 is what the engine re-verifies with
      expect((await refresh({ sha256: '0'.repeat(64), size: 1, board: 'rpi4', version: '1.0.0', rollbackCounter: 1 }, { offline: true })).signed.version).toBe(2);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe('device detects freeze, replay and mixed metadata', () => {
  it('accepts fresh metadata and persists the version floors', async () => {
    const s = setup();
    const r = await refreshTrust(s.opts);
    expect(r.state).toEqual({ v: 1, timestamp: 1, snapshot: 1, targets: 1 });
    expect(JSON.parse(s.storage.files.get(trustPaths(DIR).state)!.toString())).toEqual(r.state);
  });

  it('refuses an expired timestamp (EXPIRED)', async () => {
    const s = setup();
    expect(await codeOf(refreshTrust({ ...s.opts, now: at(days(2)) }))).toBe('EXPIRED');
    for (const [n, b] of Object.entries(repoFiles(s.k, { version: 2, tsExpires: days(-1) }))) s.files.set(n, b);
    expect(await codeOf(refreshTrust(s.opts))).toBe('EXPIRED');
  });

  it('refuses a timestamp with a bad signature or by the wrong key (FROZEN)', async () => {
    const s = setup();
    const ts = JSON.parse(s.files.get('timestamp.json')!.toString());
    ts.signed.expires = '2099-01-01T00:00:00Z'; // freeze attempt: extend the expiry without the key
    s.files.set('timestamp.json', Buffer.from(JSON.stringify(ts)));
    expect(await codeOf(refreshTrust(s.opts))).toBe('FROZEN');
    const evil = generateSigningKey();
    for (const [n, b] of Object.entries(repoFiles({ ...s.k, timestamp: evil }, { version: 2 }))) s.files.set(n, b);
    expect(await codeOf(refreshTrust(s.opts))).toBe('FROZEN');
  });

  it('refuses a replayed older (still unexpired) timestamp (FROZEN)', async () => {
    const s = setup();
    const old = new Map(s.files);
    for (const [n, b] of Object.entries(repoFiles(s.k, { version: 5 }))) s.files.set(n, b);
    expect((await refreshTrust(s.opts)).state.timestamp).toBe(5);
    for (const [n, b] of old) s.files.set(n, b); // attacker replays v1
    const e = await refreshTrust(s.opts).catch((x: unknown) => x as { code: string; message: string });
    expect((e as { code: string }).code).toBe('FROZEN');
    expect((e as { message: string }).message).toMatch(/replayed/);
  });

  it('refuses mixed metadata: snapshot not the one the timestamp pins (FROZEN)', async () => {
    const s = setup();
    const v2 = repoFiles(s.k, { version: 2 });
    s.files.set('snapshot.json', v2['snapshot.json']); // timestamp v1 pins snapshot v1
    expect(await codeOf(refreshTrust(s.opts))).toBe('FROZEN');
    // a timestamp pinning the right bytes but a snapshot whose version differs from the pin
    const odd = repoFiles(s.k, { version: 3, snapVersion: 4 });
    const ts = JSON.parse(odd['timestamp.json'].toString());
    expect(ts.signed.meta['snapshot.json'].version).toBe(4);
    for (const [n, b] of Object.entries(odd)) s.files.set(n, b);
    expect((await refreshTrust(s.opts)).state.snapshot).toBe(4);
    s.files.set('targets.json', v2['targets.json']); // snapshot pins targets v3
    expect(await codeOf(refreshTrust(s.opts))).toBe('FROZEN');
  });

  it('the announced release must be a signed target with matching custom fields', async () => {
    const s = setup();
    const sha = 'ab'.repeat(32);
    for (const [n, b] of Object.entries(repoFiles(s.k, { version: 2, targets: [{ path: 'rpi4/app-2.0.0.uzb', length: 1234, sha256: sha, custom: { board: 'rpi4', version: '2.0.0', rollbackCounter: 7 } }] }))) s.files.set(n, b);
    const rel = { sha256: sha, size: 1234, board: 'rpi4', version: '2.0.0', rollbackCounter: 7 };
    expect((await refreshTrust(s.opts, rel)).target).toBe('rpi4/app-2.0.0.uzb');
    expect(await codeOf(refreshTrust(s.opts, { ...rel, sha256: 'cd'.repeat(32) }))).toBe('NOT_IN_TARGETS');
    expect(await codeOf(refreshTrust(s.opts, { ...rel, rollbackCounter: 8 }))).toBe('NOT_IN_TARGETS');
  });

  it('a rotated timestamp key resets the timestamp/snapshot floors (TUF 5.3.11)', async () => {
    const s = setup();
    for (const [n, b] of Object.entries(repoFiles(s.k, { version: 9 }))) s.files.set(n, b);
    await refreshTrust(s.opts);
    const ts2 = generateSigningKey();
    const v2 = rotate(s.v1, { remove: { timestamp: [s.k.timestamp.keyid] }, add: { timestamp: [ts2] } }, s.k.root);
    s.files.set('2.root.json', rootBytes(v2));
    for (const [n, b] of Object.entries(repoFiles({ ...s.k, timestamp: ts2 }, { version: 1, tsVersion: 1 }))) s.files.set(n, b);
    // targets floor (9) is kept: targets key did not change, so targets v1 would be a rollback
    expect(await codeOf(refreshTrust(s.opts))).toBe('FROZEN');
    for (const [n, b] of Object.entries(repoFiles({ ...s.k, timestamp: ts2 }, { version: 10, tsVersion: 1 }))) s.files.set(n, b);
    expect((await refreshTrust(s.opts)).state).toEqual({ v: 1, timestamp: 1, snapshot: 10, targets: 10 });
  });
});

afterAll(() => undefined);
