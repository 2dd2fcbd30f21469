/**
 * Every error code a user can see is documented: scan the sources for `new UzError('CODE'` and for the
 * device console's `UZ-ERROR code=CODE`, and require a row for each in docs/errors.md.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const SOURCE_DIRS = ['bin', 'lib', 'firmware', 'updater', 'server', 'boards'];

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    if (n === 'node_modules') return [];
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

export function usedCodes(): Map<string, string> {
  const codes = new Map<string, string>();
  for (const d of SOURCE_DIRS) {
    for (const f of walk(d)) {
      if (!/\.(ts|mjs|js)$|\/files\/[^/]+$/.test(f)) continue;
      const text = readFileSync(f, 'utf8');
      for (const m of text.matchAll(/new UzError\(\s*'([A-Z][A-Z0-9_]+)'/g)) codes.set(m[1]!, f);
      for (const m of text.matchAll(/UZ-ERROR code=([A-Z][A-Z0-9_]+)/g)) codes.set(m[1]!, f);
    }
  }
  return codes;
}

describe('docs/errors.md', () => {
  it('documents every error code the code can raise', () => {
    const doc = readFileSync('docs/errors.md', 'utf8');
    const documented = new Set([...doc.matchAll(/^\| `([A-Z][A-Z0-9_]+)` \|/gm)].map((m) => m[1]!));
    const missing = [...usedCodes()].filter(([c]) => !documented.has(c)).map(([c, f]) => `${c} (${f})`);
    expect(missing, `add these codes to docs/errors.md`).toEqual([]);
    expect(usedCodes().size).toBeGreaterThan(40);
  });
});
