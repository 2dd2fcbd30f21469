/**
 * Host prerequisites of the Debian side of the boot benchmark: root, mmdebstrap, mke2fs with `-d`, and
 * qemu-user binfmt emulation for arm64 (mmdebstrap runs the arm64 maintainer scripts through it).
 *
 * Missing Debian packages are installed with apt-get when we are root on a Debian-like host, so a fresh
 * machine can run `npm run bench:boot` as is; set UZ_BENCH_NO_INSTALL=1 to get an error instead.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

export type Log = (line: string) => void;

export function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** Runs a command; throws with its output on failure. Returns stdout. */
export function run(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input: opts.input, env: opts.env ?? process.env, maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) {
    const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n').slice(-25).join('\n');
    throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.status}):\n${out}`);
  }
  return r.stdout;
}

const isRoot = (): boolean => typeof process.getuid === 'function' && process.getuid() === 0;

function aptInstall(pkgs: string[], log: Log): void {
  if (process.env.UZ_BENCH_NO_INSTALL === '1' || !isRoot() || !have('apt-get')) {
    throw new Error(`missing host tools; install them with: apt-get install -y --no-install-recommends ${pkgs.join(' ')}`);
  }
  log(`installing host packages: ${pkgs.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const args = ['install', '-y', '--no-install-recommends', ...pkgs];
  const r = spawnSync('apt-get', args, { stdio: ['ignore', 'ignore', 'pipe'], env, encoding: 'utf8' });
  if (r.status !== 0) {
    // The package lists may be missing or stale on a fresh machine.
    run('apt-get', ['update'], { env });
    run('apt-get', args, { env });
  }
}

/**
 * Makes sure arm64 binaries run transparently (binfmt_misc + qemu-user-static). Returns a description for the
 * report. Throws when emulation cannot work here (then the rootfs cannot be configured on this host).
 */
function ensureBinfmt(log: Log): string {
  if (process.arch === 'arm64') return 'native arm64';
  const dir = '/proc/sys/fs/binfmt_misc';
  if (!existsSync(`${dir}/status`)) {
    log('mounting binfmt_misc');
    run('mount', ['-t', 'binfmt_misc', 'binfmt_misc', dir]);
  }
  if (!existsSync(`${dir}/qemu-aarch64`)) {
    log('registering qemu-aarch64 with binfmt_misc');
    run('update-binfmts', ['--enable', 'qemu-aarch64']);
  }
  const r = spawnSync('arch-test', ['arm64'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`arm64 binaries do not run on this host through binfmt/qemu-user: ${(r.stdout + r.stderr).trim()}`);
  return 'qemu-user binfmt';
}

export function ensureRootfsTools(log: Log): string {
  if (!isRoot()) throw new Error('building the Debian rootfs needs root (mmdebstrap --mode=root and device nodes in the image)');
  const missing: string[] = [];
  if (!have('mmdebstrap')) missing.push('mmdebstrap');
  if (process.arch !== 'arm64') {
    if (!existsSync('/usr/libexec/qemu-binfmt/aarch64-binfmt-P') && !have('qemu-aarch64-static')) missing.push('qemu-user-static');
    if (!have('update-binfmts')) missing.push('binfmt-support');
    if (!have('arch-test')) missing.push('arch-test');
  }
  if (!have('mke2fs')) missing.push('e2fsprogs');
  if (missing.length) aptInstall(missing, log);
  return ensureBinfmt(log);
}
