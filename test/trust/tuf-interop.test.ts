// Interop with tuf-js (an independent TUF client): our canonical JSON, our root metadata and rotation, and a
// full repository (root rotation + timestamp/snapshot/targets) consumed by tuf-js's Updater over HTTP.
import { canonicalize } from '@tufjs/canonical-json';
import { Metadata, MetadataKind } from '@tufjs/models';
import fc from 'fast-check';
import { createReadStream, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, normalize } from 'node:path';
import { Updater } from 'tuf-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyBundleFile, writeBundle } from '../../firmware/bundle/index.js';
import { canonicalJson } from '../../firmware/trust/canonical.js';
import { generateSigningKey } from '../../firmware/trust/keys.js';
import { loadTrustedRoot } from '../../firmware/trust/io.js';
import { rotateRootSigned, signRoot, type RootMetadata } from '../../firmware/trust/root.js';
import { writeTufRepository } from '../../firmware/trust/tuf.js';
import { ceremony, randomPayload, sha256hex, tempDir } from '../bundle/helpers.js';

/** tuf-js keeps signatures as a keyid → signature map; the JSON format is the same as ours. */
const tufRoot = (r: RootMetadata) => Metadata.fromJSON(MetadataKind.Root, JSON.parse(JSON.stringify(r)));
const days = (n: number) => new Date(Date.now() + n * 86_400_000);

describe('tuf-js interop', () => {
  it('canonical JSON is byte-identical to @tufjs/canonical-json', () => {
    const str = fc.string({ unit: 'grapheme', maxLength: 10 }).filter((s) => !/[\u0000-\u001f]/.test(s));
    const json = fc.letrec((tie) => ({
      v: fc.oneof({ depthSize: 'small' }, fc.constant(null), fc.boolean(), fc.maxSafeInteger(), str, fc.array(tie('v'), { maxLength: 4 }), fc.dictionary(str, tie('v'), { maxKeys: 5 })),
    })).v;
    fc.assert(
      fc.property(json, (v) => {
        expect(canonicalJson(v)).toBe(canonicalize(v));
      }),
      { numRuns: 300 },
    );
  });

  it('tuf-js accepts our root (self-signed threshold) and rejects a tampered one', () => {
    const c = ceremony(2, 3, 1, 1);
    const md = tufRoot(c.root);
    expect(() => md.verifyDelegate('root', md)).not.toThrow();
    expect(() => md.verifyDelegate('release', md)).toThrow(); // release keys did not sign the root
    const raw = JSON.parse(JSON.stringify(c.root));
    raw.signed.roles.release.threshold = 1;
    raw.signed.expires = '2099-01-01T00:00:00Z';
    const t = Metadata.fromJSON(MetadataKind.Root, raw);
    expect(() => t.verifyDelegate('root', t)).toThrow();
  });

  it('tuf-js agrees with our rotation rules (old and new threshold)', () => {
    const c = ceremony(2, 3);
    const D = generateSigningKey();
    const v2s = rotateRootSigned(c.root.signed, { expires: days(365), remove: { root: [c.rootKeys[2]!.keyid] }, add: { root: [D] } });
    const good = signRoot(v2s, [c.rootKeys[0]!, c.rootKeys[1]!]);
    const v1 = tufRoot(c.root);
    const v2 = tufRoot(good);
    expect(() => v1.verifyDelegate('root', v2)).not.toThrow();
    expect(() => v2.verifyDelegate('root', v2)).not.toThrow();
    const weak = tufRoot(signRoot(v2s, [c.rootKeys[0]!, D])); // only 1 of v1's keys
    expect(() => v1.verifyDelegate('root', weak)).toThrow();
  });

  describe('repository consumed by tuf-js Updater over HTTP', () => {
    const dir = tempDir();
    let server: Server;
    let base = '';
    beforeAll(async () => {
      server = createServer((req, res) => {
        const p = normalize(decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname));
        const f = join(dir, 'repo', p);
        if (!f.startsWith(join(dir, 'repo')) || !statSync(f, { throwIfNoEntry: false })?.isFile()) {
          res.writeHead(404).end();
          return;
        }
        res.writeHead(200, { 'content-length': statSync(f).size });
        createReadStream(f).pipe(res);
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    afterAll(async () => {
      await new Promise((r) => server.close(r));
      rmSync(dir, { recursive: true, force: true });
    });

    it('client with root v1 rotates to v2, fetches targets, downloads the bundle; our verifier accepts it', async () => {
      // v1 → v2 rotation that also replaces the timestamp key
      const c = ceremony(1, 1, 1, 1);
      const ts2 = generateSigningKey();
      const v2 = signRoot(rotateRootSigned(c.root.signed, { expires: days(365), remove: { timestamp: [c.other.keyid] }, add: { timestamp: [ts2] } }), c.rootKeys);

      const payload = join(dir, 'fw.img');
      writeFileSync(payload, randomPayload(300_000));
      const bundle = join(dir, 'fw.uzb');
      await writeBundle({ payload, out: bundle, keys: c.releaseKeys, manifest: { board: { id: 'rpi4' }, version: '1.4.0', rollbackCounter: 3, workload: { name: 'app', version: '1.4.0' } } });
      const bytes = readFileSync(bundle);

      await writeTufRepository({
        dir: join(dir, 'repo'),
        roots: [c.root, v2],
        targets: [{ file: bundle, path: 'rpi4/app-1.4.0.uzb', length: bytes.length, sha256: sha256hex(bytes), custom: { board: 'rpi4', version: '1.4.0', rollbackCounter: 3 } }],
        version: 1,
        keys: { targets: [c.other], snapshot: [c.other], timestamp: [ts2] },
        expires: { targets: days(90), snapshot: days(7), timestamp: days(1) },
      });

      const metadataDir = join(dir, 'device-meta');
      const targetDir = join(dir, 'device-targets');
      mkdirSync(metadataDir);
      mkdirSync(targetDir);
      writeFileSync(join(metadataDir, 'root.json'), JSON.stringify(c.root)); // provisioned v1
      const updater = new Updater({ metadataDir, metadataBaseUrl: `${base}/metadata`, targetDir, targetBaseUrl: `${base}/targets`, config: { fetchRetries: 0 } });
      await updater.refresh();
      const info = await updater.getTargetInfo('rpi4/app-1.4.0.uzb');
      expect(info?.length).toBe(bytes.length);
      expect(info?.custom).toEqual({ board: 'rpi4', version: '1.4.0', rollbackCounter: 3 });
      const got = await updater.downloadTarget(info!, join(targetDir, 'app.uzb'));
      expect(readFileSync(got).equals(bytes)).toBe(true);

      // tuf-js persisted root v2 as the trusted root; our loader accepts that file and verifies the bundle with it
      const trusted = await loadTrustedRoot(join(metadataDir, 'root.json'));
      expect(trusted.signed.version).toBe(2);
      const v = await verifyBundleFile(got, { root: trusted, board: 'rpi4', minCounter: 3 });
      expect(v.manifest.version).toBe('1.4.0');

      // tamper with the published target: tuf-js refuses it (length/hash from signed targets metadata)
      const evil = Buffer.from(bytes);
      evil[evil.length - 1]! ^= 1;
      writeFileSync(join(dir, 'repo', 'targets', 'rpi4', 'app-1.4.0.uzb'), evil);
      await expect(updater.downloadTarget(info!, join(targetDir, 'evil.uzb'))).rejects.toThrow();
    });
  });
});
