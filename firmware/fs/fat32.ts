/**
 * The project's one FAT32 implementation: volumes built entirely in memory from a file tree (buildFat32), a
 * reader (readFat32), and in-place changes to an existing volume — rewriting a file within the clusters it owns
 * (overwriteFat32File) and adding or replacing a file like a FAT driver would (addFat32File, used by
 * `uz provision`). No mkfs, no mounts, no root.
 *
 * Layout written by buildFat32:
 *   sector 0        boot sector / BPB        sector 6  backup boot sector
 *   sector 1        FSInfo                   sector 7  backup FSInfo
 *   sectors 32..    FAT #1, FAT #2           data area (aligned to the cluster size), root dir at cluster 2
 * Directories and files are each stored contiguously, allocated depth-first in name order. Every name that is
 * not already an uppercase 8.3 name gets VFAT long-name entries plus a unique short alias. All timestamps come
 * from `mtime` (UTC), so identical input gives byte-identical output.
 */
import { UzError } from '../../lib/errors.js';

const SECTOR = 512;
const RESERVED_SECTORS = 32;
const NUM_FATS = 2;
const FSINFO_SECTOR = 1;
/** FSInfo signatures and field offsets, and the value meaning "unknown" for the count and the hint. */
const FSINFO_LEAD_SIG = 0x41615252;
const FSINFO_STRUC_SIG = 0x61417272;
const FSINFO_FREE_COUNT = 488;
const FSINFO_NEXT_FREE = 492;
const FSINFO_UNKNOWN = 0xffffffff;
const BACKUP_BOOT_SECTOR = 6;
const ROOT_CLUSTER = 2;
const MEDIA = 0xf8;
const EOC = 0x0fffffff;
const FAT_MASK = 0x0fffffff;
/** FAT32 needs at least 65525 clusters; keep a margin of 16 as Microsoft recommends. */
const MIN_CLUSTERS = 65525 + 16;
/** Largest legal FAT32 cluster number is 0x0FFFFFF6, so at most 0x0FFFFFF5 data clusters. */
const MAX_CLUSTERS = 0x0ffffff5;
const DIR_ENTRY = 32;
/** A FAT directory may hold at most 65536 entries (2 MiB). */
const MAX_DIR_ENTRIES = 65536;
const MAX_NAME_UNITS = 255;

const ATTR_READ_ONLY = 0x01;
const ATTR_HIDDEN = 0x02;
const ATTR_SYSTEM = 0x04;
const ATTR_VOLUME_ID = 0x08;
const ATTR_DIRECTORY = 0x10;
const ATTR_ARCHIVE = 0x20;
const ATTR_LFN = ATTR_READ_ONLY | ATTR_HIDDEN | ATTR_SYSTEM | ATTR_VOLUME_ID;

export interface Fat32File {
  /** Forward-slash path relative to the volume root, e.g. 'overlays/foo.dtbo'. */
  path: string;
  data: Buffer | Uint8Array;
}

export interface Fat32Options {
  /** Volume size in bytes; a multiple of 512. */
  sizeBytes: number;
  /** Up to 11 characters from the 8.3 character set (lowercase is upper-cased). Empty → "NO NAME". */
  volumeLabel: string;
  /** 32-bit volume serial number. */
  volumeId: number;
  /** Used for every timestamp (UTC), clamped to FAT's 1980..2107 range. */
  mtime: Date;
  files: Fat32File[];
  /** BPB "hidden sectors": the partition's start LBA when the volume lives in a partitioned disk. Default 0. */
  hiddenSectors?: number;
  /** Force a cluster size (bytes, power of two, 512..32768) instead of the automatic choice. */
  clusterSize?: number;
}

export interface Fat32Layout {
  totalSectors: number;
  sectorsPerCluster: number;
  clusterSize: number;
  reservedSectors: number;
  numFats: number;
  fatSectors: number;
  /** First sector of cluster 2. */
  dataStartSector: number;
  /** Number of data clusters (clusters 2 .. clusterCount + 1). */
  clusterCount: number;
}

export interface Fat32Entry {
  path: string;
  size: number;
  isDir: boolean;
}

export interface Fat32Reader {
  label: string;
  volumeId: number;
  clusterSize: number;
  list(): Fat32Entry[];
  readFile(path: string): Buffer;
}

// ---------------------------------------------------------------------------------------------------------------
// Geometry

function layoutFor(totalSectors: number, spc: number): Fat32Layout | null {
  const avail = totalSectors - RESERVED_SECTORS;
  if (avail <= 0) return null;
  const ok = (f: number): boolean => {
    const rest = avail - NUM_FATS * f;
    if (rest < spc) return false;
    return (Math.floor(rest / spc) + 2) * 4 <= f * SECTOR;
  };
  // Smallest FAT size whose entries cover the clusters that remain after it (ok() is monotonic in f).
  let lo = 1;
  let hi = Math.ceil(((avail / spc + 2) * 4) / SECTOR) + 1;
  if (!ok(hi)) return null;
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if (ok(mid)) hi = mid;
    else lo = mid + 1;
  }
  // Round the FAT up so the data area starts on a cluster boundary (RESERVED_SECTORS is a multiple of 64).
  const step = Math.max(1, spc / NUM_FATS);
  const fatSectors = Math.ceil(lo / step) * step;
  if (!ok(fatSectors)) return null;
  const dataStartSector = RESERVED_SECTORS + NUM_FATS * fatSectors;
  const clusterCount = Math.floor((totalSectors - dataStartSector) / spc);
  return {
    totalSectors,
    sectorsPerCluster: spc,
    clusterSize: spc * SECTOR,
    reservedSectors: RESERVED_SECTORS,
    numFats: NUM_FATS,
    fatSectors,
    dataStartSector,
    clusterCount,
  };
}

/** Smallest volume (bytes) that can be FAT32 with 512-byte clusters. */
export const FAT32_MIN_SIZE_BYTES: number = (() => {
  const fat = Math.ceil(((MIN_CLUSTERS + 2) * 4) / SECTOR);
  return (RESERVED_SECTORS + NUM_FATS * fat + MIN_CLUSTERS) * SECTOR;
})();

/**
 * Compute the on-disk geometry for a volume. The cluster size is the largest ≤ Microsoft's table value
 * (4 KiB up to 8 GiB) that still leaves ≥ 65541 clusters; `clusterSize` forces one.
 */
