import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { existsSync, mkdirSync } from 'node:fs';
import type { AppManifest } from '../../firmware/apps/schema.js';
import { RUNTIME_SNAPSHOT, SNAPSHOT_REJECTED_EXIT_CODE } from '../../lib/node-snapshots.js';

/**
 * Keeps the one workload running: start, restart with capped exponential backoff (reset after a stable
 * minute), and keep its recent output in a RAM ring buffer (SD cards wear out; persistence of logs is
 * sparing and belongs to the agent's log shipper, not to every line).
 */
export class RingBuffer {
  private readonly lines: string[] = [];
  constructor(private readonly max = 2000) {}
  push(line: string): void {
    this.lines.push(line);
    if (this.lines.length > this.max) this.lines.splice(0, this.lines.length - this.max);
  }
  tail(n = 50): string[] {
    return this.lines.slice(-n);
  }
}

export interface SupervisorEvents {
  started: [pid: number];
  /** V8 refused the Node.js start-up snapshot (exit code 14): the workload is started again without it. */
  snapshotRejected: [];
  exited: [code: number | null, signal: NodeJS.Signals | null, restartInMs: number];
  /** The workload wrote a line (servers usually say when they listen: a hint to probe its health now). */
  output: [line: string];
}

export class Supervisor extends EventEmitter<SupervisorEvents> {
  readonly log = new RingBuffer();
  private child: ChildProcess | null = null;
  private stopping = false;
  private backoffMs: number;
  private restartTimer: NodeJS.Timeout | null = null;
  private startedAt = 0;
  private snapshotRejected = false;
  restarts = 0;

  constructor(
    private readonly app: Pick<AppManifest, 'command' | 'args' | 'env' | 'dataDir' | 'restart'> & { nodeStartupSnapshot?: boolean },
    private readonly echo: (line: string) => void = () => {},
    /** The image's Node.js start-up snapshot for workloads (tests point it elsewhere). */
    private readonly runtimeSnapshot = `/${RUNTIME_SNAPSHOT.blob}`,
  ) {
    super();
    this.backoffMs = app.restart.initialBackoffMs;
  }

  get running(): boolean {
    return this.child !== null;
  }

  start(): void {
    this.stopping = false;
    mkdirSync(this.app.dataDir, { recursive: true });
    // A Node.js workload that opted in starts from the image's start-up snapshot, with the V8 flags it was made with.
    const viaSnapshot = this.app.nodeStartupSnapshot === true && !this.snapshotRejected && existsSync(this.runtimeSnapshot);
    const args = viaSnapshot ? [...RUNTIME_SNAPSHOT.flags, '--snapshot-blob', this.runtimeSnapshot, ...this.app.args] : this.app.args;
    const child = spawn(this.app.command, args, {
      env: { PATH: '/usr/sbin:/usr/bin', HOME: this.app.dataDir, ...this.app.env },
      cwd: this.app.dataDir,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    this.startedAt = Date.now();
    const onData = (chunk: Buffer) => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line) {
          this.log.push(line);
          this.echo(line);
          this.emit('output', line);
        }
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('spawn', () => this.emit('started', child.pid ?? -1));
    child.once('error', (e) => this.log.push(`spawn error: ${e.message}`));
    child.once('close', (code, signal) => {
      this.child = null;
      if (this.stopping) return;
      if (viaSnapshot && code === SNAPSHOT_REJECTED_EXIT_CODE) {
        // Not the workload's failure: this CPU is not the one the snapshot was made for. Start it plainly, now.
        this.snapshotRejected = true;
        this.emit('snapshotRejected');
        this.start();
        return;
      }
      if (Date.now() - this.startedAt > 60_000) this.backoffMs = this.app.restart.initialBackoffMs;
      const wait = this.backoffMs;
      this.backoffMs = Math.min(this.backoffMs * 2, this.app.restart.maxBackoffMs);
      this.restarts++;
      this.emit('exited', code, signal, wait);
      this.restartTimer = setTimeout(() => this.start(), wait);
    });
  }

  async stop(graceMs = 10_000): Promise<void> {
    this.stopping = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    const child = this.child;
    if (!child) return;
    await new Promise<void>((resolve) => {
      const kill = setTimeout(() => child.kill('SIGKILL'), graceMs);
      child.once('close', () => {
        clearTimeout(kill);
        resolve();
      });
      child.kill('SIGTERM');
    });
  }
}
