import { crc32 } from 'node:zlib';
import { kernelCommandLine } from './cmdline.js';
import type { Board } from '../../boards/schema.js';
import { UzError } from '../../lib/errors.js';

/**
 * U-Boot A/B with boot counting, the scheme RAUC uses on U-Boot boards: a boot order plus attempts left
 * per slot, kept in a small text file (`uzboot.env`) on the boot-control partition. The script decrements the
 * chosen slot's counter and saves it BEFORE booting, so a kernel that panics or hangs (watchdog) is charged
 * one attempt; at zero the next slot in the order boots. The agent resets the counter ("mark good") once the
 * workload's health check passes, and sets `B A` with one attempt to try an update.
 */
export const BOOT_ENV_FILE = 'uzboot.env';
export const BOOT_SCRIPT_FILE = 'boot.scr';
export const DEFAULT_ATTEMPTS = 3;

export type Slot = 'A' | 'B';
export interface UbootBootState {
  order: Slot[];
  left: Record<Slot, number>;
}

export const FACTORY_STATE: UbootBootState = { order: ['A', 'B'], left: { A: DEFAULT_ATTEMPTS, B: DEFAULT_ATTEMPTS } };

/** `env import -t` format: name=value lines. */
export function formatBootEnv(s: UbootBootState): string {
  return `BOOT_ORDER=${s.order.join(' ')}\nBOOT_A_LEFT=${s.left.A}\nBOOT_B_LEFT=${s.left.B}\n`;
}

/**
 * Parses the env file as written by us or by U-Boot's `env export -t` (which also separates with newlines
 * and may end with a NUL). Unknown or damaged content returns null: the script then falls back to factory
 * defaults, which always name a slot that was written by the builder or committed by the agent.
 */
export function parseBootEnv(text: string): UbootBootState | null {
  const vars = new Map<string, string>();
  for (const line of text.replace(/\0+$/, '').split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) vars.set(line.slice(0, i), line.slice(i + 1));
  }
  const order = (vars.get('BOOT_ORDER') ?? '').split(' ').filter((s) => s === 'A' || s === 'B') as Slot[];
  // U-Boot's setexpr stores hex without a prefix; our counters stay below 10 so hex == decimal.
  const a = Number.parseInt(vars.get('BOOT_A_LEFT') ?? '', 16);
  const b = Number.parseInt(vars.get('BOOT_B_LEFT') ?? '', 16);
  if (order.length === 0 || new Set(order).size !== order.length || !Number.isFinite(a) || !Number.isFinite(b)) return null;
  return { order, left: { A: a, B: b } };
}

/** qemu_arm64 U-Boot's kernel_addr_r and ramdisk_addr_r: the kernel must end below the in-place initramfs. */
export const QEMU_KERNEL_ROOM = 0x44000000 - 0x40400000;

/**
 * The arm64 Image header's image_size (bytes the kernel occupies once running, BSS included). The emulated
 * board boots the initramfs in place, so the builder refuses a kernel that would run into it.
 */
export function arm64ImageSize(image: Uint8Array): number {
  const b = Buffer.from(image.buffer, image.byteOffset, image.byteLength);
  if (b.length < 64 || b.readUInt32LE(56) !== 0x644d5241) throw new UzError('KERNEL_NOT_ARM64_IMAGE', 'the kernel is not an arm64 Image (no ARM\\x64 magic)');
  return Number(b.readBigUInt64LE(16));
}

interface ScriptTarget {
  iface: string;
  dev: string;
  /** Commands run before anything else (e.g. memory layout for Pi). */
  prelude: string[];
  /** How the kernel gets its device tree. */
  fdt: { kind: 'control' } | { kind: 'file' };
}

function targetFor(board: Board): ScriptTarget {
  if (board.boot.kind === 'qemu-uboot') {
    // initrd_high=~0: boot the initramfs where it was loaded. Otherwise U-Boot first copies it (~140 MB,
    // stored uncompressed on this board) to the top of RAM: 0.4 s of every emulated boot. The kernel
    // (kernel_addr_r 0x40400000, < 64 MiB with its BSS) ends well below ramdisk_addr_r (0x44000000).
    return { iface: 'virtio', dev: '0', prelude: ['setenv initrd_high ffffffffffffffff'], fdt: { kind: 'control' } };
  }
  // Pi via U-Boot: the default rpi_arm64 load addresses leave too little room for an uncompressed 6.x
  // arm64 Image, so the script places DTB and initramfs above it.
  return {
    iface: 'mmc',
    dev: '0',
    prelude: ['setenv kernel_addr_r 0x00080000', 'setenv fdt_addr_r 0x03000000', 'setenv ramdisk_addr_r 0x03100000'],
    fdt: { kind: 'file' },
  };
}

