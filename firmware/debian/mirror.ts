/**
 * Finds the Debian mirror to download from. No mirror is hard-coded anywhere in the project: the user's choice
 * (`UZ_DEBIAN_MIRROR`) wins, else the host's own apt configuration is borrowed, else the user is asked to choose.
 * The mirror is not trusted: everything fetched from it is checked against the signed InRelease or the lock.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { UzError } from '../../lib/errors.js';
import { field, parseDeb822 } from './deb822.js';

export interface MirrorOptions {
  env?: NodeJS.ProcessEnv;
  /** Root of the apt configuration, for tests (default `/etc/apt`). */
  aptDir?: string;
}

/** A mirror base URL is the directory holding `dists/` and `pool/`; returned without a trailing slash. */
export function normalizeMirror(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url.trim());
  } catch {
    throw new UzError('DEB_MIRROR_UNSET', `UZ_DEBIAN_MIRROR is not a URL: ${url}`, { url });
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new UzError('DEB_MIRROR_UNSET', `Debian mirror must be an http(s) URL: ${url}`, { url });
  }
  return parsed.toString().replace(/\/+$/, '');
}

function isDebianArchiveUri(uri: string): boolean {
  try {
    const u = new URL(uri);
    return (u.protocol === 'http:' || u.protocol === 'https:') && /\/debian\/?$/.test(u.pathname);
  } catch {
    return false;
  }
}

/** Mirror URLs from deb822 `.sources` text: `URIs:` of `Types: deb` stanzas whose path ends in `/debian`. */
export function mirrorsFromSources(text: string): string[] {
  const out: string[] = [];
  for (const st of parseDeb822(text, { comments: true })) {
    const types = (field(st, 'Types') ?? '').split(/\s+/);
    if (!types.includes('deb')) continue;
    if ((field(st, 'Enabled') ?? 'yes').toLowerCase() === 'no') continue;
    for (const uri of (field(st, 'URIs') ?? '').split(/\s+/)) if (isDebianArchiveUri(uri)) out.push(uri);
  }
  return out;
}

/** Mirror URLs from one-line-style `sources.list` text: `deb [options] URL suite components...`. */
export function mirrorsFromSourcesList(text: string): string[] {
  const out: string[] = [];
  for (const rawLine of text.split('\n')) {
    const line = rawLine.replace(/#.*/, '').trim();
    if (!line.startsWith('deb ') && !line.startsWith('deb\t')) continue;
    const rest = line.slice(3).trim().replace(/^\[[^\]]*\]\s*/, '');
    const uri = rest.split(/\s+/)[0] ?? '';
    if (isDebianArchiveUri(uri)) out.push(uri);
  }
  return out;
}

function readText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

/**
 * Returns the mirror base URL: env `UZ_DEBIAN_MIRROR`, else the first Debian archive URI in the host's apt
 * sources (`sources.list.d/*.sources`, then `sources.list`), else throws `DEB_MIRROR_UNSET`.
 */
export function resolveMirror(options: MirrorOptions = {}): string {
  const env = options.env ?? process.env;
  const fromEnv = env.UZ_DEBIAN_MIRROR?.trim();
  if (fromEnv) return normalizeMirror(fromEnv);

  const aptDir = options.aptDir ?? '/etc/apt';
  const candidates: string[] = [];
  let names: string[] = [];
  try {
    names = readdirSync(join(aptDir, 'sources.list.d')).sort();
  } catch {
    names = [];
  }
  for (const name of names) {
    if (!name.endsWith('.sources')) continue;
    const text = readText(join(aptDir, 'sources.list.d', name));
    if (text) candidates.push(...mirrorsFromSources(text));
  }
  if (candidates.length === 0) {
    const text = readText(join(aptDir, 'sources.list'));
    if (text) candidates.push(...mirrorsFromSourcesList(text));
  }
  const first = candidates[0];
  if (first) return normalizeMirror(first);
  throw new UzError(
    'DEB_MIRROR_UNSET',
    "No Debian mirror configured: set UZ_DEBIAN_MIRROR to a Debian mirror's base URL (the directory holding dists/ and pool/)",
    { aptDir },
  );
}
