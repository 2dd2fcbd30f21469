/**
 * Adds (or replaces) one file in an existing FAT32 volume, in place: the rest of the volume is left as it
 * is — other files keep their clusters, directory entries, timestamps and whatever a person or a bootloader
 * wrote there. This is what provisioning needs: p1 of an image may have been touched since the build
 * (U-Boot rewrites uzboot.env, people open the card on their computer), so rebuilding it would be wrong.
 *
 * What it does, like a FAT driver would:
 *   - walks the path from the root directory (existing directories only);
 *   - if the name exists (case-insensitively, by long or short name) the old file is deleted first
 *     (its entries marked 0xE5, its cluster chain freed);
 *   - writes VFAT long-name entries plus a unique short alias (NAME~N.EXT) unless the name already is an
 *     upper-case 8.3 name;
 *   - takes the first run of free directory slots, growing the directory by a zeroed cluster if needed;
 *   - allocates free clusters (from the FSInfo hint on), chains them in every FAT copy (only the active
 *     one when mirroring is off), zeroes the slack of the last cluster, updates FSInfo's free count/hint.
 */
import { UzError } from '../../lib/errors.js';

const DIR_ENTRY = 32;
const ATTR_VOLUME_ID = 0x08;
const ATTR_DIRECTORY = 0x10;
const ATTR_ARCHIVE = 0x20;
const ATTR_LFN = 0x0f;
const EOC = 0x0fffffff;
const FAT_MASK = 0x0fffffff;
const MAX_DIR_ENTRIES = 65536;
const LFN_OFFSETS = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
const SHORT_CHARS = "A-Z0-9!#$%&'()\\-@^_`{}~";
const SHORT_CHAR_RE = new RegExp(`^[${SHORT_CHARS}]$`);
const EXACT_83_RE = new RegExp(`^([${SHORT_CHARS}]{1,8})(?:\\.([${SHORT_CHARS}]{1,3}))?$`);
// eslint-disable-next-line no-control-regex
const LFN_FORBIDDEN_RE = /[\u0000-\u001f"*/:<>?\\|]/;

interface Vol {
  img: Buffer;
  bps: number;
  clusterSize: number;
  clusterCount: number;
  fatOffset: number;
  fatBytes: number;
  /** Indices of the FAT copies to write (all when mirrored, else the active one). */
  fatCopies: number[];
  /** FAT copy to read. */
  readFat: number;
  dataOffset: number;
  rootCluster: number;
  fsInfoOffset: number | null;
}

function invalid(why: string, ctx: Record<string, unknown> = {}): never {
  throw new UzError('FAT_INVALID', `not a FAT32 volume: ${why}`, ctx);
}

function corrupt(why: string, ctx: Record<string, unknown> = {}): never {
  throw new UzError('FAT_CORRUPT', why, ctx);
}

function open(img: Buffer): Vol {
  if (img.length < 512 || img[510] !== 0x55 || img[511] !== 0xaa) invalid('missing boot sector signature');
  const bps = img.readUInt16LE(11);
  const spc = img[13]!;
  const reserved = img.readUInt16LE(14);
  const numFats = img[16]!;
  const rootEntries = img.readUInt16LE(17);
  const tot16 = img.readUInt16LE(19);
  const fat16 = img.readUInt16LE(22);
  const tot32 = img.readUInt32LE(32);
  const fatSz = img.readUInt32LE(36);
  const extFlags = img.readUInt16LE(40);
  if (![512, 1024, 2048, 4096].includes(bps)) invalid('bad bytes per sector', { bps });
  if (spc === 0 || (spc & (spc - 1)) !== 0) invalid('bad sectors per cluster', { spc });
  if (reserved === 0 || numFats === 0) invalid('bad reserved sectors or FAT count');
  if (fat16 !== 0 || rootEntries !== 0 || fatSz === 0) invalid('FAT12/16 BPB (not FAT32)');
  const totalSectors = tot16 !== 0 ? tot16 : tot32;
  if (img.length < totalSectors * bps) invalid('image is shorter than the volume');
  const dataSector = reserved + numFats * fatSz;
  if (dataSector >= totalSectors) invalid('FATs extend past the end of the volume');
  const clusterCount = Math.min(Math.floor((totalSectors - dataSector) / spc), Math.floor((fatSz * bps) / 4) - 2);
  const mirrored = (extFlags & 0x80) === 0;
  const active = extFlags & 0x0f;
  if (!mirrored && active >= numFats) invalid('active FAT index out of range', { active, numFats });
  const fsInfoSector = img.readUInt16LE(48);
  let fsInfoOffset: number | null = null;
  if (fsInfoSector > 0 && fsInfoSector < reserved) {
    const o = fsInfoSector * bps;
    if (img.readUInt32LE(o) === 0x41615252 && img.readUInt32LE(o + 484) === 0x61417272) fsInfoOffset = o;
  }
  return {
    img,
    bps,
    clusterSize: spc * bps,
    clusterCount,
    fatOffset: reserved * bps,
    fatBytes: fatSz * bps,
    fatCopies: mirrored ? Array.from({ length: numFats }, (_, i) => i) : [active],
    readFat: mirrored ? 0 : active,
    dataOffset: dataSector * bps,
    rootCluster: img.readUInt32LE(44),
    fsInfoOffset,
  };
}

const valid = (v: Vol, c: number): boolean => c >= 2 && c <= v.clusterCount + 1;

function fatGet(v: Vol, c: number): number {
  return v.img.readUInt32LE(v.fatOffset + v.readFat * v.fatBytes + c * 4) & FAT_MASK;
}

function fatSet(v: Vol, c: number, value: number): void {
  for (const i of v.fatCopies) {
    const off = v.fatOffset + i * v.fatBytes + c * 4;
    v.img.writeUInt32LE(((v.img.readUInt32LE(off) & 0xf0000000) | (value & FAT_MASK)) >>> 0, off);
  }
}

function chain(v: Vol, first: number): number[] {
  const out: number[] = [];
  for (let c = first; ; ) {
    if (!valid(v, c)) corrupt(`cluster chain points at invalid cluster ${c}`, { first, cluster: c });
    out.push(c);
    if (out.length > v.clusterCount) corrupt('cluster chain loops', { first });
    const n = fatGet(v, c);
    if (n >= 0x0ffffff8) return out;
    c = n;
  }
}

const clusterOffset = (v: Vol, c: number): number => v.dataOffset + (c - 2) * v.clusterSize;

function lfnChecksum(b: Buffer, off: number): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = ((((sum & 1) << 7) | (sum >> 1)) + b[off + i]!) & 0xff;
  return sum;
}

