import * as zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { isUzError } from '../../lib/errors.js';
import { checkIdentity, normalizeEntryPath, parseAr, readDeb, readDebControl } from '../../firmware/debian/deb.js';
import { makeAr, makeDeb, makeTar } from './helpers.js';

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string | undefined> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    return isUzError(e) ? e.code : `not UzError: ${String(e)}`;
  }
  return undefined;
}

describe('ar parser', () => {
  it('reads members, including odd sizes with their pad byte', () => {
    const ar = makeAr([
      { name: 'debian-binary', data: Buffer.from('2.0\n') },
      { name: 'odd', data: Buffer.from('abc') },
      { name: 'after/', data: Buffer.from('xy') },
    ]);
    const members = parseAr(ar);
    expect(members.map((m) => m.name)).toEqual(['debian-binary', 'odd', 'after']);
    expect(members.map((m) => m.data.toString())).toEqual(['2.0\n', 'abc', 'xy']);
    expect(members[0]!.mode).toBe(0o100644);
    expect(members[0]!.mtime).toBe(1700000000);
  });

  it('rejects a bad global header, a bad member magic and truncation', async () => {
    expect(await codeOf(() => parseAr(Buffer.from('!<arc>\nxxxxxxxx')))).toBe('DEB_FORMAT');
    const ar = makeAr([{ name: 'a', data: Buffer.from('hello') }]);
    const badMagic = Buffer.from(ar);
    badMagic[8 + 58] = 0x41;
    expect(await codeOf(() => parseAr(badMagic))).toBe('DEB_FORMAT');
    expect(await codeOf(() => parseAr(ar.subarray(0, ar.length - 3)))).toBe('DEB_FORMAT');
    expect(await codeOf(() => parseAr(ar.subarray(0, 30)))).toBe('DEB_FORMAT');
  });
});

describe('.deb extraction', () => {
  const files = [
    { name: './usr/', type: 'directory' as const },
    { name: './usr/bin/', type: 'directory' as const },
    { name: './usr/bin/tool', data: 'ELF?', mode: 0o4755 },
    { name: './usr/bin/alias', type: 'symlink' as const, linkname: 'tool' },
    { name: './usr/bin/hard', type: 'link' as const, linkname: './usr/bin/tool' },
    { name: './etc/conf', data: 'x=1\n' },
  ];

  for (const compression of ['xz', 'gz', 'none'] as const) {
    it(`reads control fields and normalized entries (${compression})`, async () => {
      const deb = await makeDeb({ name: 'tool', version: '1:2.0-1', files, compression });
      const { control, entries } = await readDeb(deb);
      expect(control.Package).toBe('tool');
      expect(control.Version).toBe('1:2.0-1');
      expect(control.Description).toBe('test package\nmulti-line');
      expect(entries).toEqual([
        { path: 'usr', type: 'dir', mode: 0o755 },
        { path: 'usr/bin', type: 'dir', mode: 0o755 },
        { path: 'usr/bin/tool', type: 'file', mode: 0o4755, data: Buffer.from('ELF?') },
        { path: 'usr/bin/alias', type: 'symlink', mode: 0o644, linkname: 'tool' },
        { path: 'usr/bin/hard', type: 'hardlink', mode: 0o644, linkname: 'usr/bin/tool' },
        { path: 'etc/conf', type: 'file', mode: 0o644, data: Buffer.from('x=1\n') },
      ]);
      expect((await readDebControl(deb)).Package).toBe('tool');
    });
  }

  it('zstd: decompresses when node:zlib has zstd, else DEB_UNSUPPORTED_COMPRESSION', async () => {
    const deb = await makeDeb({ name: 'z', version: '1', compression: 'zst' });
    const hasZstd = typeof (zlib as unknown as Record<string, unknown>).zstdDecompressSync === 'function';
    const code = await codeOf(readDeb(deb));
    if (hasZstd) expect(code).not.toBe('DEB_UNSUPPORTED_COMPRESSION');
    else expect(code).toBe('DEB_UNSUPPORTED_COMPRESSION');
  });

  it('rejects paths escaping the root and non-deb archives', async () => {
    const deb = await makeDeb({ name: 'evil', version: '1', files: [{ name: './../etc/passwd', data: 'x' }] });
    expect(await codeOf(readDeb(deb))).toBe('DEB_FORMAT');
    expect(normalizeEntryPath('./a//b/')).toBe('a/b');
    expect(normalizeEntryPath('./')).toBe('');
    const noBinary = makeAr([{ name: 'data.tar', data: await makeTar([]) }]);
    expect(await codeOf(readDeb(noBinary))).toBe('DEB_FORMAT');
    expect(await codeOf(readDeb(Buffer.from('not a deb at all')))).toBe('DEB_FORMAT');
  });

  it('checkIdentity spots a .deb that is not the package it claims', () => {
    expect(() => checkIdentity({ Package: 'a', Version: '1' }, { name: 'a', version: '1' })).not.toThrow();
    let code: string | undefined;
    try {
      checkIdentity({ Package: 'a', Version: '1' }, { name: 'a', version: '2' });
    } catch (e) {
      code = isUzError(e) ? e.code : undefined;
    }
    expect(code).toBe('DEB_PACKAGE_MISMATCH');
  });
});
