import { appendFile, mkdir, rename, stat } from 'node:fs/promises';
import { dirname } from 'node:path';

/**
 * Sparing persistence of the workload's log (SD cards wear out): lines live in RAM (the supervisor's ring
 * buffer) and are appended to the data partition in one write every `intervalMs` (default 10 min) and when
 * the workload exits, so a crash's last words survive a reboot. The file is capped at `maxBytes` with one
 * rotated copy.
 */
export class LogPersister {
  private pending: string[] = [];
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly path: string,
    private readonly o: { intervalMs?: number; maxBytes?: number; maxPendingLines?: number } = {},
  ) {}

  push(line: string): void {
    this.pending.push(`${new Date().toISOString()} ${line}`);
    const cap = this.o.maxPendingLines ?? 5000;
    if (this.pending.length > cap) this.pending.splice(0, this.pending.length - cap);
  }

  start(): void {
    this.timer ??= setInterval(() => void this.flush().catch(() => {}), this.o.intervalMs ?? 600_000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One append for everything pending; rotates first when the file has reached its cap. */
  async flush(): Promise<number> {
    if (!this.pending.length) return 0;
    const lines = this.pending;
    this.pending = [];
    await mkdir(dirname(this.path), { recursive: true });
    const size = await stat(this.path).then((s) => s.size, () => 0);
    if (size >= (this.o.maxBytes ?? 1024 * 1024)) await rename(this.path, `${this.path}.1`);
    await appendFile(this.path, `${lines.join('\n')}\n`);
    return lines.length;
  }
}
