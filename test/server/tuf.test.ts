// /tuf endpoints: operator-signed metadata served from tuf.dir, timestamp re-signed by the server (fake clock),
// root rotation by dropping N.root.json; a tuf-js client and our device client refreshing over loopback.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Updater } from 'tuf-js';
import { afterAll, describe, expect, it } from 'vitest';
import { writePrivateKeyFile } from '../../firmware/trust/io.js';
import { generateSigningKey } from '../../firmware/trust/keys.js';
import { writeTufRepository } from '../../firmware/trust/tuf.js';
import { nodeStorage } from '../../updater/io/storage.js';
import { httpTufFetch, refreshTrust } from '../../updater/trust/refresh.js';
import { newKeys, rootBytes, rootV1, rotate } from '../updater/trust-helpers.js';
import { makeBundle, testServer, tmp, type TestServer } from './helpers.js';

const dirs: string[] = [];
const servers: TestServer[] = [];
afterAll(async () => {
  for (const s of servers) await s.server.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function fixture(now: () => number) {
  const base = tmp('uz-tuf-');
  dirs.push(base);
  const k = newKeys();
  const day = (n: number) => new Date(now() + n * 86_400_000);
  // rootV1 uses a fixed 2030 expiry; fine for a clock near Date.now()
  const v1 = rootV1(k);
  const bundle = await makeBundle(base, [k.release]);
  const bytes = readFileSync(bundle);
  const { createHash } = await import('node:crypto');
  const sha = createHash('sha256').update(bytes).digest('hex');
  const repo = join(base, 'repo');
  await writeTufRepository({
    dir: repo,
    roots: [v1],
    targets: [{ file: bundle, path: 'rpi4/app.uzb', length: bytes.length, sha256: sha, custom: { board: 'rpi4', version: '2.0.0', rollbackCounter: 2 } }],
    version: 1,
    keys: { targets: [k.targets], snapshot: [k.snapshot], timestamp: [k.timestamp] },
    expires: { targets: day(90), snapshot: day(7), timestamp: day(1) },
  });
  const keyFile = join(base, 'timestamp.key.json');
  await writePrivateKeyFile(keyFile, k.timestamp, 'timestamp');
  return { base, k, v1, repo, keyFile, sha, size: bytes.length, bundle, day };
}

const signedOf = (body: string) => (JSON.parse(body) as { signed: { version: number; expires: string; meta: Record<string, { version: number }> } }).signed;

describe('server /tuf endpoints', () => {
  it('serves roots, snapshot, targets; re-signs only the timestamp, on schedule (fake clock)', async () => {
    let t = Date.parse('2029-06-01T00:00:00Z');
    const now = () => t;
    const f = await fixture(now);
    const s = await testServer({ start: false, opts: { now }, config: { tuf: { dir: f.repo, timestampKey: f.keyFile, timestampIntervalSec: 3600, timestampTtlSec: 86_400 } } });
    servers.push(s);
    const get = (u: string) => s.server.app.inject({ method: 'GET', url: u });
    expect((await get('/tuf/1.root.json')).statusCode).toBe(200);
    expect(JSON.parse((await get('/tuf/1.root.json')).body)).toEqual(f.v1);
    expect((await get('/tuf/2.root.json')).statusCode).toBe(404);
    expect((await get('/tuf/0.root.json')).statusCode).toBe(404);
    expect((await get('/tuf/..%2Fprivate.json')).statusCode).toBe(404);
    expect((await get('/tuf/targets.json')).body).toBe(readFileSync(join(f.repo, 'metadata', 'targets.json'), 'utf8'));
    expect((await get('/tuf/snapshot.json')).body).toBe(readFileSync(join(f.repo, 'metadata', 'snapshot.json'), 'utf8'));

    const ts1 = await get('/tuf/timestamp.json');
    expect(ts1.headers['cache-control']).toBe('no-store');
    const a = signedOf(ts1.body);
    expect(a.version).toBe(2); // published v1 + 1
    expect(Date.parse(a.expires)).toBe(t + 86_400_000);
    t += 1800_000; // half an interval: same timestamp
    expect(signedOf((await get('/tuf/timestamp.json')).body).version).toBe(2);
    t += 1800_000; // due
    const b = signedOf((await get('/tuf/timestamp.json')).body);
    expect(b.version).toBe(3);
    expect(Date.parse(b.expires)).toBe(t + 86_400_000);

    // operator publishes new snapshot/targets (offline keys) → next request re-signs at once
    await writeTufRepository({
      dir: f.repo, roots: [f.v1], targets: [], version: 7,
      keys: { targets: [f.k.targets], snapshot: [f.k.snapshot], timestamp: [f.k.timestamp] },
      expires: { targets: f.day(90), snapshot: f.day(7), timestamp: f.day(1) },
    });
    const c = signedOf((await get('/tuf/timestamp.json')).body);
    expect(c.version).toBe(8); // above the operator's own timestamp v7 too
    expect(c.meta['snapshot.json']!.version).toBe(7);

    // root rotation: the operator drops 2.root.json
    const v2 = rotate(f.v1, {}, f.k.root);
    writeFileSync(join(f.repo, 'metadata', '2.root.json'), rootBytes(v2));
    expect((await get('/tuf/2.root.json')).statusCode).toBe(200);

    // restart: the version keeps increasing
    await s.server.close();
    const s2 = await testServer({ start: false, dataDir: s.dataDir, keys: s.keys, opts: { now }, config: { tuf: { dir: f.repo, timestampKey: f.keyFile } } });
    servers.push(s2);
    expect(signedOf((await s2.server.app.inject({ method: 'GET', url: '/tuf/timestamp.json' })).body).version).toBe(9);
  });

  it('refuses to start with a key the root does not accept as timestamp key', async () => {
    const f = await fixture(Date.now);
    const other = join(f.base, 'other.key.json');
    await writePrivateKeyFile(other, generateSigningKey(), 'timestamp');
    await expect(testServer({ start: false, config: { tuf: { dir: f.repo, timestampKey: other } } })).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
  });

  it('peer check: tuf-js and the device client refresh against the running server and follow a rotation', async () => {
    const f = await fixture(Date.now);
    const s = await testServer({ config: { tuf: { dir: f.repo, timestampKey: f.keyFile } } });
    servers.push(s);
    const tufUrl = `${s.urls!.http}/tuf`;
    const metadataDir = join(f.base, 'tufjs');
    mkdirSync(metadataDir);
    writeFileSync(join(metadataDir, 'root.json'), JSON.stringify(f.v1));
    const up = () => new Updater({ metadataDir, metadataBaseUrl: tufUrl, targetDir: join(f.base, 'dl'), targetBaseUrl: `${s.urls!.http}/none`, config: { fetchRetries: 0 } });
    await up().refresh();
    const info = await up().getTargetInfo('rpi4/app.uzb');
    expect(info?.custom).toEqual({ board: 'rpi4', version: '2.0.0', rollbackCounter: 2 });
    expect(info?.length).toBe(f.size);

    const v2 = rotate(f.v1, {}, f.k.root);
    writeFileSync(join(f.repo, 'metadata', '2.root.json'), rootBytes(v2));
    await up().refresh();
    expect(JSON.parse(readFileSync(join(metadataDir, 'root.json'), 'utf8')).signed.version).toBe(2);

    const dev = join(f.base, 'device-trust');
    const r = await refreshTrust({ storage: nodeStorage, dir: dev, fetch: httpTufFetch(tufUrl), embedded: f.v1 }, { sha256: f.sha, size: f.size, board: 'rpi4', version: '2.0.0', rollbackCounter: 2 });
    expect(r.root.signed.version).toBe(2);
    expect(r.target).toBe('rpi4/app.uzb');
    expect(JSON.parse(readFileSync(join(dev, 'root.json'), 'utf8')).signed.version).toBe(2);
  });
});
