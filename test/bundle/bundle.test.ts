import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import {
  MAX_HEADER_BYTES,
  PREAMBLE_BYTES,
  encodeHeader,
  openBundle,
  parseHeader,
  readBundleHeaderFile,
  signBundle,
  verifyBundleFile,
  writeBundle,
  type Manifest,
  type VerifyPolicy,
} from '../../firmware/bundle/index.js';
import { rotateRootSigned, signRoot, updateTrustedRoot, tufDate } from '../../firmware/trust/root.js';
import { generateSigningKey } from '../../firmware/trust/keys.js';
import { NOW, ceremony, craftBundle, expectCode, manifestFor, randomPayload, tempDir, trackedSource } from './helpers.js';

const c = ceremony(1, 1, 2, 3); // release role: 2-of-3
const [R1, R2, R3] = c.releaseKeys as [any, any, any];
const policy: VerifyPolicy = { root: c.root, board: 'rpi4', hardwareId: 'c03111', minCounter: 5, now: NOW };
const payload = randomPayload(4096 * 5 + 123); // 6 chunks of 4 KiB, last one short
const good = craftBundle(manifestFor(payload), [R1, R2], payload);
const dir = tempDir();
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function verifyBytes(buf: Buffer, p: VerifyPolicy = policy, piece = 777): Promise<Buffer> {
  const b = await openBundle(trackedSource(buf, piece).source, p);
  const out: Buffer[] = [];
  for await (const ch of b.chunks()) out.push(ch);
  return Buffer.concat(out);
}
function flip(buf: Buffer, offset: number, mask = 0x01): Buffer {
  const b = Buffer.from(buf);
  b[offset]! ^= mask;
  return b;
}
const headerLen = good.readUInt32BE(4);
const payloadOffset = PREAMBLE_BYTES + headerLen;
const headerText = good.subarray(PREAMBLE_BYTES, payloadOffset).toString('utf8');

describe('bundle format', () => {
  it('good bundle verifies and yields exactly the payload, from any piece size', async () => {
    for (const piece of [1, 3, 4096, 1 << 20]) expect((await verifyBytes(good, policy, piece)).equals(payload)).toBe(true);
    expect(good.subarray(0, 4).toString()).toBe('UZB1');
  });

  it('header is canonical JSON and is verified before any payload byte is read', async () => {
    expect(parseHeader(good.subarray(PREAMBLE_BYTES, payloadOffset)).signed.payload.size).toBe(payload.length);
    const t = trackedSource(good, 1);
    const b = await openBundle(t.source, policy);
    expect(t.pulled()).toBe(payloadOffset); // nothing of the payload consumed yet
    expect(b.payloadOffset).toBe(payloadOffset);
    await b.close();
    const bad = trackedSource(flip(good, payloadOffset - 3), 1);
    await expectCode(openBundle(bad.source, policy), ['BAD_SIGNATURE', 'MALFORMED']);
    expect(bad.pulled()).toBeLessThanOrEqual(payloadOffset);
  });

  it('header with whitespace / reordered keys (not canonical) is MALFORMED even though it parses', async () => {
    const pretty = Buffer.from(JSON.stringify(JSON.parse(headerText), null, 1));
    const pre = Buffer.alloc(8);
    pre.write('UZB1');
    pre.writeUInt32BE(pretty.length, 4);
    await expectCode(verifyBytes(Buffer.concat([pre, pretty, payload])), 'MALFORMED');
  });
});

