/**
 * `npm run bench:install -- [--mib 512] [--json]`: the agent's install pipeline (HTTP Range download, per-chunk
 * verification, writes into a file slot with periodic fsync, read-back hash against the signed manifest)
 * versus `curl -s URL | tee slot | sha256sum` against the same loopback HTTP server, in the same run.
 *
 * The server and our install each run in a child process (this file in another mode), so neither steals the
 * other's event loop and the agent's RSS is its own: sampled after start-up (idle) and during the install (peak).
 * --json prints ONE line: {"ours_MiBps","baseline_MiBps","ratio","rss_idle_MiB","rss_install_MiB"}.
 * Note the handicap we keep on purpose: the baseline never fsyncs and never reads back; we do both.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const MiB = 1024 * 1024;
const self = fileURLToPath(import.meta.url);

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '512' },
    json: { type: 'boolean', default: false },
    mode: { type: 'string', default: 'main' },
    dir: { type: 'string' },
    url: { type: 'string' },
  },
});

function requireTool(name: string, hint: string): void {
  const r = spawnSync('sh', ['-c', `command -v ${name}`]);
  if (r.status !== 0) {
    process.stderr.write(`bench:install: ${name} not found: ${hint}\n`);
    process.exit(2);
  }
}

/** Child: a Range-capable static server for one file. Prints its URL. */
async function serve(file: string): Promise<void> {
  const size = (await stat(file)).size;
  const server = createServer((req, res) => {
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : 0;
    const end = m && m[2] ? Number(m[2]) : size - 1;
    res.writeHead(m ? 206 : 200, { 'content-length': end - start + 1, ...(m ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}) });
    createReadStream(file, { start, end, highWaterMark: 1 * MiB }).pipe(res);
  });
  server.listen(0, '127.0.0.1', () => process.stdout.write(`http://127.0.0.1:${(server.address() as AddressInfo).port}/bundle.uzb\n`));
}

/** Child: our install into a file slot; prints one JSON line with timing and RSS. */
async function ours(dir: string, url: string): Promise<void> {
  const { downloadIntoSlot, readBackSlot } = await import('../updater/install/pipeline.js');
  const { httpSource } = await import('../updater/install/http-source.js');
  const { UbootEnvBootControl } = await import('../updater/bootctl/uboot-env.js');
  const { nodeStorage } = await import('../updater/io/storage.js');
  const { loadTrustedRoot } = await import('../firmware/trust/io.js');
  const release = JSON.parse(await (await import('node:fs/promises')).readFile(join(dir, 'release.json'), 'utf8'));
  const root = await loadTrustedRoot(join(dir, 'root.json'));
  const slot = join(dir, 'slot-ours.img');
  const fh = await open(slot, 'w');
  await fh.truncate(release.slotBytes);
  await fh.close();
  const bootctl = new UbootEnvBootControl({ dir, booted: async () => 'A' });
  await new Promise((r) => setTimeout(r, 200));
  const rssIdle = process.memoryUsage().rss;
  let peak = rssIdle;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 50);
  const policy = { root, board: 'qemu-virt' };
  const t0 = performance.now();
  await downloadIntoSlot({
    storage: nodeStorage,
    stateDir: join(dir, 'state'),
    source: httpSource(url, { totalSize: release.size }),
    release: { ...release, bundleUrl: url },
    target: 'B',
    slotPath: slot,
    policy,
    bootctl,
    signal: new AbortController().signal,
  });
  const tDownloaded = performance.now();
  const rb = await readBackSlot(nodeStorage, join(dir, 'state'), { ...release, bundleUrl: url }, 'B', slot, policy);
  const seconds = (performance.now() - t0) / 1000;
  clearInterval(sampler);
  if (!rb.ok) throw new Error(`read-back failed: ${rb.reason}`);
  process.stdout.write(`${JSON.stringify({ seconds, downloadSeconds: (tDownloaded - t0) / 1000, rssIdle, rssPeak: peak })}\n`);
}

/**
 * Our side runs as the device runs it: esbuild-bundled, under plain node (no tsx/TypeScript loader inflating
 * the RSS we report).
 */
async function bundleSelf(out: string): Promise<void> {
  const { build } = await import('esbuild');
  await build({
    entryPoints: [self],
    outfile: out,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    logLevel: 'silent',
    banner: { js: "import { createRequire as __uzCreateRequire } from 'node:module'; const require = __uzCreateRequire(import.meta.url);" },
  });
}

function runChild(script: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout.on('data', (b: Buffer) => (out += b.toString()));
    c.on('error', reject);
    c.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`child ${args.join(' ')} exited ${code}`))));
  });
}

