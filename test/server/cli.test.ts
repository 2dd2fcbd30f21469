// The uz CLI (bin/uz.js) against a live in-process server: release publish/list/yank, rollout, devices, errors.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerServerCommands } from '../../server/cli.js';
import { FleetSim } from '../../server/sim.js';
import { makeBundle, testServer, tmp, type TestServer } from './helpers.js';

const uzBin = fileURLToPath(new URL('../../bin/uz.js', import.meta.url));
const run = promisify(execFile);
let t: TestServer;
let sim: FleetSim;

async function uz(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  try {
    const r = await run(process.execPath, [uzBin, ...args], { env: { ...process.env, UZ_API_URL: t.urls!.http, UZ_API_TOKEN: t.token }, timeout: 60_000 });
    return { code: 0, out: r.stdout, err: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, out: x.stdout, err: x.stderr };
  }
}

beforeAll(async () => {
  t = await testServer();
  sim = new FleetSim({ url: t.urls!.ws!, devices: 12, stepMs: 10, download: 'range', prefix: 'cli', seed: 'cli' });
  await sim.start();
});
afterAll(async () => {
  await sim.stop();
  await t.server.close();
});

describe('uz CLI (server commands)', () => {
  it('registers its commands', () => {
    const p = new Command();
    registerServerCommands(p);
    expect(p.commands.map((c) => c.name()).sort()).toEqual(['devices', 'fleet', 'release', 'rollout', 'server']);
  });

  it('publishes, lists, rolls out to a simulated fleet (over WebSocket, downloading by signed URL), yanks', async () => {
    const dir = tmp();
    const bundle = await makeBundle(dir, [t.keys.release], { version: '4.0.0', size: 200_000 });
    let r = await uz('release', 'publish', bundle, '--channel', 'stable');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^published rpi4_4\.0\.0 .*channel stable -> rpi4_4\.0\.0/);
    r = await uz('release', 'publish', await makeBundle(dir, [], { version: '4.0.1' }));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^uz: RELEASE_INVALID: bundle rejected: /);
    r = await uz('release', 'list', '--json');
    expect(JSON.parse(r.out).releases[0]).toMatchObject({ id: 'rpi4_4.0.0', version: '4.0.0' });
    r = await uz('devices');
    expect(r.out).toMatch(/^12 devices, 12 online/);
    r = await uz('rollout', 'create', '--channel', 'stable', '--stages', '25%,100%', '--min-devices', '2', '--json');
    expect(r.code, r.err).toBe(0);
    const id = JSON.parse(r.out).rollout.id as string;
    r = await uz('rollout', 'status', id, '--wait', '--wait-timeout', '30');
    expect(r.out).toMatch(new RegExp(`^${id}  COMPLETED`));
    expect(r.out).toMatch(/2\*\s+100%\s+9\s+0\s+0\s+9\s+0\s+0/);
    expect(sim.devices.every((d) => d.version === '4.0.0' && d.bytesDownloaded === 64 * 1024)).toBe(true);
    r = await uz('devices', '--json');
    expect(JSON.parse(r.out).devices.every((d: { status: { version: string; slot: string } }) => d.status.version === '4.0.0' && d.status.slot === 'B')).toBe(true);
    r = await uz('rollout', 'pause', id);
    expect(r.err).toMatch(/^uz: ROLLOUT_STATE: /);
    r = await uz('release', 'yank', 'rpi4_4.0.0', '--reason', 'test');
    expect(r.out).toMatch(/yanked rpi4_4\.0\.0/);
    r = await uz('rollout', 'list');
    expect(r.out).toContain(id);
  });

  it('clear errors: no token, unreachable server, bad flags', async () => {
    let r = await uz('release', 'list', '--token', 'uzt_nope');
    expect(r.err).toMatch(/^uz: UNAUTHORIZED: /);
    r = await uz('release', 'list', '--server', 'http://127.0.0.1:9');
    expect(r.err).toMatch(/^uz: SERVER_UNREACHABLE: cannot reach http:\/\/127\.0\.0\.1:9/);
    r = await uz('rollout', 'create', '--channel', 'stable', '--window', 'always');
    expect(r.err).toMatch(/^uz: BAD_REQUEST: --window/);
  });
});
