/**
 * A sampling profiler for the whole emulated board (bench/boot-profile.ts): QEMU's gdbstub is asked, every few
 * milliseconds, to stop the guest and hand over both vCPUs' registers (the GDB remote serial protocol); the
 * program counters are then named with the guest kernel's own /proc/kallsyms. It sees what no in-guest tool
 * can on this board: the kernel before its clock starts, time spent in exception entry, idle CPUs.
 *
 * This module holds the pure parts (protocol framing, symbols, the summary) so they can be unit-tested.
 */

/** One GDB remote packet: `$data#checksum`, the checksum being the sum of the data bytes modulo 256. */
export function rspPacket(data: string): string {
  let sum = 0;
  for (let i = 0; i < data.length; i++) sum = (sum + data.charCodeAt(i)) & 0xff;
  return `$${data}#${sum.toString(16).padStart(2, '0')}`;
}

/**
 * Splits the byte stream from the stub into packet payloads. Acknowledgements (`+`) are dropped; every packet
 * is handed to `onPacket` once complete. A packet with a wrong checksum is an error: loopback does not
 * corrupt bytes, so it means this reader lost its place.
 */
export class RspReader {
  private buf = '';
  constructor(private readonly onPacket: (payload: string) => void) {}

  push(chunk: string): void {
    this.buf += chunk;
    for (;;) {
      this.buf = this.buf.replace(/^[+-]+/, '');
      const m = /^\$([^#]*)#([0-9a-fA-F]{2})/.exec(this.buf);
      if (!m) {
        const dollar = this.buf.indexOf('$');
        if (dollar > 0) this.buf = this.buf.slice(dollar);
        return;
      }
      this.buf = this.buf.slice(m[0].length);
      if (rspPacket(m[1]!) !== m[0]) throw new Error(`gdbstub packet with a bad checksum: ${m[0].slice(0, 60)}`);
      this.onPacket(m[1]!);
    }
  }
}

/** A little-endian hex register value as the stub sends it in a `g` reply. */
export function leHex(hex: string): bigint {
  let v = 0n;
  for (let i = hex.length - 2; i >= 0; i -= 2) v = (v << 8n) | BigInt(parseInt(hex.slice(i, i + 2), 16));
  return v;
}

/**
 * The program counter and exception level from an AArch64 `g` reply: x0–x30 and sp (32 × 8 bytes), then pc
 * (8 bytes), then the 32-bit PSTATE/CPSR, whose bits 3:2 are the exception level.
 */
export function pcAndElFromG(reply: string): { pc: bigint; el: number } {
  if (reply.length < 536 || !/^[0-9a-fA-F]+$/.test(reply.slice(0, 536))) throw new Error(`not an AArch64 register reply: ${reply.slice(0, 40)}`);
  const pc = leHex(reply.slice(512, 528));
  const pstate = Number(leHex(reply.slice(528, 536)));
  return { pc, el: (pstate >> 2) & 3 };
}

export interface KernelSymbol {
  address: bigint;
  name: string;
}

/** Code symbols (`t`/`T`, weak `w`/`W`) from /proc/kallsyms text, module symbols named `name [module]`. */
export function parseKallsyms(text: string): KernelSymbol[] {
  const out: KernelSymbol[] = [];
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]{16}) ([tTwW]) (\S+)(?:\s+\[(\S+)\])?/.exec(line);
    if (!m || /^0+$/.test(m[1]!)) continue;
    out.push({ address: BigInt(`0x${m[1]}`), name: m[4] ? `${m[3]} [${m[4]}]` : m[3]! });
  }
  return out.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
}

/** Names a kernel address: the nearest symbol at or below it. */
export function symbolize(symbols: readonly KernelSymbol[], pc: bigint): string | null {
  if (symbols.length === 0 || pc < symbols[0]!.address) return null;
  let lo = 0;
  let hi = symbols.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (symbols[mid]!.address <= pc) lo = mid;
    else hi = mid - 1;
  }
  return symbols[lo]!.name;
}

export interface Sample {
  /** Milliseconds since QEMU started. */
  t: number;
  cpu: number;
  pc: bigint;
  el: number;
}

export type SampleClass = 'user' | 'kernel' | 'idle' | 'cpu-off' | 'early';

/**
 * What a vCPU was doing: user code (EL0), the kernel's idle loop, other kernel code, powered off (a secondary
 * core before Linux starts it reports pc 0), or code below the kernel's symbols (before the MMU is on).
 */
export function classify(s: Sample, symbols: readonly KernelSymbol[]): { cls: SampleClass; symbol?: string } {
  if (s.el === 0) return { cls: 'user' };
  if (s.pc === 0n) return { cls: 'cpu-off' };
  const name = symbolize(symbols, s.pc);
  if (name === null) return { cls: 'early' };
  if (/^(cpu_do_idle|arch_cpu_idle|default_idle_call|cpuidle_enter_state)$/.test(name)) return { cls: 'idle', symbol: name };
  return { cls: 'kernel', symbol: name };
}

export interface Phase {
  name: string;
  fromMs: number;
  toMs: number;
}

export interface PhaseProfile extends Phase {
  samples: number;
  /** Share of samples (both vCPUs) per class, 0..1. */
  classes: Partial<Record<SampleClass, number>>;
  /** The kernel functions that took the largest shares, largest first. */
  topKernel: { symbol: string; share: number }[];
}

export function summarize(samples: readonly Sample[], phases: readonly Phase[], symbols: readonly KernelSymbol[], top = 15): PhaseProfile[] {
  return phases.map((p) => {
    const inPhase = samples.filter((s) => s.t >= p.fromMs && s.t < p.toMs);
    const classes: Partial<Record<SampleClass, number>> = {};
    const kernel = new Map<string, number>();
    for (const s of inPhase) {
      const c = classify(s, symbols);
      classes[c.cls] = (classes[c.cls] ?? 0) + 1;
      if (c.cls === 'kernel') kernel.set(c.symbol!, (kernel.get(c.symbol!) ?? 0) + 1);
    }
    const n = inPhase.length || 1;
    for (const k of Object.keys(classes) as SampleClass[]) classes[k] = classes[k]! / n;
    const topKernel = [...kernel].sort((a, b) => b[1] - a[1]).slice(0, top).map(([symbol, count]) => ({ symbol, share: count / n }));
    return { ...p, samples: inPhase.length, classes, topKernel };
  });
}
