import type { Board } from '../../boards/schema.js';
import { kernelCommandLine } from './cmdline.js';

/**
 * Raspberry Pi tryboot A/B (Pi 4/400/CM4/5): autoboot.txt in the first FAT partition selects the slot
 * partition; `reboot "0 tryboot"` makes the next boot (once) use the [tryboot] section. Committing an update
 * rewrites autoboot.txt with the partitions swapped. See shared Pi boot notes and docs/boards.md.
 */
export const AUTOBOOT_FILE = 'autoboot.txt';

export function autobootTxt(primaryPartition: 2 | 3): string {
  const other = primaryPartition === 2 ? 3 : 2;
  return `[all]\ntryboot_a_b=1\nboot_partition=${primaryPartition}\n[tryboot]\nboot_partition=${other}\n`;
}

export function parseAutoboot(text: string): { primary: number; tryboot: number } | null {
  let section = 'all';
  let primary: number | undefined;
  let tryboot: number | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const m = /^\[(\w+)\]$/.exec(line);
    if (m) {
      section = m[1]!;
      continue;
    }
    const kv = /^boot_partition=(\d+)$/.exec(line);
    if (kv) {
      if (section === 'all') primary = Number(kv[1]);
      if (section === 'tryboot') tryboot = Number(kv[1]);
    }
  }
  return primary && tryboot ? { primary, tryboot } : null;
}

/** config.txt inside a slot: the firmware loads kernel, initramfs and DTB from the same partition. */
export function slotConfigTxt(board: Board, extra: string[]): string {
  return [
    '# unikernel-z slot configuration (generated). Firmware, DTBs, kernel and initramfs live in this slot',
    '# and are replaced together by an update.',
    `kernel=${board.kernel.fileName}`,
    'initramfs initrd.img followkernel',
    ...extra,
    '',
  ].join('\n');
}

export function slotCmdline(board: Board): string {
  return `${kernelCommandLine(board).join(' ')}\n`;
}

/** config.txt in p1 for U-Boot Pi boards: the GPU firmware starts U-Boot as its "kernel". */
export function ubootChainConfigTxt(extra: string[]): string {
  return ['# unikernel-z: Pi firmware -> U-Boot -> boot.scr (A/B bootcount)', 'kernel=u-boot.bin', ...extra, ''].join('\n');
}
