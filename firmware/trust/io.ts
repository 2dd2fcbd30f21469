/** Thin file-system wrappers around the pure trust functions. */
import { constants } from 'node:fs';
import { access, chmod, mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { UzError } from '../../lib/errors.js';
import { generateSigningKey, parsePrivateKey, serializePrivateKey, type SigningKey } from './keys.js';
import {
  MAX_ROOT_BYTES,
  ROLE_NAMES,
  createRootSigned,
  parseRootMetadata,
  signRoot,
  verifyRootSelfSigned,
  type RoleName,
  type RootMetadata,
} from './root.js';

async function readLimited(path: string, limit: number, what: string): Promise<Buffer> {
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (e) {
    throw new UzError('NOT_FOUND', `cannot read ${what} ${path}`, { path }, { cause: e });
  }
  if (size > limit) throw new UzError('MALFORMED', `${what} ${path} is larger than ${limit} bytes`, { path });
  return readFile(path);
}

/** Reads root.json and checks structure + its own root-role threshold. The file IS the device's trust anchor. */
export async function loadTrustedRoot(path: string): Promise<RootMetadata> {
  const root = parseRootMetadata(await readLimited(path, MAX_ROOT_BYTES, 'trust root'));
  verifyRootSelfSigned(root);
  return root;
}

/** Writes root metadata as pretty JSON (what is signed is the canonical form of `signed`, not the file bytes). */
export async function writeRootFile(path: string, root: RootMetadata, opts: { overwrite?: boolean } = {}): Promise<void> {
  try {
    await writeFile(path, JSON.stringify(root, null, 2) + '\n', { flag: opts.overwrite ? 'w' : 'wx', mode: 0o644 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new UzError('KEYS_EXIST', `${path} already exists`, { path });
    throw e;
  }
}

/**
 * Loads a private key file. Like ssh, refuses files readable by group/others (KEY_PERMISSIONS) on POSIX.
 */
export async function loadPrivateKey(path: string): Promise<SigningKey & { role: string }> {
  const st = await stat(path).catch((e: unknown) => {
    throw new UzError('NOT_FOUND', `cannot read key ${path}`, { path }, { cause: e });
  });
  if (process.platform !== 'win32' && (st.mode & 0o077) !== 0) {
    throw new UzError('KEY_PERMISSIONS', `private key ${path} is accessible by group/others (chmod 600 it)`, { path });
  }
  return parsePrivateKey((await readLimited(path, 16 * 1024, 'private key')).toString('utf8'));
}

export async function loadPrivateKeys(paths: readonly string[]): Promise<(SigningKey & { role: string })[]> {
  const out: (SigningKey & { role: string })[] = [];
  for (const p of paths) out.push(await loadPrivateKey(p));
  return out;
}

/** Creates a new private key file with mode 0600; never overwrites (KEYS_EXIST). */
export async function writePrivateKeyFile(path: string, key: SigningKey, role: string): Promise<void> {
  let fh;
  try {
    fh = await open(path, 'wx', 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new UzError('KEYS_EXIST', `${path} already exists`, { path });
    throw e;
  }
  try {
    await fh.writeFile(serializePrivateKey(key, role));
    await fh.chmod(0o600); // in case the umask was odd
  } finally {
    await fh.close();
  }
}

export interface KeysInitOptions {
  out: string;
  /** Root role: threshold of keys. Defaults 1 of 1. */
  threshold?: number;
  keys?: number;
  releaseThreshold?: number;
  releaseKeys?: number;
  expiresDays?: number;
  now?: Date;
}

export interface KeysInitResult {
  rootPath: string;
  version: number;
  expires: string;
  /** Role → [{ keyid, path }]. Paths of private key files; contents are never returned. */
  keys: Record<RoleName, { keyid: string; path: string }[]>;
}

/**
 * `uz keys init`: generates root keys (k of n), release keys, and one key each for targets/snapshot/timestamp,
 * writes <out>/root.json (signed by all n root keys) and <out>/private/<role>-<i>.key.json (0600, dir 0700).
 * Refuses (KEYS_EXIST) if any of the files already exists, before writing anything.
 */
export async function keysInit(o: KeysInitOptions): Promise<KeysInitResult> {
  const n = o.keys ?? 1;
  const k = o.threshold ?? 1;
  const rn = o.releaseKeys ?? 1;
  const rk = o.releaseThreshold ?? 1;
  for (const [name, v, max] of [['keys', n, 16], ['threshold', k, n], ['release-keys', rn, 16], ['release-threshold', rk, rn]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > max) throw new UzError('BAD_THRESHOLD', `--${name} must be an integer in 1..${max}`, { [name]: v });
  }
  const counts: Record<RoleName, number> = { root: n, release: rn, targets: 1, snapshot: 1, timestamp: 1 };
  const privDir = join(o.out, 'private');
  const rootPath = join(o.out, 'root.json');
  const plan: { role: RoleName; key: SigningKey; path: string }[] = [];
  for (const role of ROLE_NAMES) {
    for (let i = 1; i <= counts[role]; i++) plan.push({ role, key: generateSigningKey(), path: join(privDir, `${role}-${i}.key.json`) });
  }
  for (const p of [rootPath, ...plan.map((x) => x.path)]) {
    const exists = await access(p, constants.F_OK).then(() => true, () => false);
    if (exists) throw new UzError('KEYS_EXIST', `${p} already exists; refusing to overwrite key material`, { path: p });
  }
  await mkdir(privDir, { recursive: true, mode: 0o700 });
  await chmod(privDir, 0o700);
  const now = o.now ?? new Date();
  const expires = new Date(now.getTime() + (o.expiresDays ?? 365) * 86_400_000);
  const byRole = (r: RoleName) => plan.filter((x) => x.role === r).map((x) => x.key);
  const signed = createRootSigned({
    expires,
    root: { keys: byRole('root'), threshold: k },
    release: { keys: byRole('release'), threshold: rk },
    targets: { keys: byRole('targets'), threshold: 1 },
    snapshot: { keys: byRole('snapshot'), threshold: 1 },
    timestamp: { keys: byRole('timestamp'), threshold: 1 },
  });
  const root = signRoot(signed, byRole('root'));
  for (const x of plan) await writePrivateKeyFile(x.path, x.key, x.role);
  await writeRootFile(rootPath, root);
  const keys = Object.fromEntries(ROLE_NAMES.map((r) => [r, plan.filter((x) => x.role === r).map((x) => ({ keyid: x.key.keyid, path: x.path }))])) as KeysInitResult['keys'];
  return { rootPath, version: root.signed.version, expires: root.signed.expires, keys };
}