function fold(s: string): string {
  let out = '';
  for (const c of s) {
    const u = c.toUpperCase();
    out += u.length === c.length ? u : c;
  }
  return out;
}

function shortDisplay(b: Buffer, off: number): string {
  const raw = Buffer.from(b.subarray(off, off + 11));
  if (raw[0] === 0x05) raw[0] = 0xe5;
  const base = raw.toString('latin1', 0, 8).replace(/ +$/, '');
  const ext = raw.toString('latin1', 8, 11).replace(/ +$/, '');
  return ext ? `${base}.${ext}` : base;
}

interface DirEntry {
  name: string;
  short: string;
  attr: number;
  firstCluster: number;
  /** Slot indices (LFN entries then the short entry). */
  slots: number[];
}

interface Dir {
  clusters: number[];
  /** Absolute byte offset of every 32-byte slot, in directory order. */
  slotOffsets: number[];
  entries: DirEntry[];
  shortNames: Set<string>;
}

function readDir(v: Vol, firstCluster: number): Dir {
  const clusters = chain(v, firstCluster);
  const slotOffsets: number[] = [];
  for (const c of clusters) for (let o = 0; o < v.clusterSize; o += DIR_ENTRY) slotOffsets.push(clusterOffset(v, c) + o);
  const entries: DirEntry[] = [];
  const shortNames = new Set<string>();
  const b = v.img;
  let parts: string[] = [];
  let sum = -1;
  let expect = 0;
  let lfnSlots: number[] = [];
  for (let i = 0; i < slotOffsets.length; i++) {
    const off = slotOffsets[i]!;
    const first = b[off]!;
    if (first === 0x00) break;
    if (first === 0xe5) {
      expect = 0;
      continue;
    }
    const attr = b[off + 11]!;
    if ((attr & 0x3f) === ATTR_LFN) {
      const ord = first & 0x3f;
      if (first & 0x40) {
        parts = new Array<string>(ord).fill('');
        sum = b[off + 13]!;
        expect = ord;
        lfnSlots = [];
      }
      if (expect === 0 || ord !== expect || ord === 0 || b[off + 13] !== sum) {
        expect = 0;
        continue;
      }
      let part = '';
      for (const o of LFN_OFFSETS) {
        const u = b.readUInt16LE(off + o);
        if (u === 0) break;
        part += String.fromCharCode(u);
      }
      parts[ord - 1] = part;
      lfnSlots.push(i);
      expect = ord === 1 ? -1 : ord - 1;
      continue;
    }
    const complete = expect === -1 && lfnChecksum(b, off) === sum;
    expect = 0;
    shortNames.add(b.toString('latin1', off, off + 11));
    if (attr & ATTR_VOLUME_ID) continue;
    const short = shortDisplay(b, off);
    if (short === '.' || short === '..') continue;
    entries.push({
      name: complete ? parts.join('') : short,
      short,
      attr,
      firstCluster: ((b.readUInt16LE(off + 20) << 16) | b.readUInt16LE(off + 26)) >>> 0,
      slots: complete ? [...lfnSlots, i] : [i],
    });
  }
  return { clusters, slotOffsets, entries, shortNames };
}

