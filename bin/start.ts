import type { Command } from 'commander';
import { existsSync, createReadStream, statSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import { buildImage } from '../firmware/build.js';
import { runQemu } from '../firmware/qemu.js';
import { keysInit } from '../firmware/trust/io.js';
import { createServer } from '../server/index.js';
import { loadConfig } from '../server/config.js';
import { FleetSim } from '../server/sim.js';
import { api, type RolloutStatusJson } from '../server/cli.js';
import { provisionImage } from '../firmware/provision/image.js';
import { QEMU_HOST_ALIAS } from '../firmware/qemu.js';
import { info, stepReporter } from '../lib/output.js';
import { copyImageSparse } from '../firmware/image.js';

/**
 * `npm start` = `uz start`: the whole system locally on embedded defaults.
 *  1. a fleet root of trust (out/keys, created once);
 *  2. the update server with its embedded MQTT broker and database (out/uz-server);
 *  3. a demo release pair for the reference board, built, signed and published (1.0.0 and 1.1.0);
 *  4. a simulated fleet on the same protocol, and the emulated board in QEMU when QEMU is installed;
 *  5. a staged rollout of 1.1.0 (10% -> 50% -> 100%) with its progress in the terminal.
 * Everything stays up (dashboard included) until Ctrl-C.
 */
function qemuAvailable(): boolean {
  return spawnSync('qemu-system-aarch64', ['--version']).status === 0;
}

export function registerStartCommand(program: Command): void {
  program
    .command('start')
    .description('run the whole system locally: server + broker + database, a demo release pair, a simulated fleet, the emulated board, and a staged rollout')
    .option('--out <dir>', 'where keys, images and server data go', 'out')
    .option('--devices <n>', 'simulated devices', (v) => Number(v), 40)
    .option('--fail-health <pct>', 'percent of simulated devices whose health check fails after the update', (v) => Number(v), 0)
    .option('--http-port <port>', 'HTTP API and dashboard port', (v) => Number(v), 8080)
    .option('--mqtt-port <port>', 'MQTT port', (v) => Number(v), 1883)
    .option('--no-qemu', 'do not boot the emulated board')
    .option('--exit-when-done', 'stop when the rollout has finished (for scripts)')
    .action(async (o: { out: string; devices: number; failHealth: number; httpPort: number; mqttPort: number; qemu: boolean; exitWhenDone?: boolean }) => {
      const out = resolve(o.out);
      const step = stepReporter(6);
      const keysDir = join(out, 'keys');
      step('root of trust');
      if (!existsSync(join(keysDir, 'root.json'))) await keysInit({ out: keysDir });

      step('building the demo release pair for qemu-virt (1.0.0, 1.1.0)');
      const v1 = await buildImage({ board: 'qemu-virt', app: 'demo', version: '1.0.0', outDir: join(out, 'images'), sign: { keysDir, rollbackCounter: 1 }, onWarn: (m) => info(`warning: ${m}`) });
      const v2 = await buildImage({ board: 'qemu-virt', app: 'demo', version: '1.1.0', outDir: join(out, 'images'), sign: { keysDir, rollbackCounter: 2 }, onWarn: (m) => info(`warning: ${m}`) });

      step('starting the update server (embedded MQTT broker and database)');
      const withBoard = o.qemu && qemuAvailable();
      // The emulated board reaches the host only at QEMU_HOST_ALIAS, so bundle URLs point there when it runs;
      // the simulated devices then simulate their downloads.
      const publicUrl = withBoard ? `http://${QEMU_HOST_ALIAS}:${o.httpPort}` : undefined;
      const config = loadConfig({
        flags: { dataDir: join(out, 'uz-server'), trustRoot: join(keysDir, 'root.json'), http: { port: o.httpPort, ...(publicUrl ? { publicUrl } : {}) }, mqtt: { port: o.mqttPort }, logLevel: 'warn' },
      });
      const server = await createServer(config);
      const urls = await server.start();
      const token = readFileSync(join(config.dataDir, 'admin.token'), 'utf8').trim();
      const client = { server: `http://127.0.0.1:${o.httpPort}`, token };

      step('publishing the releases');
      const publish = async (bundle: string, channel?: string) =>
        api<{ release: { id: string; version: string } }>(client, 'POST', `/api/v1/releases${channel ? `?channel=${channel}` : ''}`, undefined, {
          stream: createReadStream(bundle),
          length: statSync(bundle).size,
        });
      await publish(v1.bundle!);
      const r2 = await publish(v2.bundle!, 'stable');

      step(`starting ${o.devices} simulated devices${withBoard ? ' and the emulated board' : ''}`);
      const fleet = new FleetSim({ url: urls.mqtt, devices: o.devices, board: 'qemu-virt', version: '1.0.0', failHealthPct: o.failHealth, stepMs: 300, download: withBoard ? 'none' : 'range' });
      await fleet.start();
      const ac = new AbortController();
      let qemu: Promise<unknown> = Promise.resolve();
      if (withBoard) {
        const disk = join(out, 'images', 'qemu-virt-board.img');
        await copyImageSparse(v1.image, disk);
        await provisionImage({
          image: disk,
          config: { formatVersion: 1, deviceName: 'qemu-board-01', server: { httpUrl: `http://${QEMU_HOST_ALIAS}:${o.httpPort}`, mqttUrl: `mqtt://${QEMU_HOST_ALIAS}:${o.mqttPort}` } },
        });
        qemu = runQemu({
          image: disk,
          signal: ac.signal,
          timeoutMs: 30 * 86400_000,
          forwards: [{ guestPort: o.httpPort, hostPort: o.httpPort }, { guestPort: o.mqttPort, hostPort: o.mqttPort }],
          onLine: (l) => l.startsWith('UZ-') && info(`  [board] ${l}`),
        });
      } else if (o.qemu) {
        info('  (qemu-system-aarch64 not found: apt-get install qemu-system-arm to add the emulated board)');
      }

      if (withBoard) {
        info('  waiting for the emulated board to boot and connect (about a minute under emulation)');
        for (let i = 0; i < 240; i++) {
          const d = await api<{ devices: Array<{ id: string; online: boolean }> }>(client, 'GET', '/api/v1/devices');
          if (d.devices.some((x) => x.id === 'qemu-board-01' && x.online)) break;
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
      step('staged rollout of 1.1.0 to channel stable: 10% -> 50% -> 100%');
      const ro = await api<{ rollout: { id: string } }>(client, 'POST', '/api/v1/rollouts', {
        releaseId: r2.release.id,
        channel: 'stable',
        stages: ['10%', '50%', '100%'],
        failureThreshold: { percent: 20 },
        minDevices: 4,
      });
      // urls.dashboard is the public URL (the board's view, 10.0.2.100 under QEMU); a person on this machine uses loopback.
      info(`\n  dashboard: ${client.server}/   (API token: ${join(config.dataDir, 'admin.token')})\n  MQTT: ${urls.mqtt}   Ctrl-C stops everything\n`);

      let stopping = false;
      const stop = async () => {
        if (stopping) return;
        stopping = true;
        ac.abort();
        await fleet.stop();
        await qemu;
        await server.close();
      };
      process.once('SIGINT', () => void stop().then(() => process.exit(0)));
      let last = '';
      while (!stopping) {
        const st = await api<RolloutStatusJson>(client, 'GET', `/api/v1/rollouts/${ro.rollout.id}`);
        const line = `  rollout ${st.rollout.state.padEnd(9)} stage ${st.rollout.stageIndex + 1}/${st.stages.length}  ` +
          st.stages.map((s) => `[${s.label}: ${s.succeeded} ok, ${s.failed} failed, ${s.dispatched} in flight]`).join(' ');
        if (line !== last) info(line);
        last = line;
        if (['completed', 'aborted', 'paused'].includes(st.rollout.state)) {
          info(`  rollout ${st.rollout.state}${st.rollout.reason ? `: ${st.rollout.reason}` : ''}; fleet versions ${JSON.stringify(fleet.summary().versions)}`);
          if (o.exitWhenDone) {
            await stop();
            return;
          }
          info('  the server keeps running; Ctrl-C stops it');
          break;
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
      await new Promise(() => {}); // serve until Ctrl-C
    });
}
