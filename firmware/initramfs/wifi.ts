import { posix } from 'node:path';
import { UzError } from '../../lib/errors.js';
import type { Board } from '../../boards/schema.js';
import type { DebEntry } from '../debian/deb.js';
import { readElfDynamic } from './elf.js';
import { initFile } from './init-scripts.js';
import type { FileTree, TreeNode } from './tree.js';

/**
 * What a board with Wi-Fi hardware (Board.wifi) adds to the RAM root, and nothing more:
 *   - /usr/sbin/wpa_supplicant and exactly the shared libraries its ELF NEEDED entries reach (transitively),
 *     taken from the lock's `wifi` component; libraries the root already has (libc, libssl from the Node.js
 *     closure) are reused. wpa_cli, wpa_passphrase, D-Bus service files and maintainer scripts are not shipped.
 *   - the regulatory database cfg80211 loads (Debian's signed copy, which Debian's kernel trusts);
 *   - the firmware files the board names, from the `wifi-firmware` component (symlinks resolved);
 *   - /etc/uz/wifi (the bring-up script rcS starts) and /opt/uz/wifi.mjs (the Node step that reads uz-device.json).
 */
export interface WifiInputs {
  /** Extracted packages of the lock's `wifi` component (wpasupplicant, wireless-regdb, their libraries). */
  packages: Array<{ name: string; entries: DebEntry[] }>;
  /** Extracted packages of the lock's `wifi-firmware` component (only read when the board names firmware). */
  firmware: Array<{ name: string; entries: DebEntry[] }>;
  /** The bundled Wi-Fi boot step (firmware/agent-bundle.ts). */
  helper: string;
}

export const WPA_SUPPLICANT_PATH = 'usr/sbin/wpa_supplicant';
/** busybox applets /etc/uz/wifi needs beyond the init's own list (compose.ts BUSYBOX_APPLETS). */
export const WIFI_APPLETS = ['pidof', 'tr', 'kill', 'udhcpc', 'tail', 'mv', 'cat', 'sleep', 'mkdir', 'rm'];
/** Where the dynamic loader looks (Debian arm64, merged-/usr). */
const LIB_DIRS = ['usr/lib/aarch64-linux-gnu', 'usr/lib'];

type Lookup = (path: string) => { kind: 'file'; data: Uint8Array; mode: number } | { kind: 'symlink'; target: string } | undefined;

/** `lib/x` and `usr/lib/x` are one path in a merged-/usr root. */
function canonical(path: string): string {
  const p = path.replace(/^\/+/, '');
  return /^(bin|sbin|lib)\//.test(p) ? `usr/${p}` : p;
}

/** Follows symlinks; returns every path visited (links first, the file last) and the file, or undefined. */
function follow(lookup: Lookup, path: string): { chain: string[]; data: Uint8Array; mode: number } | undefined {
  const chain: string[] = [];
  let p = canonical(path);
  for (let hops = 0; hops < 16; hops++) {
    const n = lookup(p);
    if (!n) return undefined;
    chain.push(p);
    if (n.kind === 'file') return { chain, data: n.data, mode: n.mode };
    p = canonical(n.target.startsWith('/') ? n.target : posix.normalize(posix.join(posix.dirname(p), n.target)));
  }
  return undefined;
}

function entryLookup(pkgs: Array<{ entries: DebEntry[] }>): { lookup: Lookup } {
  const m = new Map<string, DebEntry>();
  for (const pkg of pkgs) for (const e of pkg.entries) if (e.path) m.set(canonical(e.path), e);
  const lookup: Lookup = (p) => {
    const e = m.get(p);
    if (e?.type === 'file') return { kind: 'file', data: e.data ?? Buffer.alloc(0), mode: e.mode & 0o7777 };
    if (e?.type === 'symlink') return { kind: 'symlink', target: e.linkname ?? '' };
    if (e?.type === 'hardlink') return { kind: 'symlink', target: `/${e.linkname ?? ''}` };
    return undefined;
  };
  return { lookup };
}

function treeLookup(tree: FileTree): Lookup {
  return (p) => {
    const n: TreeNode | undefined = tree.get(p);
    if (n?.type === 'file') return { kind: 'file', data: n.data, mode: n.mode };
    if (n?.type === 'symlink') return { kind: 'symlink', target: n.target };
    return undefined;
  };
}

function busyboxHasApplet(binary: Uint8Array, applet: string): boolean {
  return Buffer.from(binary).includes(Buffer.from(`\0${applet}\0`, 'latin1'));
}

/**
 * Adds the ELF `binaryPath` (already in the tree) plus the libraries it needs, transitively, resolving each soname
 * first in the tree, then in `pkgs`. Throws ROOTFS_LIB_MISSING naming the library and who needs it. Returns the
 * sonames it had to add from `pkgs`, sorted.
 */
