/**
 * Enrollment end to end on the emulated board: a signed qemu-virt demo image, our update server on the host
 * loopback with the fleet CA and the broker's mutual-TLS listener, a one-time token made through the API and
 * provisioned into the card with the fleet CA certificate and `mqtts://10.0.2.100:8883`. The board makes its key,
 * enrolls over the broker's enrollment session (pending until the test approves it through the API), stores its
 * certificate, reconnects with mTLS and reports its status (the API shows it online with its version). Then it
 * is revoked through the API and the broker refuses it (console: `UZ-MQTT refused rc=5`; API: offline, revoked).
 * The guest reaches the host only at 10.0.2.100:<port> through per-connection relays (restrict=on).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as netServer } from 'node:net';
import { join } from 'node:path';
import { requireQemu } from '../../firmware/qemu.js';
import { runDir, TEST_EPOCH } from '../helpers/images.js';
import { QemuSession } from '../helpers/qemu-session.js';
import { buildImage } from '../../firmware/build.js';
import { keysInit } from '../../firmware/trust/io.js';
import { initCaDir, issueServerCertificate, loadCaDir } from '../../firmware/ca/index.js';
import { provisionImage } from '../../firmware/provision/image.js';
import { createServer, type UzServer } from '../../server/index.js';
import { loadConfig } from '../../server/config.js';
import { api } from '../../server/cli.js';
import { copyImageSparse } from '../../firmware/image.js';

const DEVICE = 'qemu-home-01';
const STEP_MS = 4 * 60_000;

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = netServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

interface DeviceRow {
  id: string;
  online: boolean;
  enrollment: string;
  status: { version: string; slot: string } | null;
}

describe('emulated board: enrollment, mTLS, revocation', () => {
  const work = mkdtempSync(join(runDir(), 'home-enroll-'));
  let server: UzServer | undefined;
  let board: QemuSession | undefined;
  let client: { server: string; token: string };
  let token = '';
  let t0 = 0;
  const secs = () => ((Date.now() - t0) / 1000).toFixed(1);
  const devices = async () => (await api<{ devices: DeviceRow[] }>(client, 'GET', '/api/v1/devices')).devices;
  const device = async () => (await devices()).find((d) => d.id === DEVICE);
  async function until<T>(fn: () => Promise<T | null | undefined | false>, ms: number, what: string): Promise<T> {
    const end = Date.now() + ms;
    for (;;) {
      const v = await fn().catch(() => null);
      if (v) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  beforeAll(async () => {
    requireQemu(); // fails with the apt-get hint when QEMU is missing
    const keysDir = join(work, 'keys');
    await keysInit({ out: keysDir });
    const built = await buildImage({ board: 'qemu-virt', app: 'demo', version: '1.0.0', outDir: join(work, 'out'), sourceDateEpoch: TEST_EPOCH, sign: { keysDir, rollbackCounter: 1 } });

    // Fleet CA, and a broker certificate for the name the board uses (10.0.2.100) and the host's loopback.
    const caDir = join(work, 'ca');
    await initCaDir({ out: caDir, name: 'home-qemu' });
    const caPem = readFileSync(join(caDir, 'ca.crt'), 'utf8');
    const brokerCert = await issueServerCertificate(await loadCaDir(caDir), { hosts: ['10.0.2.100', '127.0.0.1'] });
    mkdirSync(join(work, 'broker-tls'));
    writeFileSync(join(work, 'broker-tls', 'server.crt'), brokerCert.certPem);
    writeFileSync(join(work, 'broker-tls', 'server.key'), brokerCert.keyPem, { mode: 0o600 });

    const httpPort = await freePort();
    const mqttPort = await freePort();
    const tlsPort = await freePort();
    const config = loadConfig({
      flags: {
        dataDir: join(work, 'server'), trustRoot: join(keysDir, 'root.json'), logLevel: 'warn', caDir,
        http: { port: httpPort, publicUrl: 'http://10.0.2.100:8080' },
        mqtt: { port: mqttPort, tlsPort, tlsCertFile: join(work, 'broker-tls', 'server.crt'), tlsKeyFile: join(work, 'broker-tls', 'server.key'), autoRegister: false },
      },
    });
    server = await createServer(config, { logStream: process.stderr });
    await server.start();
    client = { server: `http://127.0.0.1:${httpPort}`, token: readFileSync(join(config.dataDir, 'admin.token'), 'utf8').trim() };
    token = (await api<{ token: string }>(client, 'POST', '/api/v1/enrollment-tokens', { deviceId: DEVICE })).token;

    const disk = join(work, 'board.img');
    await copyImageSparse(built.image, disk);
    await provisionImage({
      image: disk,
      config: { formatVersion: 1, deviceName: DEVICE, server: { httpUrl: 'http://10.0.2.100:8080', mqttUrl: 'mqtts://10.0.2.100:8883', caCert: caPem }, enrollToken: token },
    });
    t0 = Date.now();
    board = new QemuSession(disk, [{ guestPort: 8883, hostPort: tlsPort }, { guestPort: 8080, hostPort: httpPort }]);
  }, 600_000);

  afterAll(async () => {
    await board?.stop();
    await server?.close();
  });

  it('boots, makes its key and asks for a certificate; pending until approved through the API; then enrolled', async () => {
    const b = board!;
    await b.waitFor(new RegExp(`^UZ-ENROLL requested device=${DEVICE} key=new via=mqtts$`), STEP_MS);
    process.stderr.write(`    [timing] enroll requested (key made on the board) after ${secs()} s\n`);
    await b.waitFor(/^UZ-ENROLL pending code=ENROLL_PENDING retry_in_ms=\d+$/, STEP_MS);
    expect((await device())?.enrollment).toBe('pending');
    await api(client, 'POST', `/api/v1/devices/${DEVICE}/approve`, {});
    await b.waitFor(new RegExp(`^UZ-ENROLL enrolled device=${DEVICE} serial=[0-9a-f]+ not_after=\\S+ via=mqtt$`), STEP_MS);
    process.stderr.write(`    [timing] enrolled after ${secs()} s\n`);
    await b.waitFor(/^UZ-READY slot=A version=1\.0\.0$/, STEP_MS);
  }, 3 * STEP_MS);

  it('connects with its certificate (mTLS) and the server shows it online with its version', async () => {
    const b = board!;
    await b.waitFor(/^UZ-MQTT connected broker=mqtts:\/\/10\.0\.2\.100:8883 client=qemu-home-01$/, STEP_MS);
    const d = await until(async () => {
      const x = await device();
      return x?.online && x.status ? x : null;
    }, STEP_MS, 'device online with a status');
    expect(d).toMatchObject({ online: true, enrollment: 'approved', status: { version: '1.0.0', slot: 'A' } });
    process.stderr.write(`    [timing] online with status after ${secs()} s\n`);
    // secrets never on the console
    const all = b.lines.join('\n');
    expect(all).not.toContain(token.slice('uze_01234567_'.length));
    expect(all).not.toContain('PRIVATE KEY');
  }, 2 * STEP_MS);

  it('revoked through the API: the broker drops and refuses it; the server shows it offline and revoked', async () => {
    const b = board!;
    const from = b.mark();
    const r = await api<{ device: { enrollment: string }; serial: string | null }>(client, 'POST', `/api/v1/devices/${DEVICE}/revoke`, { reason: 'keyCompromise' });
    expect(r.device.enrollment).toBe('revoked');
    expect(r.serial).toMatch(/^[0-9a-f]+$/);
    await b.waitFor(/^UZ-MQTT refused rc=5 broker=mqtts:\/\/10\.0\.2\.100:8883 detail="Connection refused: Not authorized"$/, STEP_MS, from);
    const d = await until(async () => {
      const x = await device();
      return x && !x.online ? x : null;
    }, 60_000, 'device offline');
    expect(d).toMatchObject({ online: false, enrollment: 'revoked' });
    expect(b.uzLines(from).some((l) => l.startsWith('UZ-MQTT connected'))).toBe(false);
    process.stderr.write(`    [timing] refused after revocation at ${secs()} s\n`);
  }, 2 * STEP_MS);
});
