/**
 * `npm run bench:build -- --json`: cold build (empty package cache: download + verify + extract) vs warm build
 * (cache hit) of the qemu-virt demo image, same run. Prints {"cold_s","warm_s","ratio"} with ratio = cold/warm.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildImage } from '../firmware/build.js';

const json = process.argv.includes('--json');
const cache = mkdtempSync(join(tmpdir(), 'uz-bench-cache-'));
const out = mkdtempSync(join(tmpdir(), 'uz-bench-build-'));
process.env.UZ_CACHE_DIR = cache;
const time = async () => {
  const t = performance.now();
  await buildImage({ board: 'qemu-virt', app: 'demo', version: '1.0.0', outDir: out, sourceDateEpoch: 1764000000 });
  return (performance.now() - t) / 1000;
};
try {
  const cold = await time();
  const warm = await time();
  const row = { cold_s: +cold.toFixed(1), warm_s: +warm.toFixed(1), ratio: +(cold / warm).toFixed(2) };
  process.stdout.write(json ? `${JSON.stringify(row)}\n` : `cold ${row.cold_s} s, warm ${row.warm_s} s\n`);
} finally {
  rmSync(cache, { recursive: true, force: true });
  rmSync(out, { recursive: true, force: true });
}
