/**
 * The Debian lock file (`firmware/debian/debian.lock.json`, committed).
 *
 * Trust model: `uz lock update` ({@link updateLock}) is the only step that talks to the archive's signatures. It
 * walks the chain signed InRelease (checked against Debian's committed archive keys in `keys/`) → SHA-256 of each
 * Packages.xz → Packages entries, resolves the components below, and records name, version, filename, size and
 * SHA-256 of every .deb. The lock is then reviewed and committed, and from then on the lock itself is the trust
 * anchor at build time: {@link fetchLocked} downloads from any mirror (mirrors are untrusted) and accepts a file
 * only if its size and SHA-256 equal the lock's. A build therefore needs no keys, no InRelease and no index, is
 * reproducible, and cannot drift when the suite moves on; when a locked file disappears from the mirror the build
 * fails with `DEB_LOCK_STALE` and someone runs `uz lock update` again.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { PublicKey } from 'openpgp';
import cliProgress from 'cli-progress';
import { z } from 'zod';
import { UzError, isUzError } from '../../lib/errors.js';
import { ensureCached, debianCacheDir, getCached } from './cache.js';
import { readDebControl, checkIdentity } from './deb.js';
import { fetchBytes, type FetchOptions } from './fetch.js';
import { verifyInRelease } from './inrelease.js';
import { loadDebianKeys } from './keys.js';
import { resolveMirror } from './mirror.js';
import { fetchPackages, type DebPackage } from './packages.js';
import { buildIndex, resolveClosure, resolveMetapackages, resolveRoots } from './resolve.js';

export const DEFAULT_LOCK_PATH = fileURLToPath(new URL('./debian.lock.json', import.meta.url));

// ---------------------------------------------------------------------------------------------------------------
// Spec: what to lock.

export interface ComponentSpec {
  roots: string[];
  /**
   * `closure`: roots plus their Depends/Pre-Depends closure. `roots`: the roots alone. `metapackage`: the packages
   * the (meta)package roots directly depend on, not the roots and nothing deeper.
   */
  mode: 'closure' | 'roots' | 'metapackage';
  /** Names (real or virtual) never shipped; a dependency on one counts as met. */
  exclude?: string[];
  /** Virtual package → provider to use. */
  prefer?: Record<string, string>;
}

export interface LockSpec {
  suite: string;
  arch: string;
  /** Archive components whose indexes are loaded (resolution runs over all of them together). */
  archiveComponents: string[];
  components: Record<string, ComponentSpec>;
}

/**
 * Packages a device never needs at run time: package-management and install-time machinery (there is no dpkg on
 * the device: images are assembled from extracted files), interpreters used only by maintainer scripts, and
 * Node's corepack shim (a package-manager launcher, useless on a device that runs a bundled agent).
 */
export const RUNTIME_EXCLUDES: readonly string[] = [
  'debconf',
  'debconf-2.0',
  'cdebconf',
  'dpkg',
  'install-info',
  'perl-base',
  'libc-bin',
  'init-system-helpers',
  'adduser',
  'passwd',
  'base-files',
  'base-passwd',
  'sensible-utils',
  'lsb-base',
  'sysvinit-utils',
  'node-corepack',
];

