/** Builders for the Debian tests: .deb files, a signed mini archive, and a local HTTP server serving it. */
import { createHash } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { xz } from '@napi-rs/lzma';
import * as openpgp from 'openpgp';
import tarStream from 'tar-stream';

export const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

export interface ArInput {
  name: string;
  data: Buffer;
}

/** Writes an ar archive the way dpkg-deb does. */
export function makeAr(members: ArInput[]): Buffer {
  const parts: Buffer[] = [Buffer.from('!<arch>\n', 'latin1')];
  for (const m of members) {
    const header =
      m.name.padEnd(16) +
      '1700000000'.padEnd(12) +
      '0'.padEnd(6) +
      '0'.padEnd(6) +
      '100644'.padEnd(8) +
      String(m.data.length).padEnd(10) +
      '`\n';
    parts.push(Buffer.from(header, 'latin1'), m.data);
    if (m.data.length % 2) parts.push(Buffer.from('\n'));
  }
  return Buffer.concat(parts);
}

export interface TarInput {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link';
  mode?: number;
  data?: Buffer | string;
  linkname?: string;
}

export async function makeTar(entries: TarInput[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const e of entries) {
    const type = e.type ?? 'file';
    const mode = e.mode ?? (type === 'directory' ? 0o755 : 0o644);
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (type === 'file') pack.entry({ name: e.name, type, mode }, Buffer.from(e.data ?? ''), cb);
      else pack.entry({ name: e.name, type, mode, linkname: e.linkname }, cb);
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

export type Compression = 'xz' | 'gz' | 'zst' | 'none';

async function compress(tar: Buffer, c: Compression): Promise<{ suffix: string; data: Buffer }> {
  if (c === 'xz') return { suffix: '.tar.xz', data: await xz.compress(tar) };
  if (c === 'gz') return { suffix: '.tar.gz', data: gzipSync(tar) };
  if (c === 'zst') return { suffix: '.tar.zst', data: Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]) };
  return { suffix: '.tar', data: tar };
}

export interface DebInput {
  name: string;
  version: string;
  architecture?: string;
  depends?: string;
  files?: TarInput[];
  compression?: Compression;
}

/** A .deb with a control file naming the package and the given data entries (rooted at `./`). */
export async function makeDeb(input: DebInput): Promise<Buffer> {
  const controlText =
    `Package: ${input.name}\nVersion: ${input.version}\nArchitecture: ${input.architecture ?? 'arm64'}\n` +
    `Maintainer: Test <test@example.invalid>\n` +
    (input.depends ? `Depends: ${input.depends}\n` : '') +
    `Description: test package\n multi-line\n`;
  const control = await makeTar([
    { name: './', type: 'directory' },
    { name: './control', data: controlText },
  ]);
  const data = await makeTar([{ name: './', type: 'directory' }, ...(input.files ?? [])]);
  const c = input.compression ?? 'xz';
  const cc = await compress(control, c === 'zst' ? 'xz' : c);
  const dc = await compress(data, c);
  return makeAr([
    { name: 'debian-binary', data: Buffer.from('2.0\n') },
    { name: `control${cc.suffix}`, data: cc.data },
    { name: `data${dc.suffix}`, data: dc.data },
  ]);
}

export async function makeTestKey(name = 'uz test archive') {
  return openpgp.generateKey({ type: 'curve25519', userIDs: [{ name }], format: 'object' });
}

export async function clearsign(text: string, key: openpgp.PrivateKey): Promise<string> {
  const message = await openpgp.createCleartextMessage({ text });
  return openpgp.sign({ message, signingKeys: key });
}

export interface FixturePackage {
  name: string;
  version: string;
  depends?: string;
  provides?: string;
  files?: TarInput[];
}

export interface FixtureArchive {
  /** URL path (leading slash) → body. */
  files: Map<string, Buffer>;
  packagesXz: Buffer;
  debs: Map<string, { path: string; data: Buffer }>;
  inRelease: string;
  releaseText: string;
}

