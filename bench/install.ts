/**
 * `npm run bench:install -- [--mib 512] [--runs 5] [--idle-wait-s 60] [--json]`: the agent's install path
 * (HTTP Range download, per-chunk verification against the signed manifest, batched writes into a file slot,
 * fsync at checkpoints and at the end, progress records; then the installing step's confirmation) versus
 * `curl -s URL | tee slot | sha256sum` against the same loopback HTTP server, in the same run.
 *
 * The server and our install each run in a child process (this file in another mode), so neither steals the
 * other's event loop and the agent's RSS is its own: sampled after start-up (idle) and during the install (peak).
 * Both sides run `--runs` times, alternating which goes first; before each timed side the page cache is
 * flushed (`sync`, untimed) so neither pays for the other's or the set-up's dirty pages, and each pair waits
 * (up to --idle-wait-s) for the host to be ≥ 80% idle. Figures are medians; the ratio is
 * median(baseline seconds) / median(our seconds).
 * --json prints ONE line: {"ours_MiBps","baseline_MiBps","ratio","rss_idle_MiB","rss_install_MiB","runs"}.
 * Note the handicap we keep on purpose: the baseline never fsyncs; we do (checkpoints and the end).
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
import { waitForIdle } from './lib/host-idle.js';

const MiB = 1024 * 1024;
const self = fileURLToPath(import.meta.url);

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '512' },
    runs: { type: 'string', default: '5' },
    'idle-wait-s': { type: 'string', default: '60' },
    json: { type: 'boolean', default: false },
    mode: { type: 'string', default: 'main' },
    dir: { type: 'string' },
    url: { type: 'string' },
    run: { type: 'string', default: '0' },
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

/** Child: our install into a fresh file slot; prints one JSON line with timing and RSS. */
async function ours(dir: string, url: string, run: string): Promise<void> {
  const { downloadIntoSlot, readBackSlot } = await import('../updater/install/pipeline.js');
  const { httpSource } = await import('../updater/install/http-source.js');
  const { UbootEnvBootControl } = await import('../updater/bootctl/uboot-env.js');
  const { nodeStorage } = await import('../updater/io/storage.js');
  const { loadTrustedRoot } = await import('../firmware/trust/io.js');
  const release = JSON.parse(await (await import('node:fs/promises')).readFile(join(dir, 'release.json'), 'utf8'));
  const root = await loadTrustedRoot(join(dir, 'root.json'));
  // A fresh slot and state folder per run: every run is a whole download, never a resume.
  const slot = join(dir, `slot-ours-${run}.img`);
  const stateDir = join(dir, `state-${run}`);
  const bootDir = join(dir, `boot-${run}`);
  await (await import('node:fs/promises')).mkdir(bootDir, { recursive: true });
  const fh = await open(slot, 'w');
  await fh.truncate(release.slotBytes);
  await fh.close();
  const bootctl = new UbootEnvBootControl({ dir: bootDir, booted: async () => 'A' });
  // Hold the whole device agent's code, as the running agent does, so "idle" is the agent's idle RSS and not
  // only the install path's (about 12 MiB less).
  await import('../updater/device/main.js');
  // "Idle" is the settled state an agent spends its days in, not the moment after loading: V8's memory reducer
  // compacts the heap left over from module evaluation ~8-10 s after allocation stops. Sampled at 12 s.
  await new Promise((r) => setTimeout(r, 12_000));
  const rssIdle = process.memoryUsage().rss;
  let peak = rssIdle;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 50);
  const policy = { root, board: 'qemu-virt' };
  const t0 = performance.now();
  // What the engine runs in `downloading` and then in `installing`.
  await downloadIntoSlot({
    storage: nodeStorage,
    stateDir,
    source: httpSource(url, { totalSize: release.size }),
    release: { ...release, bundleUrl: url },
    target: 'B',
    slotPath: slot,
    policy,
    bootctl,
    signal: new AbortController().signal,
  });
  const tDownloaded = performance.now();
  const rb = await readBackSlot(nodeStorage, stateDir, { ...release, bundleUrl: url }, 'B', slot, policy);
  const seconds = (performance.now() - t0) / 1000;
  clearInterval(sampler);
  peak = Math.max(peak, process.memoryUsage().rss);
  if (!rb.ok) throw new Error(`read-back failed: ${rb.reason}`);
  process.stdout.write(`${JSON.stringify({ seconds, downloadSeconds: (tDownloaded - t0) / 1000, checked: rb.checked, rssIdle, rssPeak: peak })}\n`);
}

