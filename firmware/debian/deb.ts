/**
 * In-process `.deb` reading, no dpkg: a .deb is an `ar` archive holding `debian-binary`, `control.tar.*` and
 * `data.tar.*`. Callers must have verified the file's SHA-256 already (see cache.ts / lock.ts).
 */
import { readFile } from 'node:fs/promises';
import { posix } from 'node:path';
import { Readable } from 'node:stream';
import * as zlib from 'node:zlib';
import { xz } from '@napi-rs/lzma';
import tarStream from 'tar-stream';
import { UzError } from '../../lib/errors.js';
import { field, parseDeb822, type Stanza } from './deb822.js';

export interface ArMember {
  name: string;
  mtime: number;
  mode: number;
  data: Buffer;
}

const AR_MAGIC = '!<arch>\n';
const AR_HEADER = 60;

/** Parses a System V / GNU `ar` archive (as dpkg writes it): magic, then 60-byte headers, each member padded to even. */
export function parseAr(buf: Buffer): ArMember[] {
  if (buf.length < AR_MAGIC.length || buf.toString('latin1', 0, AR_MAGIC.length) !== AR_MAGIC) {
    throw new UzError('DEB_FORMAT', 'Not an ar archive (bad global header)', {});
  }
  const members: ArMember[] = [];
  let off = AR_MAGIC.length;
  while (off < buf.length) {
    if (buf.length - off === 1 && buf[off] === 0x0a) break; // trailing pad byte
    if (off + AR_HEADER > buf.length) throw new UzError('DEB_FORMAT', 'Truncated ar member header', { offset: off });
    const h = buf.toString('latin1', off, off + AR_HEADER);
    if (h.slice(58, 60) !== '`\n') throw new UzError('DEB_FORMAT', 'Bad ar member header magic', { offset: off });
    const name = h.slice(0, 16).trimEnd().replace(/\/$/, '');
    const size = Number.parseInt(h.slice(48, 58).trim(), 10);
    if (!Number.isSafeInteger(size) || size < 0) throw new UzError('DEB_FORMAT', 'Bad ar member size', { offset: off, name });
    const start = off + AR_HEADER;
    if (start + size > buf.length) throw new UzError('DEB_FORMAT', `Truncated ar member ${name}`, { name, size });
    members.push({
      name,
      mtime: Number.parseInt(h.slice(16, 28).trim() || '0', 10),
      mode: Number.parseInt(h.slice(40, 48).trim() || '0', 8),
      data: buf.subarray(start, start + size),
    });
    off = start + size + (size % 2);
  }
  return members;
}

/** Decompresses a `*.tar.{xz,gz,zst}` member by its name (a plain `.tar` passes through). */
async function decompressMember(member: ArMember): Promise<Buffer> {
  const n = member.name;
  try {
    if (n.endsWith('.tar')) return member.data;
    if (n.endsWith('.tar.xz')) return await xz.decompress(member.data);
    if (n.endsWith('.tar.gz')) return zlib.gunzipSync(member.data);
  } catch (e) {
    throw new UzError('DEB_FORMAT', `Cannot decompress ${n}: ${(e as Error).message}`, { member: n }, { cause: e });
  }
  if (n.endsWith('.tar.zst')) {
    // Node ≥ 22.15 ships zstd in node:zlib; older Node has no zstd without a native add-on.
    const zstd = (zlib as unknown as { zstdDecompressSync?: (b: Buffer) => Buffer }).zstdDecompressSync;
    if (typeof zstd === 'function') return zstd(member.data);
  }
  throw new UzError('DEB_UNSUPPORTED_COMPRESSION', `Unsupported .deb member compression: ${n}`, { member: n });
}

function findMember(members: ArMember[], prefix: string): ArMember {
  const m = members.find((x) => x.name === prefix || x.name.startsWith(`${prefix}.`));
  if (!m) throw new UzError('DEB_FORMAT', `.deb has no ${prefix}.* member`, { members: members.map((x) => x.name) });
  return m;
}

export type DebEntryType = 'file' | 'dir' | 'symlink' | 'hardlink';

