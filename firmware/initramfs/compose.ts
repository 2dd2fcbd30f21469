import { gzipSync, constants as zc } from 'node:zlib';
import { UzError } from '../../lib/errors.js';
import type { Board } from '../../boards/schema.js';
import type { DebEntry } from '../debian/deb.js';
import type { ResolvedApp } from '../apps/index.js';
import { FileTree } from './tree.js';
import { writeCpio } from './cpio.js';
import { buildEnv, initFile, inittab, staticEtc } from './init-scripts.js';
import { addWifi, type WifiInputs } from './wifi.js';

/**
 * Composes the RAM root: the whole running system of a slot. Pure: every input is passed in, the output is
 * the gzip'd cpio archive plus a listing for `uz inspect`.
 */
export interface RootfsInputs {
  board: Board;
  version: string;
  buildEpoch: number;
  debug: boolean;
  kernelRelease: string;
  /** Package contents, already extracted and verified. */
  packages: Array<{ name: string; entries: DebEntry[] }>;
  modules: Array<{ name: string; relPath: string; data: Buffer }>;
  /** Loaded after the data partition is mounted (Board.lateModules; none of `modules` repeated). */
  lateModules?: Array<{ name: string; relPath: string; data: Buffer }>;
  /** The agent's bundle files (agent.mjs and its chunks), installed under /opt/uz/. */
  agentBundle: Array<{ name: string; text: string }>;
  app: ResolvedApp;
  imageInfo: unknown;
  /** Boards with Wi-Fi hardware (Board.wifi): wpa_supplicant, regulatory database, firmware, bring-up (wifi.ts). */
  wifi?: WifiInputs;
}

/** Package content a device never uses: documentation, headers, package-manager hooks. */
const DROP = [
  /^usr\/share\/(doc|man|info|lintian|locale|bug|bash-completion|zsh|fish|gdb|menu|bash-completion)\//,
  /^usr\/include\//,
  /^usr\/lib\/(systemd|tmpfiles\.d|sysusers\.d|udev|initramfs-tools)\//,
  /^etc\/(init\.d|cron\.[a-z]+|logrotate\.d|default)\//,
  /^usr\/share\/nodejs\/.*\/(docs?|test|tests)\//,
  // glibc's iconv modules (20 MB): loaded only by iconv_open(), which nothing on the image calls (Node.js
  // converts text with ICU; busybox is static).
  /^usr\/lib\/[^/]+\/gconv\//,
];

/**
 * Debian's Node.js loads a few of its built-ins (undici, acorn, cjs-module-lexer, minimatch) from
 * /usr/share/nodejs at start-up, by paths compiled into libnode; node aborts when one is missing. The rest of
 * /usr/share/nodejs (their dependencies as separate packages, TypeScript types) is never read. Keeps exactly
 * the files libnode names.
 */
export function pruneNodeShare(tree: FileTree): void {
  const libnode = tree.paths().find((p) => /^usr\/lib\/[^/]+\/libnode\.so\.\d+$/.test(p));
  const node = libnode ? tree.get(libnode) : undefined;
  if (!node || node.type !== 'file') return;
  const text = Buffer.from(node.data.buffer, node.data.byteOffset, node.data.byteLength).toString('latin1');
  const named = new Set([...text.matchAll(/\/usr\/share\/nodejs\/[A-Za-z0-9@._\-/]+\.js/g)].map((m) => m[0].slice(1)));
  for (const p of tree.paths()) {
    const n = tree.get(p);
    if (p.startsWith('usr/share/nodejs/') && n && n.type !== 'dir' && !named.has(p)) tree.remove(p);
  }
  const missing = [...named].filter((p) => !tree.has(p));
  if (missing.length) throw new UzError('ROOTFS_NODE_BUILTIN_MISSING', `libnode loads ${missing.join(', ')}, which no package provides`, { missing });
}

/**
 * The busybox applets the init and agent call; each must exist in the busybox we ship. (Debian's
 * busybox-static has no blkid or ntpd: the init reads the ext4 magic itself and the agent keeps the clock.)
 */
export const BUSYBOX_APPLETS = [
  'sh', 'ash', 'mount', 'umount', 'mkdir', 'ln', 'cat', 'echo', 'date', 'od', 'tr', 'insmod', 'modprobe', 'findfs',
  'dd', 'wc', 'grep', 'df', 'awk', 'ip', 'udhcpc', 'watchdog', 'sleep', 'sync', 'reboot', 'poweroff',
  'halt', 'init', 'head', 'tail', 'rm', 'ls', 'ps', 'kill', 'mv', 'cp', 'sed', 'uname', 'free', 'true',
  'false', 'test', '[', 'dmesg', 'blockdev',
];

function busyboxHasApplet(binary: Uint8Array, applet: string): boolean {
  // Applet names are stored as one NUL-separated string table.
  return Buffer.from(binary).includes(Buffer.from(`\0${applet}\0`, 'latin1'));
}

