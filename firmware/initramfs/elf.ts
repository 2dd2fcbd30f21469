import { UzError } from '../../lib/errors.js';

/**
 * The dynamic-linking facts of a 64-bit little-endian ELF file (what `readelf -d` shows): the libraries it
 * needs (DT_NEEDED) and its own soname (DT_SONAME). Read from the section headers (`.dynamic` and the string
 * table it links to), which stripped Debian binaries keep. A static binary or a non-ELF file has neither.
 */
export interface ElfDynamic {
  needed: string[];
  soname?: string;
}

const SHT_DYNAMIC = 6;
const DT_NULL = 0n;
const DT_NEEDED = 1n;
const DT_SONAME = 14n;

export function readElfDynamic(buf: Uint8Array, what = 'file'): ElfDynamic {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46) return { needed: [] };
  if (b[4] !== 2 || b[5] !== 1) throw new UzError('ROOTFS_ELF_UNSUPPORTED', `${what}: only 64-bit little-endian ELF files are supported`, { what });
  const shoff = Number(b.readBigUInt64LE(0x28));
  const shentsize = b.readUInt16LE(0x3a);
  const shnum = b.readUInt16LE(0x3c);
  if (shoff === 0 || shnum === 0) return { needed: [] };
  if (shoff + shnum * shentsize > b.length) throw new UzError('ROOTFS_ELF_UNSUPPORTED', `${what}: section headers beyond the end of the file`, { what });
  const sec = (i: number) => {
    const o = shoff + i * shentsize;
    return { type: b.readUInt32LE(o + 4), offset: Number(b.readBigUInt64LE(o + 0x18)), size: Number(b.readBigUInt64LE(o + 0x20)), link: b.readUInt32LE(o + 0x28) };
  };
  for (let i = 0; i < shnum; i++) {
    const dyn = sec(i);
    if (dyn.type !== SHT_DYNAMIC) continue;
    const strtab = sec(dyn.link);
    const str = (off: number) => {
      const start = strtab.offset + off;
      const end = b.indexOf(0, start);
      return b.toString('latin1', start, end < 0 ? b.length : end);
    };
    const out: ElfDynamic = { needed: [] };
    for (let o = dyn.offset; o + 16 <= dyn.offset + dyn.size; o += 16) {
      const tag = b.readBigInt64LE(o);
      const val = Number(b.readBigUInt64LE(o + 8));
      if (tag === DT_NULL) break;
      if (tag === DT_NEEDED) out.needed.push(str(val));
      else if (tag === DT_SONAME) out.soname = str(val);
    }
    return out;
  }
  return { needed: [] };
}
