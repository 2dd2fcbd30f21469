/**
 * deb822 control-file parsing (Release, Packages, apt `.sources`, DEBIAN/control).
 *
 * A file is a list of stanzas separated by blank lines; each stanza is `Field: value` lines, and lines that start
 * with a space or tab continue the previous field. Field names are matched case-insensitively (Debian policy), so
 * the parsed stanza keeps the spelling from the file and {@link field} does the lookup.
 */

export type Stanza = Record<string, string>;

export interface Deb822Options {
  /** Skip lines starting with `#` (allowed in apt `.sources` files, not in archive indexes). */
  comments?: boolean;
}

/** Parses every stanza. Continuation lines are kept joined with `\n`, one leading space removed from each. */
export function parseDeb822(text: string, options: Deb822Options = {}): Stanza[] {
  const stanzas: Stanza[] = [];
  let current: Stanza | null = null;
  let lastKey: string | null = null;
  const lines = text.split('\n');
  for (let raw of lines) {
    if (raw.endsWith('\r')) raw = raw.slice(0, -1);
    if (options.comments && raw.startsWith('#')) continue;
    if (raw.trim() === '') {
      if (current) stanzas.push(current);
      current = null;
      lastKey = null;
      continue;
    }
    if (raw[0] === ' ' || raw[0] === '\t') {
      if (!current || lastKey === null) continue; // stray continuation: ignore, as apt does
      const prev = current[lastKey] ?? '';
      current[lastKey] = prev === '' ? raw.slice(1) : `${prev}\n${raw.slice(1)}`;
      continue;
    }
    const colon = raw.indexOf(':');
    if (colon <= 0) continue;
    const key = raw.slice(0, colon);
    current ??= {};
    current[key] = raw.slice(colon + 1).trim();
    lastKey = key;
  }
  if (current) stanzas.push(current);
  return stanzas;
}

/** Case-insensitive field lookup. */
export function field(stanza: Stanza, name: string): string | undefined {
  const direct = stanza[name];
  if (direct !== undefined) return direct;
  const lower = name.toLowerCase();
  for (const [k, v] of Object.entries(stanza)) if (k.toLowerCase() === lower) return v;
  return undefined;
}

/**
 * Splits a relationship field (`Depends`, `Pre-Depends`, `Provides`) into groups of alternatives, with version
 * constraints `(>= 1)`, architecture lists `[amd64]`, build profiles `<!nocheck>` and arch qualifiers (`:any`)
 * removed: `a (>= 1) | b:any, c` → `[['a', 'b'], ['c']]`.
 */
export function parseRelations(value: string | undefined): string[][] {
  if (!value) return [];
  const groups: string[][] = [];
  for (const group of value.split(',')) {
    const alts: string[] = [];
    for (const alt of group.split('|')) {
      const name = alt
        .replace(/\([^)]*\)/g, '')
        .replace(/\[[^\]]*\]/g, '')
        .replace(/<[^>]*>/g, '')
        .trim()
        .replace(/:[a-z0-9-]+$/, '');
      if (name) alts.push(name);
    }
    if (alts.length) groups.push(alts);
  }
  return groups;
}
