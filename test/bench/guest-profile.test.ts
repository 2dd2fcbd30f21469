// The pure parts of the boot profiler (bench/boot-profile.ts): GDB remote framing, register decoding, kernel
// symbols and the per-phase summary.
import { describe, expect, it } from 'vitest';
import { classify, leHex, parseKallsyms, pcAndElFromG, RspReader, rspPacket, summarize, symbolize, type Sample } from '../../bench/lib/guest-profile.js';

describe('GDB remote protocol framing', () => {
  it('checksums packets as the protocol defines (sum of bytes mod 256)', () => {
    expect(rspPacket('g')).toBe('$g#67');
    expect(rspPacket('Hg01')).toBe('$Hg01#10');
    expect(rspPacket('')).toBe('$#00');
  });
  it('splits a stream into payloads across chunk boundaries, dropping acks, and refuses a bad checksum', () => {
    const got: string[] = [];
    const r = new RspReader((p) => got.push(p));
    r.push('+$T02thread:01;#0');
    r.push('4+$OK#9a$m01#ce');
    expect(got).toEqual(['T02thread:01;', 'OK', 'm01']);
    expect(() => r.push('$OK#00')).toThrow(/bad checksum/);
  });
});

describe('AArch64 registers from a g reply', () => {
  it('reads pc (bytes 256..263) and the exception level from PSTATE', () => {
    const le = (v: bigint, bytes: number) => Buffer.from(v.toString(16).padStart(bytes * 2, '0'), 'hex').reverse().toString('hex');
    const reply = '00'.repeat(32 * 8) + le(0xffffc7a22e83b990n, 8) + le(0x600000c5n, 4);
    expect(pcAndElFromG(reply)).toEqual({ pc: 0xffffc7a22e83b990n, el: 1 });
    const user = '00'.repeat(32 * 8) + le(0xaaaad0001234n, 8) + le(0x20000000n, 4);
    expect(pcAndElFromG(user)).toEqual({ pc: 0xaaaad0001234n, el: 0 });
    expect(leHex('3412')).toBe(0x1234n);
    expect(() => pcAndElFromG('E01')).toThrow(/not an AArch64 register reply/);
  });
});

describe('kernel symbols and the summary', () => {
  const kallsyms = [
    'ffffbfb582c10000 T _stext',
    'ffffbfb583b49860 T cpu_do_idle',
    'ffffbfb583b49870 T arch_cpu_idle',
    'ffffbfb583c00000 t __set_fixmap',
    'ffffbfb583d00000 D some_data',
    'ffffbfb55af92008 t esb_timer_keepalive\t[i6300esb]',
    '0000000000000000 T hidden_by_kptr_restrict',
  ].join('\n');
  const syms = parseKallsyms(kallsyms);

  it('keeps code symbols only, sorted, with their module', () => {
    expect(syms.map((s) => s.name)).toEqual(['esb_timer_keepalive [i6300esb]', '_stext', 'cpu_do_idle', 'arch_cpu_idle', '__set_fixmap']);
    expect(symbolize(syms, 0xffffbfb583c00010n)).toBe('__set_fixmap');
    expect(symbolize(syms, 0xffffbfb583b49868n)).toBe('cpu_do_idle');
    expect(symbolize(syms, 0x40000000n)).toBeNull();
  });

  it('classifies samples and shares them per phase', () => {
    const s = (t: number, cpu: number, pc: bigint, el = 1): Sample => ({ t, cpu, pc, el });
    expect(classify(s(0, 1, 0n), syms).cls).toBe('cpu-off');
    expect(classify(s(0, 0, 0x42137258n), syms).cls).toBe('early');
    expect(classify(s(0, 0, 0xaaaa00001000n, 0), syms).cls).toBe('user');
    const samples = [
      s(10, 0, 0xffffbfb583c00004n), s(10, 1, 0xffffbfb583b49868n),
      s(20, 0, 0xffffbfb583c00008n), s(20, 1, 0xaaaa00001000n, 0),
      s(30, 0, 0xffffbfb583b49868n), s(30, 1, 0xaaaa00001000n, 0),
    ];
    const [a, b] = summarize(samples, [{ name: 'a', fromMs: 0, toMs: 25 }, { name: 'b', fromMs: 25, toMs: 40 }], syms);
    expect(a).toMatchObject({ samples: 4, classes: { kernel: 0.5, idle: 0.25, user: 0.25 }, topKernel: [{ symbol: '__set_fixmap', share: 0.5 }] });
    expect(b).toMatchObject({ samples: 2, classes: { idle: 0.5, user: 0.5 }, topKernel: [] });
  });
});
