import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, rename, writeFile } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { getBoard } from '../boards/index.js';
import { UzError } from '../lib/errors.js';
import { readLock, fetchLocked } from './debian/lock.js';
import { extractDeb } from './debian/deb.js';
import { debianCacheDir } from './debian/cache.js';

/**
 * Runs an image on the emulated reference board: qemu-system-aarch64 `virt` with Debian's U-Boot
 * (qemu_arm64, from the locked u-boot-qemu package) as firmware, the image as a virtio disk, user-mode
 * networking with `restrict=on` (only explicit forwards to host loopback ports, at 10.0.2.100), and an i6300esb
 * watchdog so a hung guest resets like a real board.
 */
export const QEMU_BINARY = 'qemu-system-aarch64';
/**
 * Address at which the emulated board reaches forwarded host services. The network is `restrict=on` (the
 * guest can reach nothing else), and slirp reserves 10.0.2.2 for itself, so forwards live on .100.
 */
export const QEMU_HOST_ALIAS = '10.0.2.100';

export function requireQemu(): string {
  const r = spawnSync(QEMU_BINARY, ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new UzError('QEMU_MISSING', `${QEMU_BINARY} not found: install it with "apt-get install qemu-system-arm" (Debian/Ubuntu)`);
  }
  return r.stdout.split('\n')[0] ?? '';
}

/** Extracts (once) the locked U-Boot for QEMU into the cache and returns its path. */
export async function ubootForQemu(): Promise<string> {
  const lock = await readLock();
  const [deb] = await fetchLocked(lock, 'u-boot-qemu');
  if (!deb) throw new UzError('DEB_NOT_FOUND', 'lock has no u-boot-qemu');
  const dir = join(debianCacheDir(), '..', 'u-boot-qemu', deb.sha256);
  const path = join(dir, 'u-boot.bin');
  if (!existsSync(path)) {
    const a = await extractDeb(deb.path, { name: deb.name, version: deb.version });
    const bin = a.entries.find((e) => e.path === 'usr/lib/u-boot/qemu_arm64/u-boot.bin');
    if (!bin?.data) throw new UzError('DEB_NOT_FOUND', 'u-boot-qemu has no qemu_arm64/u-boot.bin');
    await mkdir(dir, { recursive: true });
    await writeFile(`${path}.partial`, bin.data);
    await rename(`${path}.partial`, path);
  }
  return path;
}

/**
 * The emulated board's firmware settings. Debian's qemu_arm64 U-Boot keeps its environment in the second
 * CFI flash bank (virt's pflash1 at 0x4000000, 256 KiB, CRC32 + `key=value\0…\0\0`) and, finding it blank,
 * falls back to its built-in default with `bootdelay=2`: two seconds of "Hit any key" on every boot of every
 * QEMU test and benchmark. A board vendor sets this once in the board's flash (as a Pi's EEPROM holds
 * BOOT_ORDER); so does our emulated board: the built-in default environment, read out of the binary, with
 * only bootdelay changed. Both sides of bench:boot boot through it.
 */
export const UBOOT_QEMU_ENV_SIZE = 0x40000;
const QEMU_FLASH_BANK_BYTES = 64 * 1024 * 1024;
export const UBOOT_QEMU_ENV_OVERRIDES: Readonly<Record<string, string>> = { bootdelay: '0' };

/**
 * U-Boot's built-in default environment, as stored in the binary: NUL-separated `key=value` strings that
 * start with `bootcmd=` and are followed closely by `bootdelay=` (the order of env_default.h).
 */
