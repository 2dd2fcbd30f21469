/**
 * Artifact serving benchmark: `npm run bench:serve -- [--json] [--clients 50] [--file-mib 256] [--per-client-mib 64] [--range-mib 8]`.
 * One 256 MiB artifact; 50 parallel clients each download --per-client-mib of it as consecutive Range requests
 * of --range-mib (a resuming device), starting at evenly spread offsets (wrapping). The same workload runs
 * against our server (`uz server` child process, GET /artifacts/<sha256>, token auth) and against nginx (Debian
 * `nginx`, started here on a loopback port with a temp config serving the same file), in the same run.
 * Every response is checked for status 206 and exact length. Prints {"ours_MiBps":…,"nginx_MiBps":…,"ratio":…}.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { request, Agent } from 'node:http';
import { join } from 'node:path';
import { once } from 'node:events';
import { arg, freePort, sleep, startServerProcess, tmp } from '../server/child-process.js';

const json = process.argv.includes('--json');
const clients = Number(arg('clients', '50'));
const fileMiB = Number(arg('file-mib', '256'));
const perClientMiB = Number(arg('per-client-mib', '64'));
const rangeMiB = Number(arg('range-mib', '8'));
const log = (s: string) => !json && process.stderr.write(s + '\n');
const MiB = 1024 * 1024;

const NGINX = '/usr/sbin/nginx';
if (!existsSync(NGINX)) {
  process.stderr.write('bench:serve needs nginx: apt-get install nginx\n');
  process.exit(2);
}

const data = tmp('uz-bench-serve-');
mkdirSync(join(data, 'artifacts'), { recursive: true });
// the file: random bytes, hashed while written; stored content-addressed like a published release
const tmpFile = join(data, 'artifacts', 'incoming');
const h = createHash('sha256');
{
  const ws = createWriteStream(tmpFile);
  const block = randomBytes(MiB);
  for (let i = 0; i < fileMiB; i++) {
    block[0] = i & 0xff;
    h.update(block);
    if (!ws.write(block)) await once(ws, 'drain');
  }
  ws.end();
  await once(ws, 'finish');
}
const sha = h.digest('hex');
const { renameSync } = await import('node:fs');
renameSync(tmpFile, join(data, 'artifacts', sha));
const size = fileMiB * MiB;
// nginx workers run unprivileged: make the file reachable for them (the temp dir is 0700)
const { chmodSync } = await import('node:fs');
chmodSync(data, 0o755);
chmodSync(join(data, 'artifacts'), 0o755);
chmodSync(join(data, 'artifacts', sha), 0o644);

async function run(label: string, url: string, headers: Record<string, string>): Promise<number> {
  const agent = new Agent({ keepAlive: true, maxSockets: clients });
  const get = (start: number, end: number) =>
    new Promise<number>((resolve, reject) => {
      const req = request(url, { agent, headers: { ...headers, range: `bytes=${start}-${end}` } }, (res) => {
        let n = 0;
        res.on('data', (c: Buffer) => (n += c.length));
        res.on('end', () => {
          if (res.statusCode !== 206 || n !== end - start + 1 || Number(res.headers['content-length']) !== n) reject(new Error(`${label}: status ${res.statusCode}, ${n} bytes for ${start}-${end}`));
          else resolve(n);
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
  // warm-up (page cache, JIT, connections)
  await Promise.all(Array.from({ length: clients }, (_, i) => get(i * MiB, i * MiB + 64 * 1024 - 1)));
  const t0 = process.hrtime.bigint();
  let total = 0;
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      let off = Math.floor((c * size) / clients / MiB) * MiB;
      for (let left = perClientMiB * MiB; left > 0; ) {
        const len = Math.min(rangeMiB * MiB, left, size - off);
        const got = await get(off, off + len - 1); // (not `total += await …`: that loses concurrent updates)
        total += got;
        left -= len;
        off = (off + len) % size;
      }
    }),
  );
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  agent.destroy();
  const mibps = total / MiB / secs;
  log(`${label}: ${(total / MiB).toFixed(0)} MiB in ${secs.toFixed(2)} s = ${mibps.toFixed(0)} MiB/s`);
  return mibps;
}

// nginx with a temp config
const ngxPort = await freePort();
const ngxDir = tmp('uz-bench-nginx-');
for (const d of ['logs', 'tmp']) mkdirSync(join(ngxDir, d));
writeFileSync(join(ngxDir, 'nginx.conf'), `
worker_processes 2;
pid ${ngxDir}/nginx.pid;
error_log ${ngxDir}/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path ${ngxDir}/tmp; proxy_temp_path ${ngxDir}/tmp; fastcgi_temp_path ${ngxDir}/tmp; uwsgi_temp_path ${ngxDir}/tmp; scgi_temp_path ${ngxDir}/tmp;
  types { application/octet-stream bin; }
  server { listen 127.0.0.1:${ngxPort}; location /artifacts/ { alias ${data}/artifacts/; } }
}
`);
const t = spawnSync(NGINX, ['-t', '-p', ngxDir, '-c', join(ngxDir, 'nginx.conf')], { encoding: 'utf8' });
if (t.status !== 0) {
  process.stderr.write(`nginx config test failed: ${t.stderr}\n`);
  process.exit(2);
}
const ngx = spawn(NGINX, ['-p', ngxDir, '-c', join(ngxDir, 'nginx.conf'), '-g', 'daemon off;'], { stdio: 'ignore' });
const srv = await startServerProcess(data);
try {
  await sleep(300);
  log(`${clients} clients × ${perClientMiB} MiB in ${rangeMiB} MiB ranges of a ${fileMiB} MiB file`);
  const ours = await run('ours ', `${srv.api}/artifacts/${sha}`, { authorization: `Bearer ${srv.token}` });
  const nginx = await run('nginx', `http://127.0.0.1:${ngxPort}/artifacts/${sha}`, {});
  const out = { ours_MiBps: Math.round(ours), nginx_MiBps: Math.round(nginx), ratio: Math.round((ours / nginx) * 100) / 100 };
  process.stdout.write(JSON.stringify(out) + '\n');
} finally {
  await srv.stop();
  ngx.kill('SIGTERM');
  await once(ngx, 'exit');
}
process.exit(0);
