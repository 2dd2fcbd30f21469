/** Debian trixie arm64 packages for firmware images: signed-archive resolution into a lock, verified fetching. */
export { parseDeb822, parseRelations, field, type Stanza } from './deb822.js';
export { resolveMirror, normalizeMirror, mirrorsFromSources, mirrorsFromSourcesList } from './mirror.js';
export { loadDebianKeys, DEBIAN_KEYS_DIR } from './keys.js';
export { verifyInRelease, parseRelease, type ReleaseInfo, type VerifiedRelease } from './inrelease.js';
export { fetchPackages, parsePackages, indexPaths, type DebPackage } from './packages.js';
export { buildIndex, resolveClosure, resolveMetapackages, resolveRoots, type PackageIndex } from './resolve.js';
export {
  parseAr,
  readDeb,
  readDebControl,
  extractDeb,
  checkIdentity,
  type DebArchive,
  type DebEntry,
  type ArMember,
} from './deb.js';
export { debianCacheDir, ensureCached, getCached, cachePath, sha256File } from './cache.js';
export { fetchBytes, downloadToFile, type FetchOptions } from './fetch.js';
export {
  DEFAULT_LOCK_SPEC,
  DEFAULT_LOCK_PATH,
  RUNTIME_EXCLUDES,
  LockSchema,
  parseLock,
  readLock,
  writeLock,
  buildLock,
  updateLock,
  fetchLocked,
  type DebianLock,
  type LockedPackage,
  type LockSpec,
  type ComponentSpec,
  type FetchedDeb,
  type UpdateLockOptions,
  type FetchLockedOptions,
  type ArchiveOptions,
} from './lock.js';
