/**
 * `.uzb` container: one streamable file
 *
 *   offset 0   4 bytes   magic "UZB1"
 *   offset 4   4 bytes   header length N, unsigned 32-bit big-endian, 2 ≤ N ≤ MAX_HEADER_BYTES
 *   offset 8   N bytes   header: canonical JSON (TUF rules) of { signed: <manifest>, signatures: [{keyid, sig}] }
 *   offset 8+N           payload: exactly manifest.payload.size stored bytes, then end of file
 *
 * Signatures are Ed25519 over canonicalJson(manifest) by keys of the trust root's `release` role. The header
 * must be byte-identical to the canonical encoding of what it parses to, so the header has exactly one valid
 * spelling (no whitespace, key order, escape or duplicate-key games).
 */
import { z } from 'zod';
import { UzError } from '../../lib/errors.js';
import { canonicalBytes } from '../trust/canonical.js';
import { MAX_SIGNATURES, SignatureSchema, type Envelope } from '../trust/signatures.js';
import { ManifestSchema, type Manifest } from './manifest.js';

export const MAGIC = Buffer.from('UZB1', 'ascii');
export const PREAMBLE_BYTES = 8;
export const MAX_HEADER_BYTES = 1024 * 1024;

export type BundleHeader = Envelope<Manifest>;

const HeaderSchema = z.strictObject({
  signed: ManifestSchema,
  signatures: z.array(SignatureSchema).max(MAX_SIGNATURES),
});

/** Preamble + header bytes for a header envelope. */
export function encodeHeader(header: BundleHeader): Buffer {
  const body = canonicalBytes(header);
  if (body.length > MAX_HEADER_BYTES) {
    throw new UzError('MALFORMED', `header is ${body.length} bytes, limit ${MAX_HEADER_BYTES}`, { bytes: body.length });
  }
  const pre = Buffer.alloc(PREAMBLE_BYTES);
  MAGIC.copy(pre, 0);
  pre.writeUInt32BE(body.length, 4);
  return Buffer.concat([pre, body]);
}

/** Validates the 8-byte preamble and returns the header length. */
export function parsePreamble(pre: Uint8Array): number {
  if (pre.length < PREAMBLE_BYTES) throw new UzError('TRUNCATED', 'bundle ends inside the preamble', {});
  if (Buffer.compare(Buffer.from(pre.subarray(0, 4)), MAGIC) !== 0) throw new UzError('MALFORMED', 'not a UZB1 bundle (bad magic)', {});
  const n = Buffer.from(pre.buffer, pre.byteOffset, pre.byteLength).readUInt32BE(4);
  if (n < 2 || n > MAX_HEADER_BYTES) {
    throw new UzError('MALFORMED', `header length ${n} outside 2..${MAX_HEADER_BYTES}`, { headerLength: n });
  }
  return n;
}

/** Parses header bytes; structural checks only (no signatures). */
export function parseHeader(bytes: Uint8Array): BundleHeader {
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch {
    throw new UzError('MALFORMED', 'header is not JSON', {});
  }
  const r = HeaderSchema.safeParse(raw);
  if (!r.success) {
    const first = r.error.issues[0];
    throw new UzError('MALFORMED', `header: ${first?.path.join('.') || '(root)'}: ${first?.message ?? 'invalid'}`, {
      issues: r.error.issues.length,
    });
  }
  let canon: Buffer;
  try {
    canon = canonicalBytes(raw);
  } catch {
    throw new UzError('MALFORMED', 'header is not canonical JSON', {});
  }
  if (Buffer.compare(canon, Buffer.from(bytes)) !== 0) throw new UzError('MALFORMED', 'header is not canonical JSON', {});
  return r.data as BundleHeader;
}
