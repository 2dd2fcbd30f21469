/** Shared helpers for the filesystem tests: real-tool lookup, sparse image files, deterministic data. */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const TOOL_PACKAGES: Record<string, string> = {
  'fsck.fat': 'dosfstools',
  mdir: 'mtools',
  mcopy: 'mtools',
  sfdisk: 'fdisk',
  cpio: 'cpio',
  'qemu-system-aarch64': 'qemu-system-arm',
};

/** Absolute path of a host tool; throws (so the test FAILS, never skips) with an install hint when missing. */
export function tool(name: string): string {
  const dirs = [...(process.env['PATH'] ?? '').split(':'), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const d of dirs) {
    if (d && existsSync(join(d, name))) return join(d, name);
  }
  throw new Error(`${name} not found: apt-get install ${TOOL_PACKAGES[name] ?? name}`);
}

export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function run(name: string, args: string[]): RunResult {
  const r = spawnSync(tool(name), args, {
    encoding: 'utf8',
    env: { ...process.env, LC_ALL: 'C.UTF-8', LANG: 'C.UTF-8' },
    maxBuffer: 64 * 1024 * 1024,
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function makeTempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `uz-${prefix}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

const CHUNK = 1 << 20;
const ZERO = Buffer.alloc(CHUNK);

/** Write `buf` at `position` in an open file, skipping all-zero 1 MiB chunks (leaves holes; fast for big images). */
export function writeSparse(fd: number, buf: Buffer, position: number): void {
  for (let o = 0; o < buf.length; o += CHUNK) {
    const chunk = buf.subarray(o, Math.min(o + CHUNK, buf.length));
    if (chunk.equals(ZERO.subarray(0, chunk.length))) continue;
    writeSync(fd, chunk, 0, chunk.length, position + o);
  }
}

export function writeImage(path: string, buf: Buffer): void {
  const fd = openSync(path, 'w');
  try {
    writeSparse(fd, buf, 0);
    ftruncateSync(fd, buf.length);
  } finally {
    closeSync(fd);
  }
}

/** Deterministic pseudo-random bytes (xorshift32). */
export function bytes(seed: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let x = (seed * 2654435761 + 1) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/**
 * Fast deterministic filler for large files: a repeated pseudo-random 4 KiB block with the 512-byte sector
 * index stamped at every sector start, so a misplaced or duplicated cluster is detected.
 */
export function pattern(seed: number, length: number): Buffer {
  const block = bytes(seed, 4096);
  const out = Buffer.alloc(length);
  for (let o = 0; o < length; o += 4096) block.copy(out, o, 0, Math.min(4096, length - o));
  for (let o = 0; o + 4 <= length; o += 512) out.writeUInt32LE(o / 512, o);
  return out;
}

/** Every regular file under `dir`, keyed by forward-slash relative path. */
export function readTree(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (d: string, prefix: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = prefix + e.name;
      if (e.isDirectory()) walk(join(d, e.name), p + '/');
      else out.set(p, readFileSync(join(d, e.name)));
    }
  };
  walk(dir, '');
  return out;
}

/** The `N files, U/T clusters` summary line of fsck.fat. */
export function fsckSummary(stdout: string): { files: number; used: number; total: number } {
  const m = /(\d+) files, (\d+)\/(\d+) clusters/.exec(stdout);
  if (!m) throw new Error(`no fsck.fat summary in:\n${stdout}`);
  return { files: Number(m[1]), used: Number(m[2]), total: Number(m[3]) };
}

/** Run `fsck.fat -n -v` and assert a clean result (exit 0, no dirty bit, no repairs proposed). */
export function fsckClean(img: string): RunResult {
  const r = run('fsck.fat', ['-n', '-v', img]);
  const all = r.stdout + r.stderr;
  const problems = /dirty bit|differences between boot sector|wrong|invalid|truncat|auto-correct|bad |warning|error|not in/i;
  if (r.status !== 0 || problems.test(all.replace(/Checking/g, ''))) {
    throw new Error(`fsck.fat -n -v ${img} is not clean (exit ${r.status}):\n${all}`);
  }
  return r;
}
