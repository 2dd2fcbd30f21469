import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { isUzError } from '../../lib/errors.js';
import { DEFAULT_LOCK_PATH, DEFAULT_LOCK_SPEC, parseLock, type DebianLock } from '../../firmware/debian/lock.js';

const good: DebianLock = {
  version: 1,
  suite: 'trixie',
  generatedFrom: { inReleaseSha256: 'a'.repeat(64), date: '2026-11-21T09:15:44.000Z' },
  components: {
    busybox: {
      roots: ['busybox-static'],
      packages: [
        {
          name: 'busybox-static',
          version: '1:1.37.0-6+b9',
          architecture: 'arm64',
          filename: 'pool/main/b/busybox/busybox-static_1.37.0-6+b9_arm64.deb',
          size: 847552,
          sha256: 'c'.repeat(64),
        },
      ],
    },
  },
};

function codeOf(data: unknown): string | undefined {
  try {
    parseLock(data);
  } catch (e) {
    return isUzError(e) ? e.code : 'not UzError';
  }
  return undefined;
}

const withPkg = (patch: Record<string, unknown>) => ({
  ...good,
  components: { busybox: { roots: ['busybox-static'], packages: [{ ...good.components.busybox!.packages[0], ...patch }] } },
});

describe('lock schema', () => {
  it('accepts a well-formed lock', () => {
    expect(parseLock(structuredClone(good))).toEqual(good);
  });

  it('rejects bad input', () => {
    expect(codeOf(null)).toBe('DEB_LOCK_INVALID');
    expect(codeOf({ ...good, version: 2 })).toBe('DEB_LOCK_INVALID');
    expect(codeOf({ ...good, extra: true })).toBe('DEB_LOCK_INVALID');
    expect(codeOf({ ...good, generatedFrom: { inReleaseSha256: 'xyz', date: good.generatedFrom.date } })).toBe(
      'DEB_LOCK_INVALID',
    );
    expect(codeOf({ ...good, generatedFrom: { ...good.generatedFrom, date: 'yesterday' } })).toBe('DEB_LOCK_INVALID');
    expect(codeOf(withPkg({ sha256: 'C'.repeat(64) }))).toBe('DEB_LOCK_INVALID');
    expect(codeOf(withPkg({ sha256: 'c'.repeat(63) }))).toBe('DEB_LOCK_INVALID');
    expect(codeOf(withPkg({ size: -1 }))).toBe('DEB_LOCK_INVALID');
    expect(codeOf(withPkg({ size: 1.5 }))).toBe('DEB_LOCK_INVALID');
    expect(codeOf(withPkg({ filename: 'pool/../../etc/passwd.deb' }))).toBe('DEB_LOCK_INVALID');
    expect(codeOf(withPkg({ filename: '/pool/main/x.deb' }))).toBe('DEB_LOCK_INVALID');
    expect(codeOf(withPkg({ filename: 'https://elsewhere.invalid/x.deb' }))).toBe('DEB_LOCK_INVALID');
    expect(codeOf(withPkg({ name: 'Bad Name' }))).toBe('DEB_LOCK_INVALID');
    expect(codeOf(withPkg({ unexpected: 1 }))).toBe('DEB_LOCK_INVALID');
    expect(codeOf({ ...good, components: { busybox: { roots: [], packages: [] } } })).toBe('DEB_LOCK_INVALID');
  });

  it('the committed lock is valid and matches DEFAULT_LOCK_SPEC', () => {
    const lock = parseLock(JSON.parse(readFileSync(DEFAULT_LOCK_PATH, 'utf8')));
    expect(lock.suite).toBe(DEFAULT_LOCK_SPEC.suite);
    expect(Object.keys(lock.components).sort()).toEqual(Object.keys(DEFAULT_LOCK_SPEC.components).sort());
    for (const [name, spec] of Object.entries(DEFAULT_LOCK_SPEC.components)) {
      expect(lock.components[name]!.roots).toEqual(spec.roots);
    }
    const kernel = lock.components.kernel!.packages;
    expect(kernel).toHaveLength(1);
    expect(kernel[0]!.name).toMatch(/^linux-image-6\.12\.\d+\+deb13-arm64(-unsigned)?$/);
    expect(lock.components.busybox!.packages.map((p) => p.name)).toEqual(['busybox-static']);
    const node = lock.components.nodejs!.packages.map((p) => p.name);
    expect(node).toContain('nodejs');
    expect(node).toContain('libc6');
    for (const excluded of ['dpkg', 'debconf', 'perl-base']) expect(node).not.toContain(excluded);
  });
});