export interface DebEntry {
  /** Relative path without leading `./` or `/` and without a trailing slash, e.g. `usr/bin/busybox`. */
  path: string;
  type: DebEntryType;
  /** Permission bits (including setuid/setgid/sticky). */
  mode: number;
  data?: Buffer;
  /** Symlink target as stored (may be absolute or relative), or the normalized path a hardlink points to. */
  linkname?: string;
}

/** Normalizes a tar path; rejects anything escaping the root. Returns '' for the root itself. */
export function normalizeEntryPath(name: string): string {
  if (name.split('/').includes('..')) throw new UzError('DEB_FORMAT', `Unsafe path in .deb: ${name}`, { path: name });
  const p = posix.normalize(`/${name}`).replace(/^\/+/, '').replace(/\/+$/, '');
  return p === '.' ? '' : p;
}

/** Reads every entry of an uncompressed tar into memory. Device nodes and FIFOs are skipped. */
export async function readTar(tar: Buffer): Promise<DebEntry[]> {
  const entries: DebEntry[] = [];
  const extract = tarStream.extract();
  Readable.from([tar]).pipe(extract);
  for await (const entry of extract) {
    const h = entry.header;
    const chunks: Buffer[] = [];
    for await (const c of entry) chunks.push(c as Buffer);
    const path = normalizeEntryPath(h.name);
    if (path === '') continue;
    const mode = (h.mode ?? 0) & 0o7777;
    switch (h.type) {
      case 'file':
      case 'contiguous-file':
        entries.push({ path, type: 'file', mode, data: Buffer.concat(chunks) });
        break;
      case 'directory':
        entries.push({ path, type: 'dir', mode });
        break;
      case 'symlink':
        entries.push({ path, type: 'symlink', mode, linkname: h.linkname ?? '' });
        break;
      case 'link':
        entries.push({ path, type: 'hardlink', mode, linkname: normalizeEntryPath(h.linkname ?? '') });
        break;
      default:
        break;
    }
  }
  return entries;
}

export interface DebArchive {
  /** Fields of `DEBIAN/control` (Package, Version, Architecture, ...). */
  control: Stanza;
  entries: DebEntry[];
}

async function readControlFrom(members: ArMember[]): Promise<Stanza> {
  const tar = await decompressMember(findMember(members, 'control.tar'));
  const entries = await readTar(tar);
  const control = entries.find((e) => e.path === 'control' && e.type === 'file');
  if (!control?.data) throw new UzError('DEB_FORMAT', 'control.tar has no control file', {});
  const stanza = parseDeb822(control.data.toString('utf8'))[0];
  if (!stanza) throw new UzError('DEB_FORMAT', 'Empty control file', {});
  return stanza;
}

function checkFormat(members: ArMember[]): void {
  const first = members[0];
  if (!first || first.name !== 'debian-binary' || !first.data.toString('latin1').startsWith('2.')) {
    throw new UzError('DEB_FORMAT', 'Not a Debian binary package (debian-binary missing or not 2.x)', {});
  }
}

/** Reads only the control fields of a .deb. */
export async function readDebControl(deb: Buffer): Promise<Stanza> {
  const members = parseAr(deb);
  checkFormat(members);
  return readControlFrom(members);
}

/** Reads the control fields and every data entry of a .deb held in memory. */
export async function readDeb(deb: Buffer): Promise<DebArchive> {
  const members = parseAr(deb);
  checkFormat(members);
  const control = await readControlFrom(members);
  const entries = await readTar(await decompressMember(findMember(members, 'data.tar')));
  return { control, entries };
}

export interface ExpectedIdentity {
  name: string;
  version: string;
}

/** Throws `DEB_PACKAGE_MISMATCH` unless the control fields name the expected package and version. */
export function checkIdentity(control: Stanza, expected: ExpectedIdentity): void {
  const name = field(control, 'Package');
  const version = field(control, 'Version');
  if (name !== expected.name || version !== expected.version) {
    throw new UzError(
      'DEB_PACKAGE_MISMATCH',
      `.deb is ${name} ${version}, expected ${expected.name} ${expected.version}`,
      { expected, actual: { name, version } },
    );
  }
}

/** Reads a .deb file; with `expected`, also checks it is that package and version. */
export async function extractDeb(path: string, expected?: ExpectedIdentity): Promise<DebArchive> {
  const deb = await readDeb(await readFile(path));
  if (expected) checkIdentity(deb.control, expected);
  return deb;
}
