import { runQemu, type GuestForward, type QemuRunResult } from '../../firmware/qemu.js';

/**
 * A running emulated board whose console a test can wait on, line by line, across reboots.
 * (`runQemu` stops at one marker; an update story needs several in sequence.)
 */
export class QemuSession {
  readonly lines: string[] = [];
  private readonly ac = new AbortController();
  private waiters: Array<{ re: RegExp; from: number; resolve: (l: string) => void }> = [];
  readonly done: Promise<QemuRunResult>;

  constructor(image: string, forwards: GuestForward[], echo = process.env.UZ_E2E_ECHO === '1') {
    this.done = runQemu({
      image,
      forwards,
      signal: this.ac.signal,
      timeoutMs: 60 * 60_000,
      failOnPanic: false,
      onLine: (l) => {
        this.lines.push(l);
        if (echo || l.startsWith('UZ-')) process.stderr.write(`    [board] ${l}\n`);
        const i = this.lines.length - 1;
        this.waiters = this.waiters.filter((w) => {
          if (i >= w.from && w.re.test(l)) {
            w.resolve(l);
            return false;
          }
          return true;
        });
      },
    });
  }

  /** Index to pass as `from` so a wait only sees lines printed after now. */
  mark(): number {
    return this.lines.length;
  }

  waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<string> {
    const seen = this.lines.slice(from).find((l) => re.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const tail = this.lines.filter((l) => l.startsWith('UZ-')).slice(-15).join('\n');
        reject(new Error(`no console line matching ${re} within ${timeoutMs / 1000} s; last UZ- lines:\n${tail}`));
      }, timeoutMs);
      this.waiters.push({ re, from, resolve: (l) => { clearTimeout(timer); resolve(l); } });
      void this.done.then(() => { clearTimeout(timer); reject(new Error(`QEMU exited while waiting for ${re}`)); });
    });
  }

  uzLines(from = 0): string[] {
    return this.lines.slice(from).filter((l) => l.startsWith('UZ-'));
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await this.done;
  }
}
