// Starting `uz server` as a child process (benchmarks, crash tests) and small helpers for bench/ scripts.
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const uzBin = fileURLToPath(new URL('../bin/uz.js', import.meta.url));
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function tmp(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

export interface ServerProc {
  child: ChildProcess;
  api: string;
  mqtt: string;
  token: string;
  /** Peak resident set (VmHWM) of the server process in MiB. */
  peakRssMiB(): number;
  stop(): Promise<void>;
}

/** `nodeArgs`: extra Node.js flags for the server process (e.g. `--cpu-prof`, which NODE_OPTIONS does not take). */
export async function startServerProcess(data: string, env: Record<string, string> = {}, nodeArgs: string[] = []): Promise<ServerProc> {
  const [httpPort, mqttPort] = [await freePort(), await freePort()];
  const child = spawn(process.execPath, [...nodeArgs, uzBin, 'server', '--data', data, '--http-port', String(httpPort), '--mqtt-port', String(mqttPort)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, UZ_SERVER_LOG_LEVEL: 'warn', ...env },
  });
  let err = '';
  // The server's log (stdout) and stderr are kept in <data>/server.log for diagnosis after a run.
  const logFile = join(data, 'server.log');
  child.stdout!.on('data', (d: Buffer) => appendFileSync(logFile, d));
  child.stderr!.on('data', (d: Buffer) => {
    if (err.length < 1_000_000) err += d.toString();
    appendFileSync(logFile, d);
  });
  const t0 = Date.now();
  while (!err.includes('uz server ready')) {
    if (child.exitCode !== null || Date.now() - t0 > 30_000) throw new Error(`server did not start: ${err}`);
    await sleep(50);
  }
  const token = readFileSync(join(data, 'admin.token'), 'utf8').trim();
  return {
    child,
    api: `http://127.0.0.1:${httpPort}`,
    mqtt: `mqtt://127.0.0.1:${mqttPort}`,
    token,
    peakRssMiB() {
      try {
        const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
        return m ? Math.round((Number(m[1]) / 1024) * 10) / 10 : NaN;
      } catch {
        return NaN;
      }
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return; // already gone (exited or killed)
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

export function writeRoot(data: string, rootJson: string): void {
  writeFileSync(join(data, 'root.json'), rootJson);
}

export function arg(name: string, def?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}
