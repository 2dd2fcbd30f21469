/**
 * Runs once while the agent's start-up snapshot is built (snapshot-entry.ts, at image build time), never on
 * the device: it validates representative inputs with the schemas the agent checks at every boot, so the
 * snapshot carries their compiled code. zod builds each object schema's parser the first time it parses,
 * and V8 compiles each function on its first call; in a snapshot, what already ran stays compiled.
 * Measured on the emulated board (a CPU profile of the agent): validating /etc/uz/image.json alone took about
 * 1 s of CPU on a cold snapshot, while the workload was starting on the same two cores. The device config,
 * agent config and saved state a provisioned board reads at every boot are warmed with placeholder samples.
 *
 * Data only: no files, clock or environment (the snapshot must not depend on the build host). The builder
 * passes this image's own image info with the version and build time blanked (warmUpSample in
 * firmware/agent-bundle.ts), so the same fields and branches are exercised as at boot, and one snapshot
 * serves every version of an app on a board.
 */
import { ImageInfoSchema } from './image-info.js';
import { parseConfig } from '../config.js';
import { DEVICE_CONFIG_FORMAT_VERSION, parseDeviceConfig } from '../../firmware/provision/config.js';
import { StateRecordSchema } from '../state/store.js';
import { spawn } from 'node:child_process';
import { Socket } from 'node:net';
import { PassThrough } from 'node:stream';

/** An agent config (/data/uz/agent.json or /etc/uz/agent.json, docs/agent.md); values are placeholders. */
const AGENT_CONFIG_SAMPLE = {
  configVersion: 1,
  deviceId: 'warm-up-device',
  brokerUrl: 'mqtts://broker.invalid:8883',
  serverUrl: 'https://updates.invalid',
  trustRoot: '/etc/uz/trust/root.json',
  channel: 'stable',
  tls: { ca: '/data/uz/tls/ca.pem', cert: '/data/uz/tls/cert.pem', key: '/data/uz/tls/key.pem' },
  stateDir: '/data/uz',
  keepaliveSeconds: 30,
};

/** A provisioned uz-device.json (docs/provisioning.md); placeholder values. */
const DEVICE_CONFIG_SAMPLE = JSON.stringify({
  formatVersion: DEVICE_CONFIG_FORMAT_VERSION,
  deviceName: 'warm-up-device',
  server: { httpUrl: 'https://updates.invalid', mqttUrl: 'mqtts://broker.invalid:8883' },
  ntpServers: ['pool.ntp.org'],
  channel: 'stable',
});

/** The update engine's saved state of a settled board (updater/state/store.ts). */
const STATE_SAMPLE = { v: 1, state: 'idle', update: null, committed: { slot: 'A', version: '0.0.0', rollbackCounter: 0 }, floor: 0, done: null, lastError: null, savedAt: 0 };

export interface WarmUpSample {
  /** This image's /etc/uz/image.json, version and build time blanked. */
  imageInfo?: unknown;
}

/** Throws when a sample does not validate: the build then fails, instead of shipping a cold snapshot. */
export function warmUpSchemas(sample: WarmUpSample): void {
  if (sample.imageInfo !== undefined) {
    const r = ImageInfoSchema.safeParse(sample.imageInfo);
    if (!r.success) throw new Error(`agent snapshot warm-up: the image info does not validate: ${r.error.issues[0]?.path.join('.')}: ${r.error.issues[0]?.message}`);
  }
  parseConfig(AGENT_CONFIG_SAMPLE, 'agent snapshot warm-up');
  const dev = parseDeviceConfig(DEVICE_CONFIG_SAMPLE);
  if (!dev.ok) throw new Error(`agent snapshot warm-up: the sample device config does not validate: ${dev.field}: ${dev.message}`);
  const state = StateRecordSchema.safeParse(STATE_SAMPLE);
  if (!state.success) throw new Error(`agent snapshot warm-up: the sample state does not validate: ${state.error.issues[0]?.path.join('.')}`);
}

/**
 * Node's own stream and socket code is compiled on first use too. Starting the workload wraps its stdout and
 * stderr pipes in net.Socket streams and reads them; constructing a socket without a handle and passing data
 * through a stream here compiles those paths without opening anything (nothing is left for the snapshot to
 * refuse: no handle, no pending callback once the builder's event loop has run).
 */
export function warmUpStreams(): void {
  const pass = new PassThrough();
  pass.on('data', () => {});
  pass.write('warm-up');
  pass.end();
  const socket = new Socket();
  socket.on('error', () => {});
  socket.destroy();
}

/**
 * The first thing the agent does at boot is spawn the workload with its stdout and stderr on pipes. Spawning a
 * program that does not exist, with the same stdio, runs that path here (argument and environment handling,
 * the pipes' sockets, the spawn call, the error path) so the snapshot carries it compiled. Nothing is
 * executed: no emulator for a child is needed on the build host, and the result cannot depend on one. The
 * ENOENT arrives on the builder's event loop, which runs until nothing is pending before the heap is written.
 */
export function warmUpSpawn(): void {
  const child = spawn('/nonexistent/uz-agent-warm-up', ['--warm-up'], { stdio: ['ignore', 'pipe', 'pipe'], env: { UZ_WARM_UP: '1' } });
  child.stdout?.on('data', () => {});
  child.stderr?.on('data', () => {});
  child.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw new Error(`agent snapshot warm-up: spawn failed unexpectedly: ${e.message}`);
  });
}
