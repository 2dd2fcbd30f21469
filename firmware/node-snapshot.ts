/**
 * V8 start-up snapshots for the image (lib/node-snapshots.ts lists them: the agent's `/opt/uz/agent.blob`, and
 * bootstrapped Node.js for workloads that opt in), built at image build time by the image's own Node.js
 * (Debian's arm64 build) under qemu-user.
 *
 * Why: Debian builds Node.js without Node's own start-up snapshot and code cache (`node_use_node_snapshot` and
 * `node_use_node_code_cache` are false), so every plain start compiles Node's bootstrap JavaScript and then
 * the agent from source. On the emulated Cortex-A72 that is ~2.5 s before the agent's first line; from a
 * snapshot the device only deserialises a heap (docs/benchmarks.md has the figures).
 *
 * Reproducible: the same inputs give the same bytes. What would otherwise leak into the blob, and how it is
 * kept out:
 *   - paths (argv, the executable's path): the build runs chrooted in a throw-away directory laid out like the
 *     image (`unshare --root`), with a static qemu-aarch64 copied in;
 *   - the process id: a new PID namespace (`unshare --pid`), so node is always pid 1;
 *   - the V8 heap's layout: `--random-seed` (excluded from V8's flag hash, so the device need not repeat it)
 *     and `--single-threaded` (no concurrent GC or compiler threads racing the serializer);
 *   - the environment: empty.
 * `unshare --user --map-root-user` needs no privileges where unprivileged user namespaces are allowed; where
 * they are not, the snapshot is still built (under qemu's -L prefix instead of a chroot), with a warning that
 * it is not reproducible, and is not cached.
 *
 * V8 refuses a snapshot made with different V8 flags or on a CPU with other features (e.g. LSE atomics on
 * a Cortex-A76): node then exits with code 14, and /etc/uz/agent starts the plain bundle instead. So the
 * snapshot is built for the board's CPU (Board.cpu), and the device runs it with exactly the spec's flags.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import envPaths from 'env-paths';
import { UzError } from '../lib/errors.js';
import type { FileTree } from './initramfs/tree.js';
import { AGENT_SNAPSHOT, type SnapshotSpec } from '../lib/node-snapshots.js';

export { AGENT_SNAPSHOT, RUNTIME_SNAPSHOT, type SnapshotSpec } from '../lib/node-snapshots.js';

/**
 * The runtime snapshot's script: loads the built-ins Node 20 can snapshot and most programs use, then, on
 * the device, hands over to the workload's own script (process.argv[1]).
 */
export const RUNTIME_SNAPSHOT_SCRIPT = `'use strict';
// unikernel-z: Node.js start-up snapshot for workloads (firmware/node-snapshot.ts). Built at image build time.
const v8 = require('node:v8');
for (const m of ['assert', 'buffer', 'crypto', 'dns', 'events', 'fs', 'fs/promises', 'net', 'os', 'path', 'querystring', 'stream', 'stream/promises', 'string_decoder', 'timers', 'timers/promises', 'url', 'util', 'zlib']) require('node:' + m);
// Warm-up: run once the Node code every workload start uses (stdio pipes are sockets, console.log formats,
// the main script's path becomes a URL), so the snapshot carries it compiled. Nothing is opened: no file,
// handle or timer is left for the snapshot.
{
  const { PassThrough } = require('node:stream');
  const net = require('node:net');
  const util = require('node:util');
  const pass = new PassThrough();
  pass.on('data', () => {});
  pass.write('warm-up');
  pass.end();
  const socket = new net.Socket();
  socket.on('error', () => {});
  socket.destroy();
  new net.Server();
  util.format('%s %d %j %o', 'warm-up', 1, { up: [1] }, [null]);
  util.inspect({ warm: ['up', 1, null, undefined, 2n, new Map([[1, { a: new Set([1]) }]])] }, { depth: 4 });
  require('node:url').pathToFileURL('/usr/lib/uz/warm-up.mjs');
}
v8.startupSnapshot.setDeserializeMainFunction(() => {
  require('node:module').runMain(process.argv[1]);
});
`;

/** Bump when the way the blob is made changes in a way the cache key below does not capture. */
const RECIPE = 'uz-node-snapshot-1';