function find(d: Dir, name: string): DirEntry | undefined {
  const want = fold(name);
  return d.entries.find((e) => fold(e.name) === want) ?? d.entries.find((e) => fold(e.short) === want);
}

function validateName(name: string, path: string): void {
  const bad = (why: string): never => {
    throw new UzError('FAT_NAME_INVALID', `invalid name "${name}" in "${path}": ${why}`, { path, name });
  };
  if (name.length === 0) bad('empty path component');
  if (name.length > 255) bad('longer than 255 UTF-16 units');
  if (LFN_FORBIDDEN_RE.test(name)) bad('contains a control character or one of "*/:<>?\\|');
  if (name.endsWith('.') || name.endsWith(' ')) bad('ends with a dot or space');
  if (name === '.' || name === '..') bad('reserved name');
}

function exact83(name: string): string | null {
  const m = EXACT_83_RE.exec(name);
  return m ? m[1]!.padEnd(8, ' ') + (m[2] ?? '').padEnd(3, ' ') : null;
}

/** Short alias the way Windows/Linux make one: basis name, then ~N until unique in the directory. */
function shortAlias(name: string, taken: Set<string>): { raw11: string; lfn: boolean } {
  const exact = exact83(name);
  if (exact !== null && !taken.has(exact)) return { raw11: exact, lfn: false };
  const plain = exact83(fold(name));
  if (plain !== null && !taken.has(plain)) return { raw11: plain, lfn: true };
  const s = fold(name).replace(/ /g, '').replace(/^\.+/, '');
  const dot = s.lastIndexOf('.');
  const clean = (t: string): string => Array.from(t.replace(/\./g, ''), (c) => (SHORT_CHAR_RE.test(c) ? c : '_')).join('');
  const base = clean(dot >= 0 ? s.slice(0, dot) : s).slice(0, 8) || '_';
  const ext = clean(dot >= 0 ? s.slice(dot + 1) : '').slice(0, 3);
  for (let n = 1; n < 1_000_000; n++) {
    const tail = `~${n}`;
    const raw = (base.slice(0, 8 - tail.length) + tail).padEnd(8, ' ') + ext.padEnd(3, ' ');
    if (!taken.has(raw)) return { raw11: raw, lfn: true };
  }
  throw new UzError('FAT_NAME_INVALID', `cannot generate a unique short name for "${name}"`, { name });
}

function fatTime(d: Date): { date: number; time: number; tenth: number } {
  const ms = d.getTime();
  if (!Number.isFinite(ms)) throw new UzError('FAT_INVALID_OPTION', 'mtime is not a valid date');
  const t = new Date(Math.min(Math.max(ms, Date.UTC(1980, 0, 1)), Date.UTC(2107, 11, 31, 23, 59, 59, 990)));
  const sec = t.getUTCSeconds();
  return {
    date: ((t.getUTCFullYear() - 1980) << 9) | ((t.getUTCMonth() + 1) << 5) | t.getUTCDate(),
    time: (t.getUTCHours() << 11) | (t.getUTCMinutes() << 5) | (sec >> 1),
    tenth: (sec & 1) * 100 + Math.floor(t.getUTCMilliseconds() / 10),
  };
}