export function fat32Layout(sizeBytes: number, clusterSize?: number): Fat32Layout {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % SECTOR !== 0) {
    throw new UzError('FAT_INVALID_OPTION', 'volume size must be a positive multiple of 512 bytes', { sizeBytes });
  }
  const totalSectors = sizeBytes / SECTOR;
  if (totalSectors > 0xffffffff) {
    throw new UzError('FAT_TOO_LARGE', 'volume exceeds 2^32 sectors', { sizeBytes });
  }
  let candidates: number[];
  if (clusterSize !== undefined) {
    const spc = clusterSize / SECTOR;
    if (!Number.isInteger(spc) || spc < 1 || spc > 64 || (spc & (spc - 1)) !== 0) {
      throw new UzError('FAT_INVALID_OPTION', 'cluster size must be a power of two from 512 to 32768 bytes', { clusterSize });
    }
    candidates = [spc];
  } else {
    const GiB = 1024 ** 3;
    const maxSpc = sizeBytes <= 8 * GiB ? 8 : sizeBytes <= 16 * GiB ? 16 : sizeBytes <= 32 * GiB ? 32 : 64;
    candidates = [];
    for (let s = maxSpc; s >= 1; s /= 2) candidates.push(s);
  }
  for (const spc of candidates) {
    const l = layoutFor(totalSectors, spc);
    if (l && l.clusterCount >= MIN_CLUSTERS) {
      if (l.clusterCount > MAX_CLUSTERS) {
        throw new UzError('FAT_TOO_LARGE', 'too many clusters for FAT32; use a larger cluster size', {
          sizeBytes,
          clusterCount: l.clusterCount,
        });
      }
      return l;
    }
  }
  throw new UzError(
    'FAT_TOO_SMALL',
    `a ${sizeBytes}-byte volume cannot hold the ${MIN_CLUSTERS} clusters FAT32 needs` +
      (clusterSize !== undefined ? ` at ${clusterSize}-byte clusters` : `; minimum is ${FAT32_MIN_SIZE_BYTES} bytes`),
    { sizeBytes, clusterSize, minClusters: MIN_CLUSTERS, minSizeBytes: FAT32_MIN_SIZE_BYTES },
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Names

/**
 * FAT compares names case-insensitively: upper-case each UTF-16 unit where that maps 1:1. Per unit, not per
 * code point: long names are UCS-2 to FAT, and Windows and Linux up-case them one 16-bit unit at a time.
 */
function foldName(s: string): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    const u = c.toUpperCase();
    out += u.length === 1 ? u : c;
  }
  return out;
}

const SHORT_CHARS = "A-Z0-9!#$%&'()\\-@^_`{}~";
const SHORT_CHAR_RE = new RegExp(`^[${SHORT_CHARS}]$`);
const EXACT_83_RE = new RegExp(`^([${SHORT_CHARS}]{1,8})(?:\\.([${SHORT_CHARS}]{1,3}))?$`);
// eslint-disable-next-line no-control-regex
const LFN_FORBIDDEN_RE = /[\u0000-\u001f"*/:<>?\\|]/;

/** 11-byte raw short name ("NAME    EXT") if `name` is already a valid uppercase 8.3 name. */
function exact83(name: string): string | null {
  const m = EXACT_83_RE.exec(name);
  if (!m) return null;
  return m[1]!.padEnd(8, ' ') + (m[2] ?? '').padEnd(3, ' ');
}

function validateComponent(name: string, path: string): void {
  const bad = (why: string): never => {
    throw new UzError('FAT_NAME_INVALID', `invalid name "${name}" in "${path}": ${why}`, { path, name });
  };
  if (name.length === 0) bad('empty path component');
  if (name.length > MAX_NAME_UNITS) bad(`longer than ${MAX_NAME_UNITS} UTF-16 units`);
  if (LFN_FORBIDDEN_RE.test(name)) bad('contains a control character or one of "*/:<>?\\|');
  if (name.endsWith('.') || name.endsWith(' ')) bad('ends with a dot or space');
}

function lfnChecksum(raw11: Buffer | Uint8Array, off = 0): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = ((((sum & 1) << 7) | (sum >> 1)) + raw11[off + i]!) & 0xff;
  return sum;
}

/** Allocates unique short names within one directory. */
class ShortNamer {
  private readonly taken: Set<string>;
  private readonly nextTail = new Map<string, number>();

  /** `taken`: raw 11-byte short names already in the directory. */
  constructor(taken: Iterable<string> = []) {
    this.taken = new Set(taken);
  }

  reserve(raw11: string): void {
    this.taken.add(raw11);
  }

