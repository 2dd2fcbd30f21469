/**
 * A real, throw-away PostgreSQL for tests: initdb + pg_ctl from /usr/lib/postgresql/<ver>/bin (Debian's
 * `postgresql` package), a temp data directory, 127.0.0.1 on a free port, unix sockets inside the temp dir.
 * PostgreSQL refuses to run as root, so as root the binaries run as the `postgres` user (runuser) with the
 * directory chowned to it. Missing binaries are a test failure with the install hint, never a skip.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from '../../server/child-process.js';

export interface PgCluster {
  port: number;
  /** postgres://postgres@127.0.0.1:<port>/<db> */
  url(db?: string): string;
  /** Creates a fresh database and returns its URL. */
  newDatabase(prefix?: string): Promise<string>;
  stop(): Promise<void>;
}

export function findPgBin(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'initdb')) && existsSync(join(root, v, 'bin', 'pg_ctl'))) : [];
  versions.sort((a, b) => Number(b) - Number(a));
  if (!versions.length) throw new Error('PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: apt-get install postgresql');
  return join(root, versions[0]!, 'bin');
}

function asPostgres(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  return { uid, gid };
}

let seq = 0;

export async function startPostgres(): Promise<PgCluster> {
  const bin = findPgBin();
  const owner = asPostgres();
  const dir = mkdtempSync(join(tmpdir(), 'uz-pg-'));
  const data = join(dir, 'data');
  const sock = join(dir, 'sock');
  mkdirSync(sock);
  if (owner) for (const p of [dir, sock]) chownSync(p, owner.uid, owner.gid);
  chmodSync(dir, 0o700);
  const run = (cmd: string, args: string[]): void => {
    const [file, argv] = owner ? ['runuser', ['-u', 'postgres', '--', join(bin, cmd), ...args]] : [join(bin, cmd), args];
    const r = spawnSync(file, argv, { encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) throw new Error(`${cmd} failed (${r.status ?? r.signal}): ${r.stderr || r.stdout}${existsSync(join(dir, 'log')) ? '\n' + readFileSync(join(dir, 'log'), 'utf8').slice(-2000) : ''}`);
  };
  run('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--no-sync', '--no-instructions']);
  const port = await freePort();
  // Test cluster: no fsync (nothing here tests PostgreSQL's own durability), small but enough connections.
  const opts = `-c listen_addresses=127.0.0.1 -p ${port} -k ${sock} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200`;
  run('pg_ctl', ['-D', data, '-l', join(dir, 'log'), '-o', opts, '-w', '-t', '60', 'start']);
  let stopped = false;
  const stopSync = (): void => {
    if (stopped) return;
    stopped = true;
    try {
      run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']);
    } catch {
      /* already gone */
    }
    rmSync(dir, { recursive: true, force: true });
  };
  // If the test process dies without afterAll, do not leave a postmaster behind.
  process.once('exit', stopSync);
  const url = (db = 'postgres'): string => `postgres://postgres@127.0.0.1:${port}/${db}`;
  return {
    port,
    url,
    async newDatabase(prefix = 'uz_test') {
      const name = `${prefix}_${process.pid}_${++seq}`;
      const c = new pg.Client({ connectionString: url() });
      await c.connect();
      try {
        await c.query(`CREATE DATABASE ${name}`);
      } finally {
        await c.end();
      }
      return url(name);
    },
    async stop() {
      process.off('exit', stopSync);
      stopSync();
    },
  };
}
