/**
 * Regenerates the committed Debian lock: `npx tsx firmware/debian/update-lock.ts [lock-path]`
 * (what `uz lock update` does). Needs UZ_DEBIAN_MIRROR or a Debian mirror in the host's apt sources.
 */
import { isUzError } from '../../lib/errors.js';
import { DEFAULT_LOCK_PATH, DEFAULT_LOCK_SPEC, updateLock } from './lock.js';

const path = process.argv[2] ?? DEFAULT_LOCK_PATH;
try {
  const lock = await updateLock(DEFAULT_LOCK_SPEC, { path });
  for (const [name, c] of Object.entries(lock.components)) {
    const size = c.packages.reduce((a, p) => a + p.size, 0);
    console.log(`${name}: ${c.packages.length} packages, ${(size / 1048576).toFixed(1)} MiB`);
  }
  console.log(`wrote ${path} (InRelease ${lock.generatedFrom.date})`);
} catch (e) {
  if (isUzError(e)) {
    console.error(e.toLine());
    process.exit(1);
  }
  throw e;
}
