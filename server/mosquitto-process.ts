/**
 * Runs a real Mosquitto (Debian's `mosquitto` package) for tests and benchmarks, from the SHIPPED configuration in server/mosquitto/
 * (mosquitto.conf = mutual TLS, mosquitto-dev.conf = passwords) and the shipped ACL. Only file paths, ports
 * (random free loopback ports), persistence and the log destination are substituted; every substitution is
 * checked, so the test fails if the shipped files drift. A missing binary fails with the install hint.
 *
 * Also builds the PKI the TLS variant needs from the fleet CA module (firmware/ca/).
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createCa, createCsr, generateCrl, generateRsaKeyPem, issueDeviceCertificate, issueServerCertificate, type FleetCa } from '../firmware/ca/index.js';
import { freePort } from './child-process.js';
import { SERVER_IDENTITY, issueServerClientCertificate, mosquittoPasswordLine } from './pki.js';

export const SHIPPED = fileURLToPath(new URL('./mosquitto/', import.meta.url));

export function findMosquitto(): string {
  for (const p of ['/usr/sbin/mosquitto', '/usr/bin/mosquitto', '/usr/local/sbin/mosquitto']) if (existsSync(p)) return p;
  throw new Error('mosquitto not found (/usr/sbin/mosquitto): apt-get install mosquitto');
}

export interface RunningMosquitto {
  /** Device listener (8883 / 1883 in the shipped files). */
  devicePort: number;
  /** Update-server listener (8884 / 1884). */
  serverPort: number;
  dir: string;
  pid: number | undefined;
  log(): string;
  /** SIGHUP: Mosquitto re-reads the password file and the ACL. */
  reload(): void;
  stop(): Promise<void>;
}

export interface TlsFiles {
  ca: FleetCa;
  caPem: string;
  crlPem: string;
  server: { certPem: string; keyPem: string };
  /** The update server's client identity (CN uz.server). */
  identity: { certPem: string; keyPem: string };
}

export async function makeTlsFiles(): Promise<TlsFiles> {
  const ca = await createCa({ name: 'mosq-test' });
  const [server, identity] = await Promise.all([issueServerCertificate(ca, { hosts: ['localhost', '127.0.0.1'] }), issueServerClientCertificate(ca)]);
  return { ca, caPem: ca.certPem, crlPem: generateCrl(ca, [], { crlNumber: 1 }), server, identity };
}

/** One shared device key (RSA 2048, the CA's minimum) with a certificate per id: fast enough for many devices. */
export async function deviceCerts(ca: FleetCa, ids: string[]): Promise<Map<string, { key: string; cert: string; serial: string }>> {
  const key = await generateRsaKeyPem(2048);
  const out = new Map<string, { key: string; cert: string; serial: string }>();
  for (const id of ids) {
    const c = issueDeviceCertificate(ca, createCsr(id, key), id);
    out.set(id, { key, cert: c.certPem, serial: c.serial });
  }
  return out;
}

function sub(text: string, from: string | RegExp, to: string, what: string): string {
  const next = text.replace(from, to);
  if (next === text) throw new Error(`shipped Mosquitto config changed: could not substitute ${what}`);
  return next;
}

async function waitPort(port: number, child: ChildProcess, log: () => string): Promise<void> {
  const end = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`mosquitto exited (${child.exitCode}): ${log()}`);
    const ok = await new Promise<boolean>((res) => {
      const s = netConnect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), res(true)));
      s.once('error', () => res(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`mosquitto did not listen on ${port}: ${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * variant 'tls': shipped mosquitto.conf with tls files; variant 'dev': shipped mosquitto-dev.conf with a
 * password file holding uz.server (serverPassword) and the given device credentials.
 */
export async function startMosquitto(
  o: { variant: 'tls'; tls: TlsFiles } | { variant: 'dev'; serverPassword: string; devices: Map<string, string> },
): Promise<RunningMosquitto> {
  const bin = findMosquitto();
  const dir = mkdtempSync(join(tmpdir(), 'uz-mosq-'));
  const [devicePort, serverPort] = [await freePort(), await freePort()];
  let conf = readFileSync(join(SHIPPED, o.variant === 'tls' ? 'mosquitto.conf' : 'mosquitto-dev.conf'), 'utf8');
  conf = sub(conf, /\/etc\/mosquitto\/uz\//g, `${dir}/`, 'the file paths');
  if (o.variant === 'tls') {
    conf = sub(conf, /^listener 8883$/m, `listener ${devicePort} 127.0.0.1`, 'the device listener');
    conf = sub(conf, /^listener 8884 127\.0\.0\.1$/m, `listener ${serverPort} 127.0.0.1`, 'the server listener');
    conf = sub(conf, /^persistence true$/m, 'persistence false', 'persistence');
    conf = sub(conf, /^persistence_location .*$/m, '', 'persistence_location');
    conf = sub(conf, /^log_dest syslog$/m, 'log_dest stderr', 'log_dest');
    writeFileSync(join(dir, 'ca.crt'), o.tls.caPem);
    writeFileSync(join(dir, 'crl.pem'), o.tls.crlPem);
    writeFileSync(join(dir, 'server.crt'), o.tls.server.certPem);
    writeFileSync(join(dir, 'server.key'), o.tls.server.keyPem, { mode: 0o600 });
  } else {
    conf = sub(conf, /^listener 1883$/m, `listener ${devicePort} 127.0.0.1`, 'the device listener');
    conf = sub(conf, /^listener 1884 127\.0\.0\.1$/m, `listener ${serverPort} 127.0.0.1`, 'the server listener');
    const lines = [mosquittoPasswordLine(SERVER_IDENTITY, o.serverPassword), ...[...o.devices].map(([u, p]) => mosquittoPasswordLine(u, p))];
    writeFileSync(join(dir, 'passwd'), lines.join('\n') + '\n', { mode: 0o600 });
  }
  writeFileSync(join(dir, 'acl'), readFileSync(join(SHIPPED, 'acl'), 'utf8'));
  writeFileSync(join(dir, 'mosquitto.conf'), conf);
  // As root, Mosquitto drops privileges to the `mosquitto` user before reading the ACL/password file again.
  if (process.getuid?.() === 0) {
    try {
      const uid = Number(execFileSync('id', ['-u', 'mosquitto'], { encoding: 'utf8' }).trim());
      const gid = Number(execFileSync('id', ['-g', 'mosquitto'], { encoding: 'utf8' }).trim());
      for (const f of [dir, ...readdirSync(dir).map((f) => join(dir, f))]) chownSync(f, uid, gid);
    } catch {
      /* no mosquitto user: it keeps running as root */
    }
  }
  chmodSync(dir, 0o700);
  const child = spawn(bin, ['-c', join(dir, 'mosquitto.conf')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const kill = (): void => {
    if (child.exitCode === null) child.kill('SIGKILL');
  };
  process.once('exit', kill);
  try {
    await waitPort(devicePort, child, () => out);
    await waitPort(serverPort, child, () => out);
  } catch (e) {
    kill();
    throw e;
  }
  return {
    devicePort,
    serverPort,
    dir,
    pid: child.pid,
    log: () => out,
    reload: () => void child.kill('SIGHUP'),
    async stop() {
      process.off('exit', kill);
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
        kill();
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
