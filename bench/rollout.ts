/**
 * Rollout benchmark: `npm run bench:rollout -- --devices <n> [--json] [--step-ms 20] [--download none|range] [--broker aedes|mosquitto] [--cpu-prof <dir>]`.
 * --broker mosquitto runs the same rollout with the server connected to a real Mosquitto (shipped
 * server/mosquitto/mosquitto-dev.conf; apt-get install mosquitto) and the devices connected to Mosquitto.
 * Starts `uz server` as a child process, connects n simulated devices (server/sim.ts) over MQTT, publishes a
 * signed release and runs a 1% → 10% → 50% → 100% rollout to completion. Prints one JSON line:
 *   {"devices":n,"completed":c,"seconds":s,"serverPeakRssMiB":m}
 * seconds = rollout creation → completed; serverPeakRssMiB = VmHWM of the server process.
 * While the devices connect it polls GET /api/v1/fleet/summary (aggregates), during the rollout
 * GET /api/v1/rollouts/{id} — what an operator's dashboard polls. `--cpu-prof <dir>` writes a V8 CPU profile of
 * the server process. On failure the server's data directory (its log: server.log) is kept and named.
 */
import { readFileSync, rmSync } from 'node:fs';
import { writeBundle } from '../firmware/bundle/index.js';
import { createRootSigned, generateSigningKey, signRoot } from '../firmware/trust/index.js';
import { FleetSim, type DownloadMode } from '../server/sim.js';
import { arg, sleep, startServerProcess, tmp, writeRoot } from '../server/child-process.js';
import { startMosquitto } from '../server/mosquitto-process.js';
import { SERVER_IDENTITY } from '../server/pki.js';
import { simPassword } from '../server/sim.js';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const devices = Number(arg('devices', '1000'));
const json = process.argv.includes('--json');
const stepMs = Number(arg('step-ms', '20'));
const download = (arg('download', 'none') as DownloadMode);
const log = (s: string) => !json && process.stderr.write(s + '\n');
const brokerKind = arg('broker', 'aedes')!;
/** --cpu-prof <dir>: write a V8 CPU profile of the server process into <dir> (on its exit). */
const cpuProf = arg('cpu-prof');
if (brokerKind !== 'aedes' && brokerKind !== 'mosquitto') throw new Error('--broker must be aedes or mosquitto');

const data = tmp('uz-bench-rollout-');
const rootKey = generateSigningKey();
const release = generateSigningKey();
const one = { keys: [generateSigningKey()], threshold: 1 };
writeRoot(data, JSON.stringify(signRoot(createRootSigned({ expires: new Date(Date.now() + 86_400_000), root: { keys: [rootKey], threshold: 1 }, release: { keys: [release], threshold: 1 }, targets: one, snapshot: one, timestamp: one }), [rootKey])));
const work = tmp('uz-bench-bundle-');
writeFileSync(join(work, 'payload'), randomBytes(1024 * 1024));
await writeBundle({ payload: join(work, 'payload'), out: join(work, 'b.uzb'), manifest: { board: { id: 'rpi4' }, version: '2.0.0', rollbackCounter: 2, workload: { name: 'app', version: '1.0.0' } }, keys: [release] });

const width = Math.max(4, String(devices - 1).length);
const serverPassword = simPassword('bench', 'uz.server');
const mosq = brokerKind === 'mosquitto'
  ? await startMosquitto({ variant: 'dev', serverPassword, devices: new Map(Array.from({ length: devices }, (_, i) => `bench-${String(i).padStart(width, '0')}`).map((id) => [id, simPassword('bench', id)])) })
  : null;
