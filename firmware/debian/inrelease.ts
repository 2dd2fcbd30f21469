/**
 * Verification of a suite's `InRelease` (the clearsigned Release file), the first link of the chain
 * signed InRelease → SHA256 of Packages.xz → SHA256 of each .deb.
 */
import * as openpgp from 'openpgp';
import { UzError } from '../../lib/errors.js';
import { field, parseDeb822, type Stanza } from './deb822.js';

export interface ReleaseFileEntry {
  path: string;
  size: number;
  sha256: string;
}

export interface ReleaseInfo {
  origin?: string;
  suite?: string;
  codename?: string;
  version?: string;
  date: Date;
  validUntil?: Date;
  architectures: string[];
  components: string[];
  acquireByHash: boolean;
  /** `No-Support-for-Architecture-all: Packages` means the per-architecture Packages also list `Architecture: all`. */
  noSupportForArchitectureAll: string[];
  /** SHA256 section, by path relative to `dists/<suite>/`. */
  files: Map<string, ReleaseFileEntry>;
  fields: Stanza;
}

export interface VerifiedRelease {
  /** The signed text only: anything outside the signature is dropped. */
  cleartext: string;
  release: ReleaseInfo;
  /** Hex key IDs of the trusted keys whose signature verified. */
  signers: string[];
}

export interface VerifyOptions {
  /** Reference time for signature validity and the Date/Valid-Until checks (default: now). */
  now?: Date;
}

const DAY_MS = 24 * 60 * 60 * 1000;

function parseDate(value: string | undefined, name: string): Date | undefined {
  if (value === undefined) return undefined;
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) {
    throw new UzError('DEB_RELEASE_INVALID', `Release has an unreadable ${name}: ${value}`, { field: name, value });
  }
  return d;
}

/** Parses Release text (already verified) into its fields and SHA256 file list. */
export function parseRelease(text: string): ReleaseInfo {
  const st = parseDeb822(text)[0];
  if (!st) throw new UzError('DEB_RELEASE_INVALID', 'Release file is empty', {});
  const date = parseDate(field(st, 'Date'), 'Date');
  if (!date) throw new UzError('DEB_RELEASE_INVALID', 'Release file has no Date field', {});
  const files = new Map<string, ReleaseFileEntry>();
  for (const line of (field(st, 'SHA256') ?? '').split('\n')) {
    const parts = line.trim().split(/\s+/);
    if (parts.length !== 3) continue;
    const [sha256, size, path] = parts as [string, string, string];
    if (!/^[0-9a-f]{64}$/i.test(sha256) || !/^\d+$/.test(size)) continue;
    files.set(path, { path, size: Number(size), sha256: sha256.toLowerCase() });
  }
  if (files.size === 0) throw new UzError('DEB_RELEASE_INVALID', 'Release file has no SHA256 entries', {});
  const words = (name: string) => (field(st, name) ?? '').split(/\s+/).filter(Boolean);
  return {
    origin: field(st, 'Origin'),
    suite: field(st, 'Suite'),
    codename: field(st, 'Codename'),
    version: field(st, 'Version'),
    date,
    validUntil: parseDate(field(st, 'Valid-Until'), 'Valid-Until'),
    architectures: words('Architectures'),
    components: words('Components'),
    acquireByHash: (field(st, 'Acquire-By-Hash') ?? '').toLowerCase() === 'yes',
    noSupportForArchitectureAll: words('No-Support-for-Architecture-all'),
    files,
    fields: st,
  };
}

/**
 * Verifies a clearsigned InRelease against `keys` and returns the signed text with its parsed fields.
 * At least one signature must verify with a trusted key (others, e.g. from keys we do not carry, are ignored).
 * Throws `DEB_SIGNATURE` when unsigned, malformed or no trusted signature verifies, and `DEB_RELEASE_INVALID` when
 * the Date lies more than a day in the future or Valid-Until has passed.
 */
export async function verifyInRelease(
  text: string,
  keys: readonly openpgp.PublicKey[],
  options: VerifyOptions = {},
): Promise<VerifiedRelease> {
  const now = options.now ?? new Date();
  if (keys.length === 0) throw new UzError('DEB_SIGNATURE', 'No trusted keys to verify InRelease with', {});
  let cleartext: string;
  const signers: string[] = [];
  try {
    const message = await openpgp.readCleartextMessage({ cleartextMessage: text });
    const result = await openpgp.verify({
      message,
      verificationKeys: [...keys],
      expectSigned: true,
      date: now,
    });
    cleartext = result.data;
    for (const sig of result.signatures) {
      const ok = await sig.verified.catch(() => false);
      if (ok) signers.push(sig.keyID.toHex());
    }
  } catch (e) {
    throw new UzError('DEB_SIGNATURE', `InRelease signature check failed: ${(e as Error).message}`, {}, { cause: e });
  }
  if (signers.length === 0) {
    throw new UzError('DEB_SIGNATURE', 'InRelease carries no valid signature from a trusted key', {});
  }
  const release = parseRelease(cleartext);
  if (release.date.getTime() > now.getTime() + DAY_MS) {
    throw new UzError('DEB_RELEASE_INVALID', `InRelease Date ${release.date.toISOString()} is in the future`, {
      date: release.date.toISOString(),
      now: now.toISOString(),
    });
  }
  if (release.validUntil && release.validUntil.getTime() < now.getTime()) {
    throw new UzError('DEB_RELEASE_INVALID', `InRelease expired on ${release.validUntil.toISOString()}`, {
      validUntil: release.validUntil.toISOString(),
    });
  }
  return { cleartext, release, signers };
}
