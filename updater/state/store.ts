/**
 * The persisted state record: ONE small JSON file on the data partition (`<stateDir>/state.json`), replaced
 * with write → fsync → rename → fsync(dir) before each state's action runs. It holds the state, the update in
 * flight and the committed facts (slot, version, rollback floor) together, so they can never disagree after
 * a power cut. A damaged record reads as "no record" (factory), which is safe: recovery then sees idle.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { UzError } from '../../lib/errors.js';
import { AgentState, ReleaseRef } from '../../lib/protocol.js';
import { readJson, type Storage } from '../io/storage.js';
import type { State } from './machine.js';

const Slot = z.enum(['A', 'B']);
const ErrorInfo = z.object({ code: z.string(), message: z.string().max(1000) }).strict();

export const UpdateInfoSchema = z
  .object({
    txid: z.string(),
    deploymentId: z.string().nullable(),
    release: ReleaseRef,
    fromSlot: Slot,
    targetSlot: Slot,
    /** Trial boots armed for this update. */
    attempts: z.number().int().nonnegative(),
    /** State saves for this update: a cap turns an endless loop into a reported failure. */
    saves: z.number().int().nonnegative(),
    /** Transient retries in the current action. */
    retries: z.number().int().nonnegative(),
  })
  .strict();
export type UpdateInfo = z.infer<typeof UpdateInfoSchema>;

export const StateRecordSchema = z
  .object({
    v: z.literal(1),
    state: AgentState,
    update: UpdateInfoSchema.nullable(),
    /** What the bootloader's primary slot runs, as far as the agent committed it. */
    committed: z.object({ slot: Slot, version: z.string(), rollbackCounter: z.number().int().nonnegative() }).strict(),
    /** Anti-rollback floor: the highest rollbackCounter ever committed (never lowered). */
    floor: z.number().int().nonnegative(),
    /** The last finished update, so a retained desired message with the same txid is not applied twice. */
    done: z.object({ txid: z.string(), outcome: z.enum(['success', 'failure', 'rolled-back', 'up-to-date']) }).strict().nullable(),
    lastError: ErrorInfo.nullable(),
    savedAt: z.number().int().nonnegative(),
  })
  .strict();
export type StateRecord = z.infer<typeof StateRecordSchema>;

export const STATE_FILE = 'state.json';

export interface Limits {
  /** State saves per update before it is given up (Mender uses a similar cap). */
  maxSaves: number;
  /** Trial boots per update. */
  maxTryAttempts: number;
}

// Three trial boots: one power cut during a try must not reject a release, three failures in a row do.
export const DEFAULT_LIMITS: Limits = { maxSaves: 64, maxTryAttempts: 3 };

export class StateStore {
  constructor(
    private readonly storage: Storage,
    readonly dir: string,
  ) {}

  get path(): string {
    return join(this.dir, STATE_FILE);
  }

  /** The saved record, or null when there is none or it is damaged (logged by the caller). */
  async load(): Promise<StateRecord | null> {
    const raw = await readJson(this.storage, this.path);
    if (raw === null) return null;
    const r = StateRecordSchema.safeParse(raw);
    return r.success ? r.data : null;
  }

  /** Durably replaces the record. Counts saves of the update in flight. */
  async save(rec: StateRecord, now: number): Promise<StateRecord> {
    const next: StateRecord = { ...rec, savedAt: Math.max(0, Math.floor(now)), update: rec.update ? { ...rec.update, saves: rec.update.saves + 1 } : null };
    await this.storage.mkdirp(this.dir);
    await this.storage.writeFileDurable(this.path, `${JSON.stringify(next)}\n`);
    return next;
  }
}

/** True when the update has used up its state saves (the caller then takes the give-up event). */
export function overSaveCap(rec: StateRecord, limits: Limits): boolean {
  return rec.update !== null && rec.update.saves >= limits.maxSaves;
}

export function requireUpdate(rec: StateRecord, state: State): UpdateInfo {
  if (!rec.update) throw new UzError('STATE_CORRUPT', `state ${state} without an update in flight`, { state });
  return rec.update;
}
