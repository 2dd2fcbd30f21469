// kill -9 tests with real child processes: SQLite durability, and a rollout surviving a server crash.
import { spawn, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { SqliteStorage } from '../../server/storage/sqlite.js';
import { FleetSim } from '../../server/sim.js';
import { fleetKeys, makeBundle, tmp } from './helpers.js';

const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve('tsx/esm')).href;
const uzBin = fileURLToPath(new URL('../../bin/uz.js', import.meta.url));
const writer = fileURLToPath(new URL('./fixtures/durability-writer.ts', import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

describe('kill -9', () => {
  it('SQLite (WAL, synchronous=FULL) keeps every acknowledged commit', async () => {
    const db = join(tmp(), 'uz.db');
    const child = spawn(process.execPath, ['--import', tsxLoader, writer, db], { stdio: ['ignore', 'pipe', 'inherit'] });
    let acked = 0;
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const l of lines) acked = Math.max(acked, Number(l));
    });
    const t0 = Date.now();
    while (acked < 300 && Date.now() - t0 < 30_000) await sleep(20);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    expect(acked).toBeGreaterThanOrEqual(300);
    const s = new SqliteStorage(db);
    const rows = await s.listAudit(1_000_000);
    const ids = new Set(rows.map((r) => Number(r.target)));
    for (let i = 1; i <= acked; i++) expect(ids.has(i), `acknowledged row ${i} lost`).toBe(true);
    await s.close();
  }, 60_000);

  it('a rollout survives kill -9 of the server: no device lost or dispatched twice, the rollout completes', async () => {
    const data = tmp();
    const keys = fleetKeys();
    writeFileSync(join(data, 'root.json'), keys.rootJson);
    const [httpPort, mqttPort] = [await freePort(), await freePort()];
    const api = `http://127.0.0.1:${httpPort}`;
    const logs: string[] = [];
    const start = async (): Promise<ChildProcess> => {
      const c = spawn(process.execPath, [uzBin, 'server', '--data', data, '--http-port', String(httpPort), '--mqtt-port', String(mqttPort)], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, UZ_SERVER_ROLLOUT_TICK_MS: '100' } });
      let ready = false;
      const onData = (d: Buffer) => {
        logs.push(d.toString());
        if (d.toString().includes('uz server ready')) ready = true;
      };
      c.stdout!.on('data', onData);
      c.stderr!.on('data', onData);
      const t0 = Date.now();
      while (!ready) {
        if (c.exitCode !== null || Date.now() - t0 > 30_000) throw new Error(`server did not start:\n${logs.join('')}`);
        await sleep(50);
      }
      return c;
    };
    let server = await start();
    const token = readFileSync(join(data, 'admin.token'), 'utf8').trim();
    const call = async (method: string, path: string, body?: unknown, raw?: Buffer) => {
      const r = await fetch(api + path, { method, headers: { authorization: `Bearer ${token}`, 'content-type': raw ? 'application/octet-stream' : 'application/json' }, body: raw ? new Uint8Array(raw) : body === undefined ? undefined : JSON.stringify(body) });
      const j = (await r.json()) as Record<string, any>;
      if (!r.ok) throw new Error(`${method} ${path}: ${JSON.stringify(j)}`);
      return j;
    };
    const N = 500; // the size the issue names for the kill -9 test
    const sim = new FleetSim({ url: `mqtt://127.0.0.1:${mqttPort}`, devices: N, stepMs: 150, download: 'none', prefix: 'crash', seed: 'crash' });
    try {
      await sim.start();
      await call('POST', '/api/v1/releases?channel=stable', undefined, readFileSync(await makeBundle(tmp(), [keys.release], { version: '2.0.0' })));
      const t0 = Date.now();
      while ((await call('GET', '/api/v1/devices')).devices.filter((d: { status: unknown }) => d.status).length < N) {
        if (Date.now() - t0 > 60_000) throw new Error('devices did not report');
        await sleep(100);
      }
      const created = await call('POST', '/api/v1/rollouts', { channel: 'stable', stages: ['10%', '100%'], maxInFlight: 100, minDevices: 5, timeoutSec: 60, retries: 1 });
      const id = created.rollout.id as string;
      // kill while devices are mid-update in the second stage
      for (;;) {
        const st = await call('GET', `/api/v1/rollouts/${id}`);
        if (st.totals.succeeded >= 150 && st.totals.dispatched > 0) break;
        if (Date.now() - t0 > 120_000) throw new Error('rollout did not progress');
        await sleep(50);
      }
      server.kill('SIGKILL');
      await new Promise((r) => server.once('exit', r));
      await sleep(700); // devices notice, keep updating offline, queue their events
      server = await start();
      let final: Record<string, any>;
      for (;;) {
        final = await call('GET', `/api/v1/rollouts/${id}`);
        if (final.rollout.state !== 'running') break;
        if (Date.now() - t0 > 240_000) throw new Error(`rollout did not complete: ${JSON.stringify(final.totals)}`);
        await sleep(200);
      }
      expect(final.rollout.state).toBe('completed');
      expect(final.totals).toMatchObject({ total: N, succeeded: N, failed: 0, pending: 0, dispatched: 0 });
      const members = (await call('GET', `/api/v1/rollouts/${id}/devices`)).devices as { attempts: number; deviceId: string }[];
      expect(members).toHaveLength(N);
      expect(members.filter((m) => m.attempts !== 1)).toEqual([]); // dispatched exactly once each
      for (const d of sim.devices) {
        expect(d.version, d.id).toBe('2.0.0');
        expect(d.installs, d.id).toBe(1);
        expect(new Set(d.received.map((r) => r.txid)).size, d.id).toBe(1);
      }
      expect(logs.join('')).toMatch(/republished=\d+/);
    } finally {
      await sim.stop();
      server.kill('SIGTERM');
      await new Promise((r) => (server.exitCode !== null ? r(null) : server.once('exit', r)));
    }
  }, 300_000);
});
