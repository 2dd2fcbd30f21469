/**
 * Where does the emulated board's boot go? `npm run -s profile:boot -- [--image <debug.img>] [--interval-ms 6]
 * [--out samples.json] [--json]`
 *
 * Boots a `--debug` qemu-virt demo image (built here unless --image names one) with QEMU's gdbstub, samples both
 * vCPUs' program counters every --interval-ms from `Starting kernel` to `UZ-READY`, then types into the debug
 * build's serial shell to copy the kernel's /proc/kallsyms (this boot's KASLR addresses) to the data partition,
 * reads it back with debugfs and prints, per boot phase, how the samples split between user code, kernel code
 * and idle, and the kernel functions that took most. docs/benchmarks.md ("Session 5") shows what it found.
 *
 * Not a timing benchmark: each sample stops the guest for ~1 ms, so the boot runs ~40% slower than unprofiled;
 * read the shares, not the seconds. Sampling does not start before the kernel: stopping the VM waits for
 * in-flight disk requests, which stalls U-Boot's loading of the kernel.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { buildImage } from '../firmware/build.js';
import { parseMbr, SECTOR_SIZE } from '../firmware/fs/mbr.js';
import { consoleLines, qemuArgs, requireQemu, ubootEnvFlashForQemu, ubootForQemu } from '../firmware/qemu.js';
import { benchCacheDir } from './lib/debian-image.js';
import { argValue } from './lib/args.js';
import { have } from './lib/host-tools.js';
import { parseKallsyms, pcAndElFromG, RspReader, rspPacket, summarize, type Phase, type Sample } from './lib/guest-profile.js';

const json = process.argv.includes('--json');
const intervalMs = Number(argValue('--interval-ms') ?? 6);
const log = (l: string) => process.stderr.write(`[profile:boot] ${l}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** A GDB remote connection that sends one request at a time and waits for its reply. */
class Gdbstub {
  private waiter: ((p: string) => void) | null = null;
  private constructor(private readonly sock: net.Socket) {
    const reader = new RspReader((p) => {
      sock.write('+');
      const w = this.waiter;
      this.waiter = null;
      w?.(p);
    });
    sock.on('data', (d) => reader.push(d.toString('latin1')));
  }

  static async connect(port: number): Promise<Gdbstub> {
    for (let i = 0; ; i++) {
      try {
        const sock = await new Promise<net.Socket>((res, rej) => {
          const s = net.connect(port, '127.0.0.1', () => res(s));
          s.once('error', rej);
        });
        sock.setNoDelay(true); // one-byte acks and small requests: Nagle + delayed ACK would add ~200 ms each
        return new Gdbstub(sock);
      } catch (e) {
        if (i > 200) throw e;
        await sleep(25);
      }
    }
  }

  /** Sends a request (or the raw interrupt byte) and resolves with the next packet from the stub. */
  request(data: string): Promise<string> {
    return new Promise((res) => {
      this.waiter = res;
      this.sock.write(data === '\x03' ? data : rspPacket(data));
    });
  }

  send(data: string): void {
    this.sock.write(rspPacket(data));
  }

  close(): void {
    this.sock.destroy();
  }
}

interface Mark {
  t: number;
  line: string;
}

