import { describe, expect, it } from 'vitest';
import { isUzError } from '../../lib/errors.js';
import type { DebPackage } from '../../firmware/debian/packages.js';
import { buildIndex, resolveClosure, resolveMetapackages, resolveRoots } from '../../firmware/debian/resolve.js';

function pkg(name: string, fields: Partial<DebPackage> = {}): DebPackage {
  return {
    name,
    version: '1.0',
    architecture: 'arm64',
    filename: `pool/main/${name[0]}/${name}/${name}_1.0_arm64.deb`,
    size: 100,
    sha256: '0'.repeat(64),
    component: 'main',
    ...fields,
  };
}

const names = (ps: DebPackage[]) => ps.map((p) => p.name);

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return isUzError(e) ? e.code : 'not UzError';
  }
  return undefined;
}

const index = buildIndex([
  pkg('app', { depends: 'libc6 (>= 2.34), liba:any | libb, mail-transport-agent', preDepends: 'dpkg (>= 1.17)' }),
  pkg('libc6', { depends: 'libgcc-s1' }),
  pkg('libgcc-s1', { depends: 'libc6, gcc-base' }), // cycle with libc6
  pkg('gcc-base'),
  pkg('libb'),
  pkg('dpkg', { depends: 'perl-base' }),
  pkg('perl-base'),
  pkg('postfix', { provides: 'mail-transport-agent', depends: 'debconf | debconf-2.0' }),
  pkg('exim4', { provides: 'mail-transport-agent (= 4)' }),
  pkg('debconf'),
  pkg('meta', { depends: 'concrete-6.1 (= 1.0)' }),
  pkg('concrete-6.1', { depends: 'kmod, initramfs-tools | linux-initramfs-tool' }),
  pkg('kmod'),
  pkg('broken', { depends: 'missing-lib' }),
  pkg('fw', { architecture: 'all' }),
]);

describe('resolveClosure', () => {
  it('follows Depends + Pre-Depends, picks the first satisfiable alternative, survives cycles', () => {
    // liba does not exist → libb; mail-transport-agent is virtual → alphabetically first provider (exim4).
    expect(names(resolveClosure(index, ['app']))).toEqual([
      'app',
      'dpkg',
      'exim4',
      'gcc-base',
      'libb',
      'libc6',
      'libgcc-s1',
      'perl-base',
    ]);
  });

  it('honours excludes (real and virtual) and preferred providers', () => {
    expect(names(resolveClosure(index, ['app'], { exclude: ['dpkg', 'mail-transport-agent'] }))).toEqual([
      'app',
      'gcc-base',
      'libb',
      'libc6',
      'libgcc-s1',
    ]);
    expect(
      names(resolveClosure(index, ['app'], { exclude: ['dpkg', 'debconf'], prefer: { 'mail-transport-agent': 'postfix' } })),
    ).toEqual(['app', 'gcc-base', 'libb', 'libc6', 'libgcc-s1', 'postfix']);
    // Excluding every provider of a virtual name counts as met.
    expect(names(resolveClosure(index, ['app'], { exclude: ['dpkg', 'postfix', 'exim4'] }))).not.toContain('postfix');
  });

  it('an already selected provider is reused', () => {
    expect(names(resolveClosure(index, ['postfix', 'app'], { exclude: ['dpkg', 'debconf'] }))).toContain('postfix');
    expect(names(resolveClosure(index, ['postfix', 'app'], { exclude: ['dpkg', 'debconf'] }))).not.toContain('exim4');
  });

  it('throws DEB_NOT_FOUND for unknown roots and unmet dependencies', () => {
    expect(codeOf(() => resolveClosure(index, ['nope']))).toBe('DEB_NOT_FOUND');
    expect(codeOf(() => resolveClosure(index, ['broken']))).toBe('DEB_NOT_FOUND');
  });

  it('resolves a root given as a virtual name', () => {
    expect(names(resolveRoots(index, ['mail-transport-agent']))).toEqual(['exim4']);
    expect(names(resolveRoots(index, ['fw', 'libb']))).toEqual(['fw', 'libb']);
  });
});

describe('resolveMetapackages', () => {
  it('returns the direct dependency only', () => {
    expect(names(resolveMetapackages(index, ['meta']))).toEqual(['concrete-6.1']);
    expect(codeOf(() => resolveMetapackages(index, ['gcc-base']))).toBe('DEB_NOT_FOUND');
  });
});

describe('buildIndex', () => {
  it('prefers the native architecture over all for duplicate names', () => {
    const i = buildIndex([pkg('x', { architecture: 'all', version: 'a' }), pkg('x', { version: 'n' })]);
    expect(i.byName.get('x')!.version).toBe('n');
  });
});