/** Takes `n` free clusters (FAT entry 0), starting at the FSInfo hint and wrapping around. */
function allocate(v: Vol, n: number, exclude: Set<number>): number[] {
  if (n === 0) return [];
  let start = 2;
  if (v.fsInfoOffset !== null) {
    const hint = v.img.readUInt32LE(v.fsInfoOffset + 492);
    if (valid(v, hint)) start = hint;
  }
  const out: number[] = [];
  const last = v.clusterCount + 1;
  for (let k = 0; k < v.clusterCount && out.length < n; k++) {
    const c = 2 + ((start - 2 + k) % v.clusterCount);
    if (c > last) continue;
    if (fatGet(v, c) === 0 && !exclude.has(c)) out.push(c);
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

function link(v: Vol, clusters: number[]): void {
  clusters.forEach((c, i) => fatSet(v, c, i + 1 < clusters.length ? clusters[i + 1]! : EOC));
}

function adjustFsInfo(v: Vol, delta: number, nextHint: number | null): void {
  if (v.fsInfoOffset === null) return;
  const o = v.fsInfoOffset;
  const free = v.img.readUInt32LE(o + 488);
  if (free !== 0xffffffff) {
    const nf = free + delta;
    // An inconsistent count is worse than "unknown": let the next fsck/driver recount.
    v.img.writeUInt32LE(nf >= 0 && nf <= v.clusterCount ? nf : 0xffffffff, o + 488);
  }
  if (nextHint !== null) v.img.writeUInt32LE(valid(v, nextHint) ? nextHint : 0xffffffff, o + 492);
}

export interface AddFileResult {
  /** True when a file of that name existed and was replaced. */
  replaced: boolean;
  /** 11-byte short name used (e.g. "UZ-DEV~1JSO"). */
  shortName: string;
  clusters: number;
}

/**
 * Writes `data` as `path` into the FAT32 volume held in `image` (modified in place). Parent directories
 * must exist. Replaces an existing file of the same name (FAT_IS_DIR if it is a directory).
 */
export function addFat32File(image: Buffer, path: string, data: Buffer | Uint8Array, opts: { mtime?: Date } = {}): AddFileResult {
  const v = open(image);
  const parts = path.split('/').filter((p) => p !== '');
  if (parts.length === 0) throw new UzError('FAT_NAME_INVALID', 'empty path', { path });
  parts.forEach((p) => validateName(p, path));
  const ts = fatTime(opts.mtime ?? new Date());

  let dirCluster = v.rootCluster;
  for (let i = 0; i < parts.length - 1; i++) {
    const e = find(readDir(v, dirCluster), parts[i]!);
    if (!e) throw new UzError('FAT_NOT_FOUND', `directory "${parts.slice(0, i + 1).join('/')}" not found`, { path });
    if (!(e.attr & ATTR_DIRECTORY) || e.firstCluster === 0) throw new UzError('FAT_NOT_FOUND', `"${parts.slice(0, i + 1).join('/')}" is not a directory`, { path });
    dirCluster = e.firstCluster;
  }
  const name = parts[parts.length - 1]!;
  let dir = readDir(v, dirCluster);

  let freed = 0;
  const old = find(dir, name);
  if (old) {
    if (old.attr & ATTR_DIRECTORY) throw new UzError('FAT_IS_DIR', `"${path}" is a directory`, { path });
    if (old.firstCluster !== 0) {
      // Zero the old content too: a replaced config may hold a Wi-Fi key or token that must not linger.
      const c = chain(v, old.firstCluster);
      for (const x of c) {
        image.fill(0, clusterOffset(v, x), clusterOffset(v, x) + v.clusterSize);
        fatSet(v, x, 0);
      }
      freed = c.length;
    }
    for (const s of old.slots) image[dir.slotOffsets[s]!] = 0xe5;
    dir = readDir(v, dirCluster);
  }

  const { raw11, lfn } = shortAlias(name, dir.shortNames);
  const lfnCount = lfn ? Math.ceil(name.length / 13) : 0;
  const need = lfnCount + 1;

  // First run of `need` free slots (deleted 0xE5, or the 0x00 end-of-directory tail).
  let runStart = -1;
  let run = 0;
  let tailFrom = -1;
  for (let i = 0; i < dir.slotOffsets.length; i++) {
    const first = image[dir.slotOffsets[i]!]!;
    if (first === 0x00) {
      // Everything from the end marker on is free.
      tailFrom = i;
      if (run === 0) runStart = i;
      run = Math.min(need, run + (dir.slotOffsets.length - i));
      break;
    }
    if (first === 0xe5) {
      if (run === 0) runStart = i;
      if (++run === need) break;
    } else {
      run = 0;
    }
  }
  const dataClusters = Math.ceil(data.length / v.clusterSize);
  let extra = 0;
  if (run < need) {
    // Grow the directory: the free run continues into new zeroed clusters (0x00 = end of directory).
    // A run still open here is the directory's tail (free slots up to the last one): it continues into the
    // new cluster. Otherwise the last slot is in use (so there is no 0x00 end marker) and we start afresh.
    if (run === 0) runStart = dir.slotOffsets.length;
    const perCluster = v.clusterSize / DIR_ENTRY;
    extra = Math.ceil((need - run) / perCluster);
    if (dir.slotOffsets.length + extra * perCluster > MAX_DIR_ENTRIES) {
      throw new UzError('FAT_DIR_FULL', `directory of "${path}" cannot grow beyond ${MAX_DIR_ENTRIES} entries`, { path });
    }
  }
  const taken = allocate(v, extra + dataClusters, new Set());
  const dirNew = taken.slice(0, extra);
  const fileClusters = taken.slice(extra);

  if (dirNew.length) {
    for (const c of dirNew) image.fill(0, clusterOffset(v, c), clusterOffset(v, c) + v.clusterSize);
    link(v, [dir.clusters[dir.clusters.length - 1]!, ...dirNew]);
    for (const c of dirNew) for (let o = 0; o < v.clusterSize; o += DIR_ENTRY) dir.slotOffsets.push(clusterOffset(v, c) + o);
  }

  // File data.
  link(v, fileClusters);
  fileClusters.forEach((c, i) => {
    const off = clusterOffset(v, c);
    const from = i * v.clusterSize;
    const n = Math.min(v.clusterSize, data.length - from);
    image.set(data.subarray(from, from + n), off);
    image.fill(0, off + n, off + v.clusterSize);
  });

  // Slots past the end marker must read as zero once the marker moves behind our entries.
  if (tailFrom >= 0) for (let i = tailFrom; i < dir.slotOffsets.length; i++) image.fill(0, dir.slotOffsets[i]!, dir.slotOffsets[i]! + DIR_ENTRY);
  // Directory entries: LFN (highest ordinal first), then the short entry.
  const raw = Buffer.from(raw11, 'latin1');
  const sum = lfnChecksum(raw, 0);
  let slot = runStart;
  for (let k = lfnCount; k >= 1; k--) {
    const off = dir.slotOffsets[slot++]!;
    image.fill(0, off, off + DIR_ENTRY);
    image[off] = k | (k === lfnCount ? 0x40 : 0);
    image[off + 11] = ATTR_LFN;
    image[off + 13] = sum;
    for (let j = 0; j < 13; j++) {
      const idx = (k - 1) * 13 + j;
      image.writeUInt16LE(idx < name.length ? name.charCodeAt(idx) : idx === name.length ? 0x0000 : 0xffff, off + LFN_OFFSETS[j]!);
    }
  }
  const off = dir.slotOffsets[slot]!;
  const first = fileClusters[0] ?? 0;
  image.fill(0, off, off + DIR_ENTRY);
  raw.copy(image, off);
  image[off + 11] = ATTR_ARCHIVE;
  image[off + 13] = ts.tenth;
  image.writeUInt16LE(ts.time, off + 14);
  image.writeUInt16LE(ts.date, off + 16);
  image.writeUInt16LE(ts.date, off + 18);
  image.writeUInt16LE((first >>> 16) & 0xffff, off + 20);
  image.writeUInt16LE(ts.time, off + 22);
  image.writeUInt16LE(ts.date, off + 24);
  image.writeUInt16LE(first & 0xffff, off + 26);
  image.writeUInt32LE(data.length, off + 28);

  const lastTaken = taken.length ? taken[taken.length - 1]! : null;
  adjustFsInfo(v, freed - taken.length, lastTaken === null ? null : lastTaken + 1 <= v.clusterCount + 1 ? lastTaken + 1 : 2);
  return { replaced: old !== undefined, shortName: raw11, clusters: fileClusters.length };
}
