import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync, mkdirSync, readFileSync, existsSync, linkSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { diskUsage, judge, measureData } from '../../updater/workload/data-guard.js';
import { LogPersister } from '../../updater/workload/log-persist.js';

describe('data guard: disk-full protection and quotas', () => {
  it('measures allocated bytes of a data directory, hard links once', async () => {
    const d = mkdtempSync(join(tmpdir(), 'uz-du-'));
    mkdirSync(join(d, 'db'));
    writeFileSync(join(d, 'db', 'a'), Buffer.alloc(100_000, 1));
    linkSync(join(d, 'db', 'a'), join(d, 'db', 'b'));
    const used = await diskUsage(d);
    expect(used).toBeGreaterThanOrEqual(100_000);
    expect(used).toBeLessThan(200_000);
    expect(await diskUsage(join(d, 'missing'))).toBe(0);
    const m = await measureData(d, d, 5);
    expect(m.freeBytes).toBeGreaterThan(0);
    expect(m.quotaBytes).toBe(5);
  });
  it('stops before the partition fills and restarts only with a margin', () => {
    const limits = { minFreeBytes: 1000 };
    expect(judge({ freeBytes: 999, usedBytes: 0 }, limits, false)).toMatchObject({ ok: false, code: 'DATA_FULL' });
    expect(judge({ freeBytes: 1050, usedBytes: 0 }, limits, false).ok).toBe(true);
    expect(judge({ freeBytes: 1050, usedBytes: 0 }, limits, true).ok).toBe(false); // still inside the margin
    expect(judge({ freeBytes: 1200, usedBytes: 0 }, limits, true).ok).toBe(true);
  });
  it('enforces a storage quota with the same hysteresis', () => {
    const limits = { minFreeBytes: 0, quotaBytes: 1000 };
    expect(judge({ freeBytes: 10, usedBytes: 1001 }, limits, false)).toMatchObject({ ok: false, code: 'QUOTA_EXCEEDED' });
    expect(judge({ freeBytes: 10, usedBytes: 950 }, limits, true).ok).toBe(false);
    expect(judge({ freeBytes: 10, usedBytes: 850 }, limits, true).ok).toBe(true);
  });
});

describe('sparing log persistence', () => {
  it('writes pending lines in one append and rotates at the cap', async () => {
    const d = mkdtempSync(join(tmpdir(), 'uz-log-'));
    const p = join(d, 'logs', 'app.log');
    const l = new LogPersister(p, { maxBytes: 100 });
    expect(await l.flush()).toBe(0);
    expect(existsSync(p)).toBe(false); // nothing pending: no write at all
    for (let i = 0; i < 5; i++) l.push(`line ${i}`);
    expect(await l.flush()).toBe(5);
    expect(readFileSync(p, 'utf8').trim().split('\n')).toHaveLength(5);
    for (let i = 0; i < 5; i++) l.push(`more ${i}`);
    await l.flush();
    expect(existsSync(`${p}.1`)).toBe(true);
    expect(readFileSync(p, 'utf8')).toContain('more 4');
  });
});
