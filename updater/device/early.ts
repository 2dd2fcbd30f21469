/**
 * What the agent's entry (entry.ts) needs before the rest of the agent is loaded: the slot and the part of
 * /etc/uz/image.json that starts the workload. Deliberately free of zod and of anything heavy.
 */
import { readFileSync } from 'node:fs';
import type { Supervisor } from '../workload/supervisor.js';
import type { Slot } from '../bootctl/types.js';
import { diskUsage, judge, type DataVerdict } from '../workload/data-guard.js';
import { statfs } from 'node:fs/promises';

/** Where the builder puts the image info (firmware/initramfs/compose.ts; schema: image-info.ts). */
export const IMAGE_INFO_PATH = '/etc/uz/image.json';

/** The slot init found on the kernel command line or in the device tree (/run/uz/slot, written by rcS). */
export function readSlot(): Slot | null {
  try {
    const s = readFileSync('/run/uz/slot', 'utf8').trim();
    return s === 'A' || s === 'B' ? s : null;
  } catch {
    return null;
  }
}

type WorkloadStart = ConstructorParameters<typeof Supervisor>[0] & { name: string; minFreeBytes: number; quota?: { maxBytes: number } };

/** The part of image.json that starts the workload, checked by hand (zod is not loaded yet). */
export function workloadStartOf(raw: unknown): { version: string; app: WorkloadStart } {
  const info = raw as { version?: unknown; app?: Record<string, unknown> } | null;
  const app = info?.app;
  const strings = (v: unknown) => Array.isArray(v) && v.every((s) => typeof s === 'string');
  const env = app?.env;
  const restart = app?.restart as Record<string, unknown> | undefined;
  const ok =
    typeof info?.version === 'string' &&
    typeof app?.name === 'string' &&
    typeof app.command === 'string' &&
    strings(app.args) &&
    typeof app.dataDir === 'string' &&
    typeof env === 'object' && env !== null && Object.values(env).every((v) => typeof v === 'string') &&
    typeof restart?.initialBackoffMs === 'number' &&
    typeof restart.maxBackoffMs === 'number' &&
    typeof app.minFreeBytes === 'number' &&
    (app.nodeStartupSnapshot === undefined || typeof app.nodeStartupSnapshot === 'boolean') &&
    (app.quota === undefined || typeof (app.quota as { maxBytes?: unknown } | null)?.maxBytes === 'number');
  if (!ok) throw new Error(`${IMAGE_INFO_PATH}: no valid workload (app.name, command, args, env, dataDir, restart, minFreeBytes, quota)`);
  return { version: info!.version as string, app: app as unknown as WorkloadStart };
}

/**
 * The disk-full guard's verdict before the workload's first start (the full guard in main.ts runs later):
 * a workload must not start on a data partition that is already below its reserve or over its quota, even
 * for the seconds the rest of the agent takes to load. Without a quota only the free space is read (walking
 * a large database directory at every boot would cost seconds on an SD card).
 */
export async function dataVerdictAtStart(app: Pick<WorkloadStart, 'dataDir' | 'minFreeBytes' | 'quota'>, dataRoot = '/data'): Promise<DataVerdict> {
  const fs = await statfs(dataRoot);
  const quotaBytes = app.quota?.maxBytes;
  const usedBytes = quotaBytes === undefined ? 0 : await diskUsage(app.dataDir);
  return judge({ freeBytes: fs.bavail * fs.bsize, usedBytes, ...(quotaBytes !== undefined ? { quotaBytes } : {}) }, { minFreeBytes: app.minFreeBytes, ...(quotaBytes !== undefined ? { quotaBytes } : {}) }, false);
}