export function ubootDefaultEnv(bin: Buffer): string[] {
  let start = -1;
  for (let i = bin.indexOf('\0bootcmd=', 0, 'latin1'); i >= 0; i = bin.indexOf('\0bootcmd=', i + 1, 'latin1')) {
    const next = bin.indexOf('\0bootdelay=', i + 1, 'latin1');
    if (next > i && next - i < 1024 && !bin.subarray(i + 1, next).includes(0)) {
      start = i + 1;
      break;
    }
  }
  if (start < 0) throw new UzError('UBOOT_ENV_NOT_FOUND', 'no default environment (bootcmd=…, bootdelay=…) in the U-Boot binary');
  const end = bin.indexOf(Buffer.from([0, 0]), start);
  const vars = bin.subarray(start, end).toString('latin1').split('\0');
  if (!vars.every((v) => /^[A-Za-z0-9_.]+=/.test(v)) || !vars.some((v) => v.startsWith('bootdelay='))) {
    throw new UzError('UBOOT_ENV_NOT_FOUND', 'the U-Boot default environment does not look like one (no bootdelay=)');
  }
  return vars;
}

/** A U-Boot environment block: CRC32 (little-endian) over the data, data = `key=value\0`… `\0`, zero-padded. */
export function ubootEnvBlock(vars: string[], size = UBOOT_QEMU_ENV_SIZE): Buffer {
  const data = Buffer.alloc(size - 4);
  const text = Buffer.from(`${vars.join('\0')}\0\0`, 'latin1');
  if (text.length > data.length) throw new UzError('UBOOT_ENV_TOO_BIG', `environment of ${text.length} bytes does not fit ${data.length}`);
  text.copy(data);
  const block = Buffer.alloc(size);
  block.writeUInt32LE(crc32(data) >>> 0, 0);
  data.copy(block, 4);
  return block;
}

/** The pflash1 image for a U-Boot binary (cached beside it): its default environment plus our overrides. */
export async function ubootEnvFlashForQemu(biosPath: string): Promise<string> {
  const path = `${biosPath}.env-flash`;
  if (existsSync(path)) return path;
  const vars = ubootDefaultEnv(await readFile(biosPath)).map((v) => {
    const key = v.slice(0, v.indexOf('='));
    return key in UBOOT_QEMU_ENV_OVERRIDES ? `${key}=${UBOOT_QEMU_ENV_OVERRIDES[key]}` : v;
  });
  const f = await open(`${path}.partial`, 'w');
  try {
    await f.write(ubootEnvBlock(vars), 0, UBOOT_QEMU_ENV_SIZE, 0);
    await f.truncate(QEMU_FLASH_BANK_BYTES); // a flash bank is exactly this size; the rest stays a hole
  } finally {
    await f.close();
  }
  await rename(`${path}.partial`, path);
  return path;
}

export interface GuestForward {
  /** Port the guest connects to on QEMU_HOST_ALIAS (10.0.2.100). */
  guestPort: number;
  /** Host loopback port it reaches. */
  hostPort: number;
}

export interface QemuRunOptions {
  image: string;
  board?: string;
  bios?: string;
  /** Stop successfully at the first console line matching this. */
  until?: RegExp;
  timeoutMs?: number;
  onLine?: (line: string) => void;
  forwards?: GuestForward[];
  /** Treat "Kernel panic" as failure immediately (default true when `until` is set). */
  failOnPanic?: boolean;
  signal?: AbortSignal;
}

export interface QemuRunResult {
  ok: boolean;
  reason: 'matched' | 'timeout' | 'panic' | 'exited' | 'aborted';
  lines: string[];
  match?: string;
  seconds: number;
}

