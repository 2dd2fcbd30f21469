/**
 * Packages indexes: `dists/<suite>/<component>/binary-<arch>/Packages.xz`, checked against the verified InRelease
 * (size + SHA-256) before being decompressed and parsed.
 */
import { xz } from '@napi-rs/lzma';
import { UzError } from '../../lib/errors.js';
import { field, parseDeb822 } from './deb822.js';
import { fetchBytes, type FetchOptions } from './fetch.js';
import type { ReleaseInfo } from './inrelease.js';

export interface DebPackage {
  name: string;
  version: string;
  architecture: string;
  depends?: string;
  preDepends?: string;
  provides?: string;
  filename: string;
  size: number;
  sha256: string;
  section?: string;
  /** Archive component the index came from (`main`, `non-free-firmware`, ...). */
  component: string;
}

/** Parses Packages text. Stanzas lacking a name, version, filename, size or SHA256 are skipped. */
export function parsePackages(text: string, component: string): DebPackage[] {
  const out: DebPackage[] = [];
  for (const st of parseDeb822(text)) {
    const name = field(st, 'Package');
    const version = field(st, 'Version');
    const filename = field(st, 'Filename');
    const size = field(st, 'Size');
    const sha256 = field(st, 'SHA256');
    if (!name || !version || !filename || !size || !sha256 || !/^\d+$/.test(size)) continue;
    out.push({
      name,
      version,
      architecture: field(st, 'Architecture') ?? 'all',
      depends: field(st, 'Depends'),
      preDepends: field(st, 'Pre-Depends'),
      provides: field(st, 'Provides'),
      filename,
      size: Number(size),
      sha256: sha256.toLowerCase(),
      section: field(st, 'Section'),
      component,
    });
  }
  return out;
}

/**
 * Index paths (relative to `dists/<suite>/`) to load for one component and architecture. `binary-all` is added
 * only when the Release does not say that the per-architecture indexes already carry `Architecture: all`
 * (`No-Support-for-Architecture-all: Packages`, as Debian's own archive does), which is what apt does too.
 */
export function indexPaths(release: ReleaseInfo, component: string, arch: string): string[] {
  const paths = [`${component}/binary-${arch}/Packages.xz`];
  if (!release.noSupportForArchitectureAll.includes('Packages')) paths.push(`${component}/binary-all/Packages.xz`);
  return paths;
}

export interface FetchIndexOptions extends FetchOptions {
  mirror: string;
  suite: string;
  release: ReleaseInfo;
  component: string;
  arch?: string;
}

/** Downloads one verified `Packages.xz` (falling back to its by-hash URL if the plain path is out of step). */
async function fetchVerifiedIndex(opts: FetchIndexOptions, path: string): Promise<Buffer> {
  const entry = opts.release.files.get(path);
  if (!entry) {
    throw new UzError('DEB_NOT_FOUND', `InRelease of ${opts.suite} lists no ${path}`, { suite: opts.suite, path });
  }
  const base = `${opts.mirror}/dists/${opts.suite}`;
  try {
    return await fetchBytes(`${base}/${path}`, entry, opts);
  } catch (e) {
    // A mirror caught mid-sync serves a Packages.xz newer or older than its InRelease; the by-hash copy is stable.
    if (!opts.release.acquireByHash || !(e instanceof UzError)) throw e;
    if (e.code !== 'DEB_HASH_MISMATCH' && e.code !== 'DEB_NOT_FOUND') throw e;
    const dir = path.slice(0, path.lastIndexOf('/'));
    try {
      return await fetchBytes(`${base}/${dir}/by-hash/SHA256/${entry.sha256}`, entry, opts);
    } catch {
      throw e;
    }
  }
}

/** Fetches, verifies, decompresses and parses the Packages indexes of one component. */
export async function fetchPackages(opts: FetchIndexOptions): Promise<DebPackage[]> {
  const arch = opts.arch ?? 'arm64';
  const out: DebPackage[] = [];
  for (const path of indexPaths(opts.release, opts.component, arch)) {
    const compressed = await fetchVerifiedIndex(opts, path);
    let text: string;
    try {
      text = (await xz.decompress(compressed)).toString('utf8');
    } catch (e) {
      throw new UzError('DEB_FORMAT', `Cannot decompress ${path}: ${(e as Error).message}`, { path }, { cause: e });
    }
    out.push(...parsePackages(text, opts.component));
  }
  return out;
}