  alias(name: string): string {
    const folded = foldName(name);
    // Lowercase-only differences ("config.txt" → "CONFIG.TXT") keep the plain name: boot ROMs look those up.
    const plain = exact83(folded);
    if (plain !== null && !this.taken.has(plain)) {
      this.taken.add(plain);
      return plain;
    }
    let s = folded.replace(/ /g, '').replace(/^\.+/, '');
    const dot = s.lastIndexOf('.');
    let base = dot >= 0 ? s.slice(0, dot) : s;
    let ext = dot >= 0 ? s.slice(dot + 1) : '';
    const clean = (t: string): string => Array.from(t.replace(/\./g, ''), (c) => (SHORT_CHAR_RE.test(c) ? c : '_')).join('');
    base = clean(base).slice(0, 8) || '_';
    ext = clean(ext).slice(0, 3);
    s = base + '.' + ext;
    let n = this.nextTail.get(s) ?? 1;
    for (; ; n++) {
      const tail = `~${n}`;
      if (tail.length > 7) {
        throw new UzError('FAT_NAME_INVALID', `cannot generate a unique short name for "${name}"`, { name });
      }
      const raw = (base.slice(0, 8 - tail.length) + tail).padEnd(8, ' ') + ext.padEnd(3, ' ');
      if (!this.taken.has(raw)) {
        this.taken.add(raw);
        this.nextTail.set(s, n + 1);
        return raw;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Tree

interface FileNode {
  kind: 'file';
  name: string;
  data: Uint8Array;
  raw11: string;
  lfn: boolean;
  cluster: number;
  clusters: number;
}

interface DirNode {
  kind: 'dir';
  name: string;
  path: string;
  parent: DirNode | null;
  children: Map<string, FileNode | DirNode>; // keyed by folded name
  sorted: Array<FileNode | DirNode>;
  raw11: string;
  lfn: boolean;
  cluster: number;
  clusters: number;
}

function newDir(name: string, path: string, parent: DirNode | null): DirNode {
  return { kind: 'dir', name, path, parent, children: new Map(), sorted: [], raw11: '', lfn: false, cluster: 0, clusters: 0 };
}

function buildTree(files: Fat32File[]): DirNode {
  const root = newDir('', '', null);
  for (const f of files) {
    if (typeof f.path !== 'string') {
      throw new UzError('FAT_NAME_INVALID', 'file path must be a string', { path: f.path });
    }
    const parts = f.path.replace(/^\/+/, '').split('/');
    parts.forEach((p) => validateComponent(p, f.path));
    let dir = root;
    for (let i = 0; i < parts.length - 1; i++) {
      const name = parts[i]!;
      const key = foldName(name);
      const existing = dir.children.get(key);
      if (existing === undefined) {
        const d = newDir(name, parts.slice(0, i + 1).join('/'), dir);
        dir.children.set(key, d);
        dir = d;
      } else if (existing.kind === 'dir' && existing.name === name) {
        dir = existing;
      } else {
        throw new UzError('FAT_NAME_CONFLICT', `"${f.path}" conflicts with an existing ${existing.kind} "${existing.name}" (FAT names are case-insensitive)`, {
          path: f.path,
          existing: existing.name,
        });
      }
    }
    const name = parts[parts.length - 1]!;
    const key = foldName(name);
    const existing = dir.children.get(key);
    if (existing !== undefined) {
      throw new UzError('FAT_NAME_CONFLICT', `"${f.path}" conflicts with an existing ${existing.kind} "${existing.name}" (FAT names are case-insensitive)`, {
        path: f.path,
        existing: existing.name,
      });
    }
    if (!(f.data instanceof Uint8Array)) {
      throw new UzError('FAT_INVALID_OPTION', `data for "${f.path}" must be a Buffer or Uint8Array`, { path: f.path });
    }
    const data = f.data;
    dir.children.set(key, { kind: 'file', name, data, raw11: '', lfn: false, cluster: 0, clusters: 0 });
  }
  return root;
}

const byName = (a: { name: string }, b: { name: string }): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/** Sort children, assign short names, count directory entries; returns all dirs in pre-order. */
function prepareDirs(root: DirNode): DirNode[] {
  const all: DirNode[] = [];
  const stack: DirNode[] = [root];
  while (stack.length > 0) {
    const dir = stack.pop()!;
    all.push(dir);
    dir.sorted = [...dir.children.values()].sort(byName);
    const namer = new ShortNamer();
    // Exact 8.3 names first, so generated aliases never steal them.
    for (const c of dir.sorted) {
      const raw = exact83(c.name);
      if (raw !== null) {
        c.raw11 = raw;
        c.lfn = false;
        namer.reserve(raw);
      }
    }
    for (const c of dir.sorted) {
      if (c.raw11 === '') {
        c.raw11 = namer.alias(c.name);
        c.lfn = true;
      }
    }
    for (let i = dir.sorted.length - 1; i >= 0; i--) {
      const c = dir.sorted[i]!;
      if (c.kind === 'dir') stack.push(c);
    }
  }
  return all;
}

function dirEntryCount(dir: DirNode, isRoot: boolean, hasLabel: boolean): number {
  let n = isRoot ? (hasLabel ? 1 : 0) : 2;
  for (const c of dir.sorted) n += 1 + (c.lfn ? lfnEntryCount(c.name) : 0);
  return n;
}

// ---------------------------------------------------------------------------------------------------------------
// Timestamps

interface FatTime {
  date: number;
  time: number;
  tenth: number;
}

function fatTime(d: Date): FatTime {
  const ms = d.getTime();
  if (!Number.isFinite(ms)) throw new UzError('FAT_INVALID_OPTION', 'mtime is not a valid date', { mtime: String(d) });
  const min = Date.UTC(1980, 0, 1);
  const max = Date.UTC(2107, 11, 31, 23, 59, 59, 990);
  const t = new Date(Math.min(Math.max(ms, min), max));
  const sec = t.getUTCSeconds();
  return {
    date: ((t.getUTCFullYear() - 1980) << 9) | ((t.getUTCMonth() + 1) << 5) | t.getUTCDate(),
    time: (t.getUTCHours() << 11) | (t.getUTCMinutes() << 5) | (sec >> 1),
    tenth: (sec & 1) * 100 + Math.floor(t.getUTCMilliseconds() / 10),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Writer

function writeShortEntry(buf: Buffer, off: number, raw11: string, attr: number, cluster: number, size: number, ts: FatTime): void {
  buf.write(raw11, off, 11, 'latin1');
  buf[off + 11] = attr;
  buf[off + 12] = 0;
  buf[off + 13] = ts.tenth;
  buf.writeUInt16LE(ts.time, off + 14);
  buf.writeUInt16LE(ts.date, off + 16);
  buf.writeUInt16LE(ts.date, off + 18);
  buf.writeUInt16LE((cluster >>> 16) & 0xffff, off + 20);
  buf.writeUInt16LE(ts.time, off + 22);
  buf.writeUInt16LE(ts.date, off + 24);
  buf.writeUInt16LE(cluster & 0xffff, off + 26);
  buf.writeUInt32LE(size, off + 28);
}

const LFN_OFFSETS = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/** How many VFAT long-name entries `name` needs (13 UTF-16 units each). */
function lfnEntryCount(name: string): number {
  return Math.ceil(name.length / 13);
}

/**
 * Write the LFN entries for `name`, highest ordinal first, one at each of `offsets` (directory order; a run of
 * free slots may span clusters that are not adjacent). Every byte of each entry is written.
 */
function writeLfnEntries(buf: Buffer, offsets: readonly number[], name: string, raw11: string): void {
  const checksum = lfnChecksum(Buffer.from(raw11, 'latin1'));
  const n = offsets.length;
  for (let k = n; k >= 1; k--) {
    const off = offsets[n - k]!;
    buf[off] = k | (k === n ? 0x40 : 0);
    buf[off + 11] = ATTR_LFN;
    buf[off + 12] = 0;
    buf[off + 13] = checksum;
    buf.writeUInt16LE(0, off + 26);
    for (let j = 0; j < 13; j++) {
      const idx = (k - 1) * 13 + j;
      const v = idx < name.length ? name.charCodeAt(idx) : idx === name.length ? 0x0000 : 0xffff;
      buf.writeUInt16LE(v, off + LFN_OFFSETS[j]!);
    }
  }
}

function normalizeLabel(label: string): string {
  const l = label.toUpperCase().replace(/ +$/, '');
  if (l.length > 11 || !Array.from(l).every((c) => c === ' ' || SHORT_CHAR_RE.test(c)) || l.startsWith(' ')) {
    throw new UzError('FAT_LABEL_INVALID', `volume label "${label}" must be ≤ 11 characters from A-Z 0-9 and ${"!#$%&'()-@^_`{}~"}`, {
      label,
    });
  }
  return l;
}

function checkFileSize(path: string, size: number): void {
  if (size > 0xffffffff) throw new UzError('FAT_FILE_TOO_LARGE', `"${path}" exceeds FAT's 4 GiB file limit`, { path, size });
}

function checkU32(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new UzError('FAT_INVALID_OPTION', `${name} must be a 32-bit unsigned integer`, { [name]: v });
  }
}

function writeBootSector(buf: Buffer, off: number, l: Fat32Layout, o: { hiddenSectors: number; volumeId: number; label: string }): void {
  buf[off + 0] = 0xeb;
  buf[off + 1] = 0x58;
  buf[off + 2] = 0x90;
  buf.write('MSWIN4.1', off + 3, 8, 'latin1');
  buf.writeUInt16LE(SECTOR, off + 11);
  buf[off + 13] = l.sectorsPerCluster;
  buf.writeUInt16LE(l.reservedSectors, off + 14);
  buf[off + 16] = l.numFats;
  buf.writeUInt16LE(0, off + 17); // root entries (FAT32: 0)
  buf.writeUInt16LE(0, off + 19); // total sectors 16
  buf[off + 21] = MEDIA;
  buf.writeUInt16LE(0, off + 22); // FAT size 16
  buf.writeUInt16LE(32, off + 24); // sectors per track (32 divides every size that is a multiple of 16 KiB)
  buf.writeUInt16LE(64, off + 26); // heads
  buf.writeUInt32LE(o.hiddenSectors, off + 28);
  buf.writeUInt32LE(l.totalSectors, off + 32);
  buf.writeUInt32LE(l.fatSectors, off + 36);
  buf.writeUInt16LE(0, off + 40); // ext flags: mirrored FATs
  buf.writeUInt16LE(0, off + 42); // version 0.0
  buf.writeUInt32LE(ROOT_CLUSTER, off + 44);
  buf.writeUInt16LE(FSINFO_SECTOR, off + 48);
  buf.writeUInt16LE(BACKUP_BOOT_SECTOR, off + 50);
  buf[off + 64] = 0x80; // drive number
  buf[off + 65] = 0; // reserved / dirty flags: clean
  buf[off + 66] = 0x29; // extended boot signature
  buf.writeUInt32LE(o.volumeId, off + 67);
  buf.write((o.label || 'NO NAME').padEnd(11, ' '), off + 71, 11, 'latin1');
  buf.write('FAT32   ', off + 82, 8, 'latin1');
  // Not bootable: int 0x18 ("no bootable device"), then halt forever.
  buf[off + 90] = 0xcd;
  buf[off + 91] = 0x18;
  buf[off + 92] = 0xf4;
  buf[off + 93] = 0xeb;
  buf[off + 94] = 0xfd;
  buf[off + 510] = 0x55;
  buf[off + 511] = 0xaa;
}

function writeFsInfo(buf: Buffer, off: number, freeCount: number, nextFree: number): void {
  buf.writeUInt32LE(FSINFO_LEAD_SIG, off);
  buf.writeUInt32LE(FSINFO_STRUC_SIG, off + 484);
  buf.writeUInt32LE(freeCount, off + FSINFO_FREE_COUNT);
  buf.writeUInt32LE(nextFree, off + FSINFO_NEXT_FREE);
  buf.writeUInt32LE(0xaa550000, off + 508);
}

/** Build a complete FAT32 volume image. */
export function buildFat32(opts: Fat32Options): Buffer {
  const hiddenSectors = opts.hiddenSectors ?? 0;
  checkU32('volumeId', opts.volumeId);
  checkU32('hiddenSectors', hiddenSectors);
  const label = normalizeLabel(opts.volumeLabel);
  const ts = fatTime(opts.mtime);
  const l = fat32Layout(opts.sizeBytes, opts.clusterSize);
  const cs = l.clusterSize;

  const root = buildTree(opts.files);
  const dirs = prepareDirs(root);

  // Size everything before touching memory.
  let needed = 0;
  for (const d of dirs) {
    const entries = dirEntryCount(d, d === root, label !== '');
    if (entries > MAX_DIR_ENTRIES) {
      throw new UzError('FAT_DIR_FULL', `directory "/${d.path}" needs ${entries} entries; FAT allows ${MAX_DIR_ENTRIES}`, {
        path: d.path,
        entries,
      });
    }
    d.clusters = Math.max(1, Math.ceil((entries * DIR_ENTRY) / cs));
    needed += d.clusters;
    for (const c of d.sorted) {
      if (c.kind === 'file') {
        checkFileSize(`${d.path ? d.path + '/' : ''}${c.name}`, c.data.length);
        c.clusters = Math.ceil(c.data.length / cs);
        needed += c.clusters;
      }
    }
  }
  if (needed > l.clusterCount) {
    throw new UzError('FAT_FULL', `files need ${needed} clusters of ${cs} bytes but the volume has ${l.clusterCount}`, {
      needed,
      available: l.clusterCount,
      neededBytes: needed * cs,
      availableBytes: l.clusterCount * cs,
      clusterSize: cs,
    });
  }

  // Allocate depth-first in name order: a directory, then its children.
  let next = ROOT_CLUSTER;
  const alloc = (dir: DirNode): void => {
    dir.cluster = next;
    next += dir.clusters;
    for (const c of dir.sorted) {
      if (c.kind === 'file') {
        c.cluster = c.clusters > 0 ? next : 0;
        next += c.clusters;
      } else {
        alloc(c);
      }
    }
  };
  // Recursion depth equals path depth; paths are short in practice.
  alloc(root);

  const buf = Buffer.alloc(l.totalSectors * SECTOR);
  const bootOpts = { hiddenSectors, volumeId: opts.volumeId, label };
  writeBootSector(buf, 0, l, bootOpts);
  writeBootSector(buf, BACKUP_BOOT_SECTOR * SECTOR, l, bootOpts);
  const freeCount = l.clusterCount - needed;
  const nextFree = freeCount > 0 ? ROOT_CLUSTER + needed : FSINFO_UNKNOWN;
  writeFsInfo(buf, FSINFO_SECTOR * SECTOR, freeCount, nextFree);
  writeFsInfo(buf, (BACKUP_BOOT_SECTOR + FSINFO_SECTOR) * SECTOR, freeCount, nextFree);

  const fatOff = l.reservedSectors * SECTOR;
  buf.writeUInt32LE(0x0fffff00 | MEDIA, fatOff);
  buf.writeUInt32LE(EOC, fatOff + 4);
  const chain = (start: number, count: number): void => {
    for (let i = 0; i < count - 1; i++) buf.writeUInt32LE(start + i + 1, fatOff + (start + i) * 4);
    if (count > 0) buf.writeUInt32LE(EOC, fatOff + (start + count - 1) * 4);
  };
  const clusterOff = (c: number): number => (l.dataStartSector + (c - ROOT_CLUSTER) * l.sectorsPerCluster) * SECTOR;

  for (const d of dirs) {
    chain(d.cluster, d.clusters);
    let off = clusterOff(d.cluster);
    if (d === root) {
      if (label !== '') {
        writeShortEntry(buf, off, label.padEnd(11, ' '), ATTR_VOLUME_ID, 0, 0, ts);
        off += DIR_ENTRY;
      }
    } else {
      const parentCluster = d.parent === null || d.parent === root ? 0 : d.parent.cluster;
      writeShortEntry(buf, off, '.'.padEnd(11, ' '), ATTR_DIRECTORY, d.cluster, 0, ts);
      writeShortEntry(buf, off + DIR_ENTRY, '..'.padEnd(11, ' '), ATTR_DIRECTORY, parentCluster, 0, ts);
      off += 2 * DIR_ENTRY;
    }
    for (const c of d.sorted) {
      if (c.lfn) {
        const n = lfnEntryCount(c.name);
        writeLfnEntries(buf, Array.from({ length: n }, (_, i) => off + i * DIR_ENTRY), c.name, c.raw11);
        off += n * DIR_ENTRY;
      }
      if (c.kind === 'dir') {
        writeShortEntry(buf, off, c.raw11, ATTR_DIRECTORY, c.cluster, 0, ts);
      } else {
        writeShortEntry(buf, off, c.raw11, ATTR_ARCHIVE, c.cluster, c.data.length, ts);
        if (c.clusters > 0) {
          chain(c.cluster, c.clusters);
          buf.set(c.data, clusterOff(c.cluster));
        }
      }
      off += DIR_ENTRY;
    }
  }
  const fatBytes = l.fatSectors * SECTOR;
  for (let i = 1; i < l.numFats; i++) buf.copy(buf, fatOff + i * fatBytes, fatOff, fatOff + fatBytes);
  return buf;
}

// ---------------------------------------------------------------------------------------------------------------
// Reader

interface RawEntry {
  /** The long name when a complete LFN sequence precedes the short entry, else the short name. */
  name: string;
  /** The short name as displayed ("CONFIG.TXT", lower-cased per the NT case flags). */
  short: string;
  attr: number;
  firstCluster: number;
  size: number;
  /** Byte offset of the short entry within the image. */
  entryOffset: number;
  /** Byte offsets of every slot the entry occupies: its LFN entries, then the short entry. */
  slots: number[];
}

interface DirListing {
  /** The directory's cluster chain. */
  clusters: number[];
  /** Entries without '.', '..' and volume labels. */
  entries: RawEntry[];
  /** The first volume-label entry, if any. */
  label: string | null;
  /** Raw 11-byte names of every short entry in use (labels and dot entries included). */
  shortNames: Set<string>;
}

interface Volume {
  img: Buffer;
  bytesPerSector: number;
  clusterSize: number;
  clusterCount: number;
  fatOffset: number;
  fatBytes: number;
  /** FAT copies to write: all of them when mirrored, else the active one (BPB_ExtFlags). */
  fatCopies: number[];
  /** FAT copy to read. */
  readFat: number;
  dataOffset: number;
  rootCluster: number;
  volumeId: number;
  bsLabel: string;
  /**
   * The FSInfo sector BPB_FSInfo names, when it carries valid signatures. Only that copy is maintained: the spec
   * says the copy in the backup boot area is not kept up to date.
   */
  fsInfoOffset: number | null;
}

function corrupt(message: string, context: Record<string, unknown> = {}): never {
  throw new UzError('FAT_CORRUPT', message, context);
}

function openVolume(image: Buffer | Uint8Array): Volume {
  const img = Buffer.isBuffer(image) ? image : Buffer.from(image.buffer, image.byteOffset, image.byteLength);
  const invalid = (why: string, ctx: Record<string, unknown> = {}): never => {
    throw new UzError('FAT_INVALID', `not a FAT32 volume: ${why}`, ctx);
  };
  if (img.length < SECTOR) invalid('image shorter than one sector', { length: img.length });
  if (img[510] !== 0x55 || img[511] !== 0xaa) invalid('missing 0x55AA boot signature');
  const bps = img.readUInt16LE(11);
  const spc = img[13]!;
  const reserved = img.readUInt16LE(14);
  const numFats = img[16]!;
  const rootEntries = img.readUInt16LE(17);
  const tot16 = img.readUInt16LE(19);
  const fat16 = img.readUInt16LE(22);
  const tot32 = img.readUInt32LE(32);
  const fat32 = img.readUInt32LE(36);
  const extFlags = img.readUInt16LE(40);
  if (![512, 1024, 2048, 4096].includes(bps)) invalid('bad bytes per sector', { bytesPerSector: bps });
  if (spc === 0 || (spc & (spc - 1)) !== 0) invalid('bad sectors per cluster', { sectorsPerCluster: spc });
  if (reserved === 0 || numFats === 0) invalid('bad reserved sector or FAT count', { reserved, numFats });
  if (fat16 !== 0 || rootEntries !== 0 || fat32 === 0) invalid('FAT12/16 BPB (not FAT32)', { fat16, rootEntries });
  const totalSectors = tot16 !== 0 ? tot16 : tot32;
  if (img.length < totalSectors * bps) {
    invalid('image is shorter than the volume', { imageBytes: img.length, volumeBytes: totalSectors * bps });
  }
  const dataSector = reserved + numFats * fat32;
  if (dataSector >= totalSectors) invalid('FATs extend past the end of the volume');
  const clusterCount = Math.min(Math.floor((totalSectors - dataSector) / spc), Math.floor((fat32 * bps) / 4) - 2);
  // ExtFlags bit 7 set: mirroring is off and only the FAT numbered in bits 0-3 is in use.
  const mirrored = (extFlags & 0x80) === 0;
  const active = extFlags & 0x0f;
  if (!mirrored && active >= numFats) invalid('active FAT index out of range', { active, numFats });
  const fsInfoSector = img.readUInt16LE(48);
  let fsInfoOffset: number | null = null;
  if (fsInfoSector > 0 && fsInfoSector < reserved) {
    const o = fsInfoSector * bps;
    if (img.readUInt32LE(o) === FSINFO_LEAD_SIG && img.readUInt32LE(o + 484) === FSINFO_STRUC_SIG) fsInfoOffset = o;
  }
  return {
    img,
    bytesPerSector: bps,
    clusterSize: spc * bps,
    clusterCount,
    fatOffset: reserved * bps,
    fatBytes: fat32 * bps,
    fatCopies: mirrored ? Array.from({ length: numFats }, (_, i) => i) : [active],
    readFat: mirrored ? 0 : active,
    dataOffset: dataSector * bps,
    rootCluster: img.readUInt32LE(44),
    volumeId: img.readUInt32LE(67),
    bsLabel: img.toString('latin1', 71, 82).replace(/ +$/, ''),
    fsInfoOffset,
  };
}

function fatGet(v: Volume, c: number): number {
  return v.img.readUInt32LE(v.fatOffset + v.readFat * v.fatBytes + c * 4) & FAT_MASK;
}

/** Set a FAT entry in every FAT copy in use, keeping the entry's reserved top 4 bits. */
function fatSet(v: Volume, c: number, value: number): void {
  for (const i of v.fatCopies) {
    const off = v.fatOffset + i * v.fatBytes + c * 4;
    v.img.writeUInt32LE(((v.img.readUInt32LE(off) & 0xf0000000) | (value & FAT_MASK)) >>> 0, off);
  }
}

function validCluster(v: Volume, c: number): boolean {
  return c >= 2 && c <= v.clusterCount + 1;
}

function clusterChain(v: Volume, first: number): number[] {
  const out: number[] = [];
  if (first === 0) return out;
  let c = first;
  for (;;) {
    if (!validCluster(v, c)) corrupt(`cluster chain points at invalid cluster ${c}`, { first, cluster: c });
    out.push(c);
    if (out.length > v.clusterCount) corrupt('cluster chain loops', { first });
    const nxt = fatGet(v, c);
    if (nxt >= 0x0ffffff8) return out;
    c = nxt;
  }
}

function clusterOffset(v: Volume, c: number): number {
  return v.dataOffset + (c - 2) * v.clusterSize;
}

function shortDisplayName(b: Buffer, off: number): string {
  const raw = Buffer.from(b.subarray(off, off + 11));
  if (raw[0] === 0x05) raw[0] = 0xe5;
  const nt = b[off + 12]!;
  let base = raw.toString('latin1', 0, 8).replace(/ +$/, '');
  let ext = raw.toString('latin1', 8, 11).replace(/ +$/, '');
  if (nt & 0x08) base = base.toLowerCase();
  if (nt & 0x10) ext = ext.toLowerCase();
  return ext ? `${base}.${ext}` : base;
}

/** Read the directory whose chain starts at `cluster`, up to its end marker. */
function readDir(v: Volume, cluster: number): DirListing {
  const entries: RawEntry[] = [];
  const shortNames = new Set<string>();
  let label: string | null = null;
  let lfnParts: string[] = [];
  let lfnSlots: number[] = [];
  let lfnSum = -1;
  let lfnNext = 0; // next ordinal we expect (counting down), 0 = no sequence in progress
  const b = v.img;
  const clusters = clusterChain(v, cluster);
  const done = (): DirListing => ({ clusters, entries, label, shortNames });
  for (const c of clusters) {
    const base = clusterOffset(v, c);
    for (let off = base; off < base + v.clusterSize; off += DIR_ENTRY) {
      const first = b[off]!;
      if (first === 0x00) return done();
      if (first === 0xe5) {
        lfnNext = 0;
        continue;
      }
      const attr = b[off + 11]!;
      if ((attr & 0x3f) === ATTR_LFN) {
        const ord = first & 0x3f;
        if (first & 0x40) {
          lfnParts = new Array<string>(ord).fill('');
          lfnSlots = [];
          lfnSum = b[off + 13]!;
          lfnNext = ord;
        }
        if (lfnNext === 0 || ord !== lfnNext || ord === 0 || b[off + 13] !== lfnSum) {
          lfnNext = 0;
          continue;
        }
        let part = '';
        for (const o of LFN_OFFSETS) {
          const u = b.readUInt16LE(off + o);
          if (u === 0x0000) break;
          part += String.fromCharCode(u);
        }
        lfnParts[ord - 1] = part;
        lfnSlots.push(off);
        lfnNext = ord - 1 === 0 ? -1 : ord - 1; // -1: complete sequence awaiting its short entry
        continue;
      }
      const complete = lfnNext === -1 && lfnChecksum(b, off) === lfnSum;
      lfnNext = 0;
      shortNames.add(b.toString('latin1', off, off + 11));
      if (attr & ATTR_VOLUME_ID) {
        if (label === null) label = b.toString('latin1', off, off + 11).replace(/ +$/, '');
        continue;
      }
      const short = shortDisplayName(b, off);
      if (short === '.' || short === '..') continue;
      entries.push({
        name: complete ? lfnParts.join('') : short,
        short,
        attr,
        firstCluster: ((b.readUInt16LE(off + 20) << 16) | b.readUInt16LE(off + 26)) >>> 0,
        size: b.readUInt32LE(off + 28),
        entryOffset: off,
        slots: complete ? [...lfnSlots, off] : [off],
      });
    }
  }
  return done();
}

function splitPath(path: string): string[] {
  return path.split('/').filter((p) => p !== '');
}

/** The entry called `name` (case-insensitively, by long name first, then by short name). */
function findEntry(entries: RawEntry[], name: string): RawEntry | undefined {
  const want = foldName(name);
  return entries.find((e) => foldName(e.name) === want) ?? entries.find((e) => foldName(e.short) === want);
}

/** First cluster of the existing directory that holds the last of `parts`. */
function parentDir(v: Volume, parts: string[], path: string): number {
  let cluster = v.rootCluster;
  for (let i = 0; i < parts.length - 1; i++) {
    const dir = parts.slice(0, i + 1).join('/');
    const e = findEntry(readDir(v, cluster).entries, parts[i]!);
    if (e === undefined) throw new UzError('FAT_NOT_FOUND', `directory "${dir}" not found`, { path });
    if (!(e.attr & ATTR_DIRECTORY) || e.firstCluster === 0) throw new UzError('FAT_NOT_FOUND', `"${dir}" is not a directory`, { path });
    cluster = e.firstCluster;
  }
  return cluster;
}

function lookup(v: Volume, path: string): RawEntry {
  const parts = splitPath(path);
  if (parts.length === 0) throw new UzError('FAT_IS_DIR', `"${path}" is the root directory`, { path });
  const found = findEntry(readDir(v, parentDir(v, parts, path)).entries, parts[parts.length - 1]!);
  if (found === undefined) throw new UzError('FAT_NOT_FOUND', `"${path}" not found`, { path });
  return found;
}

function readChain(v: Volume, e: RawEntry, path: string): Buffer {
  const chain = clusterChain(v, e.firstCluster);
  if (chain.length * v.clusterSize < e.size) {
    corrupt(`"${path}" is ${e.size} bytes but its cluster chain holds only ${chain.length * v.clusterSize}`, { path });
  }
  const out = Buffer.alloc(e.size);
  let pos = 0;
  for (let i = 0; i < chain.length && pos < e.size; ) {
    // Copy runs of consecutive clusters in one go.
    let j = i + 1;
    while (j < chain.length && chain[j] === chain[j - 1]! + 1) j++;
    const start = clusterOffset(v, chain[i]!);
    const n = Math.min((j - i) * v.clusterSize, e.size - pos);
    v.img.copy(out, pos, start, start + n);
    pos += n;
    i = j;
  }
  return out;
}

/** Open a FAT32 image (a whole volume, e.g. a partition slice of a disk image) for reading. */
export function readFat32(image: Buffer | Uint8Array): Fat32Reader {
  const v = openVolume(image);
  const rootLabel = readDir(v, v.rootCluster).label;
  const label = rootLabel ?? (v.bsLabel === 'NO NAME' ? '' : v.bsLabel);
  return {
    label,
    volumeId: v.volumeId,
    clusterSize: v.clusterSize,
    list(): Fat32Entry[] {
      const out: Fat32Entry[] = [];
      const walk = (cluster: number, prefix: string, depth: number): void => {
        if (depth > 256) corrupt('directory tree too deep (loop?)', { prefix });
        for (const e of readDir(v, cluster).entries) {
          const path = prefix + e.name;
          const isDir = (e.attr & ATTR_DIRECTORY) !== 0;
          out.push({ path, size: isDir ? 0 : e.size, isDir });
          if (isDir) {
            if (e.firstCluster === 0) corrupt(`directory "${path}" has no cluster`, { path });
            walk(e.firstCluster, path + '/', depth + 1);
          }
        }
      };
      walk(v.rootCluster, '', 0);
      return out;
    },
    readFile(path: string): Buffer {
      const e = lookup(v, path);
      if (e.attr & ATTR_DIRECTORY) throw new UzError('FAT_IS_DIR', `"${path}" is a directory`, { path });
      return readChain(v, e, path);
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// In-place changes to an existing volume

/** Write `data` across `clusters` in order; every byte of those clusters beyond the data is zeroed. */
function writeClusters(v: Volume, clusters: readonly number[], data: Uint8Array): void {
  clusters.forEach((c, i) => {
    const off = clusterOffset(v, c);
    const from = i * v.clusterSize;
    const n = Math.max(0, Math.min(v.clusterSize, data.length - from));
    if (n > 0) v.img.set(data.subarray(from, from + n), off);
    v.img.fill(0, off + n, off + v.clusterSize);
  });
}

/** Chain `clusters` in the FAT in this order, the last one marked end-of-chain. */
function linkClusters(v: Volume, clusters: readonly number[]): void {
  clusters.forEach((c, i) => fatSet(v, c, i + 1 < clusters.length ? clusters[i + 1]! : EOC));
}

/** FSInfo's next-free hint, or null when there is no FSInfo or the hint is unknown or out of range. */
function fsInfoHint(v: Volume): number | null {
  if (v.fsInfoOffset === null) return null;
  const hint = v.img.readUInt32LE(v.fsInfoOffset + FSINFO_NEXT_FREE);
  return validCluster(v, hint) ? hint : null;
}

/**
 * Add `delta` to FSInfo's free-cluster count and, when `nextHint` is given, set the next-free hint. A count
 * that leaves 0..clusterCount becomes "unknown": an inconsistent count is worse than one the next fsck or
 * driver recomputes (the spec asks readers to range-check it anyway).
 */
function adjustFsInfo(v: Volume, delta: number, nextHint: number | null): void {
  if (v.fsInfoOffset === null) return;
  const o = v.fsInfoOffset;
  const free = v.img.readUInt32LE(o + FSINFO_FREE_COUNT);
  if (free !== FSINFO_UNKNOWN) {
    const nf = free + delta;
    v.img.writeUInt32LE(nf >= 0 && nf <= v.clusterCount ? nf : FSINFO_UNKNOWN, o + FSINFO_FREE_COUNT);
  }
  if (nextHint !== null) v.img.writeUInt32LE(validCluster(v, nextHint) ? nextHint : FSINFO_UNKNOWN, o + FSINFO_NEXT_FREE);
}

/** Take `n` free clusters (FAT entry 0), searching from the FSInfo hint on and wrapping around. */
function allocateClusters(v: Volume, n: number): number[] {
  if (n === 0) return [];
  const start = fsInfoHint(v) ?? ROOT_CLUSTER;
  const out: number[] = [];
  for (let k = 0; k < v.clusterCount && out.length < n; k++) {
    const c = ROOT_CLUSTER + ((start - ROOT_CLUSTER + k) % v.clusterCount);
    if (fatGet(v, c) === 0) out.push(c);
  }
  if (out.length < n) {
    throw new UzError('FAT_FULL', `the volume has ${out.length} free clusters of ${v.clusterSize} bytes; ${n} are needed`, {
      needed: n,
      available: out.length,
      clusterSize: v.clusterSize,
    });
  }
  return out;
}

/**
 * Replace an existing file's content in place. The new data must fit in the clusters the file already owns;
 * surplus clusters are released (and zeroed), the tail of the last used cluster is zeroed, the directory entry
 * size (and, if given, timestamps) and FSInfo free count are updated. Throws FAT_NO_ROOM otherwise.
 */
export function overwriteFat32File(image: Buffer, path: string, data: Buffer | Uint8Array, opts: { mtime?: Date } = {}): void {
  const v = openVolume(image);
  const e = lookup(v, path);
  if (e.attr & ATTR_DIRECTORY) throw new UzError('FAT_IS_DIR', `"${path}" is a directory`, { path });
  const chain = clusterChain(v, e.firstCluster);
  const need = Math.ceil(data.length / v.clusterSize);
  if (need > chain.length) {
    throw new UzError('FAT_NO_ROOM', `"${path}" owns ${chain.length} clusters; ${data.length} bytes need ${need}`, {
      path,
      neededClusters: need,
      availableClusters: chain.length,
      neededBytes: data.length,
      availableBytes: chain.length * v.clusterSize,
    });
  }
  const img = v.img;
  writeClusters(v, chain, data);
  if (need < chain.length) {
    const surplus = chain.slice(need);
    if (need > 0) fatSet(v, chain[need - 1]!, EOC);
    for (const c of surplus) fatSet(v, c, 0);
    adjustFsInfo(v, surplus.length, fsInfoHint(v) === null ? surplus[0]! : null);
  }
  const eo = e.entryOffset;
  const first = need === 0 ? 0 : e.firstCluster;
  img.writeUInt16LE((first >>> 16) & 0xffff, eo + 20);
  img.writeUInt16LE(first & 0xffff, eo + 26);
  img.writeUInt32LE(data.length, eo + 28);
  if (opts.mtime !== undefined) {
    const ts = fatTime(opts.mtime);
    img.writeUInt16LE(ts.time, eo + 22);
    img.writeUInt16LE(ts.date, eo + 24);
    img.writeUInt16LE(ts.date, eo + 18);
  }
}

export interface AddFileResult {
  /** True when a file of that name existed and was replaced. */
  replaced: boolean;
  /** 11-byte short name used (e.g. "UZ-DEV~1JSO"). */
  shortName: string;
  clusters: number;
}

/**
 * Write `data` as `path` into the FAT32 volume held in `image`, in place, the way a FAT driver would: every
 * other file keeps its clusters, entries and timestamps (a bootloader or a person may have changed the volume
 * since it was built, so rebuilding it would be wrong). Parent directories must exist.
 *
 *   - A file of the same name (case-insensitively, by long or short name) is deleted first: its content is
 *     zeroed (it may hold a Wi-Fi key or token), its chain freed, its entries marked 0xE5. FAT_IS_DIR if it is
 *     a directory.
 *   - The name gets VFAT long-name entries plus a unique short alias (NAME~N.EXT) unless it already is an
 *     upper-case 8.3 name that is free.
 *   - The entries take the first run of free slots; the directory grows by zeroed clusters when there is none,
 *     up to FAT's 65536 entries (FAT_DIR_FULL).
 *   - Data clusters are taken from the FSInfo hint on (FAT_FULL when too few are free) and chained in every FAT
 *     copy in use; the slack of the last cluster is zeroed; FSInfo's free count and hint are updated.
 */
export function addFat32File(image: Buffer, path: string, data: Buffer | Uint8Array, opts: { mtime?: Date } = {}): AddFileResult {
  const v = openVolume(image);
  const img = v.img;
  const parts = splitPath(path);
  if (parts.length === 0) throw new UzError('FAT_NAME_INVALID', 'empty path', { path });
  parts.forEach((p) => validateComponent(p, path));
  checkFileSize(path, data.length);
  const ts = fatTime(opts.mtime ?? new Date());
  const dirCluster = parentDir(v, parts, path);
  const name = parts[parts.length - 1]!;
  let dir = readDir(v, dirCluster);

  let freed = 0;
  const old = findEntry(dir.entries, name);
  if (old !== undefined) {
    if (old.attr & ATTR_DIRECTORY) throw new UzError('FAT_IS_DIR', `"${path}" is a directory`, { path });
    const oldClusters = clusterChain(v, old.firstCluster);
    writeClusters(v, oldClusters, Buffer.alloc(0));
    for (const c of oldClusters) fatSet(v, c, 0);
    freed = oldClusters.length;
    for (const off of old.slots) img[off] = 0xe5;
    dir = readDir(v, dirCluster);
  }

  const exact = exact83(name);
  const lfn = exact === null || dir.shortNames.has(exact);
  const raw11 = lfn ? new ShortNamer(dir.shortNames).alias(name) : exact;
  const lfnCount = lfn ? lfnEntryCount(name) : 0;
  const need = lfnCount + 1;

  // First run of `need` free slots (deleted 0xE5, or the 0x00 end-of-directory tail).
  const slots: number[] = [];
  for (const c of dir.clusters) for (let o = 0; o < v.clusterSize; o += DIR_ENTRY) slots.push(clusterOffset(v, c) + o);
  let runStart = -1;
  let run = 0;
  let tailFrom = -1;
  for (let i = 0; i < slots.length; i++) {
    const first = img[slots[i]!]!;
    if (first === 0x00) {
      // Everything from the end marker on is free.
      tailFrom = i;
      if (run === 0) runStart = i;
      run = Math.min(need, run + (slots.length - i));
      break;
    }
    if (first === 0xe5) {
      if (run === 0) runStart = i;
      if (++run === need) break;
    } else {
      run = 0;
    }
  }
  let extra = 0;
  if (run < need) {
    // Grow the directory: a run still open here is the directory's tail (free slots up to the last one) and
    // continues into the new zeroed clusters (0x00 = end of directory). Otherwise the last slot is in use (so
    // there is no end marker) and the run starts in the first new cluster.
    if (run === 0) runStart = slots.length;
    const perCluster = v.clusterSize / DIR_ENTRY;
    extra = Math.ceil((need - run) / perCluster);
    if (slots.length + extra * perCluster > MAX_DIR_ENTRIES) {
      throw new UzError('FAT_DIR_FULL', `directory of "${path}" cannot grow beyond ${MAX_DIR_ENTRIES} entries`, { path });
    }
  }
  const taken = allocateClusters(v, extra + Math.ceil(data.length / v.clusterSize));
  const dirNew = taken.slice(0, extra);
  const fileClusters = taken.slice(extra);

  if (dirNew.length > 0) {
    writeClusters(v, dirNew, Buffer.alloc(0));
    linkClusters(v, [dir.clusters[dir.clusters.length - 1]!, ...dirNew]);
    for (const c of dirNew) for (let o = 0; o < v.clusterSize; o += DIR_ENTRY) slots.push(clusterOffset(v, c) + o);
  }
  linkClusters(v, fileClusters);
  writeClusters(v, fileClusters, data);

  // Slots past the end marker must read as zero once the marker moves behind our entries.
  if (tailFrom >= 0) for (let i = tailFrom; i < slots.length; i++) img.fill(0, slots[i]!, slots[i]! + DIR_ENTRY);
  const entrySlots = slots.slice(runStart, runStart + need);
  writeLfnEntries(img, entrySlots.slice(0, lfnCount), name, raw11);
  writeShortEntry(img, entrySlots[lfnCount]!, raw11, ATTR_ARCHIVE, fileClusters[0] ?? 0, data.length, ts);

  const last = taken[taken.length - 1];
  adjustFsInfo(v, freed - taken.length, last === undefined ? null : last + 1 <= v.clusterCount + 1 ? last + 1 : ROOT_CLUSTER);
  return { replaced: old !== undefined, shortName: raw11, clusters: fileClusters.length };
}
