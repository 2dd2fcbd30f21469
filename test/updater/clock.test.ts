/**
 * SNTP client: one contract, run against a real NTP server (chronyd from Debian on a loopback port) and
 * against the small fake server used to inject failures (an unsynchronised server, a reply to someone else).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { mkdtempSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { ClockKeeper, sntpQuery } from '../../updater/clock.js';

const NTP_EPOCH_OFFSET = 2208988800;

function fakeNtp(opts: { stratum?: number; answerWrongRequest?: boolean } = {}): Promise<{ port: number; sock: Socket }> {
  return new Promise((resolve) => {
    const sock = createSocket('udp4');
    sock.on('message', (msg, rinfo) => {
      const r = Buffer.alloc(48);
      r[0] = (0 << 6) | (4 << 3) | 4;
      r[1] = opts.stratum ?? 2;
      if (!opts.answerWrongRequest) msg.copy(r, 24, 40, 48); // originate = client's transmit
      const t = Date.now();
      for (const o of [32, 40]) {
        r.writeUInt32BE(Math.floor(t / 1000) + NTP_EPOCH_OFFSET, o);
        r.writeUInt32BE(Math.floor(((t % 1000) / 1000) * 2 ** 32), o + 4);
      }
      sock.send(r, rinfo.port, rinfo.address);
    });
    sock.bind(0, '127.0.0.1', () => resolve({ port: (sock.address() as { port: number }).port, sock }));
  });
}

async function startChrony(): Promise<{ port: number; proc: ChildProcess }> {
  const chronyd = ['/usr/sbin/chronyd', '/sbin/chronyd'].find((p) => existsSync(p));
  if (!chronyd) throw new Error('chronyd not found: apt-get install chrony');
  const dir = mkdtempSync(join(tmpdir(), 'uz-chrony-'));
  const port = 20000 + Math.floor(Math.random() * 20000);
  writeFileSync(
    join(dir, 'chrony.conf'),
    `port ${port}\nbindaddress 127.0.0.1\nlocal stratum 8\nallow 127.0.0.1\ncmdport 0\ndriftfile ${dir}/drift\npidfile ${dir}/pid\n`,
  );
  const proc = spawn(chronyd, ['-d', '-x', '-f', join(dir, 'chrony.conf')], { stdio: 'ignore' });
  for (let i = 0; i < 50; i++) {
    try {
      await sntpQuery('127.0.0.1', port, 200);
      return { port, proc };
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  proc.kill();
  throw new Error('chronyd did not answer on loopback');
}

const servers: Array<{ name: string; start: () => Promise<{ port: number; stop: () => void }> }> = [
  { name: 'real chronyd', start: async () => { const c = await startChrony(); return { port: c.port, stop: () => c.proc.kill() }; } },
  { name: 'fake server', start: async () => { const f = await fakeNtp(); return { port: f.port, stop: () => f.sock.close() }; } },
];

describe.each(servers)('SNTP contract: $name', ({ start }) => {
  let server: { port: number; stop: () => void };
  beforeAll(async () => {
    server = await start();
  });
  afterAll(() => server.stop());

  it('answers with a small offset and round trip', async () => {
    const r = await sntpQuery('127.0.0.1', server.port);
    expect(Math.abs(r.offsetMs)).toBeLessThan(1000);
    // Server and client timestamps come from clocks of different resolution: a loopback round trip may read as a hair below 0.
    expect(r.roundTripMs).toBeGreaterThan(-5);
    expect(r.roundTripMs).toBeLessThan(1000);
    expect(r.stratum).toBeGreaterThan(0);
  });

  it('steps a clock that is an hour behind, and leaves a correct one alone', async () => {
    const set: number[] = [];
    const behind = new ClockKeeper({ servers: [{ host: '127.0.0.1', port: server.port }], stateFile: '/nonexistent', now: () => Date.now() - 3600_000, setClock: async (ms) => void set.push(ms) });
    await behind.sync();
    expect(set).toHaveLength(1);
    expect(Math.abs(set[0]! - Date.now())).toBeLessThan(2000);
    const right = new ClockKeeper({ servers: [{ host: '127.0.0.1', port: server.port }], stateFile: '/nonexistent', setClock: async (ms) => void set.push(ms) });
    await right.sync();
    expect(set).toHaveLength(1);
  });
});

describe('SNTP failure handling', () => {
  it('refuses an unsynchronised server and a reply that does not answer our request', async () => {
    const bad = await fakeNtp({ stratum: 0 });
    await expect(sntpQuery('127.0.0.1', bad.port)).rejects.toThrow(/unsynchronised/);
    bad.sock.close();
    const wrong = await fakeNtp({ answerWrongRequest: true });
    await expect(sntpQuery('127.0.0.1', wrong.port)).rejects.toThrow(/does not answer/);
    wrong.sock.close();
  });
  it('times out on silence and falls through to the next server', async () => {
    const silent = createSocket('udp4');
    await new Promise<void>((r) => silent.bind(0, '127.0.0.1', () => r()));
    const port = (silent.address() as { port: number }).port;
    await expect(sntpQuery('127.0.0.1', port, 200)).rejects.toThrow(/timeout/);
    const good = await fakeNtp();
    const logs: string[] = [];
    const k = new ClockKeeper({ servers: [{ host: '127.0.0.1', port }, { host: '127.0.0.1', port: good.port }], stateFile: '/nonexistent', log: (l) => logs.push(l), setClock: async () => {} });
    expect(await k.sync()).not.toBeNull();
    expect(logs[0]).toMatch(/UZ-WARN clock/);
    silent.close();
    good.sock.close();
  }, 10_000);
  it('restores the last seen time when the clock is behind it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'uz-clock-'));
    const file = join(dir, 'clock.json');
    const k = new ClockKeeper({ servers: [], stateFile: file, now: () => 2_000_000_000_000 });
    await k.saveLastSeen();
    const set: number[] = [];
    const behind = new ClockKeeper({ servers: [], stateFile: file, now: () => 1_000_000_000_000, setClock: async (ms) => void set.push(ms) });
    expect(await behind.restoreLastSeen()).toBe(true);
    expect(set).toEqual([2_000_000_000_000]);
  });
});