/** Composes `dists/<suite>/{InRelease, main/binary-arm64/Packages.xz}` and `pool/main/…` for the packages. */
export async function makeArchive(
  suite: string,
  packages: FixturePackage[],
  key: openpgp.PrivateKey,
  extraReleaseFields = '',
  date = new Date(),
): Promise<FixtureArchive> {
  const files = new Map<string, Buffer>();
  const debs = new Map<string, { path: string; data: Buffer }>();
  const stanzas: string[] = [];
  for (const p of packages) {
    const data = await makeDeb({ name: p.name, version: p.version, depends: p.depends, files: p.files });
    const filename = `pool/main/${p.name[0]}/${p.name}/${p.name}_${p.version}_arm64.deb`;
    files.set(`/${filename}`, data);
    debs.set(p.name, { path: `/${filename}`, data });
    stanzas.push(
      `Package: ${p.name}\nVersion: ${p.version}\nArchitecture: arm64\n` +
        (p.depends ? `Depends: ${p.depends}\n` : '') +
        (p.provides ? `Provides: ${p.provides}\n` : '') +
        `Filename: ${filename}\nSize: ${data.length}\nSHA256: ${sha256(data)}\nSection: misc\n` +
        `Description: ${p.name}\n test\n`,
    );
  }
  const packagesText = `${stanzas.join('\n')}`;
  const packagesXz = await xz.compress(packagesText);
  files.set(`/dists/${suite}/main/binary-arm64/Packages.xz`, packagesXz);
  const releaseText =
    `Origin: Test\nLabel: Test\nSuite: stable\nCodename: ${suite}\n` +
    `Date: ${date.toUTCString()}\n${extraReleaseFields}` +
    `Acquire-By-Hash: yes\nNo-Support-for-Architecture-all: Packages\nArchitectures: arm64\nComponents: main\n` +
    `SHA256:\n ${sha256(packagesXz)} ${String(packagesXz.length).padStart(8)} main/binary-arm64/Packages.xz\n` +
    ` ${sha256(packagesText)} ${String(Buffer.byteLength(packagesText)).padStart(8)} main/binary-arm64/Packages\n`;
  const inRelease = await clearsign(releaseText, key);
  files.set(`/dists/${suite}/InRelease`, Buffer.from(inRelease));
  return { files, packagesXz, debs, inRelease, releaseText };
}

export type Behaviour = 'truncate' | 'status500' | 'status500-once';

export interface FixtureServer {
  url: string;
  files: Map<string, Buffer>;
  /** Misbehaviour per path. */
  behaviour: Map<string, Behaviour>;
  /** Requests per path. */
  hits: Map<string, number>;
  close(): Promise<void>;
}

/** Serves `files` on 127.0.0.1 (ephemeral port); unknown paths get 404. */
export async function serveArchive(files: Map<string, Buffer>): Promise<FixtureServer> {
  const behaviour = new Map<string, Behaviour>();
  const hits = new Map<string, number>();
  const server: Server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://127.0.0.1').pathname);
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const body = files.get(path);
    const b = behaviour.get(path);
    if (b === 'status500' || b === 'status500-once') {
      if (b === 'status500-once') behaviour.delete(path);
      res.writeHead(500).end();
      return;
    }
    if (!body) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, { 'content-length': body.length, 'content-type': 'application/octet-stream' });
    if (b === 'truncate') {
      res.write(body.subarray(0, Math.floor(body.length / 2)), () => res.destroy());
      return;
    }
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    files,
    behaviour,
    hits,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** Every regular file below `dir` (relative paths), [] if it does not exist. */
export function listFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    let names: string[];
    try {
      names = readdirSync(d);
    } catch {
      return;
    }
    for (const n of names) {
      const p = join(d, n);
      if (statSync(p).isDirectory()) walk(p, `${rel}${n}/`);
      else out.push(`${rel}${n}`);
    }
  };
  walk(dir, '');
  return out.sort();
}