export function qemuArgs(o: { image: string; bios: string; envFlash?: string; board?: string; forwards?: GuestForward[] }): string[] {
  const board = getBoard(o.board ?? 'qemu-virt');
  if (!board.qemu) throw new UzError('QEMU_BOARD_UNSUPPORTED', `board ${board.id} cannot be emulated; use qemu-virt`);
  // A `-tcp:` target would be ONE connection opened at start-up; `-cmd:` runs a relay per guest connection.
  const relay = fileURLToPath(new URL('./qemu-fwd.mjs', import.meta.url));
  if (/[,\s]/.test(relay) || /[,\s]/.test(process.execPath)) throw new UzError('QEMU_PATH_UNSUPPORTED', `paths with spaces or commas cannot be used in QEMU options: ${relay}`);
  const fwd = (o.forwards ?? []).map((f) => `,guestfwd=tcp:${QEMU_HOST_ALIAS}:${f.guestPort}-cmd:${process.execPath} ${relay} 127.0.0.1 ${f.hostPort}`).join('');
  return [
    '-M', board.qemu.machine,
    '-cpu', board.qemu.cpu,
    '-smp', String(board.qemu.smp),
    '-m', String(board.qemu.memoryMiB),
    '-nographic',
    '-monitor', 'none',
    '-serial', 'stdio',
    '-bios', o.bios,
    ...(o.envFlash ? ['-drive', `if=pflash,unit=1,format=raw,readonly=on,file=${o.envFlash}`] : []),
    '-drive', `file=${o.image},format=raw,if=virtio,cache=unsafe`,
    '-netdev', `user,id=n0,restrict=on${fwd}`,
    // romfile= : no iPXE option ROM needed (U-Boot does not netboot here), so QEMU needs no ipxe package.
    '-device', 'virtio-net-pci,netdev=n0,romfile=',
    '-device', 'virtio-rng-pci',
    '-device', 'i6300esb',
    '-watchdog-action', 'reset',
  ];
}

/** A kernel message's timestamp, `[   35.047361] `. */
const KERNEL_MESSAGE = /\[\s*\d+\.\d{6}\] /;

/**
 * One serial-console line as separate lines. The kernel prints its messages to the console whenever they
 * happen, also between a program's text and that text's newline. Seen under load:
 *   UZ-NET … reason=wrong-key[   35.047361] hrtimer: interrupt took …
 * The program's line then ends where the kernel message begins.
 */
export function consoleLines(line: string): string[] {
  const m = KERNEL_MESSAGE.exec(line);
  if (!m || m.index === 0) return [line];
  return [line.slice(0, m.index), line.slice(m.index)];
}

export async function runQemu(o: QemuRunOptions): Promise<QemuRunResult> {
  requireQemu();
  const bios = o.bios ?? (await ubootForQemu());
  const envFlash = await ubootEnvFlashForQemu(bios);
  const started = Date.now();
  const child = spawn(QEMU_BINARY, qemuArgs({ image: o.image, bios, envFlash, board: o.board, forwards: o.forwards }), {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const failOnPanic = o.failOnPanic ?? o.until !== undefined;
  return await new Promise<QemuRunResult>((resolve) => {
    let done = false;
    const finish = (r: Omit<QemuRunResult, 'lines' | 'seconds'>) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      resolve({ ...r, lines, seconds: (Date.now() - started) / 1000 });
    };
    // setTimeout fires at once for delays above 2^31-1 ms (~24.8 days): clamp long runs.
    const timer = setTimeout(() => finish({ ok: false, reason: 'timeout' }), Math.min(o.timeoutMs ?? 300_000, 2 ** 31 - 1));
    o.signal?.addEventListener('abort', () => finish({ ok: false, reason: 'aborted' }));
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const rl = createInterface({ input: child.stdout });
    rl.on('line', (raw) => {
      // eslint-disable-next-line no-control-regex
      for (const line of consoleLines(raw.replace(/\r/g, '').replace(/\x1b\[[0-9;]*[A-Za-z]/g, ''))) {
        lines.push(line);
        o.onLine?.(line);
        if (o.until && o.until.test(line)) finish({ ok: true, reason: 'matched', match: line });
        else if (failOnPanic && /Kernel panic - not syncing/.test(line)) finish({ ok: false, reason: 'panic', match: line });
      }
    });
    child.on('exit', () => {
      if (stderr.trim()) lines.push(`[qemu] ${stderr.trim()}`);
      finish({ ok: !o.until, reason: 'exited' });
    });
  });
}
