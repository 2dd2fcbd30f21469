/**
 * Everything the updater persists goes through this small interface: the state record, the download
 * progress record, boot-control files and the slot block devices. Two implementations: the real file system
 * (node:fs, below) and CrashStorage (updater/sim/crash-storage.ts), which keeps unflushed writes in a
 * "page cache" that a simulated power cut throws away. The power-cut harness is only honest because the
 * agent cannot reach around this interface.
 */
import { open, readFile, mkdir, rm, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { UzError } from '../../lib/errors.js';
import { writeFileDurable } from '../fsutil.js';

/** An existing file or block device opened read-write at fixed size (a slot). */
export interface BlockFile {
  readonly path: string;
  /** Usable size in bytes (a block device's size, or the file's). */
  size(): Promise<number>;
  /** Reads into buf from position; returns bytes read (0 at the end). */
  read(buf: Buffer, position: number): Promise<number>;
  write(data: Uint8Array, position: number): Promise<void>;
  /** Makes every earlier write durable. */
  sync(): Promise<void>;
  close(): Promise<void>;
}

export interface Storage {
  /** Whole small file, or null when it does not exist. */
  readFile(path: string): Promise<Buffer | null>;
  /** Replace a small file so that after a power cut it holds the old or the new content, never a mix. */
  writeFileDurable(path: string, data: string | Uint8Array): Promise<void>;
  remove(path: string): Promise<void>;
  mkdirp(path: string): Promise<void>;
  openBlock(path: string): Promise<BlockFile>;
}

/** Maps file-system errors to the reason codes the agent reports. */
export function ioError(e: unknown, what: string, path: string): UzError {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') return new UzError('DATA_FULL', `no space left writing ${what} (${path})`, { path }, { cause: e });
  if (code === 'EROFS') return new UzError('READ_ONLY', `${what} is on a read-only file system (${path})`, { path }, { cause: e });
  if (code === 'ENOENT') return new UzError('NOT_FOUND', `${what} does not exist (${path})`, { path }, { cause: e });
  return new UzError('IO', `${what}: ${(e as Error)?.message ?? String(e)} (${path})`, { path, errno: code }, { cause: e });
}

/** Size of a block device from sysfs (fstat reports 0 for devices). */
async function blockDeviceSize(path: string): Promise<number> {
  const sectors = await readFile(`/sys/class/block/${basename(path)}/size`, 'utf8');
  return Number.parseInt(sectors.trim(), 10) * 512;
}

export const nodeStorage: Storage = {
  async readFile(path) {
    try {
      return await readFile(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw ioError(e, 'reading a file', path);
    }
  },
  async writeFileDurable(path, data) {
    try {
      await writeFileDurable(path, data);
    } catch (e) {
      throw ioError(e, 'writing a state file', path);
    }
  },
  async remove(path) {
    await rm(path, { force: true });
  },
  async mkdirp(path) {
    try {
      await mkdir(path, { recursive: true });
    } catch (e) {
      throw ioError(e, 'creating a directory', path);
    }
  },
  async openBlock(path) {
    const fh = await open(path, 'r+').catch((e: unknown) => {
      throw ioError(e, 'opening a slot', path);
    });
    const st = await fh.stat();
    const size = st.isBlockDevice() ? await blockDeviceSize(path) : st.size;
    return {
      path,
      async size() {
        return size;
      },
      async read(buf, position) {
        return (await fh.read(buf, 0, buf.length, position)).bytesRead;
      },
      async write(data, position) {
        let off = 0;
        try {
          while (off < data.length) off += (await fh.write(data, off, data.length - off, position + off)).bytesWritten;
        } catch (e) {
          throw ioError(e, 'writing a slot', path);
        }
      },
      async sync() {
        try {
          await fh.sync();
        } catch (e) {
          throw ioError(e, 'syncing a slot', path);
        }
      },
      async close() {
        await fh.close();
      },
    };
  },
};

/** Reads a file as JSON; null when missing or unreadable as JSON (callers validate the shape). */
export async function readJson(storage: Storage, path: string): Promise<unknown | null> {
  const buf = await storage.readFile(path);
  if (!buf) return null;
  try {
    return JSON.parse(buf.toString('utf8'));
  } catch {
    return null;
  }
}

export async function fileExists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
