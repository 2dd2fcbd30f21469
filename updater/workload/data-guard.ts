import { lstat, readdir, statfs } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Disk-full protection and data quotas (storage zApps). A full data partition is the classic way a
 * long-running node corrupts its database (LevelDB after ENOSPC), so the workload is stopped BEFORE the
 * partition fills, and restarted once space is back (with a margin, so it does not flap).
 */
export interface DataUsage {
  /** Bytes available to unprivileged writers on the data partition. */
  freeBytes: number;
  /** Bytes the workload's data directory occupies on disk (allocated blocks). */
  usedBytes: number;
  quotaBytes?: number;
}

export type DataVerdict = { ok: true; usage: DataUsage } | { ok: false; code: 'DATA_FULL' | 'QUOTA_EXCEEDED'; detail: string; usage: DataUsage };

/** Allocated bytes under `dir` (like `du -s`), hard links counted once; a missing dir is 0. */
export async function diskUsage(dir: string): Promise<number> {
  const seen = new Set<string>();
  let total = 0;
  const walk = async (p: string): Promise<void> => {
    let st;
    try {
      st = await lstat(p);
    } catch {
      return;
    }
    const key = `${st.dev}:${st.ino}`;
    if (seen.has(key)) return;
    seen.add(key);
    total += st.blocks * 512;
    if (st.isDirectory()) {
      let names: string[] = [];
      try {
        names = await readdir(p);
      } catch {
        return;
      }
      for (const n of names) await walk(join(p, n));
    }
  };
  await walk(dir);
  return total;
}

export async function measureData(dataRoot: string, appDir: string, quotaBytes?: number): Promise<DataUsage> {
  const fs = await statfs(dataRoot);
  return { freeBytes: fs.bavail * fs.bsize, usedBytes: await diskUsage(appDir), ...(quotaBytes !== undefined ? { quotaBytes } : {}) };
}

export interface GuardLimits {
  minFreeBytes: number;
  quotaBytes?: number;
}

/**
 * Pure decision with hysteresis: `stopped` says whether the guard already stopped the workload; it is only
 * allowed back when there is 10% more room than the limit that stopped it.
 */
export function judge(usage: DataUsage, limits: GuardLimits, stopped: boolean): DataVerdict {
  const freeNeeded = stopped ? limits.minFreeBytes * 1.1 : limits.minFreeBytes;
  if (usage.freeBytes < freeNeeded) {
    return { ok: false, code: 'DATA_FULL', detail: `${usage.freeBytes} bytes free on the data partition, ${limits.minFreeBytes} kept in reserve`, usage };
  }
  if (limits.quotaBytes !== undefined) {
    const allowed = stopped ? limits.quotaBytes * 0.9 : limits.quotaBytes;
    if (usage.usedBytes > allowed) {
      return { ok: false, code: 'QUOTA_EXCEEDED', detail: `workload data uses ${usage.usedBytes} bytes, quota ${limits.quotaBytes}`, usage };
    }
  }
  return { ok: true, usage };
}
