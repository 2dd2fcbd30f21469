import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PREAMBLE_BYTES, encodeHeader, openBundle, parseHeader, type Manifest } from '../../firmware/bundle/index.js';
import { canonicalBytes } from '../../firmware/trust/canonical.js';
import { tufDate } from '../../firmware/trust/root.js';
import { addSignatures } from '../../firmware/trust/signatures.js';
import { isUzError } from '../../lib/errors.js';
import { NOW, ceremony, craftBundle, manifestFor, randomPayload, trackedSource } from './helpers.js';

const c = ceremony(1, 1, 2, 3);
const policy = { root: c.root, board: 'rpi4', hardwareId: 'c03111', minCounter: 5, now: NOW };

const id = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/);
const hex64 = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString('hex'));
const date = fc.integer({ min: Date.UTC(2000, 0, 1), max: Date.UTC(2200, 0, 1) }).map((t) => tufDate(new Date(t)));
const manifestArb: fc.Arbitrary<Manifest> = fc
  .record({
    board: fc.record({ id, hardwareIds: fc.uniqueArray(id, { maxLength: 5 }) }),
    version: fc.tuple(fc.nat(999), fc.nat(999), fc.nat(999), fc.option(fc.stringMatching(/^[a-z][a-z0-9]{0,8}$/), { nil: undefined })).map(([a, b, d, pre]) => `${a}.${b}.${d}${pre ? '-' + pre : ''}`),
    rollbackCounter: fc.integer({ min: 0, max: 0xffffffff }),
    chunkLog: fc.integer({ min: 12, max: 26 }),
    chunks: fc.array(hex64, { maxLength: 6 }),
    sha: hex64,
    compression: fc.constantFrom('none' as const, 'gzip' as const),
    createdAt: date,
    ttl: fc.option(fc.integer({ min: 1, max: 10_000 }), { nil: undefined }),
    workload: fc.record({ name: id, version: id }),
    downgradeOverride: fc.option(fc.boolean(), { nil: undefined }),
    deltaBase: fc.constantFrom(null, undefined),
  })
  .map((r) => {
    const chunkSize = 2 ** r.chunkLog;
    const size = r.chunks.length === 0 ? 0 : (r.chunks.length - 1) * chunkSize + 1 + (r.rollbackCounter % chunkSize);
    const m: Manifest = {
      _type: 'uz-bundle',
      formatVersion: 1,
      board: r.board,
      version: r.version,
      rollbackCounter: r.rollbackCounter,
      payload: { size, sha256: r.sha, compression: r.compression, chunkSize, chunkSha256: r.chunks },
      createdAt: r.createdAt,
      workload: r.workload,
    };
    if (r.ttl !== undefined) m.expiresAt = tufDate(new Date(Date.parse(r.createdAt) + r.ttl * 1000));
    if (r.downgradeOverride !== undefined) m.downgradeOverride = r.downgradeOverride;
    if (r.deltaBase !== undefined) m.deltaBase = r.deltaBase;
    return m;
  });

describe('properties', () => {
  it('manifest round-trip: encode → parse gives the same manifest and the header bytes are canonical', () => {
    fc.assert(
      fc.property(manifestArb, (m) => {
        const h = addSignatures({ signed: m, signatures: [] }, [c.releaseKeys[0]!]);
        const bytes = encodeHeader(h);
        const body = bytes.subarray(PREAMBLE_BYTES);
        const back = parseHeader(body);
        expect(back).toEqual(h);
        expect(canonicalBytes(back).equals(body)).toBe(true);
      }),
      { numRuns: 200 },
    );
  });

  // A small bundle signed by 2 of the 3 release keys: any single-byte change anywhere must be rejected.
  const payload = randomPayload(3 * 4096 + 500);
  const good = craftBundle(manifestFor(payload), [c.releaseKeys[0]!, c.releaseKeys[2]!], payload);
  const payloadOffset = PREAMBLE_BYTES + good.readUInt32BE(4);
  const HEADER_CODES = ['MALFORMED', 'BAD_SIGNATURE', 'UNKNOWN_KEY', 'TRUNCATED'];

  async function rejection(buf: Buffer): Promise<string | undefined> {
    try {
      const b = await openBundle(trackedSource(buf, 1500).source, policy);
      await b.drain();
      return undefined;
    } catch (e) {
      if (!isUzError(e)) throw e;
      return e.code;
    }
  }
  function expectedCodes(offset: number): string[] {
    if (offset < 4) return ['MALFORMED'];
    if (offset < PREAMBLE_BYTES) return ['MALFORMED', 'TRUNCATED'];
    if (offset < payloadOffset) return HEADER_CODES;
    return ['HASH_MISMATCH'];
  }

  it('sanity: the unmodified bundle verifies', async () => {
    expect(await rejection(good)).toBeUndefined();
  });

  it('any single-byte change at a random offset is rejected with a fitting code', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: good.length - 1 }), fc.integer({ min: 1, max: 255 }), async (offset, x) => {
        const b = Buffer.from(good);
        b[offset]! ^= x;
        const code = await rejection(b);
        expect(expectedCodes(offset)).toContain(code);
      }),
      { numRuns: 1500 },
    );
  });

  it('exhaustive: every byte of preamble + header, flipped (xor 0x01 and 0x80), is rejected', async () => {
    for (let offset = 0; offset < payloadOffset; offset++) {
      for (const x of [0x01, 0x80]) {
        const b = Buffer.from(good);
        b[offset]! ^= x;
        const code = await rejection(b);
        if (!expectedCodes(offset).includes(code as string)) throw new Error(`offset ${offset} xor ${x}: got ${code}`);
      }
    }
  });
});