export const DEFAULT_LOCK_SPEC: LockSpec = {
  suite: 'trixie',
  arch: 'arm64',
  archiveComponents: ['main', 'non-free-firmware'],
  components: {
    // linux-image-arm64 → linux-image-6.12.N+deb13-arm64 (/boot/vmlinuz-*, /usr/lib/modules/*); its own deps
    // (kmod, initramfs-tools, linux-base) are install-time tooling, not wanted.
    kernel: { roots: ['linux-image-arm64'], mode: 'metapackage' },
    busybox: { roots: ['busybox-static'], mode: 'roots' },
    nodejs: { roots: ['nodejs'], mode: 'closure', exclude: [...RUNTIME_EXCLUDES] },
    e2fsprogs: { roots: ['e2fsprogs'], mode: 'closure', exclude: [...RUNTIME_EXCLUDES] },
    'raspi-firmware': { roots: ['raspi-firmware'], mode: 'roots' },
    'u-boot-rpi': { roots: ['u-boot-rpi'], mode: 'roots' },
    'u-boot-qemu': { roots: ['u-boot-qemu'], mode: 'roots' },
    'wifi-firmware': { roots: ['firmware-brcm80211'], mode: 'roots' },
    // Boards with Wi-Fi (Board.wifi): wpa_supplicant and the regulatory database cfg80211 loads. The image ships
    // only /usr/sbin/wpa_supplicant and the libraries its ELF NEEDED entries reach (checked at build time,
    // firmware/initramfs/wifi.ts). wpa_cli is not shipped, so readline (which only it links) is not locked;
    // libdbus-1 (and libsystemd, libcap behind it) is: Debian's wpa_supplicant links it even though the image
    // never runs a D-Bus daemon.
    wifi: {
      roots: ['wpasupplicant', 'wireless-regdb'],
      mode: 'closure',
      exclude: [...RUNTIME_EXCLUDES, 'libreadline8t64', 'readline-common'],
    },
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Lock file schema.

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'lowercase hex SHA-256');

export const LockedPackageSchema = z
  .object({
    name: z.string().regex(/^[a-z0-9][a-z0-9+.-]+$/, 'Debian package name'),
    version: z.string().regex(/^[A-Za-z0-9.+~:-]+$/, 'Debian version'),
    architecture: z.string().regex(/^[a-z0-9-]+$/),
    filename: z
      .string()
      .regex(/^pool\/[A-Za-z0-9+._~%/-]+\.deb$/, 'pool/… .deb path')
      .refine((f) => !f.split('/').includes('..') && !f.includes('//'), 'no .. or empty segments'),
    size: z.number().int().positive(),
    sha256: sha256Hex,
  })
  .strict();

export const LockSchema = z
  .object({
    version: z.literal(1),
    suite: z.string().regex(/^[a-z0-9-]+$/),
    generatedFrom: z.object({ inReleaseSha256: sha256Hex, date: z.iso.datetime() }).strict(),
    components: z.record(
      z.string().regex(/^[a-z0-9][a-z0-9-]*$/),
      z.object({ roots: z.array(z.string().min(1)).min(1), packages: z.array(LockedPackageSchema).min(1) }).strict(),
    ),
  })
  .strict();

export type LockedPackage = z.infer<typeof LockedPackageSchema>;
export type DebianLock = z.infer<typeof LockSchema>;

/** Validates parsed JSON as a lock; throws `DEB_LOCK_INVALID` listing the problems. */
export function parseLock(data: unknown): DebianLock {
  const r = LockSchema.safeParse(data);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
    throw new UzError('DEB_LOCK_INVALID', `Invalid Debian lock file: ${issues.slice(0, 5).join('; ')}`, { issues });
  }
  return r.data;
}

export async function readLock(path: string = DEFAULT_LOCK_PATH): Promise<DebianLock> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new UzError('DEB_LOCK_INVALID', `Cannot read Debian lock file ${path}: run \`uz lock update\``, { path }, { cause: e });
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new UzError('DEB_LOCK_INVALID', `Debian lock file ${path} is not JSON`, { path }, { cause: e });
  }
  return parseLock(data);
}

