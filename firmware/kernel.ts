import { gunzipSync } from 'node:zlib';
import { xz } from '@napi-rs/lzma';
import { UzError } from '../lib/errors.js';
import type { DebEntry } from './debian/deb.js';

/**
 * Reads what an image needs out of Debian's linux-image package: the kernel Image, the DTBs and the
 * modules a board names, with their dependencies in load order. Debian ships no modules.dep (depmod runs at
 * install time), so dependencies come from each module's own `.modinfo` `depends=` field.
 */
export interface KernelParts {
  release: string;
  image: Buffer;
  dtbs: Map<string, Buffer>;
  /** Module name (underscored) -> path under usr/lib/modules/<release>/ and compressed bytes. */
  modules: Map<string, { relPath: string; data: Buffer }>;
  builtin: Set<string>;
  config: string;
}

export const modName = (file: string): string => file.replace(/^.*\//, '').replace(/\.ko(\.xz|\.zst|\.gz)?$/, '').replace(/-/g, '_');

export function kernelParts(entries: DebEntry[]): KernelParts {
  const vmlinuz = entries.find((e) => /^boot\/vmlinuz-/.test(e.path) && e.type === 'file');
  if (!vmlinuz?.data) throw new UzError('KERNEL_MISSING', 'the kernel package has no /boot/vmlinuz-*');
  const release = vmlinuz.path.replace('boot/vmlinuz-', '');
  const dtbPrefix = `usr/lib/linux-image-${release}/`;
  const modPrefix = `usr/lib/modules/${release}/`;
  const dtbs = new Map<string, Buffer>();
  const modules = new Map<string, { relPath: string; data: Buffer }>();
  let builtinText = '';
  let config = '';
  for (const e of entries) {
    if (e.type !== 'file' || !e.data) continue;
    if (e.path.startsWith(dtbPrefix) && e.path.endsWith('.dtb')) dtbs.set(e.path.slice(dtbPrefix.length), e.data);
    else if (e.path.startsWith(modPrefix) && /\.ko(\.xz)?$/.test(e.path)) modules.set(modName(e.path), { relPath: e.path.slice(modPrefix.length), data: e.data });
    else if (e.path === `${modPrefix}modules.builtin`) builtinText = e.data.toString('utf8');
    else if (e.path === `boot/config-${release}`) config = e.data.toString('utf8');
  }
  const builtin = new Set(builtinText.split('\n').filter(Boolean).map(modName));
  return { release, image: kernelImage(vmlinuz.data), dtbs, modules, builtin, config };
}

/** arm64 `booti` and the Pi firmware both take a plain Image; Debian ships it plain, older ones gzip'd. */
export function kernelImage(vmlinuz: Buffer): Buffer {
  const img = vmlinuz[0] === 0x1f && vmlinuz[1] === 0x8b ? gunzipSync(vmlinuz) : vmlinuz;
  if (img.length < 64 || img.readUInt32LE(0x38) !== 0x644d5241) {
    throw new UzError('KERNEL_FORMAT', 'kernel is not an arm64 Image (no ARM\\x64 magic at 0x38)');
  }
  return img;
}

export function decompressModule(data: Buffer): Buffer {
  if (data[0] === 0xfd && data.subarray(1, 6).toString('latin1') === '7zXZ\0') return Buffer.from(xz.decompressSync(data));
  return data;
}

/** The `depends=` list from an ELF64 module's .modinfo section. */
export function moduleDepends(ko: Buffer): string[] {
  if (ko.readUInt32BE(0) !== 0x7f454c46 || ko[4] !== 2) throw new UzError('KERNEL_MODULE_FORMAT', 'not an ELF64 module');
  const shoff = Number(ko.readBigUInt64LE(0x28));
  const shentsize = ko.readUInt16LE(0x3a);
  const shnum = ko.readUInt16LE(0x3c);
  const shstrndx = ko.readUInt16LE(0x3e);
  const sec = (i: number) => {
    const o = shoff + i * shentsize;
    return { name: ko.readUInt32LE(o), offset: Number(ko.readBigUInt64LE(o + 0x18)), size: Number(ko.readBigUInt64LE(o + 0x20)) };
  };
  const strtab = sec(shstrndx);
  for (let i = 0; i < shnum; i++) {
    const s = sec(i);
    const nameEnd = ko.indexOf(0, strtab.offset + s.name);
    if (ko.toString('latin1', strtab.offset + s.name, nameEnd) !== '.modinfo') continue;
    for (const kv of ko.toString('utf8', s.offset, s.offset + s.size).split('\0')) {
      if (kv.startsWith('depends=')) return kv.slice(8).split(',').filter(Boolean).map(modName);
    }
    return [];
  }
  return [];
}

/**
 * Modules to load, dependencies first. Built-in names are skipped; an unknown required name is an error
 * (a board file naming a module the kernel lacks must fail the build, not the boot).
 */
export function resolveModules(
  parts: Pick<KernelParts, 'modules' | 'builtin'>,
  wanted: string[],
  optional: string[] = [],
): Array<{ name: string; relPath: string; data: Buffer }> {
  const out: Array<{ name: string; relPath: string; data: Buffer }> = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = (raw: string, required: boolean) => {
    const name = modName(raw);
    if (done.has(name) || parts.builtin.has(name)) return;
    const m = parts.modules.get(name);
    if (!m) {
      if (required) throw new UzError('BOARD_MODULE_UNKNOWN', `kernel has no module "${raw}" (neither loadable nor built in)`, { module: raw });
      return;
    }
    if (visiting.has(name)) return;
    visiting.add(name);
    const ko = decompressModule(m.data);
    for (const dep of moduleDepends(ko)) visit(dep, true);
    visiting.delete(name);
    done.add(name);
    out.push({ name, relPath: m.relPath.replace(/\.xz$/, ''), data: ko });
  };
  for (const w of wanted) visit(w, true);
  for (const o of optional) visit(o, false);
  return out;
}
