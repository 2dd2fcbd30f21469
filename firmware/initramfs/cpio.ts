import { UzError } from '../../lib/errors.js';

/**
 * cpio "newc" (SVR4, no CRC) writer: the format the Linux kernel unpacks as an initramfs.
 * Entries are written in the order given; callers sort them for reproducible archives.
 * Device nodes can be written without root because nothing touches the host filesystem.
 */
export type CpioEntry =
  | { path: string; type: 'file'; mode?: number; data: Uint8Array }
  | { path: string; type: 'dir'; mode?: number }
  | { path: string; type: 'symlink'; target: string }
  | { path: string; type: 'chardev' | 'blockdev'; mode?: number; major: number; minor: number };

const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new UzError('CPIO_FIELD_RANGE', `cpio field out of range: ${n}`);
  return n.toString(16).padStart(8, '0');
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** Normalises `./a/b`, `/a/b` and `a//b` to `a/b`; rejects `..` so an archive cannot escape its root. */
export function normalizeCpioPath(p: string): string {
  const parts = p.split('/').filter((s) => s !== '' && s !== '.');
  if (parts.some((s) => s === '..')) throw new UzError('CPIO_PATH_INVALID', `path escapes the archive: ${p}`, { path: p });
  if (parts.length === 0) throw new UzError('CPIO_PATH_INVALID', `empty path: "${p}"`, { path: p });
  return parts.join('/');
}

export function writeCpio(entries: readonly CpioEntry[], mtime: number): Buffer {
  const chunks: Buffer[] = [];
  let ino = 1;
  const seen = new Set<string>();
  const push = (name: string, mode: number, data: Uint8Array, rdev: [number, number] = [0, 0], nlink = 1) => {
    const nameBuf = Buffer.from(`${name}\0`, 'utf8');
    const header =
      '070701' +
      hex8(name === 'TRAILER!!!' ? 0 : ino++) +
      hex8(mode) +
      hex8(0) + // uid
      hex8(0) + // gid
      hex8(nlink) +
      hex8(mtime) +
      hex8(data.length) +
      hex8(0) + // dev major
      hex8(0) + // dev minor
      hex8(rdev[0]) +
      hex8(rdev[1]) +
      hex8(nameBuf.length) +
      hex8(0); // check
    chunks.push(Buffer.from(header, 'ascii'), nameBuf, Buffer.alloc(pad4(110 + nameBuf.length)));
    if (data.length) {
      chunks.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength), Buffer.alloc(pad4(data.length)));
    }
  };
  for (const e of entries) {
    const name = normalizeCpioPath(e.path);
    if (seen.has(name)) throw new UzError('CPIO_DUPLICATE', `duplicate path in initramfs: ${name}`, { path: name });
    seen.add(name);
    switch (e.type) {
      case 'file':
        push(name, S_IFREG | (e.mode ?? 0o644), e.data);
        break;
      case 'dir':
        push(name, S_IFDIR | (e.mode ?? 0o755), new Uint8Array(0), [0, 0], 2);
        break;
      case 'symlink':
        push(name, S_IFLNK | 0o777, Buffer.from(e.target, 'utf8'));
        break;
      case 'chardev':
      case 'blockdev':
        push(name, (e.type === 'chardev' ? S_IFCHR : S_IFBLK) | (e.mode ?? 0o600), new Uint8Array(0), [e.major, e.minor]);
        break;
    }
  }
  push('TRAILER!!!', 0, new Uint8Array(0), [0, 0], 1);
  return Buffer.concat(chunks);
}

/** Reads a newc archive back (used by `uz inspect` and tests). */
export function readCpio(buf: Buffer): Array<{ path: string; mode: number; size: number; data: Buffer; rdev: [number, number] }> {
  const out: Array<{ path: string; mode: number; size: number; data: Buffer; rdev: [number, number] }> = [];
  let off = 0;
  for (;;) {
    if (off + 110 > buf.length) throw new UzError('CPIO_TRUNCATED', 'cpio archive ends before its trailer', { offset: off });
    const magic = buf.toString('ascii', off, off + 6);
    if (magic !== '070701') throw new UzError('CPIO_BAD_MAGIC', `bad cpio magic at ${off}: ${magic}`, { offset: off });
    const field = (i: number) => parseInt(buf.toString('ascii', off + 6 + i * 8, off + 14 + i * 8), 16);
    const mode = field(1);
    const size = field(6);
    const rdev: [number, number] = [field(9), field(10)];
    const nameSize = field(11);
    const nameStart = off + 110;
    const name = buf.toString('utf8', nameStart, nameStart + nameSize - 1);
    let p = nameStart + nameSize;
    p += pad4(110 + nameSize);
    if (name === 'TRAILER!!!') return out;
    if (p + size > buf.length) throw new UzError('CPIO_TRUNCATED', `cpio entry ${name} is truncated`, { path: name });
    out.push({ path: name, mode, size, data: buf.subarray(p, p + size), rdev });
    off = p + size + pad4(size);
  }
}
