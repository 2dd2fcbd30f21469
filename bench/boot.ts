/**
 * Boot time to a healthy workload: our qemu-virt image vs a minimal Debian 13 systemd system, both booted by
 * the same QEMU (`firmware/qemu.ts` runQemu: virt, cortex-a72, -smp 2, -m 1024, TCG), the same U-Boot from
 * the lock and the same Debian kernel, running the same demo JSON-RPC node.
 *
 *   npm run bench:boot -- [--json] [--runs N] [--uz-settled] [--timeout-s S] [--idle-wait-s S] [--rebuild-debian]
 *
 * uz_s:     QEMU start -> `UZ-READY` (agent saw the demo's stats.syncInfo health check answer).
 * debian_s: QEMU start -> `DEBIAN-READY` (demo-ready.service saw the same health check answer; demo.service
 *           is ordered After=network-online.target, systemd-networkd doing DHCP).
 * ratio:    debian_s / uz_s, from the medians of --runs boots each (boots alternate uz, debian).
 *
 * The Debian image is measured after one boot at build time (an installed system); ours by default from the
 * fresh image, i.e. its first boot, which also grows and formats the data partition. --uz-settled boots
 * ours once first too, for a like-for-like reboot comparison.
 *
 * Each boot runs on a fresh sparse copy of its image (boots write to their disk). The Debian image is built
 * once with mmdebstrap and cached (see bench/lib/debian-image.ts). Before each boot the benchmark waits up to
 * --idle-wait-s (default 60; 0 = never) for the host to be >= 80% idle: TCG time is host CPU time.
 * With --json only one JSON line goes to stdout; progress goes to stderr either way.
 */
import { spawnSync } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { buildImage } from '../firmware/build.js';
import { runQemu, requireQemu, type QemuRunResult } from '../firmware/qemu.js';
import { benchCacheDir, ensureDebianImage, READY_LINE, removeStaleWorkDirs } from './lib/debian-image.js';
import { waitForIdle } from './lib/host-idle.js';
import { argValue } from './lib/args.js';

