import { open, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';

/**
 * Write, fsync, rename, fsync the directory: after a power cut the file holds either the old or the new
 * content, never a mix. (On FAT, rename is not atomic in the journal sense, but the old file stays intact
 * until the new one is complete, and readers treat a damaged file as "factory state", which is bootable.)
 */
export async function writeFileDurable(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, 'w', 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
  try {
    const d = await open(dirname(path), 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    // Some filesystems (vfat) refuse fsync on a directory handle; the file itself is already synced.
  }
}
