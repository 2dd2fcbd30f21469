// Shared fixtures for updater tests: simulated machines over CrashStorage or a real temp folder.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nodeStorage, type Storage } from '../../updater/io/storage.js';
import { CrashStorage } from '../../updater/sim/crash-storage.js';
import { SimMachine, factoryBootFiles, type SimScheme } from '../../updater/sim/machine.js';
import { provisionSim } from '../../updater/sim/provision.js';

export function tempDir(prefix = 'uz-upd-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Deterministic PRNG (the harness's mulberry32) so randomized tests replay from their seed. */
export const rng = mulberry32;

export interface BackendWorld {
  machine: SimMachine;
  storage: Storage;
  crash?: CrashStorage;
  cleanup: () => void;
}

/** The three boot-control backends the contract suite runs against. */
export const BACKENDS: { name: string; make: (slotBytes?: Buffer) => Promise<BackendWorld> }[] = [
  {
    name: 'uboot-bootcount',
    make: async (slot = Buffer.alloc(8192, 1)) => {
      const crash = new CrashStorage();
      const machine = new SimMachine('uboot-bootcount', crash, '/m');
      await provisionSim(machine, { A: slot, B: slot });
      return { machine, storage: crash, crash, cleanup: () => {} };
    },
  },
  {
    name: 'rpi-tryboot',
    make: async (slot = Buffer.alloc(8192, 1)) => {
      const crash = new CrashStorage();
      const machine = new SimMachine('rpi-tryboot', crash, '/m');
      await provisionSim(machine, { A: slot, B: slot });
      return { machine, storage: crash, crash, cleanup: () => {} };
    },
  },
  {
    name: 'sim (U-Boot env in a host folder)',
    make: async (slot = Buffer.alloc(8192, 1)) => {
      const t = tempDir();
      const machine = new SimMachine('uboot-bootcount', nodeStorage, t.dir);
      await provisionSim(machine, { A: slot, B: slot });
      return { machine, storage: nodeStorage, cleanup: t.cleanup };
    },
  },
];

export { factoryBootFiles, type SimScheme };

import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export type ServeFault =
  | { kind: 'none' }
  /** Close the connection after this many body bytes of the first N responses. */
  | { kind: 'drop'; afterBytes: number; times: number }
  /** Report another total size in Content-Range. */
  | { kind: 'lie-total'; total: number }
  /** Send more bytes than the range asked for. */
  | { kind: 'extra-bytes' }
  /** Send headers and a little body, then nothing, forever. */
  | { kind: 'stall' }
  /** Ignore Range and always send the whole file with 200. */
  | { kind: 'ignore-range' };

export interface TestServer {
  url: string;
  /** Body bytes sent so far. */
  sent: () => number;
  ranges: string[];
  close: () => Promise<void>;
}

/** A loopback HTTP server for one artifact, with Range support and injectable misbehaviour. */
export async function serveArtifact(body: Buffer, fault: ServeFault = { kind: 'none' }): Promise<TestServer> {
  let sent = 0;
  let drops = 0;
  const ranges: string[] = [];
  const server: Server = createServer((req, res) => {
    const range = req.headers.range ?? '';
    ranges.push(range);
    const m = /^bytes=(\d+)-(\d*)$/.exec(range);
    let start = 0;
    let end = body.length - 1;
    if (m && fault.kind !== 'ignore-range') {
      start = Number(m[1]);
      end = m[2] ? Math.min(Number(m[2]), body.length - 1) : body.length - 1;
      const total = fault.kind === 'lie-total' ? fault.total : body.length;
      res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${total}`, ...(fault.kind === 'extra-bytes' ? {} : { 'content-length': end - start + 1 }) });
    } else res.writeHead(200, { 'content-length': body.length });
    let slice = body.subarray(start, end + 1);
    if (fault.kind === 'extra-bytes') slice = Buffer.concat([slice, Buffer.alloc(1000, 7)]);
    if (fault.kind === 'stall') {
      res.write(slice.subarray(0, 100));
      sent += 100;
      return; // never ends
    }
    if (fault.kind === 'drop' && drops < fault.times) {
      drops++;
      const part = slice.subarray(0, Math.min(fault.afterBytes, slice.length));
      res.write(part, () => {
        sent += part.length;
        setTimeout(() => res.socket?.destroy(), 5);
      });
      return;
    }
    sent += slice.length;
    res.end(slice);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/bundle.uzb`,
    sent: () => sent,
    ranges,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

import { createServer as createNetServer, type Server as NetServer } from 'node:net';
import { Aedes } from 'aedes';
import mqtt, { type MqttClient } from 'mqtt';
import { mulberry32 } from '../../updater/sim/powercut.js';

export interface TestBroker {
  url: string;
  port: number;
  close: () => Promise<void>;
}

/** A real MQTT broker (Aedes) on 127.0.0.1, the same broker the update server embeds. */
export async function startBroker(port = 0): Promise<TestBroker> {
  const broker = await Aedes.createBroker();
  const server: NetServer = createNetServer(broker.handle);
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  const p = (server.address() as AddressInfo).port;
  return {
    url: `mqtt://127.0.0.1:${p}`,
    port: p,
    close: () =>
      new Promise<void>((r) => {
        broker.close(() => server.close(() => r()));
      }),
  };
}

/** A plain client playing the server's side, collecting what it sees. */
export async function observer(url: string, filter = 'uz/v1/dev/+/+'): Promise<{ client: MqttClient; seen: { topic: string; payload: Buffer; retain: boolean }[] }> {
  const client = await mqtt.connectAsync(url, { clientId: `obs-${Math.random().toString(16).slice(2)}`, reconnectPeriod: 0 });
  const seen: { topic: string; payload: Buffer; retain: boolean }[] = [];
  client.on('message', (topic, payload, packet) => seen.push({ topic, payload, retain: packet.retain }));
  await client.subscribeAsync(filter, { qos: 1 });
  return { client, seen };
}

export async function until(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