export function addPackage(tree: FileTree, name: string, entries: DebEntry[]): void {
  const byPath = new Map(entries.map((e) => [e.path, e]));
  for (const e of entries) {
    if (!e.path || DROP.some((r) => r.test(e.path))) continue;
    try {
      if (e.type === 'dir') tree.add(e.path, { type: 'dir', mode: e.mode & 0o7777 });
      else if (e.type === 'symlink') tree.add(e.path, { type: 'symlink', target: e.linkname ?? '' }, { replace: true });
      else if (e.type === 'file') tree.add(e.path, { type: 'file', mode: e.mode & 0o7777, data: e.data ?? Buffer.alloc(0) }, { replace: true });
      else if (e.type === 'hardlink') {
        const target = byPath.get(e.linkname ?? '');
        if (target?.data) tree.add(e.path, { type: 'file', mode: target.mode & 0o7777, data: target.data }, { replace: true });
      }
    } catch (err) {
      throw new UzError('ROOTFS_CONFLICT', `package ${name}: ${(err as Error).message}`, { package: name, path: e.path });
    }
  }
}

export function composeRootfs(inp: RootfsInputs): FileTree {
  const tree = new FileTree();
  for (const d of ['dev', 'proc', 'sys', 'run', 'tmp', 'data', 'etc', 'etc/uz', 'opt', 'opt/uz']) tree.dir(d);
  tree.dir('tmp', 0o1777);
  tree.add('dev/console', { type: 'chardev', mode: 0o600, major: 5, minor: 1 });
  tree.add('dev/null', { type: 'chardev', mode: 0o666, major: 1, minor: 3 });

  for (const p of inp.packages) addPackage(tree, p.name, p.entries);
  pruneNodeShare(tree);

  const bb = tree.get('usr/bin/busybox');
  if (!bb || bb.type !== 'file') throw new UzError('ROOTFS_BUSYBOX_MISSING', 'busybox-static did not provide /usr/bin/busybox');
  const missing = BUSYBOX_APPLETS.filter((a) => !busyboxHasApplet(bb.data, a));
  if (missing.length) throw new UzError('ROOTFS_BUSYBOX_APPLETS', `busybox lacks applets: ${missing.join(', ')}`, { missing });
  for (const a of BUSYBOX_APPLETS) {
    const path = `usr/bin/${a}`;
    // Real tools from packages (e2fsprogs' blkid is richer) win over applets.
    if (!tree.has(path) && !tree.has(`usr/sbin/${a}`)) tree.symlink(path, 'busybox');
  }
  tree.symlink('init', 'usr/bin/busybox');

  for (const [path, text] of Object.entries(staticEtc())) tree.file(path, text);
  tree.symlink('etc/mtab', '/proc/self/mounts');
  tree.symlink('etc/resolv.conf', '/run/uz/resolv.conf');
  const params = { board: inp.board, version: inp.version, buildEpoch: inp.buildEpoch, debug: inp.debug };
  tree.file('etc/inittab', inittab(params));
  tree.file('etc/uz/build.env', buildEnv(params));
  tree.file('etc/uz/rcS', initFile('rcS'), 0o755);
  tree.file('etc/uz/agent', initFile('agent'), 0o755);
  tree.file('etc/uz/shutdown', initFile('shutdown'), 0o755);
  tree.file('etc/uz/udhcpc.script', initFile('udhcpc.script'), 0o755);
  tree.file('etc/uz/growdata', initFile('growdata'), 0o755);
  tree.file('etc/uz/image.json', `${JSON.stringify(inp.imageInfo, null, 2)}\n`);

  const modDir = `usr/lib/modules/${inp.kernelRelease}`;
  const late = inp.lateModules ?? [];
  for (const m of [...inp.modules, ...late]) tree.file(`${modDir}/${m.relPath}`, m.data);
  tree.file('etc/uz/modules.list', inp.modules.map((m) => `${inp.kernelRelease}/${m.relPath}\n`).join(''));
  tree.file('etc/uz/modules-late.list', late.map((m) => `${inp.kernelRelease}/${m.relPath}\n`).join(''));

  for (const f of inp.agentBundle) tree.file(`opt/uz/${f.name}`, f.text);
  for (const f of inp.app.files) tree.file(f.path, f.data, f.mode);
  if (inp.app.config) tree.file(inp.app.config.path, inp.app.config.data, 0o644);
  if (inp.board.wifi) addWifi(tree, inp.board, inp.wifi);

  if (!inp.debug) {
    // No login anywhere; a debug build keeps busybox's shell on the serial console only (inittab).
    tree.remove('usr/bin/login');
    tree.remove('usr/bin/getty');
  }
  return tree;
}

/**
 * The cpio archive, gzip'd at a fixed level or stored as is (the board decides: Board.kernel.initramfsCompression).
 * zlib writes no timestamp or name, so the bytes depend only on the input either way.
 */
export function packInitramfs(tree: FileTree, mtime: number, compression: 'gzip' | 'none' = 'gzip'): Buffer {
  const cpio = writeCpio(tree.toCpioEntries(), mtime);
  return compression === 'none' ? cpio : gzipSync(cpio, { level: 6, memLevel: 8, strategy: zc.Z_DEFAULT_STRATEGY });
}