/** The image files node needs to run: the binary, its libraries, Debian's externalised built-ins, OpenSSL's config. */
function runtimePath(p: string): boolean {
  if (p === 'usr/bin/node') return true;
  if (p.startsWith('usr/lib/modules/') || p.startsWith('usr/lib/firmware/')) return false;
  return p.startsWith('usr/lib/') || p.startsWith('usr/share/nodejs/') || p.startsWith('etc/ssl/');
}

export interface SnapshotOptions {
  /** The composed RAM root (the node runtime is taken from it). */
  tree: FileTree;
  /** Which snapshot (default: the agent's). */
  spec?: SnapshotSpec;
  /** The snapshot script (bundleAgentSnapshotScript(), RUNTIME_SNAPSHOT_SCRIPT). */
  script: string;
  /** QEMU CPU model of the board's cores (Board.cpu). */
  cpu: string;
  env?: NodeJS.ProcessEnv;
  /** Told when the snapshot cannot be made reproducibly on this host. */
  onWarn?: (message: string) => void;
}

export function snapshotCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.UZ_CACHE_DIR?.trim() || envPaths('unikernel-z').cache, 'node-snapshot');
}

/** The cache key: everything that goes into the blob. */
export function snapshotKey(o: Pick<SnapshotOptions, 'tree' | 'script' | 'cpu' | 'spec'>): string {
  const spec = o.spec ?? AGENT_SNAPSHOT;
  const h = createHash('sha256');
  h.update(`${RECIPE}\0${o.cpu}\0${spec.flags.join(' ')}\0${spec.blob}\0${spec.scriptPath}\0`);
  h.update(o.script);
  for (const p of o.tree.paths()) {
    if (!runtimePath(p)) continue;
    const n = o.tree.get(p)!;
    h.update(`\0${p}\0${n.type}\0`);
    if (n.type === 'file') h.update(n.data);
    else if (n.type === 'symlink') h.update(n.target);
  }
  return h.digest('hex');
}

/** True when the ELF file has no program interpreter (PT_INTERP), i.e. it can run inside an empty chroot. */
export function isStaticElf(b: Buffer): boolean {
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) return false;
  const phoff = Number(b.readBigUInt64LE(0x20));
  const phentsize = b.readUInt16LE(0x36);
  const phnum = b.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    if (o + 4 > b.length) return false;
    if (b.readUInt32LE(o) === 3) return false; // PT_INTERP
  }
  return true;
}

const INSTALL_HINT = 'install qemu-user-static (Debian/Ubuntu: apt-get install qemu-user-static), or build with --no-node-snapshots';

/** A statically linked qemu-aarch64 from PATH (it must run inside the build chroot). */
export async function findStaticQemuUser(env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const dirs = (env.PATH ?? '').split(delimiter).filter(Boolean);
  const seen: string[] = [];
  for (const name of ['qemu-aarch64-static', 'qemu-aarch64']) {
    for (const d of dirs) {
      const p = join(d, name);
      if (!existsSync(p)) continue;
      seen.push(p);
      if (isStaticElf(await readFile(p))) return p;
    }
  }
  const why = seen.length ? `only dynamically linked ones were found (${seen.join(', ')})` : 'none on PATH';
  throw new UzError('SNAPSHOT_EMULATOR_MISSING', `building Node.js start-up snapshots needs a static qemu-aarch64: ${why}; ${INSTALL_HINT}`, { seen });
}

function runCaptured(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: '/', env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const add = (c: Buffer) => {
      out = (out + c.toString('utf8')).slice(-20_000);
    };
    child.stdout.on('data', add);
    child.stderr.on('data', add);
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, out }));
  });
}

/** Writes the image's Node.js runtime (binary, libraries, externalised built-ins) from `tree` under `dir`. */
export async function stageNodeRuntime(dir: string, tree: FileTree): Promise<void> {
  for (const p of tree.paths()) {
    if (!runtimePath(p)) continue;
    const n = tree.get(p)!;
    const dst = join(dir, p);
    if (n.type === 'dir') await mkdir(dst, { recursive: true });
    else if (n.type === 'file') {
      await mkdir(dirname(dst), { recursive: true });
      await writeFile(dst, n.data);
      await chmod(dst, n.mode & 0o7777);
    } else if (n.type === 'symlink') {
      await mkdir(dirname(dst), { recursive: true });
      await symlink(n.target, dst);
    }
  }
  for (const m of ['bin', 'lib', 'sbin']) await symlink(`usr/${m}`, join(dir, m));
}