export function bootScriptText(board: Board): string {
  const t = targetFor(board);
  const dev = `${t.iface} ${t.dev}`;
  const cmdline = kernelCommandLine(board).join(' ');
  const bootCmd =
    t.fdt.kind === 'control'
      ? 'booti ${kernel_addr_r} ${ramdisk_addr_r}:${uz_rdsize} ${fdtcontroladdr}'
      : [
          'load ' + dev + ':${uz_part} ${fdt_addr_r} ${fdtfile}',
          'booti ${kernel_addr_r} ${ramdisk_addr_r}:${uz_rdsize} ${fdt_addr_r}',
        ].join('\n');
  return `# unikernel-z A/B boot with boot counting (generated; see docs/image-layout.md)
${t.prelude.join('\n')}
setenv uz_envaddr \${pxefile_addr_r}
setenv BOOT_ORDER "A B"
setenv BOOT_A_LEFT ${DEFAULT_ATTEMPTS}
setenv BOOT_B_LEFT ${DEFAULT_ATTEMPTS}
if load ${dev}:1 \${uz_envaddr} ${BOOT_ENV_FILE}; then
  env import -t \${uz_envaddr} \${filesize} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
fi
setenv uz_slot
for s in \${BOOT_ORDER}; do
  if test "x\${uz_slot}" = "x"; then
    if test "x\${s}" = "xA" && test \${BOOT_A_LEFT} -gt 0; then
      setexpr BOOT_A_LEFT \${BOOT_A_LEFT} - 1; setenv uz_slot A; setenv uz_part 2
    fi
    if test "x\${s}" = "xB" && test \${BOOT_B_LEFT} -gt 0; then
      setexpr BOOT_B_LEFT \${BOOT_B_LEFT} - 1; setenv uz_slot B; setenv uz_part 3
    fi
  fi
done
if test "x\${uz_slot}" = "x"; then
  echo "UZ-UBOOT no-attempts-left resetting-counters"
  setenv BOOT_A_LEFT ${DEFAULT_ATTEMPTS}
  setenv BOOT_B_LEFT ${DEFAULT_ATTEMPTS}
  env export -t \${uz_envaddr} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
  fatwrite ${dev}:1 \${uz_envaddr} ${BOOT_ENV_FILE} \${filesize}
  reset
fi
env export -t \${uz_envaddr} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
fatwrite ${dev}:1 \${uz_envaddr} ${BOOT_ENV_FILE} \${filesize}
echo "UZ-UBOOT slot=\${uz_slot} order=\${BOOT_ORDER} left_a=\${BOOT_A_LEFT} left_b=\${BOOT_B_LEFT}"
setenv bootargs "${cmdline} uz.slot=\${uz_slot}"
if load ${dev}:\${uz_part} \${kernel_addr_r} ${board.kernel.fileName}; then
  if load ${dev}:\${uz_part} \${ramdisk_addr_r} initrd.img; then
    setenv uz_rdsize \${filesize}
${bootCmd.split('\n').map((l) => `    ${l}`).join('\n')}
  fi
fi
echo "UZ-UBOOT boot-failed slot=\${uz_slot}"
reset
`;
}

/**
 * Wraps a script the way `mkimage -A arm64 -O linux -T script -C none` does (legacy image, multi-file
 * payload: a length table then the script), so U-Boot's `source` accepts it.
 */
export function mkimageScript(script: string, name: string, time: number): Buffer {
  const body = Buffer.from(script, 'utf8');
  const data = Buffer.alloc(8 + body.length);
  data.writeUInt32BE(body.length, 0);
  data.writeUInt32BE(0, 4);
  body.copy(data, 8);
  const h = Buffer.alloc(64);
  h.writeUInt32BE(0x27051956, 0); // magic
  h.writeUInt32BE(time >>> 0, 8);
  h.writeUInt32BE(data.length, 12);
  h.writeUInt32BE(0, 16); // load
  h.writeUInt32BE(0, 20); // entry
  h.writeUInt32BE(crc32(data) >>> 0, 24);
  h.writeUInt8(5, 28); // IH_OS_LINUX
  h.writeUInt8(22, 29); // IH_ARCH_ARM64
  h.writeUInt8(6, 30); // IH_TYPE_SCRIPT
  h.writeUInt8(0, 31); // IH_COMP_NONE
  h.write(name.slice(0, 31), 32, 'ascii');
  h.writeUInt32BE(crc32(h) >>> 0, 4);
  return Buffer.concat([h, data]);
}