/**
 * Our side runs as the device runs it: esbuild-bundled, under plain node (no tsx/TypeScript loader inflating
 * the RSS we report). What only the parent needs (bundle writing, esbuild itself) stays out of the child's
 * bundle (external: never loaded there), so the child holds the agent's code and little else.
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
    // Minified as the image's agent bundle is (firmware/agent-bundle.ts): V8 keeps every source string in memory.
    minify: true,
    logLevel: 'silent',
    external: ['esbuild', '*/sim/releases.js', '*/bundle/write.js'],
    banner: { js: "import { createRequire as __uzCreateRequire } from 'node:module'; const require = __uzCreateRequire(import.meta.url);" },
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
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
  const runs = Number(values.runs);
  const idleWaitMs = Number(values['idle-wait-s']) * 1000;
  if (!Number.isInteger(mib) || mib < 4 || mib % 4 !== 0 || !Number.isInteger(runs) || runs < 1 || !(idleWaitMs >= 0)) {
    process.stderr.write('bench:install: --mib must be a positive multiple of 4, --runs a positive integer, --idle-wait-s ≥ 0\n');
    process.exit(2);
  }
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
      const script = join(dir, 'bench-install.mjs');
      await bundleSelf(script);
      const flush = () => spawnSync('sync'); // untimed: nobody pays for earlier dirty pages
      const baseline = async (): Promise<number> => {
        const out = join(dir, 'slot-baseline.img');
        flush();
        const tb = performance.now();
        const b = spawnSync('bash', ['-o', 'pipefail', '-c', `curl -s "${url}" | tee "${out}" | sha256sum`], { encoding: 'utf8' });
        const seconds = (performance.now() - tb) / 1000;
        if (b.status !== 0) throw new Error(`baseline failed: ${b.stderr}`);
        await rm(out);
        return seconds;
      };
      type Ours = { seconds: number; downloadSeconds: number; checked: string; rssIdle: number; rssPeak: number };
      const ourRun = async (i: number): Promise<Ours> => {
        flush();
        const o = JSON.parse((await runChild(script, ['--mode', 'ours', '--dir', dir, '--url', url, '--run', String(i)])).trim()) as Ours;
        await rm(join(dir, `slot-ours-${i}.img`));
        await rm(join(dir, `state-${i}`), { recursive: true, force: true });
        return o;
      };
      const oursRuns: Ours[] = [];
      const baseRuns: number[] = [];
      for (let i = 0; i < runs; i++) {
        if (idleWaitMs > 0) await waitForIdle(0.8, idleWaitMs, log);
        // Alternate the order so neither side always runs on the cache state the other left.
        if (i % 2 === 0) {
          baseRuns.push(await baseline());
          oursRuns.push(await ourRun(i));
        } else {
          oursRuns.push(await ourRun(i));
          baseRuns.push(await baseline());
        }
        const o = oursRuns.at(-1)!;
        log(`run ${i + 1}/${runs}: ours ${o.seconds.toFixed(2)} s (download+write ${o.downloadSeconds.toFixed(2)} s, confirm ${(o.seconds - o.downloadSeconds).toFixed(2)} s by ${o.checked}), baseline ${baseRuns.at(-1)!.toFixed(2)} s`);
      }
      const oursS = median(oursRuns.map((o) => o.seconds));
      const baseS = median(baseRuns);
      const MiBs = size / MiB;
      const result = {
        ours_MiBps: Number((MiBs / oursS).toFixed(1)),
        baseline_MiBps: Number((MiBs / baseS).toFixed(1)),
        ratio: Number((baseS / oursS).toFixed(3)),
        rss_idle_MiB: Number((median(oursRuns.map((o) => o.rssIdle)) / MiB).toFixed(1)),
        rss_install_MiB: Number((Math.max(...oursRuns.map((o) => o.rssPeak)) / MiB).toFixed(1)),
        runs,
      };
      if (values.json) process.stdout.write(`${JSON.stringify(result)}\n`);
      else process.stdout.write(`ours ${result.ours_MiBps} MiB/s, baseline ${result.baseline_MiBps} MiB/s (medians of ${runs}), ratio ${result.ratio}; agent RSS idle ${result.rss_idle_MiB} MiB, peak during install ${result.rss_install_MiB} MiB\n`);
    } finally {
      server.kill();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (values.mode === 'serve') await serve(values.dir!);
else if (values.mode === 'ours') await ours(values.dir!, values.url!, values.run);
else await main();