export function addElfClosure(tree: FileTree, binaryPath: string, pkgs: Array<{ entries: DebEntry[] }>): string[] {
  const inTree = treeLookup(tree);
  const fromPkgs = entryLookup(pkgs).lookup;
  const start = follow(inTree, binaryPath);
  if (!start) throw new Error(`addElfClosure: ${binaryPath} is not in the root`); // a caller's mistake, not an input's
  const added: string[] = [];
  const seen = new Set<string>();
  const queue: Array<{ who: string; data: Uint8Array }> = [{ who: binaryPath, data: start.data }];
  while (queue.length) {
    const { who, data } = queue.shift()!;
    for (const soname of readElfDynamic(data, who).needed) {
      if (seen.has(soname)) continue;
      seen.add(soname);
      let found: { who: string; data: Uint8Array } | undefined;
      for (const dir of LIB_DIRS) {
        const hit = follow(inTree, `${dir}/${soname}`);
        if (hit) {
          found = { who: soname, data: hit.data };
          break;
        }
        const pkgHit = follow(fromPkgs, `${dir}/${soname}`);
        if (pkgHit) {
          // Copy the links and the file as the package has them (libfoo.so.1 -> libfoo.so.1.2.3).
          for (const p of pkgHit.chain) {
            const n = fromPkgs(p)!;
            if (n.kind === 'symlink') tree.symlink(p, n.target);
            else tree.file(p, n.data, n.mode);
          }
          added.push(soname);
          found = { who: soname, data: pkgHit.data };
          break;
        }
      }
      if (!found) {
        throw new UzError('ROOTFS_LIB_MISSING', `${who} needs ${soname}, which neither the root nor the Wi-Fi packages provide`, { library: soname, neededBy: who });
      }
      queue.push(found);
    }
  }
  return added.sort();
}

/**
 * The firmware files a board names (Board.wifi.firmware), from the `wifi-firmware` packages, as regular files at
 * usr/lib/firmware/<name> (symlinks such as brcm/…bin -> ../cypress/…bin resolved). Throws
 * BOARD_WIFI_FIRMWARE_MISSING listing every name the packages lack.
 */
export function wifiFirmwareFiles(board: Board, firmwarePkgs: Array<{ entries: DebEntry[] }>): Array<{ path: string; data: Uint8Array }> {
  const fw = entryLookup(firmwarePkgs);
  const out: Array<{ path: string; data: Uint8Array }> = [];
  const missing: string[] = [];
  for (const name of board.wifi?.firmware ?? []) {
    const path = `usr/lib/firmware/${name}`;
    const f = follow(fw.lookup, path);
    if (f) out.push({ path, data: f.data });
    else missing.push(name);
  }
  if (missing.length) {
    throw new UzError('BOARD_WIFI_FIRMWARE_MISSING', `board ${board.id}: the Wi-Fi firmware package has no ${missing.join(', ')}`, { board: board.id, missing });
  }
  return out;
}

/** Puts everything Wi-Fi needs into `tree` (see the module comment). No-op for a board without `wifi`. */
export function addWifi(tree: FileTree, board: Board, inp: WifiInputs | undefined): { libraries: string[]; firmware: string[] } {
  if (!board.wifi) return { libraries: [], firmware: [] };
  if (!inp) throw new UzError('ROOTFS_WIFI_MISSING', `board ${board.id} has Wi-Fi but the build passed no Wi-Fi packages`, { board: board.id });
  const bb = tree.get('usr/bin/busybox');
  const missingApplets = bb?.type === 'file' ? WIFI_APPLETS.filter((a) => !busyboxHasApplet(bb.data, a)) : WIFI_APPLETS;
  if (missingApplets.length) throw new UzError('ROOTFS_BUSYBOX_APPLETS', `busybox lacks applets: ${missingApplets.join(', ')}`, { missing: missingApplets });
  for (const a of WIFI_APPLETS) if (!tree.has(`usr/bin/${a}`) && !tree.has(`usr/sbin/${a}`)) tree.symlink(`usr/bin/${a}`, 'busybox');

  const pkgs = entryLookup(inp.packages);
  const wpa = follow(pkgs.lookup, WPA_SUPPLICANT_PATH);
  if (!wpa) throw new UzError('ROOTFS_WIFI_MISSING', `the Wi-Fi packages have no /${WPA_SUPPLICANT_PATH}`, { path: WPA_SUPPLICANT_PATH });
  tree.file(WPA_SUPPLICANT_PATH, wpa.data, 0o755);
  const libraries = addElfClosure(tree, WPA_SUPPLICANT_PATH, inp.packages);

  // wireless-regdb ships Debian's and upstream's signed databases; Debian's kernel trusts Debian's (the package's
  // default alternative).
  for (const [from, to] of [
    ['usr/lib/firmware/regulatory.db-debian', 'usr/lib/firmware/regulatory.db'],
    ['usr/lib/firmware/regulatory.db.p7s-debian', 'usr/lib/firmware/regulatory.db.p7s'],
  ] as const) {
    const f = follow(pkgs.lookup, from);
    if (!f) throw new UzError('ROOTFS_WIFI_MISSING', `wireless-regdb has no /${from}`, { path: from });
    tree.file(to, f.data, 0o644);
  }

  for (const f of wifiFirmwareFiles(board, inp.firmware)) tree.file(f.path, f.data, 0o644);

  tree.file('etc/uz/wifi', initFile('wifi'), 0o755);
  tree.file('opt/uz/wifi.mjs', inp.helper, 0o644);
  return { libraries, firmware: [...board.wifi.firmware] };
}
