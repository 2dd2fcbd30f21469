/**
 * Content-addressed download cache for .deb files: `<cache>/debian/sha256/<sha256>.deb`, where `<cache>` is
 * env `UZ_CACHE_DIR` or the per-user cache directory (`envPaths('unikernel-z').cache`).
 *
 * Nothing enters the cache unverified: a download goes to a temporary file, is hashed while it streams, and is
 * renamed into place (atomic on one filesystem) only when its size and SHA-256 match. A cached file is hashed
 * again before each use, and a damaged one is deleted and downloaded anew.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import envPaths from 'env-paths';
import { UzError } from '../../lib/errors.js';
import { downloadToFile, type Expected, type FetchOptions } from './fetch.js';

/** `<UZ_CACHE_DIR or user cache dir>/debian`. */
export function debianCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const root = env.UZ_CACHE_DIR?.trim() || envPaths('unikernel-z').cache;
  return join(root, 'debian');
}

export function cachePath(cacheDir: string, sha256: string): string {
  if (!/^[0-9a-f]{64}$/.test(sha256)) throw new UzError('DEB_HASH_MISMATCH', `Not a SHA-256: ${sha256}`, { sha256 });
  return join(cacheDir, 'sha256', `${sha256}.deb`);
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/**
 * Returns the cached file's path if present and intact (size and SHA-256 re-checked), else null. A damaged entry
 * is deleted.
 */
export async function getCached(cacheDir: string, expected: Expected): Promise<string | null> {
  const path = cachePath(cacheDir, expected.sha256);
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch {
    return null;
  }
  if (size === expected.size && (await sha256File(path)) === expected.sha256) return path;
  await rm(path, { force: true });
  return null;
}

export interface EnsureOptions extends FetchOptions {
  cacheDir?: string;
}

/** Returns the path of a verified cached copy of `url`, downloading it first if needed. */
export async function ensureCached(url: string, expected: Expected, options: EnsureOptions = {}): Promise<string> {
  const cacheDir = options.cacheDir ?? debianCacheDir();
  const hit = await getCached(cacheDir, expected);
  if (hit) return hit;
  const final = cachePath(cacheDir, expected.sha256);
  const tmpDir = join(cacheDir, 'tmp');
  await mkdir(tmpDir, { recursive: true });
  await mkdir(join(cacheDir, 'sha256'), { recursive: true });
  const tmp = join(tmpDir, `${expected.sha256}.${process.pid}.${randomBytes(6).toString('hex')}.part`);
  try {
    await downloadToFile(url, tmp, expected, options);
    await rename(tmp, final);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  return final;
}
