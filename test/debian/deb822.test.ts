import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isUzError } from '../../lib/errors.js';
import { field, parseDeb822, parseRelations } from '../../firmware/debian/deb822.js';
import { parseRelease } from '../../firmware/debian/inrelease.js';
import { mirrorsFromSources, mirrorsFromSourcesList, resolveMirror } from '../../firmware/debian/mirror.js';
import { indexPaths, parsePackages } from '../../firmware/debian/packages.js';

const H = 'a'.repeat(64);
const H2 = 'b'.repeat(64);

describe('deb822', () => {
  it('splits stanzas, joins continuation lines, matches fields case-insensitively', () => {
    const text = 'Package: a\r\nDescription: short\n long line\n .\n\n\n# c: 1\nPackage: b\nsha256: x\n';
    const st = parseDeb822(text);
    expect(st).toHaveLength(2);
    expect(st[0]).toEqual({ Package: 'a', Description: 'short\nlong line\n.' });
    expect(st[1]!['# c']).toBe('1');
    expect(field(st[1]!, 'SHA256')).toBe('x');
    expect(parseDeb822(text, { comments: true })[1]).toEqual({ Package: 'b', sha256: 'x' });
  });

  it('parses relationship fields', () => {
    expect(parseRelations('libc6 (>= 2.34), a:any | b (<< 2) [amd64], c <!nocheck>,  ,d:arm64')).toEqual([
      ['libc6'],
      ['a', 'b'],
      ['c'],
      ['d'],
    ]);
    expect(parseRelations(undefined)).toEqual([]);
  });

  it('parses Packages stanzas into typed entries, skipping incomplete ones', () => {
    const text =
      `Package: nodejs\nVersion: 20.19.2+dfsg-1\nArchitecture: arm64\nDepends: libc6 (>= 2.34), libnode115\n` +
      `Pre-Depends: dpkg\nProvides: node-types-node (= 1)\nFilename: pool/main/n/nodejs/nodejs_20_arm64.deb\n` +
      `Size: 354892\nSHA256: ${H.toUpperCase()}\nSection: javascript\n\n` +
      `Package: broken\nVersion: 1\n\n` +
      `Package: fw\nVersion: 2\nArchitecture: all\nFilename: pool/non-free-firmware/f/fw/fw_2_all.deb\nSize: 1\nSHA256: ${H2}\n`;
    const pk = parsePackages(text, 'main');
    expect(pk.map((p) => p.name)).toEqual(['nodejs', 'fw']);
    expect(pk[0]).toEqual({
      name: 'nodejs',
      version: '20.19.2+dfsg-1',
      architecture: 'arm64',
      depends: 'libc6 (>= 2.34), libnode115',
      preDepends: 'dpkg',
      provides: 'node-types-node (= 1)',
      filename: 'pool/main/n/nodejs/nodejs_20_arm64.deb',
      size: 354892,
      sha256: H,
      section: 'javascript',
      component: 'main',
    });
    expect(pk[1]!.architecture).toBe('all');
  });

  it('parses Release fields and the SHA256 list', () => {
    const r = parseRelease(
      `Origin: Debian\nSuite: stable\nCodename: trixie\nDate: Sat, 21 Nov 2026 09:15:44 UTC\n` +
        `Valid-Until: Sat, 28 Nov 2026 09:15:44 UTC\nAcquire-By-Hash: yes\nArchitectures: all arm64\n` +
        `Components: main non-free-firmware\nNo-Support-for-Architecture-all: Packages\n` +
        `MD5Sum:\n 0123 12 main/binary-arm64/Packages.xz\nSHA256:\n ${H}  9614816 main/binary-arm64/Packages.xz\n` +
        ` ${H2}     6484 non-free-firmware/binary-arm64/Packages.xz\n`,
    );
    expect(r.codename).toBe('trixie');
    expect(r.suite).toBe('stable');
    expect(r.date.toISOString()).toBe('2026-11-21T09:15:44.000Z');
    expect(r.validUntil?.toISOString()).toBe('2026-11-28T09:15:44.000Z');
    expect(r.acquireByHash).toBe(true);
    expect(r.components).toEqual(['main', 'non-free-firmware']);
    expect(r.files.get('main/binary-arm64/Packages.xz')).toEqual({
      path: 'main/binary-arm64/Packages.xz',
      size: 9614816,
      sha256: H,
    });
    expect(r.files.size).toBe(2);
    expect(indexPaths(r, 'main', 'arm64')).toEqual(['main/binary-arm64/Packages.xz']);
    expect(indexPaths({ ...r, noSupportForArchitectureAll: [] }, 'main', 'arm64')).toEqual([
      'main/binary-arm64/Packages.xz',
      'main/binary-all/Packages.xz',
    ]);
    let code: string | undefined;
    try {
      parseRelease('Origin: x\nSHA256:\n');
    } catch (e) {
      code = isUzError(e) ? e.code : undefined;
    }
    expect(code).toBe('DEB_RELEASE_INVALID');
  });
});

describe('mirror discovery', () => {
  const dir = mkdtempSync(join(tmpdir(), 'uz-apt-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads deb822 .sources and one-line sources.list', () => {
    const sources =
      `# comment\nTypes: deb-src\nURIs: http://src.example.invalid/debian\nSuites: trixie\n\n` +
      `Types: deb\nURIs: http://sec.example.invalid/debian-security\nSuites: trixie-security\n\n` +
      `Types: deb deb-src\nURIs: https://m.example.invalid/debian/\nSuites: trixie\nComponents: main\n`;
    expect(mirrorsFromSources(sources)).toEqual(['https://m.example.invalid/debian/']);
    expect(
      mirrorsFromSourcesList(
        `# deb http://x.example.invalid/debian trixie main\ndeb-src http://s.example.invalid/debian trixie main\n` +
          `deb [arch=arm64 signed-by=/k.gpg] http://l.example.invalid/debian trixie main\n`,
      ),
    ).toEqual(['http://l.example.invalid/debian']);
  });

  it('prefers UZ_DEBIAN_MIRROR, then apt sources, else DEB_MIRROR_UNSET', () => {
    const apt = join(dir, 'apt');
    mkdirSync(join(apt, 'sources.list.d'), { recursive: true });
    expect(resolveMirror({ env: { UZ_DEBIAN_MIRROR: 'http://e.example.invalid/debian/' }, aptDir: apt })).toBe(
      'http://e.example.invalid/debian',
    );
    let code: string | undefined;
    try {
      resolveMirror({ env: {}, aptDir: apt });
    } catch (e) {
      code = isUzError(e) ? e.code : undefined;
    }
    expect(code).toBe('DEB_MIRROR_UNSET');
    writeFileSync(join(apt, 'sources.list'), 'deb http://list.example.invalid/debian trixie main\n');
    expect(resolveMirror({ env: {}, aptDir: apt })).toBe('http://list.example.invalid/debian');
    writeFileSync(join(apt, 'sources.list.d', 'debian.sources'), 'Types: deb\nURIs: http://d.example.invalid/debian\n');
    expect(resolveMirror({ env: {}, aptDir: apt })).toBe('http://d.example.invalid/debian');
    let code2: string | undefined;
    try {
      resolveMirror({ env: { UZ_DEBIAN_MIRROR: 'ftp://nope' }, aptDir: apt });
    } catch (e) {
      code2 = isUzError(e) ? e.code : undefined;
    }
    expect(code2).toBe('DEB_MIRROR_UNSET');
  });
});