const json = process.argv.includes('--json');
const runs = Number(argValue('--runs') ?? 1);
const timeoutMs = Number(argValue('--timeout-s') ?? 300) * 1000;
const rebuild = process.argv.includes('--rebuild-debian');
const idleWaitMs = Number(argValue('--idle-wait-s') ?? 60) * 1000;
const uzSettled = process.argv.includes('--uz-settled');
if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs must be a positive integer');
if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new Error('--timeout-s must be a positive number');
if (!Number.isFinite(idleWaitMs) || idleWaitMs < 0) throw new Error('--idle-wait-s must be a number >= 0');
const log = (s: string) => process.stderr.write(`[bench:boot] ${s}\n`);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Sparse copy (the images are mostly holes). */
function copySparse(src: string, dst: string): void {
  const r = spawnSync('cp', ['--sparse=always', src, dst], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cp ${src} ${dst}: ${r.stderr}`);
}

/** Lines after which a boot will not reach its ready line (the agent is respawned, so give it 3 tries). */
const FATAL_LINE = /^(DEBIAN-INITRAMFS-FAILED|DEBIAN-NOT-READY|DEBIAN-UBOOT boot-failed|UZ-UBOOT boot-failed)/;
const AGENT_CRASH = /^UZ-ERROR code=AGENT_CRASH/;

async function boot(label: string, image: string, work: string, until: RegExp, i: number): Promise<number> {
  const copy = join(work, `${label}-${i}.img`);
  copySparse(image, copy);
  try {
    const idle = idleWaitMs > 0 ? await waitForIdle(0.8, idleWaitMs, log) : null;
    // Give up early on a guest that is clearly not going to get there (crash-looping agent, failed initramfs).
    const abort = new AbortController();
    let failures = 0;
    const onLine = (line: string) => {
      if (FATAL_LINE.test(line) || (AGENT_CRASH.test(line) && ++failures >= 3)) abort.abort();
    };
    const r: QemuRunResult = await runQemu({ image: copy, until, timeoutMs, onLine, signal: abort.signal });
    if (!r.ok) {
      const tail = r.lines.slice(-40).join('\n');
      throw new Error(`${label} boot ${i + 1} failed (${r.reason} after ${r.seconds.toFixed(1)} s); last console lines:\n${tail}`);
    }
    const host = idle === null ? '' : `, host ${Math.round(idle * 100)}% idle before`;
    log(`${label} boot ${i + 1}/${runs}: ${r.seconds.toFixed(2)} s (${r.match}${host})`);
    return r.seconds;
  } finally {
    await rm(copy, { force: true });
  }
}

/**
 * --uz-settled: boot a copy of our image once (untimed) and measure from that state, as the Debian image is
 * measured: first-boot work (growing and formatting the data partition) is then behind it. The guest is cut
 * off 10 s after UZ-READY (ext4 has committed by then), like a device losing power; the next boot's fsck
 * replays the journal.
 */
async function settleUz(image: string, work: string): Promise<string> {
  const settled = join(work, 'uz-settled.img');
  copySparse(image, settled);
  log('first boot of our image (--uz-settled)');
  const abort = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let ready = false;
  const r = await runQemu({
    image: settled,
    timeoutMs,
    signal: abort.signal,
    onLine: (line) => {
      if (!ready && /^UZ-READY/.test(line)) {
        ready = true;
        timer = setTimeout(() => abort.abort(), 10_000);
      }
    },
  });
  clearTimeout(timer);
  if (!ready) throw new Error(`first boot of our image did not reach UZ-READY (${r.reason}); last lines:\n${r.lines.slice(-30).join('\n')}`);
  log(`  done in ${r.seconds.toFixed(1)} s (UZ-READY + 10 s)`);
  return settled;
}

async function main(): Promise<void> {
  log(requireQemu());
  // Under the bench cache, not /tmp: the images are ~1 GB (sparse) and shared /tmp gets swept by other jobs.
  const work = join(benchCacheDir(), `run-${process.pid}`);
  await mkdir(work, { recursive: true });
  await removeStaleWorkDirs(benchCacheDir());
  try {
    log('building our qemu-virt demo image');
    const t0 = Date.now();
    const uz = await buildImage({
      board: 'qemu-virt',
      app: 'demo',
      version: '1.0.0',
      outDir: join(work, 'uz'),
      sourceDateEpoch: 1764000000,
      onStep: (s) => log(`  ${s}`),
    });
    log(`built ${uz.image} in ${((Date.now() - t0) / 1000).toFixed(1)} s (kernel ${uz.kernel})`);
    const deb = await ensureDebianImage(log, { rebuild });
    const uzImage = uzSettled ? await settleUz(uz.image, work) : uz.image;

    const load = loadavg()[0]!;
    log(`host: ${cpus().length} cores, load average (1 min) ${load.toFixed(2)}`);
    const uzTimes: number[] = [];
    const debTimes: number[] = [];
    for (let i = 0; i < runs; i++) {
      uzTimes.push(await boot('uz', uzImage, work, /^UZ-READY/, i));
      debTimes.push(await boot('debian', deb.image, work, READY_LINE, i));
    }
    const uz_s = median(uzTimes);
    const debian_s = median(debTimes);
    const result = { uz_s: round(uz_s), debian_s: round(debian_s), ratio: round(debian_s / uz_s) };
    log(`uz runs: ${uzTimes.map((t) => t.toFixed(2)).join(' ')}; debian runs: ${debTimes.map((t) => t.toFixed(2)).join(' ')}`);
    if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
    else {
      process.stdout.write(
        `QEMU start -> workload healthy, median of ${runs}: uz ${result.uz_s} s, Debian ${deb.manifest.suite} systemd ${result.debian_s} s, ratio ${result.ratio}\n`,
      );
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

const round = (x: number) => Math.round(x * 100) / 100;

main().catch((e) => {
  process.stderr.write(`[bench:boot] error: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
