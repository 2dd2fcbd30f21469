/**
 * End to end on the emulated board: real U-Boot, real kernel, the agent inside the image, our update server
 * with its embedded MQTT broker on the host loopback (the guest reaches it at 10.0.2.100 through QEMU's
 * restricted user networking: a relay per connection, nothing else reachable). The story of docs/agent.md:
 *   v1 boots on slot A
 *   v2 is rolled out            -> UZ-READY slot=B version=2.0.0
 *   v3 fails its health check   -> rolled back, UZ-READY slot=B version=2.0.0 again
 *   v4's kernel panics          -> bootcount fallback, UZ-READY slot=B version=2.0.0 again
 * Run alone with `npm run e2e:qemu` (UZ_E2E_ECHO=1 streams the whole console).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, writeFileSync, createReadStream, statSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer as netServer } from 'node:net';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { tool } from '../fs/helpers.js';
import { runDir, TEST_EPOCH } from '../helpers/images.js';
import { QemuSession } from '../helpers/qemu-session.js';
import { buildImage } from '../../firmware/build.js';
import { keysInit, loadPrivateKeys } from '../../firmware/trust/io.js';
import { writeBundle } from '../../firmware/bundle/write.js';
import { overwriteFat32File, readFat32 } from '../../firmware/fs/fat32.js';
import { provisionImage } from '../../firmware/provision/image.js';
import { createServer, type UzServer } from '../../server/index.js';
import { loadConfig } from '../../server/config.js';
import { api } from '../../server/cli.js';
import { copyImageSparse } from '../../firmware/image.js';

const DEVICE = 'qemu-e2e-01';
const STEP_MS = 8 * 60_000;

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = netServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

describe('e2e: updates on the emulated board through the real server and broker', () => {
  const work = mkdtempSync(join(runDir(), 'e2e-'));
  const keysDir = join(work, 'keys');
  const bundles: Record<string, string> = {};
  let image = '';
  let server: UzServer;
  let client: { server: string; token: string };
  let board: QemuSession;

  beforeAll(async () => {
    tool('qemu-system-aarch64');
    await keysInit({ out: keysDir });
    // The demo app with a shorter health deadline, so a failing release is rolled back within a test step.
    const appDir = join(work, 'app');
    const manifest = JSON.parse(readFileSync('firmware/apps/demo/app.json', 'utf8'));
    manifest.health.startupDeadlineSeconds = 75;
    manifest.files[0].from = join(process.cwd(), 'firmware/apps/demo/demo-node.mjs');
    await import('node:fs').then((fs) => fs.mkdirSync(appDir, { recursive: true }));
    writeFileSync(join(appDir, 'app.json'), JSON.stringify(manifest));
    const app = join(appDir, 'app.json');
    const out = join(work, 'out');
    const build = (version: string, counter: number, extra: { failHealth?: boolean } = {}) =>
      buildImage({
        board: 'qemu-virt', app, version, outDir: out, sourceDateEpoch: TEST_EPOCH, sign: { keysDir, rollbackCounter: counter },
        appInputs: extra.failHealth ? { configOverrides: { FailHealth: true } } : {},
      });
    const v1 = await build('1.0.0', 1);
    image = v1.image;
    bundles.v2 = (await build('2.0.0', 2)).bundle!;
    bundles.v3 = (await build('3.0.0', 3, { failHealth: true })).bundle!;
    // v4: a validly signed release whose initramfs is garbage, so its kernel panics at boot.
    const v4 = await build('4.0.0', 4);
    const slot = await readFile(v4.slotImage);
    const initrd = readFat32(slot).readFile('initrd.img');
    overwriteFat32File(slot, 'initrd.img', Buffer.alloc(initrd.length, 0x5a));
    await writeFile(v4.slotImage, slot);
    bundles.v4 = join(out, 'qemu-virt-4.0.0-panics.uzb');
    const keys = await loadPrivateKeys([join(keysDir, 'private', 'release-1.key.json')]);
    await writeBundle({
      payload: v4.slotImage, out: bundles.v4, keys,
      manifest: { board: { id: 'qemu-virt', hardwareIds: ['linux,dummy-virt'] }, version: '4.0.0', rollbackCounter: 4, workload: { name: 'demo', version: '1.0.0' }, compression: 'gzip' },
    });

    const httpPort = await freePort();
    const mqttPort = await freePort();
    const config = loadConfig({
      flags: {
        dataDir: join(work, 'server'), trustRoot: join(keysDir, 'root.json'), logLevel: 'warn',
        http: { port: httpPort, publicUrl: 'http://10.0.2.100:8080' }, mqtt: { port: mqttPort }, rolloutTickMs: 250,
      },
    });
    server = await createServer(config, { logStream: process.stderr });
    const urls = await server.start();
    void urls; // urls.http is the public URL the board uses; the test talks to the loopback port
    client = { server: `http://127.0.0.1:${httpPort}`, token: readFileSync(join(config.dataDir, 'admin.token'), 'utf8').trim() };

    const disk = join(work, 'board.img');
    await copyImageSparse(image, disk);
    await provisionImage({
      image: disk,
      config: { formatVersion: 1, deviceName: DEVICE, server: { httpUrl: 'http://10.0.2.100:8080', mqttUrl: 'mqtt://10.0.2.100:1883' } },
    });
    board = new QemuSession(disk, [{ guestPort: 8080, hostPort: httpPort }, { guestPort: 1883, hostPort: mqttPort }]);
  }, 900_000);

  afterAll(async () => {
    await board?.stop();
    await server?.close();
  });

  async function rollOut(bundle: string): Promise<void> {
    const r = await api<{ release: { id: string } }>(client, 'POST', '/api/v1/releases', undefined, { stream: createReadStream(bundle), length: statSync(bundle).size });
    await api(client, 'POST', '/api/v1/rollouts', { releaseId: r.release.id, devices: [DEVICE], stages: ['100%'] });
  }

  it('v1 boots on slot A and the device reports to the server', async () => {
    await board.waitFor(/^UZ-READY slot=A version=1\.0\.0$/, STEP_MS);
    for (let i = 0; i < 60; i++) {
      const d = await api<{ devices: Array<{ id: string; online: boolean; version?: string | null }> }>(client, 'GET', '/api/v1/devices').catch(() => ({ devices: [] }));
      if (d.devices.some((x) => x.id === DEVICE && x.online)) return;
      await new Promise((r) => setTimeout(r, 1000));
    }
    throw new Error(`device ${DEVICE} never came online at the server`);
  }, STEP_MS + 120_000);

  it('v2 is installed into slot B, tried, and committed', async () => {
    const from = board.mark();
    await rollOut(bundles.v2!);
    await board.waitFor(/^UZ-READY slot=B version=2\.0\.0$/, STEP_MS, from);
    expect(board.uzLines(from)).toContain('UZ-BOOT slot=B version=2.0.0 board=qemu-virt');
    // The data partition survived the slot swap: the workload resumed from the height v1 persisted.
    const start = board.lines.slice(from).find((l) => /\[demo\] demo: JSON-RPC .* height \d+/.test(l));
    expect(Number(/height (\d+)/.exec(start ?? '')?.[1])).toBeGreaterThan(0);
  }, STEP_MS + 60_000);

  it('v3 fails its health check on the try boot and the board comes back on B with v2', async () => {
    const from = board.mark();
    await rollOut(bundles.v3!);
    await board.waitFor(/^UZ-BOOT slot=A version=3\.0\.0/, STEP_MS, from);
    await board.waitFor(/^UZ-ROLLBACK slot=A/, STEP_MS, from);
    await board.waitFor(/^UZ-READY slot=B version=2\.0\.0$/, STEP_MS, from);
  }, 3 * STEP_MS);

  it('v4 panics its kernel; the bootcount falls back to B with v2', async () => {
    const from = board.mark();
    await rollOut(bundles.v4!);
    await board.waitFor(/Kernel panic - not syncing/, STEP_MS, from);
    await board.waitFor(/^UZ-READY slot=B version=2\.0\.0$/, STEP_MS, from);
    const lines = board.uzLines(from);
    expect(lines.some((l) => l.startsWith('UZ-UBOOT slot=A'))).toBe(true);
    expect(lines.filter((l) => l.startsWith('UZ-BOOT slot=A')).length).toBe(0); // the panicking kernel never reached init
  }, 3 * STEP_MS);
});