const srv = await startServerProcess(data, {
  UZ_SERVER_MQTT_DEVICE_MSG_PER_SEC: '100', UZ_SERVER_HTTP_RATE_LIMIT_PER_MINUTE: '100000',
  ...(mosq ? { UZ_SERVER_MQTT_URL: `mqtt://127.0.0.1:${mosq.serverPort}`, UZ_SERVER_MQTT_USERNAME: SERVER_IDENTITY, UZ_SERVER_MQTT_PASSWORD: serverPassword } : {}),
}, cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${cpuProf}`] : []);
const call = async (method: string, path: string, body?: unknown, raw?: Buffer) => {
  const r = await fetch(srv.api + path, { method, headers: { authorization: `Bearer ${srv.token}`, 'content-type': raw ? 'application/octet-stream' : 'application/json' }, body: raw ? new Uint8Array(raw) : body === undefined ? undefined : JSON.stringify(body) });
  const j = (await r.json()) as Record<string, any>;
  if (!r.ok) throw new Error(`${method} ${path}: ${JSON.stringify(j)}`);
  return j;
};
const sim = new FleetSim({ url: mosq ? `mqtt://127.0.0.1:${mosq.devicePort}` : srv.mqtt, devices, stepMs, download, prefix: 'bench', seed: 'bench', connectBatch: 100 });
let exitCode = 0;
try {
  const tc = Date.now();
  await sim.start();
  // Poll the fleet aggregates (what an operator's dashboard does), not the full device list: 10,000 rows
  // every 200 ms would be the benchmark measuring its own polling.
  for (;;) {
    const n = (await call('GET', '/api/v1/fleet/summary')).summary.reporting as number;
    if (n >= devices) break;
    if (Date.now() - tc > 300_000) throw new Error(`only ${n} devices reported`);
    await sleep(200);
  }
  log(`${devices} devices connected in ${((Date.now() - tc) / 1000).toFixed(1)} s`);
  await call('POST', '/api/v1/releases?channel=stable', undefined, readFileSync(join(work, 'b.uzb')));
  const t0 = Date.now();
  const r = await call('POST', '/api/v1/rollouts', { channel: 'stable', stages: ['1%', '10%', '50%', '100%'], maxInFlight: Math.max(50, Math.ceil(devices / 4)), ratePerMinute: 1_000_000, minDevices: 5 });
  const id = r.rollout.id as string;
  let st: Record<string, any>;
  for (;;) {
    st = await call('GET', `/api/v1/rollouts/${id}`);
    if (st.rollout.state !== 'running') break;
    if (Date.now() - t0 > 600_000) break;
    await sleep(100);
  }
  const seconds = Math.round((Date.now() - t0) / 10) / 100;
  const out = { devices, completed: st.totals.succeeded as number, seconds, serverPeakRssMiB: srv.peakRssMiB(), broker: brokerKind, ...(mosq ? { mosquittoPeakRssMiB: peakRss(mosq.pid) } : {}) };
  if (st.rollout.state !== 'completed') exitCode = 1;
  process.stdout.write(JSON.stringify(out) + '\n');
  log(`rollout ${id} ${st.rollout.state}`);
} catch (e) {
  exitCode = 1;
  // did the server die? (its exit may be reported a moment after the connections it dropped)
  const gone = () => srv.child.exitCode !== null || srv.child.signalCode !== null;
  if (!gone()) await Promise.race([new Promise((r) => srv.child.once('exit', r)), sleep(1000)]);
  const died = gone() ? ` (the server process exited: code ${srv.child.exitCode}, signal ${srv.child.signalCode})` : '';
  process.stderr.write(`bench:rollout failed${died}: ${(e as Error).stack ?? String(e)}\n`);
} finally {
  await sim.stop();
  await srv.stop();
  await mosq?.stop();
  rmSync(work, { recursive: true, force: true });
  // keep the server's data directory (database, server.log) only when something went wrong
  if (exitCode === 0) rmSync(data, { recursive: true, force: true });
  else process.stderr.write(`server log and database kept in ${data} (server.log)\n`);
}

function peakRss(pid: number | undefined): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round((Number(m[1]) / 1024) * 10) / 10 : NaN;
  } catch {
    return NaN;
  }
}
process.exit(exitCode);
