/**
 * The download progress record (`<stateDir>/progress.json`) and the verified header of the bundle being
 * installed (`<stateDir>/target.uzh`). `chunksDone` only advances after the slot was fsynced, so every chunk
 * it counts is on the medium and was hash-checked before it was written; a resumed download starts at the next
 * chunk and fetches only the rest (plus the header, which is verified again every time).
 */
import { join } from 'node:path';
import { z } from 'zod';
import { readJson, type Storage } from '../io/storage.js';

export const PROGRESS_FILE = 'progress.json';
export const HEADER_FILE = 'target.uzh';

export const ProgressSchema = z
  .object({
    v: z.literal(1),
    /** ReleaseRef.sha256: which artifact these chunks belong to. */
    artifact: z.string(),
    slot: z.enum(['A', 'B']),
    headerLength: z.number().int().positive(),
    payloadSha256: z.string(),
    compression: z.enum(['none', 'gzip']),
    chunkSize: z.number().int().positive(),
    chunks: z.number().int().nonnegative(),
    chunksDone: z.number().int().nonnegative(),
    /** Set when the whole payload is in the slot and synced: what read-back must find. */
    slotBytes: z.number().int().nonnegative().nullable(),
    slotSha256: z.string().nullable(),
    /**
     * Set with slotSha256 when every byte went into the slot hash-checked (against the signed chunk hashes, or
     * inflated from such chunks) and was synced. The first installing step accepts the slot on that basis and
     * clears it; every later one reads the slot back (readBackSlot). Absent in older records = read back.
     */
    writeVerified: z.boolean().optional(),
  })
  .strict();
export type Progress = z.infer<typeof ProgressSchema>;

export class ProgressStore {
  constructor(
    private readonly storage: Storage,
    readonly dir: string,
  ) {}

  async load(): Promise<Progress | null> {
    const raw = await readJson(this.storage, join(this.dir, PROGRESS_FILE));
    const r = raw === null ? null : ProgressSchema.safeParse(raw);
    return r?.success ? r.data : null;
  }

  async save(p: Progress): Promise<void> {
    await this.storage.mkdirp(this.dir);
    await this.storage.writeFileDurable(join(this.dir, PROGRESS_FILE), `${JSON.stringify(p)}\n`);
  }

  async clear(): Promise<void> {
    await this.storage.remove(join(this.dir, PROGRESS_FILE));
  }

  async saveHeader(bytes: Uint8Array): Promise<void> {
    await this.storage.mkdirp(this.dir);
    await this.storage.writeFileDurable(join(this.dir, HEADER_FILE), bytes);
  }

  async loadHeader(): Promise<Buffer | null> {
    return this.storage.readFile(join(this.dir, HEADER_FILE));
  }
}
