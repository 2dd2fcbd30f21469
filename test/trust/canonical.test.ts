import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalJson } from '../../firmware/trust/canonical.js';
import { isUzError } from '../../lib/errors.js';

describe('canonical JSON (OLPC / securesystemslib / tuf-js rules)', () => {
  it('sorts keys, no whitespace, integers, escapes only quote and backslash', () => {
    expect(canonicalJson({ b: 1, a: [true, false, null, 'x'], c: { z: -3, y: 0 } })).toBe('{"a":[true,false,null,"x"],"b":1,"c":{"y":0,"z":-3}}');
    expect(canonicalJson('a"b\\c')).toBe('"a\\"b\\\\c"');
    expect(canonicalJson('é/ü€😀')).toBe('"é/ü€😀"'); // raw UTF-8, "/" not escaped
    expect(canonicalJson(-0)).toBe('0');
    expect(canonicalJson({ k: undefined, j: 1 })).toBe('{"j":1}');
    expect(canonicalJson({ B: 1, a: 2, _: 3 })).toBe('{"B":1,"_":3,"a":2}'); // code-unit order
  });

  it('rejects floats, unsafe integers, control characters, lone surrogates and exotic values', () => {
    for (const bad of [1.5, NaN, Infinity, 2 ** 53, 'a\nb', '\u0000', '\ud800', 10n, new Date(0), [undefined], () => 1]) {
      let err: unknown;
      try {
        canonicalJson(bad);
      } catch (e) {
        err = e;
      }
      expect(isUzError(err, 'MALFORMED')).toBe(true);
    }
  });

  it('property: output is valid JSON that parses back to the same value and is a fixed point', () => {
    const str = fc.string({ unit: 'grapheme', maxLength: 12 }).filter((s) => !/[\u0000-\u001f]/.test(s));
    const json = fc.letrec((tie) => ({
      v: fc.oneof({ depthSize: 'small' }, fc.constant(null), fc.boolean(), fc.maxSafeInteger(), str, fc.array(tie('v'), { maxLength: 4 }), fc.dictionary(str, tie('v'), { maxKeys: 4 })),
    })).v;
    fc.assert(
      fc.property(json, (v) => {
        const c = canonicalJson(v);
        const back: unknown = JSON.parse(c);
        expect(back).toEqual(v);
        expect(canonicalJson(back)).toBe(c);
      }),
      { numRuns: 300 },
    );
  });
});