async function main(): Promise<void> {
  requireQemu();
  if (!have('debugfs')) throw new Error('debugfs is needed to read the symbols back: apt-get install -y e2fsprogs');
  const work = join(benchCacheDir(), `profile-${process.pid}`);
  await mkdir(work, { recursive: true });
  try {
    let image = argValue('--image');
    if (!image) {
      log('building a --debug qemu-virt demo image (its serial shell reads /proc/kallsyms after the boot)');
      image = (await buildImage({ board: 'qemu-virt', app: 'demo', version: '1.0.0', outDir: join(work, 'img'), debug: true, sourceDateEpoch: 1764000000 })).image;
    }
    const copy = join(work, 'boot.img');
    spawnSync('cp', ['--sparse=always', image, copy]);
    const bios = await ubootForQemu();
    const envFlash = await ubootEnvFlashForQemu(bios);
    const port = await freePort();
    const t0 = Date.now();
    const q: ChildProcess = spawn('qemu-system-aarch64', [...qemuArgs({ image: copy, bios, envFlash }), '-gdb', `tcp:127.0.0.1:${port}`], { stdio: ['pipe', 'pipe', 'inherit'] });
    const marks: Mark[] = [];
    const seen = (re: RegExp) => marks.find((m) => re.test(m.line));
    createInterface({ input: q.stdout! }).on('line', (raw) => {
      for (const line of consoleLines(raw.replace(/\r/g, ''))) marks.push({ t: Date.now() - t0, line });
    });
    const until = async (re: RegExp, ms: number) => {
      const end = Date.now() + ms;
      while (!seen(re)) {
        if (Date.now() > end) throw new Error(`no console line ${re} within ${ms / 1000} s; last lines:\n${marks.slice(-20).map((m) => m.line).join('\n')}`);
        await sleep(5);
      }
    };
    try {
      const gdb = await Gdbstub.connect(port);
      await sleep(100);
      gdb.send('c'); // the stub stops the guest when a debugger connects
      await until(/^Starting kernel/, 60_000);
      const samples: Sample[] = [];
      log(`sampling both vCPUs every ${intervalMs} ms until UZ-READY`);
      while (!seen(/^UZ-READY/)) {
        if (Date.now() - t0 > 180_000) throw new Error('no UZ-READY within 180 s of profiling');
        await gdb.request('\x03');
        const t = Date.now() - t0;
        for (const [cpu, thread] of ['01', '02'].entries()) {
          await gdb.request(`Hg${thread}`);
          const { pc, el } = pcAndElFromG(await gdb.request('g'));
          samples.push({ t, cpu, pc, el });
        }
        gdb.send('c');
        await sleep(intervalMs);
      }
      // The guest runs on (the last request was `c`); the connection stays open until QEMU is killed: closing
      // or detaching it here left the guest stopped in a trial run.

      log(`${samples.length / 2} samples per vCPU; reading this boot's kernel symbols through the debug shell`);
      await sleep(500);
      q.stdin!.write('\n'); // busybox init's askfirst: "Please press Enter to activate this console."
      await sleep(1500);
      q.stdin!.write('cat /proc/kallsyms > /data/uz-kallsyms; sync; echo UZ-KALLSYMS-DONE\n');
      await until(/^UZ-KALLSYMS-DONE$/, 180_000);
      q.kill('SIGKILL');
      gdb.close();

      const symbols = parseKallsyms(await readKallsyms(copy, work));
      if (symbols.length < 1000) throw new Error(`only ${symbols.length} kernel symbols read back`);
      const at = (re: RegExp) => seen(re)?.t;
      const phases: Phase[] = [];
      const chain: [string, RegExp][] = [['kernel', /^Starting kernel/], ['init, data check, agent start', /^UZ-BOOT/], ['workload start', /^UZ-AGENT start/], ['health check, UZ-READY', /^\[[a-z0-9-]+\] /], ['end', /^UZ-READY/]];
      for (let i = 0; i + 1 < chain.length; i++) {
        const from = at(chain[i]![1]);
        const to = at(chain[i + 1]![1]);
        if (from !== undefined && to !== undefined) phases.push({ name: chain[i]![0], fromMs: from, toMs: to });
      }
      const profile = summarize(samples, phases, symbols);
      const outFile = argValue('--out');
      if (outFile) await writeFile(outFile, JSON.stringify({ samples: samples.map((s) => ({ ...s, pc: s.pc.toString(16) })), marks, symbols: symbols.length }));
      if (json) {
        process.stdout.write(`${JSON.stringify({ intervalMs, phases: profile })}\n`);
        return;
      }
      for (const p of profile) {
        const classes = Object.entries(p.classes).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${Math.round(v * 100)}%`).join(', ');
        process.stdout.write(`\n${p.name}: ${((p.toMs - p.fromMs) / 1000).toFixed(2)} s profiled, ${p.samples} samples (both vCPUs): ${classes}\n`);
        for (const k of p.topKernel.slice(0, 10)) process.stdout.write(`  ${(k.share * 100).toFixed(1).padStart(5)}%  ${k.symbol}\n`);
      }
    } finally {
      q.kill('SIGKILL');
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Copies partition 4 (data, ext4) out of the image and dumps /uz-kallsyms from it with e2fsck + debugfs. */
async function readKallsyms(image: string, work: string): Promise<string> {
  const f = await open(image, 'r');
  try {
    const mbr = Buffer.alloc(SECTOR_SIZE);
    await f.read(mbr, 0, SECTOR_SIZE, 0);
    const data = parseMbr(mbr).partitions.find((p) => p.index === 4);
    if (!data) throw new Error('no partition 4 in the image');
    const part = join(work, 'data.img');
    const out = await open(part, 'w');
    try {
      const chunk = Buffer.alloc(4 * 1024 * 1024);
      for (let off = 0; off < data.sizeLba * SECTOR_SIZE; off += chunk.length) {
        const { bytesRead } = await f.read(chunk, 0, chunk.length, data.startLba * SECTOR_SIZE + off);
        if (bytesRead === 0) break;
        await out.write(chunk, 0, bytesRead, off);
      }
    } finally {
      await out.close();
    }
    // The file may still be only in ext4's journal (the guest synced, nothing checkpointed it): replay it.
    const fsck = spawnSync('e2fsck', ['-fy', part], { encoding: 'utf8' });
    if (fsck.status === null || fsck.status >= 4) throw new Error(`e2fsck of the data partition failed (${fsck.status}): ${fsck.stdout}${fsck.stderr}`);
    const dump = join(work, 'kallsyms.txt');
    const r = spawnSync('debugfs', ['-R', `dump /uz-kallsyms ${dump}`, part], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`debugfs failed: ${r.stderr}`);
    return await readFile(dump, 'utf8');
  } finally {
    await f.close();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`profile:boot: ${(e as Error).message}\n`);
  process.exit(1);
});