describe('attacks: each is rejected with its code', () => {
  it('bit flip in the header (signed manifest) → BAD_SIGNATURE', async () => {
    const at = PREAMBLE_BYTES + headerText.indexOf('"rollbackCounter":5') + '"rollbackCounter":'.length;
    expect(String.fromCharCode(good[at]!)).toBe('5');
    await expectCode(verifyBytes(flip(good, at, 0x0c)), 'BAD_SIGNATURE'); // '5' → '9'
    const b = PREAMBLE_BYTES + headerText.indexOf('"id":"rpi4"') + 7; // rpi4 → rpi5
    await expectCode(verifyBytes(flip(good, b, 0x01)), 'BAD_SIGNATURE');
  });

  it('bit flip in a signature → BAD_SIGNATURE; in a signature keyid → UNKNOWN_KEY', async () => {
    const sigAt = PREAMBLE_BYTES + headerText.indexOf('"sig":"') + 7 + 10;
    await expectCode(verifyBytes(flip(good, sigAt, 0x01)), ['BAD_SIGNATURE', 'MALFORMED']);
    // '0'..'9' ↔ others may leave hex; pick a deterministic hex→hex change
    const c0 = good[sigAt]!;
    const swapped = Buffer.from(good);
    swapped[sigAt] = c0 === 0x61 ? 0x62 : 0x61;
    await expectCode(verifyBytes(swapped), 'BAD_SIGNATURE');
    const kidAt = PREAMBLE_BYTES + headerText.indexOf('"keyid":"') + 9 + 5;
    const k = Buffer.from(good);
    k[kidAt] = good[kidAt] === 0x61 ? 0x62 : 0x61;
    await expectCode(verifyBytes(k), 'UNKNOWN_KEY');
  });

  it('uppercase hex in a signature (same bytes, different spelling) → MALFORMED', async () => {
    const sigAt = PREAMBLE_BYTES + headerText.indexOf('"sig":"') + 7;
    const b = Buffer.from(good);
    let i = sigAt;
    while (!(b[i]! >= 0x61 && b[i]! <= 0x66)) i++;
    b[i] = b[i]! - 0x20;
    await expectCode(verifyBytes(b), 'MALFORMED');
  });

  it('bit flip in the payload → HASH_MISMATCH, and no chunk at or after the bad one is yielded', async () => {
    const bad = flip(good, payloadOffset + 4096 * 2 + 10); // chunk 2
    const b = await openBundle(trackedSource(bad, 1000).source, policy);
    const seen: number[] = [];
    await expectCode(
      (async () => {
        for await (const ch of b.chunks()) seen.push(ch.length);
      })(),
      'HASH_MISMATCH',
    );
    expect(seen).toEqual([4096, 4096]);
    await expectCode(verifyBytes(flip(good, good.length - 1)), 'HASH_MISMATCH'); // last (short) chunk
  });

  it('truncation at many points → TRUNCATED', async () => {
    const points = new Set([0, 1, 3, 4, 7, 8, 9, payloadOffset - 1, payloadOffset, payloadOffset + 1, payloadOffset + 4096, good.length - 1]);
    for (let p = 0; p < good.length; p += 211) points.add(p);
    for (const p of points) await expectCode(verifyBytes(good.subarray(0, p)), 'TRUNCATED');
  });

  it('appended bytes (even one) → TRAILING_DATA, and the last chunk is withheld', async () => {
    await expectCode(verifyBytes(Buffer.concat([good, Buffer.from([0])])), 'TRAILING_DATA');
    await expectCode(verifyBytes(Buffer.concat([good, randomPayload(5000)])), 'TRAILING_DATA');
    const b = await openBundle(trackedSource(Buffer.concat([good, Buffer.from('x')]), 4096).source, policy);
    let n = 0;
    await expectCode(
      (async () => {
        for await (const ch of b.chunks()) n += ch.length;
      })(),
      'TRAILING_DATA',
    );
    expect(n).toBe(4096 * 5);
  });

  it('payload longer than the manifest says → TRAILING_DATA; shorter → TRUNCATED', async () => {
    const m = manifestFor(payload);
    await expectCode(verifyBytes(craftBundle(m, [R1, R2], Buffer.concat([payload, Buffer.alloc(4096)]))), 'TRAILING_DATA');
    await expectCode(verifyBytes(craftBundle(m, [R1, R2], payload.subarray(0, payload.length - 1))), 'TRUNCATED');
  });

  it('signed by a key outside the release role → UNKNOWN_KEY (also a root key)', async () => {
    const m = manifestFor(payload);
    await expectCode(verifyBytes(craftBundle(m, [generateSigningKey(), generateSigningKey()], payload)), 'UNKNOWN_KEY');
    await expectCode(verifyBytes(craftBundle(m, [R1, c.rootKeys[0]!], payload)), 'UNKNOWN_KEY');
  });

  it('below threshold: 2-of-3 with one signature → THRESHOLD; unsigned → THRESHOLD', async () => {
    const m = manifestFor(payload);
    await expectCode(verifyBytes(craftBundle(m, [R3], payload)), 'THRESHOLD');
    await expectCode(verifyBytes(craftBundle(m, [], payload)), 'THRESHOLD');
    expect((await verifyBytes(craftBundle(m, [R1, R3], payload))).length).toBe(payload.length);
    expect((await verifyBytes(craftBundle(m, [R1, R2, R3], payload))).length).toBe(payload.length);
  });

  it('duplicate signature entries by one key do not reach the threshold → MALFORMED', async () => {
    const h = JSON.parse(headerText);
    h.signatures = [h.signatures[0], h.signatures[0]];
    await expectCode(verifyBytes(Buffer.concat([encodeHeader(h), payload])), 'MALFORMED');
  });

  it('revoked release key after root rotation → REVOKED_KEY (the old root still accepted it)', async () => {
    const v2 = signRoot(rotateRootSigned(c.root.signed, { expires: new Date(NOW.getTime() + 365 * 86_400_000), remove: { release: [R1.keyid] }, thresholds: { release: 2 } }), c.rootKeys);
    const t2 = updateTrustedRoot(c.root, JSON.stringify(v2));
    await expectCode(verifyBytes(good, { ...policy, root: t2 }), 'REVOKED_KEY');
    const fresh = craftBundle(manifestFor(payload), [R2, R3], payload);
    expect((await verifyBytes(fresh, { ...policy, root: t2 })).length).toBe(payload.length);
  });

  it('wrong board / hardware id → WRONG_BOARD', async () => {
    await expectCode(verifyBytes(good, { ...policy, board: 'rpi5' }), 'WRONG_BOARD');
    await expectCode(verifyBytes(good, { ...policy, hardwareId: 'd04170' }), 'WRONG_BOARD');
  });

  it('lower rollback counter → ROLLBACK; lower version needs a signed downgradeOverride', async () => {
    await expectCode(verifyBytes(good, { ...policy, minCounter: 6 }), 'ROLLBACK');
    await expectCode(verifyBytes(good, { ...policy, currentVersion: '1.3.0' }), 'ROLLBACK');
    const ok = craftBundle(manifestFor(payload, { downgradeOverride: true }), [R1, R2], payload);
    expect((await verifyBytes(ok, { ...policy, currentVersion: '1.3.0' })).length).toBe(payload.length);
    await expectCode(verifyBytes(ok, { ...policy, currentVersion: '1.3.0', minCounter: 6 }), 'ROLLBACK');
  });

  it('expired bundle → EXPIRED; expired trusted root → EXPIRED', async () => {
    await expectCode(verifyBytes(good, { ...policy, now: new Date(NOW.getTime() + 31 * 86_400_000) }), 'EXPIRED');
    await expectCode(verifyBytes(good, { ...policy, now: new Date(NOW.getTime() + 400 * 86_400_000) }), 'EXPIRED');
  });

  it('oversized fields in a validly signed header → MALFORMED', async () => {
    for (const over of [
      { board: { id: 'x'.repeat(65), hardwareIds: [] } },
      { board: { id: 'rpi4', hardwareIds: Array.from({ length: 33 }, (_, i) => `h${i}`) } },
      { version: '1.0.0-' + 'a'.repeat(64) },
      { workload: { name: 'app', version: 'v'.repeat(65) } },
      { rollbackCounter: 2 ** 32 },
      { rollbackCounter: -1 },
      { extra: 1 } as Partial<Manifest>,
      { deltaBase: 'abc' as unknown as null },
    ] as Partial<Manifest>[]) {
      await expectCode(verifyBytes(craftBundle(manifestFor(payload, over), [R1, R2], payload)), 'MALFORMED');
    }
    // chunk list inconsistent with size, non power-of-two chunk size
    const m = manifestFor(payload);
    await expectCode(verifyBytes(craftBundle({ ...m, payload: { ...m.payload, chunkSha256: m.payload.chunkSha256.slice(1) } }, [R1, R2], payload)), 'MALFORMED');
    await expectCode(verifyBytes(craftBundle({ ...m, payload: { ...m.payload, chunkSize: 5000 } }, [R1, R2], payload)), 'MALFORMED');
  });

  it('header length over the limit is refused before reading it', async () => {
    const pre = Buffer.alloc(8);
    pre.write('UZB1');
    pre.writeUInt32BE(MAX_HEADER_BYTES + 1, 4);
    const t = trackedSource(Buffer.concat([pre, Buffer.alloc(2 * MAX_HEADER_BYTES, 0x20)]), 8);
    await expectCode(openBundle(t.source, policy), 'MALFORMED');
    expect(t.pulled()).toBe(8);
    const bad = Buffer.from(good);
    bad.write('UZB2', 0);
    await expectCode(verifyBytes(bad), 'MALFORMED');
  });
});