/** Writes the lock (validated, 2-space JSON, trailing newline) via a temporary file and rename. */
export async function writeLock(lock: DebianLock, path: string = DEFAULT_LOCK_PATH): Promise<void> {
  const text = `${JSON.stringify(parseLock(lock), null, 2)}\n`;
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await writeFile(tmp, text);
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Producing the lock from the signed archive.

export interface ArchiveOptions extends FetchOptions {
  /** Mirror base URL; default from {@link resolveMirror}. */
  mirror?: string;
  /** Trusted archive keys; default the committed Debian keys. Tests inject their own. */
  keys?: readonly PublicKey[];
  /** Reference time for the InRelease checks. */
  now?: Date;
}

/** Resolves every component of `spec` from the verified archive indexes and returns the lock (not written). */
export async function buildLock(spec: LockSpec = DEFAULT_LOCK_SPEC, options: ArchiveOptions = {}): Promise<DebianLock> {
  const mirror = options.mirror ?? resolveMirror();
  const keys = options.keys ?? (await loadDebianKeys());
  const inReleaseBytes = await fetchBytes(`${mirror}/dists/${spec.suite}/InRelease`, undefined, options);
  const { release } = await verifyInRelease(inReleaseBytes.toString('utf8'), keys, { now: options.now });
  if (release.codename !== spec.suite && release.suite !== spec.suite) {
    throw new UzError('DEB_RELEASE_INVALID', `InRelease is for ${release.codename ?? release.suite}, not ${spec.suite}`, {
      expected: spec.suite,
      codename: release.codename,
      suite: release.suite,
    });
  }
  const all: DebPackage[] = [];
  for (const component of spec.archiveComponents) {
    all.push(...(await fetchPackages({ ...options, mirror, suite: spec.suite, release, component, arch: spec.arch })));
  }
  const index = buildIndex(all, spec.arch);

  const components: DebianLock['components'] = {};
  for (const [name, c] of Object.entries(spec.components)) {
    const opts = { exclude: c.exclude, prefer: c.prefer };
    const pkgs =
      c.mode === 'closure'
        ? resolveClosure(index, c.roots, opts)
        : c.mode === 'metapackage'
          ? resolveMetapackages(index, c.roots, opts)
          : resolveRoots(index, c.roots, opts);
    components[name] = {
      roots: [...c.roots],
      packages: pkgs.map((p) => ({
        name: p.name,
        version: p.version,
        architecture: p.architecture,
        filename: p.filename,
        size: p.size,
        sha256: p.sha256,
      })),
    };
  }
  return parseLock({
    version: 1,
    suite: spec.suite,
    generatedFrom: {
      inReleaseSha256: createHash('sha256').update(inReleaseBytes).digest('hex'),
      date: release.date.toISOString(),
    },
    components,
  });
}

export interface UpdateLockOptions extends ArchiveOptions {
  /** Lock file to write (default the committed one). */
  path?: string;
  /** Accept an InRelease older than the one the existing lock came from (default false: a mirror serving an old
   * snapshot could otherwise roll packages back to versions with known holes). */
  allowOlder?: boolean;
}

/**
 * `uz lock update`: {@link buildLock} then {@link writeLock} to `path`. Refuses (`DEB_RELEASE_INVALID`) an InRelease
 * dated before the existing lock's unless `allowOlder`.
 */
export async function updateLock(spec: LockSpec = DEFAULT_LOCK_SPEC, options: UpdateLockOptions = {}): Promise<DebianLock> {
  const path = options.path ?? DEFAULT_LOCK_PATH;
  let previous: DebianLock | undefined;
  try {
    previous = await readLock(path);
  } catch {
    previous = undefined; // none yet, or unreadable: it is being replaced anyway
  }
  const lock = await buildLock(spec, options);
  if (
    previous &&
    !options.allowOlder &&
    previous.suite === lock.suite &&
    Date.parse(lock.generatedFrom.date) < Date.parse(previous.generatedFrom.date)
  ) {
    throw new UzError(
      'DEB_RELEASE_INVALID',
      `The mirror's ${lock.suite} InRelease (${lock.generatedFrom.date}) is older than the lock's (${previous.generatedFrom.date})`,
      { mirrorDate: lock.generatedFrom.date, lockDate: previous.generatedFrom.date },
    );
  }
  await writeLock(lock, path);
  return lock;
}

// ---------------------------------------------------------------------------------------------------------------
// Build time: fetching what the lock names.

export interface FetchedDeb extends LockedPackage {
  /** Verified file in the cache. */
  path: string;
}

export interface FetchLockedOptions extends FetchOptions {
  mirror?: string;
  cacheDir?: string;
  /** Parallel downloads (default 3). */
  concurrency?: number;
  /** Show a progress bar; default: when stderr is a TTY. */
  progress?: boolean;
  /** Check each .deb's control fields name the locked package and version (default true). */
  checkControl?: boolean;
}

/**
 * Returns verified cached copies of every .deb of one lock component (downloading what is missing), in lock order.
 * Throws `DEB_NOT_FOUND` for an unknown component, `DEB_LOCK_STALE` when the mirror no longer has a locked file,
 * `DEB_HASH_MISMATCH` when a download does not match the lock (nothing is cached then), `DEB_FETCH` on network
 * failure.
 */
export async function fetchLocked(
  lock: DebianLock,
  componentName: string,
  options: FetchLockedOptions = {},
): Promise<FetchedDeb[]> {
  const component = lock.components[componentName];
  if (!component) {
    throw new UzError('DEB_NOT_FOUND', `The Debian lock has no component ${componentName}`, {
      component: componentName,
      known: Object.keys(lock.components),
    });
  }
  const cacheDir = options.cacheDir ?? debianCacheDir();
  const pkgs = component.packages;
  const results = new Array<FetchedDeb>(pkgs.length);

  // Cache hits first (each re-hashed), so the bar only counts what really has to be downloaded.
  const missing: number[] = [];
  for (let i = 0; i < pkgs.length; i++) {
    const p = pkgs[i]!;
    const hit = await getCached(cacheDir, p);
    if (hit) results[i] = { ...p, path: hit };
    else missing.push(i);
  }

  let mirror: string | undefined;
  let bar: cliProgress.SingleBar | undefined;
  if (missing.length) {
    mirror = options.mirror ?? resolveMirror();
    const showBar = options.progress ?? Boolean(process.stderr.isTTY);
    if (showBar) {
      const total = missing.reduce((a, i) => a + pkgs[i]!.size, 0);
      bar = new cliProgress.SingleBar(
        {
          stream: process.stderr,
          format: `debian ${componentName} [{bar}] {percentage}% | {value}/{total} KiB | {files}`,
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      );
      bar.start(Math.ceil(total / 1024), 0, { files: `0/${missing.length} files` });
    }
  }

  let bytes = 0;
  let done = 0;
  const onProgress = (delta: number) => {
    bytes += delta;
    bar?.update(Math.floor(bytes / 1024));
  };
  const queue = [...missing];
  const worker = async () => {
    for (let i = queue.shift(); i !== undefined; i = queue.shift()) {
      const p = pkgs[i]!;
      const url = `${mirror}/${p.filename}`;
      try {
        const path = await ensureCached(url, p, { ...options, cacheDir, onProgress });
        results[i] = { ...p, path };
      } catch (e) {
        queue.length = 0; // let the other workers stop after their current file
        if (isUzError(e, 'DEB_NOT_FOUND')) {
          throw new UzError(
            'DEB_LOCK_STALE',
            `${p.filename} (${p.name} ${p.version}) is gone from the mirror: the Debian lock is stale, run \`uz lock update\``,
            { component: componentName, package: p.name, version: p.version, url },
            { cause: e },
          );
        }
        throw e;
      }
      done++;
      bar?.update(Math.floor(bytes / 1024), { files: `${done}/${missing.length} files` });
    }
  };
  try {
    const n = Math.max(1, Math.min(options.concurrency ?? 3, missing.length));
    // Wait for every worker (none is left writing into the cache once this returns), then report the first error.
    const settled = await Promise.allSettled(Array.from({ length: n }, worker));
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
    bar?.update(bar.getTotal());
  } finally {
    bar?.stop();
  }

  if (options.checkControl ?? true) {
    for (const r of results) checkIdentity(await readDebControl(await readFile(r.path)), r);
  }
  return results;
}
