import { z } from 'zod';

/** arm64 ELF HWCAP bits in order (Linux arch/arm64/include/uapi/asm/hwcap.h): bit i is HWCAP_NAMES[i]. */
export const HWCAP_NAMES = [
  'fp', 'asimd', 'evtstrm', 'aes', 'pmull', 'sha1', 'sha2', 'crc32', 'atomics', 'fphp', 'asimdhp', 'cpuid', 'asimdrdm', 'jscvt', 'fcma', 'lrcpc',
  'dcpop', 'sha3', 'sm3', 'sm4', 'asimddp', 'sha512', 'sve', 'asimdfhm', 'dit', 'uscat', 'ilrcpc', 'flagm', 'ssbs', 'sb', 'paca', 'pacg',
] as const;

/**
 * A board is data: adding one is adding a JSON file here (and a boot-control scheme only if it is new).
 * Everything the builder, the agent and the QEMU runner need to know about a board lives in this schema.
 */
export const BootControlScheme = z.enum(['uboot-bootcount', 'rpi-tryboot']);
export type BootControlScheme = z.infer<typeof BootControlScheme>;

const MiB = z.number().int().positive().max(64 * 1024);

export const BoardSchema = z
  .object({
    id: z.string().regex(/^[a-z0-9][a-z0-9-]{1,31}$/),
    name: z.string().min(1).max(120),
    /** Device-tree `compatible` strings this image accepts; a bundle names them for compatibility checks. */
    hardwareIds: z.array(z.string().min(1).max(64)).min(1).max(16),
    /**
     * The board's CPU cores as a QEMU CPU model. The agent's start-up snapshot is built for it
     * (firmware/node-snapshot.ts): V8 only accepts a snapshot made on a CPU with the same features.
     */
    cpu: z.enum(['cortex-a53', 'cortex-a72', 'cortex-a76']),
    /**
     * The SoC's CPU features as Linux reports them (/proc/cpuinfo `Features`, the ELF HWCAP bits), where they
     * differ from QEMU's model of `cpu`: QEMU models every core with the crypto extensions, which the Pi 3, 4
     * and Zero 2 W lack. V8 records the HWCAP-derived features in a snapshot's version tag, so
     * test/firmware/snapshot-cpu.test.ts checks that these give the tag of the model the snapshot is built for.
     */
    hwcaps: z.array(z.enum(HWCAP_NAMES)).min(1).optional(),
    bootControl: BootControlScheme,
    /**
     * How the board starts: `qemu-uboot` = U-Boot given to QEMU as its firmware (-bios);
     * `rpi-firmware` = the Pi GPU firmware loads the kernel straight from the slot (tryboot);
     * `rpi-firmware-uboot` = the Pi GPU firmware in p1 loads U-Boot, which runs the bootcount script.
     */
    boot: z.discriminatedUnion('kind', [
      z.object({ kind: z.literal('qemu-uboot') }).strict(),
      z
        .object({
          kind: z.literal('rpi-firmware'),
          /** Files from Debian's raspi-firmware package copied into each slot (none on Pi 5: EEPROM boots). */
          firmwareFiles: z.array(z.string().min(1)),
          configTxt: z.array(z.string()).default([]),
        })
        .strict(),
      z
        .object({
          kind: z.literal('rpi-firmware-uboot'),
          firmwareFiles: z.array(z.string().min(1)).min(1),
          /** Debian u-boot-rpi build directory: rpi_3, rpi_4 or rpi_arm64. */
          ubootBuild: z.enum(['rpi_3', 'rpi_4', 'rpi_arm64']),
          configTxt: z.array(z.string()).default([]),
        })
        .strict(),
    ]),
    kernel: z
      .object({
        /** Name of the kernel file inside a slot. */
        fileName: z.string().min(1),
        /** Extra kernel command-line words (console, rootwait, ...). */
        cmdline: z.array(z.string()).default([]),
        /**
         * How the initramfs is stored in the slot. gzip suits real boards (the SD card is the slow part);
         * none suits an emulated board (the "card" is a host file read at GB/s, while the emulated CPU
         * inflates gzip ~20x slower than a real one: several seconds of every boot). docs/boards.md.
         */
        initramfsCompression: z.enum(['gzip', 'none']).default('gzip'),
      })
      .strict(),
    /** DTB paths relative to the kernel package's DTB directory (e.g. broadcom/bcm2711-rpi-4-b.dtb). */
    dtbs: z.array(z.string().min(1)).default([]),
    /** Kernel modules the init loads in this order (dependencies are added from modules.dep). */
    modules: z.array(z.string().min(1)).default([]),
    /**
     * Modules the init loads only after the data partition is mounted, i.e. off the path to the workload's
     * start: what only the network and the watchdog need. They are loaded before either is brought up.
     */
    lateModules: z.array(z.string().min(1)).default([]),
    /** Optional modules loaded when present and wanted (e.g. Wi-Fi). */
    optionalModules: z.array(z.string().min(1)).default([]),
    console: z.string().min(1),
    disk: z
      .object({
        /** Whole-disk device as the kernel names it on this board. */
        device: z.string().regex(/^\/dev\/[a-z0-9]+$/),
        /** Partition device = device + partSeparator + number (mmcblk0 -> mmcblk0p1). */
        partSeparator: z.enum(['', 'p']),
      })
      .strict(),
    network: z.object({ interface: z.string().min(1) }).strict(),
    /**
     * Wi-Fi hardware: present when the board has a radio the image brings up for a device provisioned with
     * `wifi` (docs/provisioning.md). The build then adds wpa_supplicant (lock component `wifi`), the regulatory
     * database and the firmware files below; boards without it (qemu-virt) carry none of that.
     */
    wifi: z
      .object({
        /** Interface the driver creates; wpa_supplicant and DHCP run on it. */
        interface: z.string().regex(/^[a-z][a-z0-9]{0,14}$/, 'must be a Linux interface name such as wlan0'),
        /**
         * Firmware files the Wi-Fi driver loads, as paths under /usr/lib/firmware in the locked `wifi-firmware`
         * package (symlinks are resolved at build time). A name the package lacks fails the build
         * (BOARD_WIFI_FIRMWARE_MISSING). Empty for simulated radios (mac80211_hwsim).
         */
        firmware: z
          .array(
            z
              .string()
              .regex(/^[A-Za-z0-9._,+-]+(\/[A-Za-z0-9._,+-]+)*$/, 'must be a relative path of safe characters')
              .refine((p) => !p.split('/').some((s) => s === '.' || s === '..'), 'must not contain . or .. segments'),
          )
          .max(64)
          .default([]),
      })
      .strict()
      .optional(),
    watchdog: z
      .object({ module: z.string().min(1).optional(), device: z.string().default('/dev/watchdog') })
      .strict()
      .optional(),
    partitions: z.object({ bootMiB: MiB, slotMiB: MiB, dataMiB: MiB }).strict(),
    qemu: z
      .object({
        machine: z.string(),
        cpu: z.string(),
        memoryMiB: z.number().int().positive(),
        smp: z.number().int().positive(),
      })
      .strict()
      .optional(),
    /** What has been verified for this board and what needs hardware; shown by `uz boards`. */
    verification: z.string().min(1),
  })
  .strict()
  .refine((b) => !b.qemu || b.qemu.cpu === b.cpu, { message: 'qemu.cpu must be the board cpu', path: ['qemu', 'cpu'] });

export type Board = z.infer<typeof BoardSchema>;

export function partitionDevice(board: Board, n: number): string {
  return `${board.disk.device}${board.disk.partSeparator}${n}`;
}
