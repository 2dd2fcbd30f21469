/**
 * `npm run bench:size -- --json`: image and slot size for qemu-virt and rpi4, against the published size of
 * Raspberry Pi OS Lite 64-bit (Trixie, 2025-11-24: 2,840 MB unpacked, as listed for Raspberry Pi Imager).
 * Prints one JSON line per board with --json.
 */
import { mkdtempSync, statSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { buildImage } from '../firmware/build.js';

const RPI_OS_LITE_UNPACKED_MB = 2840;
const json = process.argv.includes('--json');
const out = mkdtempSync(join(tmpdir(), 'uz-bench-size-'));
const MB = 1_000_000;
try {
  for (const board of ['qemu-virt', 'rpi4']) {
    const r = await buildImage({ board, app: 'demo', version: '1.0.0', outDir: out, sourceDateEpoch: 1764000000 });
    // What a flash tool writes and what a download costs: the image compressed with xz (-6, 2 threads).
    const xz = spawnSync('xz', ['-T2', '-6', '-k', '-f', r.image]);
    if (xz.status !== 0) throw new Error('xz not found: apt-get install xz-utils');
    const xzBytes = statSync(`${r.image}.xz`).size;
    // Content that must be stored: boot files + two slots' used bytes (data partition is blank).
    const usedBytes = r.sizes.slotUsedBytes * 2;
    const row = {
      board,
      image_MB: +(r.sizes.imageBytes / MB).toFixed(1),
      slot_used_MB: +(r.sizes.slotUsedBytes / MB).toFixed(1),
      slot_partition_MB: +(r.sizes.slotBytes / MB).toFixed(1),
      image_xz_MB: +(xzBytes / MB).toFixed(1),
      rpios_lite_unpacked_MB: RPI_OS_LITE_UNPACKED_MB,
      ratio_rpios_over_image: +(RPI_OS_LITE_UNPACKED_MB / (r.sizes.imageBytes / MB)).toFixed(2),
      ratio_rpios_over_content: +(RPI_OS_LITE_UNPACKED_MB / (usedBytes / MB)).toFixed(2),
    };
    if (json) process.stdout.write(`${JSON.stringify(row)}\n`);
    else console.log(row);
  }
} finally {
  rmSync(out, { recursive: true, force: true });
}
