/**
 * Canonical JSON as used by TUF (securesystemslib `encode_canonical`, tuf-js `@tufjs/canonical-json`),
 * after the OLPC "Canonical JSON" rules:
 *  - object keys sorted (JS default sort = UTF-16 code-unit order, exactly what tuf-js does),
 *  - no insignificant whitespace,
 *  - strings: only `\` and `"` are escaped, every other character is emitted raw (UTF-8 on the wire),
 *  - numbers: integers only (no floats, no exponent, -0 becomes 0), and we additionally require safe integers,
 *  - booleans and null as in JSON.
 *
 * Two deliberate restrictions over tuf-js, so that the output is always also valid JSON that JSON.parse
 * reads back to the same value (our headers are parsed with JSON.parse and then compared byte for byte):
 *  - strings containing control characters U+0000..U+001F are rejected (OLPC would emit them raw,
 *    which is not valid JSON), and so are lone UTF-16 surrogates (they have no UTF-8 encoding);
 *  - undefined-valued object properties are skipped (JSON.parse never produces them), undefined array
 *    elements, functions, symbols, bigints and non-plain objects are rejected.
 */
import { UzError } from '../../lib/errors.js';

// eslint-disable-next-line no-control-regex
const FORBIDDEN_IN_STRING = /[\u0000-\u001f]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

function encodeString(s: string): string {
  if (FORBIDDEN_IN_STRING.test(s)) {
    throw new UzError('MALFORMED', 'canonical JSON: string contains a control character or a lone surrogate', {});
  }
  return '"' + s.replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"';
}

function encode(value: unknown, out: string[], depth: number): void {
  if (depth > 64) throw new UzError('MALFORMED', 'canonical JSON: nesting too deep', {});
  if (value === null) {
    out.push('null');
  } else if (typeof value === 'string') {
    out.push(encodeString(value));
  } else if (typeof value === 'boolean') {
    out.push(value ? 'true' : 'false');
  } else if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) {
      throw new UzError('MALFORMED', `canonical JSON: only safe integers are allowed, got ${String(value)}`, {});
    }
    out.push(String(value === 0 ? 0 : value));
  } else if (Array.isArray(value)) {
    out.push('[');
    for (let i = 0; i < value.length; i++) {
      if (i > 0) out.push(',');
      const v: unknown = value[i];
      if (v === undefined) throw new UzError('MALFORMED', 'canonical JSON: undefined array element', {});
      encode(v, out, depth + 1);
    }
    out.push(']');
  } else if (typeof value === 'object') {
    const proto = Object.getPrototypeOf(value) as unknown;
    if (proto !== Object.prototype && proto !== null) {
      throw new UzError('MALFORMED', 'canonical JSON: only plain objects can be encoded', {});
    }
    const rec = value as Record<string, unknown>;
    const keys = Object.keys(rec)
      .filter((k) => rec[k] !== undefined)
      .sort();
    out.push('{');
    keys.forEach((k, i) => {
      if (i > 0) out.push(',');
      out.push(encodeString(k), ':');
      encode(rec[k], out, depth + 1);
    });
    out.push('}');
  } else {
    throw new UzError('MALFORMED', `canonical JSON: cannot encode a ${typeof value}`, {});
  }
}

/** Canonical JSON text of `value` (throws UzError MALFORMED for values canonical JSON cannot carry). */
export function canonicalJson(value: unknown): string {
  const out: string[] = [];
  encode(value, out, 0);
  return out.join('');
}

/** Canonical JSON of `value` as UTF-8 bytes — the exact bytes that get signed. */
export function canonicalBytes(value: unknown): Buffer {
  return Buffer.from(canonicalJson(value), 'utf8');
}