async function main(): Promise<void> {
  requireTool('curl', 'install it with "apt-get install curl"');
  requireTool('sha256sum', 'install coreutils');
  const mib = Number(values.mib);
  const dir = await mkdtemp(join(tmpdir(), 'uz-bench-install-'));
  const log = (s: string) => (values.json ? undefined : process.stderr.write(`${s}\n`));
  try {
    const { simTrust } = await import('../updater/sim/releases.js');
    const { writeBundle } = await import('../firmware/bundle/write.js');
    const { writeRootFile } = await import('../firmware/trust/io.js');
    const trust = simTrust();
    await writeRootFile(join(dir, 'root.json'), trust.root);
    log(`writing a ${mib} MiB payload and signing the bundle…`);
    const payload = join(dir, 'payload.img');
    const ws = createWriteStream(payload);
    const block = randomBytes(4 * MiB); // incompressible; repetition does not matter to a byte pipe
    for (let i = 0; i < mib / 4; i++) if (!ws.write(block)) await new Promise<void>((r) => ws.once('drain', () => r()));
    await new Promise<void>((r, j) => ws.end((e?: Error | null) => (e ? j(e) : r())));
    const bundle = join(dir, 'bundle.uzb');
    const header = await writeBundle({ payload, out: bundle, manifest: { board: { id: 'qemu-virt' }, version: '9.0.0', rollbackCounter: 1, workload: { name: 'bench', version: '1' } }, keys: [trust.releaseKey] });
    await rm(payload);
    const size = (await stat(bundle)).size;
    const { createHash } = await import('node:crypto');
    const h = createHash('sha256');
    for await (const c of createReadStream(bundle, { highWaterMark: 4 * MiB })) h.update(c as Buffer);
    await writeFile(join(dir, 'release.json'), JSON.stringify({ version: '9.0.0', board: 'qemu-virt', rollbackCounter: 1, size, sha256: h.digest('hex'), slotBytes: header.signed.payload.size }));

    const server = spawn(process.execPath, ['--import', 'tsx', self, '--mode', 'serve', '--dir', bundle], { stdio: ['ignore', 'pipe', 'inherit'] });
    const url = await new Promise<string>((resolve) => server.stdout.once('data', (b: Buffer) => resolve(b.toString().trim())));
    try {
      // Warm the page cache for the bundle once so neither side pays the first read.
      spawnSync('sh', ['-c', `curl -s "${url}" > /dev/null`]);
      log('baseline: curl | tee | sha256sum …');
      const tb = performance.now();
      const b = spawnSync('bash', ['-o', 'pipefail', '-c', `curl -s "${url}" | tee "${join(dir, 'slot-baseline.img')}" | sha256sum`], { encoding: 'utf8' });
      const baselineSeconds = (performance.now() - tb) / 1000;
      if (b.status !== 0) throw new Error(`baseline failed: ${b.stderr}`);
      await rm(join(dir, 'slot-baseline.img'));
      log('ours: agent install pipeline …');
      const script = join(dir, 'bench-install.mjs');
      await bundleSelf(script);
      const o = JSON.parse((await runChild(script, ['--mode', 'ours', '--dir', dir, '--url', url])).trim()) as { seconds: number; downloadSeconds: number; rssIdle: number; rssPeak: number };
      log(`ours: download+verify+write ${o.downloadSeconds.toFixed(2)} s, read-back ${(o.seconds - o.downloadSeconds).toFixed(2)} s; baseline ${baselineSeconds.toFixed(2)} s`);
      const MiBs = size / MiB;
      const result = {
        ours_MiBps: Number((MiBs / o.seconds).toFixed(1)),
        baseline_MiBps: Number((MiBs / baselineSeconds).toFixed(1)),
        ratio: Number((baselineSeconds / o.seconds).toFixed(3)),
        rss_idle_MiB: Number((o.rssIdle / MiB).toFixed(1)),
        rss_install_MiB: Number((o.rssPeak / MiB).toFixed(1)),
      };
      if (values.json) process.stdout.write(`${JSON.stringify(result)}\n`);
      else process.stdout.write(`ours ${result.ours_MiBps} MiB/s, baseline ${result.baseline_MiBps} MiB/s, ratio ${result.ratio}; agent RSS idle ${result.rss_idle_MiB} MiB, during install ${result.rss_install_MiB} MiB\n`);
    } finally {
      server.kill();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (values.mode === 'serve') await serve(values.dir!);
else if (values.mode === 'ours') await ours(values.dir!, values.url!);
else await main();
