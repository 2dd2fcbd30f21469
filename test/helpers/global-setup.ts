import { mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

/**
 * One artifacts folder per test run (images built by the tests are shared between test files through it),
 * so a run never reuses an image built from older sources.
 */
export default function setup(): () => void {
  const root = resolve('test-artifacts');
  mkdirSync(root, { recursive: true });
  // Old runs are removed; recent ones may belong to a run still going in another terminal.
  const cutoff = Date.now() - 6 * 3600_000;
  for (const d of readdirSync(root)) {
    const p = join(root, d);
    if (d.startsWith('run-') && statSync(p).mtimeMs < cutoff) rmSync(p, { recursive: true, force: true });
  }
  const dir = join(root, `run-${Date.now()}`);
  mkdirSync(dir, { recursive: true });
  process.env.UZ_TEST_RUN_DIR = dir;
  // Images and boot disks of this run go when it ends (screenshots stay next to the run folders).
  return () => rmSync(dir, { recursive: true, force: true });
}
