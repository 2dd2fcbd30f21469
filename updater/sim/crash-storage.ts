/**
 * A Storage whose writes become durable only on fsync, for the power-cut harness. Each file is an inode with
 * two copies: `cur` (what the running system reads: the page cache) and `disk` (what survives a cut). Directory
 * entries are two maps as well: a rename is visible at once but survives a cut only after the directory is
 * synced (ext4 without `auto_da_alloc` behaves so; FAT is worse, which is why readers treat damage as factory).
 *
 * `armCut(n)` makes the n-th mutating operation throw PowerCut, and every operation after it too (the
 * "process" is dead). `powerCut()` then drops everything not yet durable. With `keepProbability` > 0 each dirty
 * 4 KiB page independently reaches the disk anyway, as a real write-back cache may do, in any order.
 */
import { dirname } from 'node:path';
import type { BlockFile, Storage } from '../io/storage.js';

export class PowerCut extends Error {
  constructor() {
    super('simulated power cut');
    this.name = 'PowerCut';
  }
}

export function isPowerCut(e: unknown): e is PowerCut {
  return e instanceof PowerCut;
}

const PAGE = 4096;

interface Inode {
  cur: Buffer;
  disk: Buffer;
  dirty: Set<number>;
}

export class CrashStorage implements Storage {
  private names = new Map<string, Inode>();
  private diskNames = new Map<string, Inode>();
  /** Mutating operations so far (writes, syncs, renames, removals). */
  ops = 0;
  private cutAt = Number.POSITIVE_INFINITY;
  dead = false;

  constructor(
    private readonly random: () => number = Math.random,
    public keepProbability = 0,
  ) {}

  /** Cut the power at the n-th mutating operation from now (1 = the next one). */
  armCut(n: number): void {
    this.cutAt = this.ops + Math.max(1, n);
  }

  disarm(): void {
    this.cutAt = Number.POSITIVE_INFINITY;
  }

  private tick(): void {
    if (this.dead) throw new PowerCut();
    this.ops++;
    if (this.ops >= this.cutAt) {
      this.dead = true;
      throw new PowerCut();
    }
  }

  private alive(): void {
    if (this.dead) throw new PowerCut();
  }

  /** Drops every write that was not made durable; the machine can be "booted" again afterwards. */
  powerCut(): void {
    const next = new Map<string, Inode>();
    const survivors = new Map<Inode, Inode>();
    for (const [path, ino] of this.diskNames) {
      let after = survivors.get(ino);
      if (!after) {
        const disk = Buffer.from(ino.disk);
        for (const page of ino.dirty) {
          if (this.keepProbability > 0 && this.random() < this.keepProbability) {
            const start = page * PAGE;
            ino.cur.copy(disk, start, start, Math.min(ino.cur.length, start + PAGE, disk.length));
          }
        }
        after = { cur: disk, disk: Buffer.from(disk), dirty: new Set() };
        survivors.set(ino, after);
      }
      next.set(path, after);
    }
    this.names = next;
    this.diskNames = new Map(next);
    this.dead = false;
    this.disarm();
  }

  /** A file that is durable from the start (a slot image or a factory file laid down by the "builder"). */
  createDurable(path: string, data: Uint8Array): void {
    const ino: Inode = { cur: Buffer.from(data), disk: Buffer.from(data), dirty: new Set() };
    this.names.set(path, ino);
    this.diskNames.set(path, ino);
  }

  /** What a reader sees now (the page cache), without counting an operation. */
  peek(path: string): Buffer | null {
    const ino = this.names.get(path);
    return ino ? Buffer.from(ino.cur) : null;
  }

  async readFile(path: string): Promise<Buffer | null> {
    this.alive();
    return this.peek(path);
  }

  async writeFileDurable(path: string, data: string | Uint8Array): Promise<void> {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data);
    const tmp = `${path}.tmp`;
    this.tick(); // create + write the temporary file (page cache only)
    const ino: Inode = { cur: bytes, disk: Buffer.alloc(0), dirty: new Set() };
    for (let p = 0; p * PAGE < bytes.length; p++) ino.dirty.add(p);
    this.names.set(tmp, ino);
    this.tick(); // fsync the file
    ino.disk = Buffer.from(ino.cur);
    ino.dirty.clear();
    this.tick(); // rename over the old name
    this.names.delete(tmp);
    this.names.set(path, ino);
    this.tick(); // fsync the directory: the new name is durable
    this.syncDir(dirname(path));
  }

  private syncDir(dir: string): void {
    for (const p of [...this.diskNames.keys()]) if (dirname(p) === dir && !this.names.has(p)) this.diskNames.delete(p);
    for (const [p, ino] of this.names) if (dirname(p) === dir) this.diskNames.set(p, ino);
  }

  async remove(path: string): Promise<void> {
    this.tick();
    // Durable only once the directory is synced (by a later durable write in the same folder).
    this.names.delete(path);
  }

  async mkdirp(): Promise<void> {
    this.alive();
  }

  async openBlock(path: string): Promise<BlockFile> {
    this.alive();
    const ino = this.names.get(path);
    if (!ino) throw new Error(`no such slot ${path}`);
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    return {
      path,
      async size() {
        return ino.cur.length;
      },
      async read(buf, position) {
        self.alive();
        if (position >= ino.cur.length) return 0;
        return ino.cur.copy(buf, 0, position, Math.min(ino.cur.length, position + buf.length));
      },
      async write(data, position) {
        self.tick();
        if (position + data.length > ino.cur.length) throw new Error(`write past the end of ${path}`);
        Buffer.from(data.buffer, data.byteOffset, data.byteLength).copy(ino.cur, position);
        for (let p = Math.floor(position / PAGE); p * PAGE < position + data.length; p++) ino.dirty.add(p);
      },
      async sync() {
        self.tick();
        for (const page of ino.dirty) {
          const start = page * PAGE;
          ino.cur.copy(ino.disk, start, start, Math.min(ino.cur.length, start + PAGE));
        }
        ino.dirty.clear();
      },
      async close() {},
    };
  }
}
