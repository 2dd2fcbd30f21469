import { open } from 'node:fs/promises';
import { UzError } from '../lib/errors.js';
import { parseMbr, SECTOR_SIZE } from './fs/mbr.js';
import { readFat32 } from './fs/fat32.js';
import { BOOT_ENV_FILE, parseBootEnv, type UbootBootState } from './boot/uboot-script.js';
import { AUTOBOOT_FILE, parseAutoboot } from './boot/tryboot.js';
import { SLOT_RELEASE_FILE } from './image.js';

/** `uz inspect`: what is on a disk image, read with our own readers (no mounts, any host). */
export interface ImageReport {
  path: string;
  sizeBytes: number;
  diskSignature: string;
  partitions: Array<{ index: number; role: string; startLba: number; sizeBytes: number; type: string; label?: string }>;
  bootControl:
    | { scheme: 'uboot-bootcount'; state: UbootBootState | null; raw: string }
    | { scheme: 'rpi-tryboot'; primaryPartition: number | null; trybootPartition: number | null; raw: string }
    | { scheme: 'unknown' };
  slots: Array<{ slot: 'A' | 'B'; release: Record<string, unknown> | null; files: Array<{ path: string; size: number }>; error?: string }>;
  data: { blank: boolean; ext4: boolean };
}

const ROLES = ['boot-control', 'slot-A', 'slot-B', 'data'];

async function readAt(fh: Awaited<ReturnType<typeof open>>, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  await fh.read(buf, 0, length, offset);
  return buf;
}

export async function inspectImage(path: string): Promise<ImageReport> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch {
    throw new UzError('INSPECT_NOT_FOUND', `cannot open image ${path}`, { path });
  }
  try {
    const st = await fh.stat();
    const mbr = parseMbr(await readAt(fh, 0, SECTOR_SIZE));
    const report: ImageReport = {
      path,
      sizeBytes: st.size,
      diskSignature: mbr.diskSignature.toString(16).padStart(8, '0'),
      partitions: [],
      bootControl: { scheme: 'unknown' },
      slots: [],
      data: { blank: false, ext4: false },
    };
    for (const p of mbr.partitions) {
      report.partitions.push({
        index: p.index,
        role: ROLES[p.index - 1] ?? 'extra',
        startLba: p.startLba,
        sizeBytes: p.sizeLba * SECTOR_SIZE,
        type: `0x${p.type.toString(16).padStart(2, '0')}`,
      });
    }
    const part = (i: number) => mbr.partitions.find((p) => p.index === i);
    const p1 = part(1);
    if (p1) {
      const fat = readFat32(await readAt(fh, p1.startLba * SECTOR_SIZE, p1.sizeLba * SECTOR_SIZE));
      report.partitions[0]!.label = fat.label;
      const names = new Set(fat.list().map((e) => e.path.toLowerCase()));
      if (names.has(BOOT_ENV_FILE)) {
        const raw = fat.readFile(BOOT_ENV_FILE).toString('utf8');
        report.bootControl = { scheme: 'uboot-bootcount', state: parseBootEnv(raw), raw };
      } else if (names.has(AUTOBOOT_FILE)) {
        const raw = fat.readFile(AUTOBOOT_FILE).toString('utf8');
        const a = parseAutoboot(raw);
        report.bootControl = { scheme: 'rpi-tryboot', primaryPartition: a?.primary ?? null, trybootPartition: a?.tryboot ?? null, raw };
      }
    }
    for (const [slot, idx] of [['A', 2], ['B', 3]] as const) {
      const p = part(idx);
      if (!p) continue;
      try {
        const fat = readFat32(await readAt(fh, p.startLba * SECTOR_SIZE, p.sizeLba * SECTOR_SIZE));
        report.partitions[idx - 1]!.label = fat.label;
        const files = fat.list().filter((e) => !e.isDir).map((e) => ({ path: e.path, size: e.size }));
        let release: Record<string, unknown> | null = null;
        try {
          release = JSON.parse(fat.readFile(SLOT_RELEASE_FILE).toString('utf8')) as Record<string, unknown>;
        } catch {
          release = null;
        }
        report.slots.push({ slot, release, files });
      } catch (e) {
        report.slots.push({ slot, release: null, files: [], error: (e as Error).message });
      }
    }
    const p4 = part(4);
    if (p4) {
      const head = await readAt(fh, p4.startLba * SECTOR_SIZE, 1 << 20);
      report.data = { blank: head.every((b) => b === 0), ext4: head.readUInt16LE(1080) === 0xef53 };
    }
    return report;
  } finally {
    await fh.close();
  }
}

export function formatReport(r: ImageReport): string {
  const mib = (n: number) => `${(n / 1048576).toFixed(0)} MiB`;
  const lines = [`${r.path}  (${mib(r.sizeBytes)}, disk signature ${r.diskSignature})`, '', 'partitions:'];
  for (const p of r.partitions) lines.push(`  p${p.index}  ${p.role.padEnd(13)} ${p.type}  start ${String(p.startLba).padStart(8)}  ${mib(p.sizeBytes).padStart(9)}  ${p.label ?? ''}`);
  lines.push('', 'boot control:');
  const bc = r.bootControl;
  if (bc.scheme === 'uboot-bootcount') {
    lines.push(bc.state ? `  U-Boot bootcount: order ${bc.state.order.join(' ')}, attempts left A=${bc.state.left.A} B=${bc.state.left.B}` : '  U-Boot bootcount: state unreadable (factory defaults apply)');
  } else if (bc.scheme === 'rpi-tryboot') {
    lines.push(`  Pi tryboot: boots partition ${bc.primaryPartition}, tryboot partition ${bc.trybootPartition}`);
  } else lines.push('  unknown');
  lines.push('', 'slots:');
  for (const s of r.slots) {
    const rel = s.release as { version?: string; board?: string; app?: { name?: string }; kernel?: string; startupSnapshots?: { cpu?: string; workload?: boolean } | null } | null;
    // Releases built before start-up snapshots existed have no startupSnapshots key: say nothing about them.
    const snap = rel?.startupSnapshots === undefined ? '' : rel.startupSnapshots ? `, start-up snapshots for ${rel.startupSnapshots.cpu} (agent${rel.startupSnapshots.workload ? ', workload' : ''})` : ', no start-up snapshots';
    lines.push(rel ? `  ${s.slot}: ${rel.board} ${rel.version}, app ${rel.app?.name}, kernel ${rel.kernel}${snap}, ${s.files.length} files` : `  ${s.slot}: ${s.error ?? 'no release file'}`);
  }
  lines.push('', `data: ${r.data.ext4 ? 'ext4' : r.data.blank ? 'blank (formatted on first boot)' : 'unrecognised'}`);
  return lines.join('\n');
}
