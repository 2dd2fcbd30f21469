/**
 * TCG guests run on host CPU time, so anything else running on the machine stretches both boots (and not by
 * the same amount). Before each boot the benchmark waits, up to a limit, for the host to be idle.
 */
import { readFile } from 'node:fs/promises';

async function cpuTimes(): Promise<{ idle: number; total: number } | null> {
  try {
    const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0] ?? '';
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    if (f.length < 5 || f.some((n) => !Number.isFinite(n))) return null;
    const idle = (f[3] ?? 0) + (f[4] ?? 0); // idle + iowait
    return { idle, total: f.reduce((a, b) => a + b, 0) };
  } catch {
    return null;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Fraction of host CPU idle over `ms` (1 when it cannot be measured, e.g. not Linux). */
export async function idleFraction(ms = 2000): Promise<number> {
  const a = await cpuTimes();
  await sleep(ms);
  const b = await cpuTimes();
  if (!a || !b || b.total <= a.total) return 1;
  return (b.idle - a.idle) / (b.total - a.total);
}

/**
 * Waits until the host is at least `minIdle` idle (measured over 2 s), for at most `maxWaitMs`.
 * Returns the last idle fraction seen.
 */
export async function waitForIdle(minIdle: number, maxWaitMs: number, log: (s: string) => void): Promise<number> {
  const deadline = Date.now() + maxWaitMs;
  let idle = await idleFraction();
  let said = false;
  while (idle < minIdle && Date.now() < deadline) {
    if (!said) log(`host busy (${Math.round(idle * 100)}% idle): waiting up to ${Math.round(maxWaitMs / 1000)} s for ${Math.round(minIdle * 100)}%`);
    said = true;
    await sleep(3000);
    idle = await idleFraction();
  }
  if (idle < minIdle) log(`host still busy (${Math.round(idle * 100)}% idle): booting anyway, expect slower and noisier times`);
  return idle;
}