/** Lays out the node runtime, the script and the emulator in `dir` (the chroot). */
async function stageRoot(dir: string, o: SnapshotOptions, qemu: string): Promise<void> {
  await stageNodeRuntime(dir, o.tree);
  const spec = o.spec ?? AGENT_SNAPSHOT;
  await mkdir(join(dir, dirname(spec.scriptPath)), { recursive: true });
  await mkdir(join(dir, dirname(spec.blob)), { recursive: true });
  await mkdir(join(dir, 'tmp'), { recursive: true });
  await writeFile(join(dir, spec.scriptPath), o.script);
  await copyFile(qemu, join(dir, 'qemu-aarch64'));
  await chmod(join(dir, 'qemu-aarch64'), 0o755);
}

/**
 * Builds (or takes from the cache) a start-up snapshot (the agent's unless `spec` says otherwise) for `cpu`. The cache holds only blobs this
 * function made from the same inputs (the key is their SHA-256), so a cached blob is the one a fresh build
 * would produce.
 */
export async function buildNodeSnapshot(o: SnapshotOptions): Promise<Buffer> {
  const env = o.env ?? process.env;
  const spec = o.spec ?? AGENT_SNAPSHOT;
  const key = snapshotKey(o);
  const cached = join(snapshotCacheDir(env), `${key}.blob`);
  if (existsSync(cached)) return readFile(cached);

  const qemu = await findStaticQemuUser(env);
  const dir = await mkdtemp(join(tmpdir(), 'uz-snapshot-'));
  try {
    await stageRoot(dir, o, qemu);
    const nodeArgs = [...spec.flags, '--random-seed=1', '--snapshot-blob', `/${spec.blob}`, '--build-snapshot', `/${spec.scriptPath}`];
    const isolated = env.UZ_SNAPSHOT_NAMESPACES !== '0' && (await namespacesWork());
    let r: { code: number | null; out: string };
    if (isolated) {
      const ns = ['--user', '--map-root-user', '--pid', '--fork', '--kill-child', `--root=${dir}`];
      r = await runCaptured('unshare', [...ns, '/qemu-aarch64', '-cpu', o.cpu, '/usr/bin/node', ...nodeArgs], {});
    } else {
      // No user namespaces here (e.g. Ubuntu's AppArmor restriction, or a locked-down container): qemu's -L
      // prefix stands in for the chroot. The blob works the same, but it records this process id and the
      // staging path, so it differs from build to build; it is not cached, and the build says so.
      await writeFile(join(dir, spec.blob), '');
      o.onWarn?.(`no user namespaces on this host: the ${spec.blob} start-up snapshot is built without them and is not byte-for-byte reproducible`);
      r = await runCaptured(join(dir, 'qemu-aarch64'), ['-cpu', o.cpu, '-L', dir, '-0', '/usr/bin/node', join(dir, 'usr/bin/node'), ...nodeArgs], {});
    }
    const out = join(dir, spec.blob);
    if (r.code !== 0 || !existsSync(out) || statSync(out).size === 0) {
      const tail = r.out.trim().split('\n').slice(-12).join('\n');
      throw new UzError('SNAPSHOT_BUILD_FAILED', `node --build-snapshot of /${spec.blob} failed (exit ${r.code}) for ${o.cpu}:\n${tail}`, { cpu: o.cpu, exitCode: r.code });
    }
    const blob = await readFile(out);
    if (isolated) {
      await mkdir(dirname(cached), { recursive: true });
      const partial = `${cached}.${process.pid}-${Date.now()}.partial`; // parallel builds must not share one
      await writeFile(partial, blob);
      await rename(partial, cached);
    }
    return blob;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

let namespaceProbe: Promise<boolean> | undefined;
/** Whether this host lets us create a user + PID namespace and chroot in it (probed once per process). */
function namespacesWork(): Promise<boolean> {
  namespaceProbe ??= runCaptured('unshare', ['--user', '--map-root-user', '--pid', '--fork', '--kill-child', '--root=/', 'true'], {}).then(
    (r) => r.code === 0,
    () => false,
  );
  return namespaceProbe;
}

/** The agent's snapshot (see AGENT_SNAPSHOT). */
export function buildAgentSnapshot(o: Omit<SnapshotOptions, 'spec'>): Promise<Buffer> {
  return buildNodeSnapshot({ ...o, spec: AGENT_SNAPSHOT });
}
