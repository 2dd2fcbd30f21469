/**
 * A minimal DER TLV reader: just enough to take certificates and CRLs apart without re-encoding them, so the
 * bytes that were signed (tbsCertList) and raw issuer names can be compared exactly.
 */
import { UzError } from '../../lib/errors.js';

export interface Tlv {
  /** Identifier octet (class | constructed | tag number < 31). */
  tag: number;
  /** The whole element: header and content. */
  raw: Buffer;
  /** Content octets only. */
  content: Buffer;
}

function bad(what: string, code: string): never {
  throw new UzError(code, `malformed DER: ${what}`);
}

/** Reads the element at `off`; returns it and the offset after it. */
export function readTlv(buf: Buffer, off = 0, code = 'CA_DER_INVALID'): { tlv: Tlv; next: number } {
  if (off + 2 > buf.length) bad('truncated header', code);
  const tag = buf[off]!;
  if ((tag & 0x1f) === 0x1f) bad('multi-byte tags are not supported', code);
  let len = buf[off + 1]!;
  let hdr = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) bad('unsupported length encoding', code);
    if (off + 2 + n > buf.length) bad('truncated length', code);
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[off + 2 + i]!;
    hdr += n;
  }
  const end = off + hdr + len;
  if (end > buf.length) bad('element runs past the end of its container', code);
  return { tlv: { tag, raw: buf.subarray(off, end), content: buf.subarray(off + hdr, end) }, next: end };
}

/** Children of a constructed element. */
export function children(t: Tlv, code = 'CA_DER_INVALID'): Tlv[] {
  if (!(t.tag & 0x20)) bad(`element 0x${t.tag.toString(16)} is not constructed`, code);
  const out: Tlv[] = [];
  for (let off = 0; off < t.content.length; ) {
    const r = readTlv(t.content, off, code);
    out.push(r.tlv);
    off = r.next;
  }
  return out;
}

/** Parses one top-level element that must span the whole buffer. */
export function parseDer(buf: Buffer, code = 'CA_DER_INVALID'): Tlv {
  const r = readTlv(buf, 0, code);
  if (r.next !== buf.length) bad('trailing bytes after the top-level element', code);
  return r.tlv;
}

/** UTCTime (0x17) or GeneralizedTime (0x18), Zulu only, as RFC 5280 requires. */
export function readTime(t: Tlv, code = 'CA_DER_INVALID'): Date {
  const s = t.content.toString('latin1');
  let m: RegExpExecArray | null;
  let year: number;
  if (t.tag === 0x17 && (m = /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s))) {
    const yy = Number(m[1]);
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
  } else if (t.tag === 0x18 && (m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s))) {
    year = Number(m[1]);
  } else {
    return bad(`bad time value "${s}"`, code);
  }
  return new Date(Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
}

/** Lower-case hex of an INTEGER's content without leading zero octets ("0" for zero). */
export function integerHex(t: Tlv): string {
  return normalizeSerial(t.content.toString('hex'));
}

/** Serial numbers compare as integers: lower-case hex, no 0x / colons / leading zeros. */
export function normalizeSerial(hex: string): string {
  const h = hex.trim().toLowerCase().replace(/^0x/, '').replace(/:/g, '');
  const s = h.replace(/^0+/, '');
  return s === '' ? '0' : s;
}

/** Dotted OID from an OBJECT IDENTIFIER element. */
export function oidString(t: Tlv): string {
  const b = t.content;
  if (t.tag !== 0x06 || b.length === 0) return '';
  const parts: number[] = [];
  let v = 0;
  for (const byte of b) {
    v = v * 128 + (byte & 0x7f);
    if (!(byte & 0x80)) {
      parts.push(v);
      v = 0;
    }
  }
  const first = parts.shift() ?? 0;
  const a = first < 80 ? Math.floor(first / 40) : 2;
  return [a, first - a * 40, ...parts].join('.');
}

export function pemToDer(pem: string, label: string, code: string): Buffer {
  const re = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`);
  const m = re.exec(pem);
  if (!m) throw new UzError(code, `expected a PEM "${label}" block`);
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
}

export function derToPem(der: Buffer, label: string): string {
  const b64 = der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}