describe('writeBundle / signBundle / files', () => {
  const payloadPath = join(dir, 'image.bin');
  const big = randomPayload(3 * 1024 * 1024 + 17);
  writeFileSync(payloadPath, big);
  const fields = { board: { id: 'rpi4', hardwareIds: ['c03111'] }, version: '2.0.0', rollbackCounter: 7, workload: { name: 'app', version: '2.0.0' }, createdAt: NOW };

  it('writes an unsigned bundle, then signBundle adds release signatures', async () => {
    const out = join(dir, 'a.uzb');
    const h = await writeBundle({ payload: payloadPath, out, manifest: fields });
    expect(h.signatures).toEqual([]);
    expect(h.signed.payload.chunkSize).toBe(1024 * 1024);
    expect(h.signed.payload.chunkSha256).toHaveLength(4);
    await expectCode(verifyBundleFile(out, policy), 'THRESHOLD');
    await signBundle(out, [R1]);
    await expectCode(verifyBundleFile(out, policy), 'THRESHOLD');
    await signBundle(out, [R2]);
    const v = await verifyBundleFile(out, policy);
    expect(v.signedBy.sort()).toEqual([R1.keyid, R2.keyid].sort());
    expect(statSync(out).size).toBe((await readBundleHeaderFile(out)).payloadOffset + big.length);
  });

  it('signBundle refuses to sign a bundle whose payload does not match its manifest', async () => {
    const out = join(dir, 'b.uzb');
    await writeBundle({ payload: payloadPath, out, manifest: fields, keys: [R1] });
    const bytes = readFileSync(out);
    bytes[bytes.length - 100]! ^= 0xff;
    writeFileSync(out, bytes);
    await expectCode(signBundle(out, [R2]), 'HASH_MISMATCH');
    expect(readFileSync(out).equals(bytes)).toBe(true); // untouched
  });

  it('gzip payloads: hashes cover the stored bytes; stream({decompress}) yields the original', async () => {
    const out = join(dir, 'c.uzb');
    const h = await writeBundle({ payload: payloadPath, out, manifest: { ...fields, compression: 'gzip' }, keys: [R1, R2] });
    expect(h.signed.payload.compression).toBe('gzip');
    const b = await openBundle(Readable.from([readFileSync(out)]), policy);
    const parts: Buffer[] = [];
    for await (const x of b.stream({ decompress: true })) parts.push(x as Buffer);
    expect(Buffer.concat(parts).equals(big)).toBe(true);
    const stored = readFileSync(out).subarray(b.payloadOffset);
    expect(gunzipSync(stored).equals(big)).toBe(true);
  });

  it('writeBundle validates manifest fields (MALFORMED) and writes nothing', async () => {
    const out = join(dir, 'd.uzb');
    await expectCode(writeBundle({ payload: payloadPath, out, manifest: { ...fields, version: 'v1' } }), 'MALFORMED');
    await expectCode(writeBundle({ payload: payloadPath, out, manifest: { ...fields, board: { id: 'bad id' } } }), 'MALFORMED');
    await expectCode(writeBundle({ payload: payloadPath, out, manifest: { ...fields, expiresAt: new Date(NOW.getTime() - 1000) } }), 'MALFORMED');
    expect(() => statSync(out)).toThrow();
  });

  it('empty payload round-trips', async () => {
    const p = join(dir, 'empty.bin');
    writeFileSync(p, Buffer.alloc(0));
    const out = join(dir, 'e.uzb');
    await writeBundle({ payload: p, out, manifest: fields, keys: [R1, R2] });
    const v = await verifyBundleFile(out, policy);
    expect(v.manifest.payload.size).toBe(0);
    expect(v.manifest.createdAt).toBe(tufDate(NOW));
    await expectCode(verifyBytes(Buffer.concat([readFileSync(out), Buffer.from([1])])), 'TRAILING_DATA');
  });
});
