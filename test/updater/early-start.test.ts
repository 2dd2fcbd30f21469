import { describe, expect, it } from 'vitest';
import { loadManifest } from '../../firmware/apps/index.js';
import { bundleAgent, AGENT_ENTRY_FILE } from '../../firmware/agent-bundle.js';
import { ImageInfoSchema } from '../../updater/device/image-info.js';
import { dataVerdictAtStart, workloadStartOf } from '../../updater/device/early.js';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// The agent's entry starts the workload from image.json before zod (and the rest of the agent) is loaded.
const info = () =>
  JSON.parse(
    JSON.stringify({
      formatVersion: 1,
      board: 'qemu-virt',
      hardwareIds: ['linux,dummy-virt'],
      version: '1.2.3',
      buildEpoch: 1_700_000_000,
      bootControl: 'uboot-bootcount',
      app: loadManifest('demo').manifest,
    }),
  );

describe('agent early start', () => {
  it('takes the workload from an image.json the full schema accepts', () => {
    const raw = info();
    expect(ImageInfoSchema.safeParse(raw).success).toBe(true);
    const w = workloadStartOf(raw);
    expect(w.version).toBe('1.2.3');
    expect(w.app).toMatchObject({ name: 'demo', command: '/usr/bin/node', dataDir: '/data/app/demo' });
    expect(w.app.args).toContain('/etc/uz/app/config.json');
  });

  it('refuses an image.json without a usable workload instead of spawning something half-defined', () => {
    for (const mutate of [
      (r: any) => delete r.app,
      (r: any) => (r.app.command = 42),
      (r: any) => (r.app.args = ['ok', 7]),
      (r: any) => (r.app.env = { A: 1 }),
      (r: any) => delete r.app.restart,
      (r: any) => delete r.version,
      (r: any) => delete r.app.minFreeBytes,
      (r: any) => (r.app.quota = { maxBytes: 'lots' }),
      (r: any) => (r.app.nodeStartupSnapshot = 'yes'),
    ]) {
      const raw = info();
      mutate(raw);
      expect(() => workloadStartOf(raw)).toThrow(/no valid workload/);
    }
    expect(() => workloadStartOf(null)).toThrow(/no valid workload/);
  });

  it('bundles the entry without zod or MQTT, the rest of the agent in chunks it imports', async () => {
    const files = await bundleAgent();
    const entry = files.find((f) => f.name === AGENT_ENTRY_FILE)!;
    expect(entry.text.length).toBeLessThan(32 * 1024);
    expect(entry.text).toMatch(/import\("\.\/agent-[A-Z0-9]+\.mjs"\)/);
    const total = files.reduce((n, f) => n + f.text.length, 0);
    expect(total).toBeGreaterThan(500 * 1024); // zod, mqtt, node-forge... live in the chunks
    for (const f of files) expect(f.name).toMatch(/^agent(-[A-Z0-9]+)?\.mjs$/);
  });

  it('holds the workload back on a data partition below its reserve or over its quota', async () => {
    const root = mkdtempSync(join(tmpdir(), 'uz-early-data-'));
    try {
      const dataDir = join(root, 'app');
      mkdirSync(dataDir);
      writeFileSync(join(dataDir, 'db'), Buffer.alloc(256 * 1024, 1));
      expect((await dataVerdictAtStart({ dataDir, minFreeBytes: 1024 }, root)).ok).toBe(true);
      const full = await dataVerdictAtStart({ dataDir, minFreeBytes: Number.MAX_SAFE_INTEGER }, root);
      expect(full).toMatchObject({ ok: false, code: 'DATA_FULL' });
      const over = await dataVerdictAtStart({ dataDir, minFreeBytes: 0, quota: { maxBytes: 64 * 1024 } }, root);
      expect(over).toMatchObject({ ok: false, code: 'QUOTA_EXCEEDED' });
      expect((await dataVerdictAtStart({ dataDir, minFreeBytes: 0, quota: { maxBytes: 1 << 30 } }, root)).ok).toBe(true);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
