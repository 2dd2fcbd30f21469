import { UzError } from '../../lib/errors.js';
import { normalizeCpioPath, type CpioEntry } from './cpio.js';

/**
 * An in-memory root filesystem: the initramfs is composed here from Debian package contents, generated
 * files and the agent bundle, then serialised to cpio in sorted order (reproducible).
 *
 * Debian 13 is merged-/usr: `/bin`, `/sbin` and `/lib` are symlinks into `/usr`, and files a package still
 * ships under those names are stored under `/usr` so the dynamic loader path `/lib/ld-linux-aarch64.so.1`
 * resolves.
 */
export type TreeNode =
  | { type: 'file'; mode: number; data: Uint8Array }
  | { type: 'dir'; mode: number }
  | { type: 'symlink'; target: string }
  | { type: 'chardev'; mode: number; major: number; minor: number };

const MERGED = ['bin', 'sbin', 'lib'];

function canonical(path: string): string {
  const p = normalizeCpioPath(path);
  const first = p.split('/')[0]!;
  if (MERGED.includes(first) && p !== first) return `usr/${p}`;
  return p;
}

export class FileTree {
  private readonly nodes = new Map<string, TreeNode>();

  constructor() {
    for (const d of ['usr', 'usr/bin', 'usr/sbin', 'usr/lib']) this.nodes.set(d, { type: 'dir', mode: 0o755 });
    for (const m of MERGED) this.nodes.set(m, { type: 'symlink', target: `usr/${m}` });
  }

  private ensureParents(p: string): void {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      const existing = this.nodes.get(dir);
      if (!existing) this.nodes.set(dir, { type: 'dir', mode: 0o755 });
      else if (existing.type !== 'dir' && !(existing.type === 'symlink' && MERGED.includes(dir))) {
        throw new UzError('ROOTFS_CONFLICT', `cannot create ${p}: ${dir} is a ${existing.type}`, { path: p });
      }
    }
  }

  /** Adds or replaces a node. `replace: false` makes a clash between two sources an error. */
  add(path: string, node: TreeNode, opts: { replace?: boolean } = {}): void {
    const p = node.type === 'symlink' && MERGED.includes(normalizeCpioPath(path)) ? normalizeCpioPath(path) : canonical(path);
    if (MERGED.includes(p)) return; // the merged-/usr links are fixed
    const existing = this.nodes.get(p);
    if (existing && !opts.replace) {
      if (existing.type === 'dir' && node.type === 'dir') return;
      if (existing.type === 'file' && node.type === 'file' && Buffer.from(existing.data).equals(Buffer.from(node.data))) return;
      if (existing.type === 'symlink' && node.type === 'symlink' && existing.target === node.target) return;
      throw new UzError('ROOTFS_CONFLICT', `two sources provide ${p}`, { path: p });
    }
    this.ensureParents(p);
    this.nodes.set(p, node);
  }

  file(path: string, data: string | Uint8Array, mode = 0o644): void {
    this.add(path, { type: 'file', mode, data: typeof data === 'string' ? Buffer.from(data) : data }, { replace: true });
  }

  symlink(path: string, target: string): void {
    this.add(path, { type: 'symlink', target }, { replace: true });
  }

  dir(path: string, mode = 0o755): void {
    this.add(path, { type: 'dir', mode }, { replace: true });
  }

  has(path: string): boolean {
    return this.nodes.has(canonical(path));
  }

  get(path: string): TreeNode | undefined {
    return this.nodes.get(canonical(path));
  }

  remove(prefix: string): void {
    const p = canonical(prefix);
    for (const k of [...this.nodes.keys()]) if (k === p || k.startsWith(`${p}/`)) this.nodes.delete(k);
  }

  paths(): string[] {
    return [...this.nodes.keys()].sort();
  }

  totalBytes(): number {
    let n = 0;
    for (const v of this.nodes.values()) if (v.type === 'file') n += v.data.length;
    return n;
  }

  /** Sorted so that every directory precedes its contents and the order never depends on insertion. */
  toCpioEntries(): CpioEntry[] {
    return this.paths().map((path): CpioEntry => {
      const n = this.nodes.get(path)!;
      switch (n.type) {
        case 'file':
          return { path, type: 'file', mode: n.mode, data: n.data };
        case 'dir':
          return { path, type: 'dir', mode: n.mode };
        case 'symlink':
          return { path, type: 'symlink', target: n.target };
        case 'chardev':
          return { path, type: 'chardev', mode: n.mode, major: n.major, minor: n.minor };
      }
    });
  }
}
