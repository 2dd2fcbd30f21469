import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import type { InjectOptions } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { generateSigningKey } from '../../firmware/trust/index.js';
import { auth, makeBundle, testServer, tmp, type TestServer } from './helpers.js';

let t: TestServer;
let dir: string;
let bundle: string;
const inject = (o: InjectOptions) => t.server.app.inject(o);

beforeAll(async () => {
  t = await testServer({ start: false });
  dir = tmp();
  bundle = await makeBundle(dir, [t.keys.release], { version: '2.0.0', size: 100_000 });
});
afterAll(async () => {
  await t.server.close();
});

const upload = (path: string, token = t.token, q = '') =>
  inject({ method: 'POST', url: `/api/v1/releases${q}`, headers: { ...auth(token), 'content-type': 'application/octet-stream' }, payload: readFileSync(path) });

describe('HTTP API (fastify inject)', () => {
  it('bootstraps an admin token (file 0600) and enforces roles', async () => {
    expect(t.token).toMatch(/^uzt_[0-9a-f]{8}_/);
    expect(statSync(`${t.dataDir}/admin.token`).mode & 0o777).toBe(0o600);
    expect((await inject({ url: '/api/v1/releases' })).json()).toEqual({ error: { code: 'UNAUTHORIZED', message: expect.any(String) } });
    expect((await inject({ url: '/api/v1/releases', headers: auth('uzt_bad') })).statusCode).toBe(401);
    const v = await inject({ method: 'POST', url: '/api/v1/tokens', headers: auth(t.token), payload: { name: 'viewer1', role: 'viewer' } });
    expect(v.statusCode).toBe(201);
    const viewer = v.json().token as string;
    expect((await inject({ url: '/api/v1/whoami', headers: auth(viewer) })).json()).toEqual({ name: 'viewer1', role: 'viewer' });
    expect((await upload(bundle, viewer)).json().error.code).toBe('FORBIDDEN');
    expect((await inject({ method: 'POST', url: '/api/v1/tokens', headers: auth(viewer), payload: { name: 'x', role: 'admin' } })).statusCode).toBe(403);
    expect((await inject({ method: 'POST', url: '/api/v1/tokens', headers: auth(t.token), payload: { name: 'bad name!', role: 'admin' } })).json().error.code).toBe('BAD_REQUEST');
  });

  it('publishes a verified release, idempotently; rejects unsigned, foreign-signed, garbage and clashing bundles', async () => {
    const r = await upload(bundle, t.token, '?channel=stable');
    expect(r.statusCode, r.body).toBe(201);
    const rel = r.json().release;
    expect(rel).toMatchObject({ id: 'rpi4_2.0.0', board: 'rpi4', version: '2.0.0', rollbackCounter: 2, size: statSync(bundle).size, yanked: false });
    expect(rel.sha256).toBe(createHash('sha256').update(readFileSync(bundle)).digest('hex'));
    expect((await upload(bundle)).json()).toMatchObject({ existing: true, release: { id: 'rpi4_2.0.0' } });
    const unsigned = await upload(await makeBundle(dir, [], { version: '2.0.1' }));
    expect(unsigned.statusCode).toBe(422);
    expect(unsigned.json().error).toMatchObject({ code: 'RELEASE_INVALID' });
    const foreign = await upload(await makeBundle(dir, [generateSigningKey()], { version: '2.0.2' }));
    expect(foreign.json().error.code).toBe('RELEASE_INVALID');
    const garbage = await inject({ method: 'POST', url: '/api/v1/releases', headers: { ...auth(t.token), 'content-type': 'application/octet-stream' }, payload: Buffer.from('not a bundle at all') });
    expect(garbage.json().error.code).toBe('RELEASE_INVALID');
    const tampered = readFileSync(bundle);
    tampered[tampered.length - 10] = tampered[tampered.length - 10]! ^ 0xff;
    const tr = await inject({ method: 'POST', url: '/api/v1/releases', headers: { ...auth(t.token), 'content-type': 'application/octet-stream' }, payload: tampered });
    expect(tr.json().error.message).toMatch(/HASH_MISMATCH/);
    const clash = await upload(await makeBundle(dir, [t.keys.release], { version: '2.0.0' }));
    expect(clash.json().error.code).toBe('RELEASE_EXISTS');
    const json = await inject({ method: 'POST', url: '/api/v1/releases', headers: auth(t.token), payload: { a: 1 } });
    expect(json.json().error.code).toBe('BAD_REQUEST'); // only octet-stream bodies are accepted
    const list = (await inject({ url: '/api/v1/releases', headers: auth(t.token) })).json();
    expect(list.releases.map((x: { id: string }) => x.id)).toEqual(['rpi4_2.0.0']);
    expect(list.channels).toEqual([{ name: 'stable', releaseId: 'rpi4_2.0.0', updatedAt: expect.any(Number) }]);
    expect(readdirSync(`${t.dataDir}/tmp`)).toEqual([]); // rejected uploads leave nothing behind
  });

  it('serves artifacts with Range, ETag and exact lengths; signed URLs, device creds or tokens only', async () => {
    const rel = (await inject({ url: '/api/v1/releases/rpi4_2.0.0', headers: auth(t.token) })).json().release;
    const bytes = readFileSync(bundle);
    const url = `/artifacts/${rel.sha256}`;
    expect((await inject({ url })).statusCode).toBe(401);
    const full = await inject({ url, headers: auth(t.token) });
    expect(full.statusCode).toBe(200);
    expect(full.headers['content-length']).toBe(String(bytes.length));
    expect(full.headers.etag).toBe(`"${rel.sha256}"`);
    expect(full.rawPayload.equals(bytes)).toBe(true);
    const part = await inject({ url, headers: { ...auth(t.token), range: 'bytes=100-199' } });
    expect(part.statusCode).toBe(206);
    expect(part.headers['content-range']).toBe(`bytes 100-199/${bytes.length}`);
    expect(part.rawPayload.equals(bytes.subarray(100, 200))).toBe(true);
    const tail = await inject({ url, headers: { ...auth(t.token), range: 'bytes=-10' } });
    expect(tail.rawPayload.equals(bytes.subarray(bytes.length - 10))).toBe(true);
    const open = await inject({ url, headers: { ...auth(t.token), range: `bytes=${bytes.length - 5}-` } });
    expect(open.headers['content-length']).toBe('5');
    expect((await inject({ url, headers: { ...auth(t.token), range: `bytes=${bytes.length}-` } })).statusCode).toBe(416);
    expect((await inject({ url, headers: { ...auth(t.token), 'if-none-match': `"${rel.sha256}"` } })).statusCode).toBe(304);
    expect((await inject({ url, headers: { ...auth(t.token), range: 'bytes=0-9', 'if-range': '"other"' } })).statusCode).toBe(200);
    const head = await inject({ method: 'HEAD', url, headers: auth(t.token) });
    expect(head.headers['content-length']).toBe(String(bytes.length));
    // signed URL for a device: valid, tampered, expired
    const ref = t.server.ctx.devices.releaseRef((await t.server.ctx.storage.getRelease('rpi4_2.0.0'))!, 'dev-001');
    const signed = new URL(ref.bundleUrl);
    expect((await inject({ url: signed.pathname + signed.search, headers: { range: 'bytes=0-0' } })).statusCode).toBe(206);
    expect((await inject({ url: signed.pathname + signed.search.replace('dev-001', 'dev-002') })).json().error.message).toBe('bad signature');
    const exp = t.server.ctx.signer.sign(rel.sha256, 'dev-001', Math.floor(Date.now() / 1000) - 1);
    expect((await inject({ url: `${url}?${exp}` })).json().error.message).toBe('signed URL expired');
    // device credentials (HTTP Basic)
    const reg = await inject({ method: 'POST', url: '/api/v1/devices', headers: auth(t.token), payload: { id: 'dev-basic', channel: 'stable', tags: ['lab'] } });
    expect(reg.statusCode).toBe(201);
    const basic = (p: string) => ({ authorization: 'Basic ' + Buffer.from(`dev-basic:${p}`).toString('base64'), range: 'bytes=0-3' });
    expect((await inject({ url, headers: basic(reg.json().password) })).statusCode).toBe(206);
    expect((await inject({ url, headers: basic('wrong-password-123456') })).statusCode).toBe(401);
    expect((await inject({ url: `/artifacts/${'0'.repeat(64)}`, headers: auth(t.token) })).statusCode).toBe(404);
    expect((await inject({ url: '/artifacts/../../etc/passwd', headers: auth(t.token) })).statusCode).toBe(404);
  });

  it('devices, channels, rollouts (create/status/pause/resume/abort), yank, audit', async () => {
    const s = t.server.ctx.storage;
    for (let i = 0; i < 10; i++) await s.registerDevice({ id: `dev-${i}`, secretHash: null, now: 1 });
    expect((await inject({ method: 'POST', url: '/api/v1/devices', headers: auth(t.token), payload: { id: 'dev-basic' } })).json().error.code).toBe('DEVICE_EXISTS');
    expect((await inject({ method: 'PATCH', url: '/api/v1/devices/dev-1', headers: auth(t.token), payload: { tags: ['canary'] } })).statusCode).toBe(200);
    const devs = (await inject({ url: '/api/v1/devices?tag=canary', headers: auth(t.token) })).json().devices;
    expect(devs.map((d: { id: string }) => d.id)).toEqual(['dev-1']);
    expect((await inject({ url: '/api/v1/devices/nope-1', headers: auth(t.token) })).json().error.code).toBe('NOT_FOUND');
    const bad = await inject({ method: 'POST', url: '/api/v1/rollouts', headers: auth(t.token), payload: { channel: 'stable', tag: 'x' } });
    expect(bad.json().error).toMatchObject({ code: 'BAD_REQUEST' });
    expect((await inject({ method: 'POST', url: '/api/v1/rollouts', headers: auth(t.token), payload: { channel: 'stable', stages: ['abc'] } })).json().error.code).toBe('BAD_REQUEST');
    expect((await inject({ method: 'POST', url: '/api/v1/rollouts', headers: auth(t.token), payload: { tag: 'nobody', releaseId: 'rpi4_2.0.0' } })).json().error.code).toBe('ROLLOUT_EMPTY');
    const c = await inject({ method: 'POST', url: '/api/v1/rollouts', headers: auth(t.token), payload: { channel: 'stable', stages: ['10%', '50%', '100%'], maxInFlight: 2 } });
    expect(c.statusCode, c.body).toBe(201);
    const id = c.json().rollout.id as string;
    expect(c.json().stages.map((x: { cutoff: number }) => x.cutoff)).toEqual([2, 6, 11]);
    expect((await inject({ method: 'POST', url: `/api/v1/rollouts/${id}/resume`, headers: auth(t.token) })).json().error.code).toBe('ROLLOUT_STATE');
    expect((await inject({ method: 'POST', url: `/api/v1/rollouts/${id}/pause`, headers: auth(t.token) })).json().rollout.state).toBe('paused');
    expect((await inject({ method: 'POST', url: `/api/v1/rollouts/${id}/resume`, headers: auth(t.token) })).json().rollout.state).toBe('running');
    expect((await inject({ method: 'POST', url: `/api/v1/rollouts/${id}/abort`, headers: auth(t.token) })).json().rollout.state).toBe('aborted');
    expect((await inject({ url: `/api/v1/rollouts/${id}/devices`, headers: auth(t.token) })).json().devices).toHaveLength(11);
    expect((await inject({ url: '/api/v1/rollouts', headers: auth(t.token) })).json().rollouts).toHaveLength(1);
    const y = await inject({ method: 'POST', url: '/api/v1/releases/rpi4_2.0.0/yank', headers: auth(t.token), payload: { reason: 'boot loop' } });
    expect(y.json().release).toMatchObject({ yanked: true, yankedReason: 'boot loop' });
    expect((await inject({ url: '/api/v1/channels', headers: auth(t.token) })).json().channels[0].releaseId).toBeNull();
    expect((await inject({ method: 'POST', url: '/api/v1/rollouts', headers: auth(t.token), payload: { channel: 'stable', releaseId: 'rpi4_2.0.0' } })).json().error.code).toBe('RELEASE_YANKED');
    const audit = (await inject({ url: '/api/v1/audit', headers: auth(t.token) })).json().audit.map((a: { action: string }) => a.action);
    expect(audit).toEqual(expect.arrayContaining(['release.publish', 'release.reject', 'channel.set', 'rollout.create', 'rollout.pause', 'rollout.resume', 'rollout.abort', 'release.yank', 'token.create', 'device.register']));
  });

  it('exposes /metrics, /healthz, OpenAPI, the dashboard; unknown routes are coded 404s', async () => {
    const m = await inject({ url: '/metrics' });
    expect(m.body).toMatch(/uz_devices\{presence="offline"\} \d+/);
    expect(m.body).toMatch(/uz_artifact_bytes_served_total\{via="http"\} \d+/);
    expect((await inject({ url: '/healthz' })).json()).toMatchObject({ ok: true, storage: 'sqlite' });
    const api = (await inject({ url: '/api/v1/openapi.json' })).json();
    expect(api.openapi).toMatch(/^3\./);
    expect(Object.keys(api.paths)).toEqual(expect.arrayContaining(['/api/v1/releases', '/api/v1/rollouts', '/api/v1/rollouts/{id}/pause', '/artifacts/{sha256}']));
    expect(api.paths['/api/v1/rollouts'].post.requestBody).toBeDefined();
    expect((await inject({ url: '/' })).headers['content-type']).toMatch(/text\/html/);
    expect((await inject({ url: '/nope' })).json()).toEqual({ error: { code: 'NOT_FOUND', message: 'no route GET /nope' } });
    expect((await inject({ url: '/api/v1/config', headers: auth(t.token) })).json().dataDir).toBe(t.dataDir);
  });

  it('fuzzed API bodies and queries get clear 4xx, never a 5xx', async () => {
    const routes = [
      ['POST', '/api/v1/rollouts'], ['POST', '/api/v1/tokens'], ['POST', '/api/v1/devices'], ['PATCH', '/api/v1/devices/dev-1'],
      ['PUT', '/api/v1/channels/stable'], ['POST', '/api/v1/releases/rpi4_2.0.0/yank'], ['GET', '/api/v1/audit'], ['GET', '/api/v1/devices'],
    ] as const;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...routes), fc.oneof(fc.json(), fc.string(), fc.anything().map((x) => { try { return JSON.stringify(x) ?? 'null'; } catch { return 'null'; } })), fc.string({ maxLength: 30 }), async ([method, url], body, q) => {
        const r = await inject({ method, url: `${url}?${encodeURIComponent(q)}=${encodeURIComponent(q)}`, headers: { ...auth(t.token), 'content-type': 'application/json' }, payload: method === 'GET' ? undefined : body });
        expect(r.statusCode, `${method} ${url} ${body} -> ${r.body}`).toBeLessThan(500);
        if (r.statusCode >= 400) expect(r.json().error.code).toMatch(/^[A-Z_]+$/);
      }),
      { numRuns: 300 },
    );
  });
});

describe('API rate limit', () => {
  it('answers 429 RATE_LIMITED with Retry-After past the per-minute budget', async () => {
    const r = await testServer({ start: false, config: { http: { rateLimitPerMinute: 5 } } });
    try {
      const codes: number[] = [];
      let last;
      for (let i = 0; i < 7; i++) codes.push((last = await r.server.app.inject({ url: '/api/v1/whoami', headers: auth(r.token) })).statusCode);
      expect(codes).toEqual([200, 200, 200, 200, 200, 429, 429]);
      expect(last!.json().error.code).toBe('RATE_LIMITED');
      expect(last!.headers['retry-after']).toBeDefined();
      expect((await r.server.app.inject({ url: '/healthz' })).statusCode).toBe(200); // not under /api
    } finally {
      await r.server.close();
    }
  });
});
