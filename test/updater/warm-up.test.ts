/**
 * The agent snapshot's warm-up (updater/device/warm-up.ts): at image build time it validates this image's own
 * image info (version and build time blanked) and a sample device config, so the snapshot carries their parsers
 * compiled. That it runs inside the snapshot build is tested in test/firmware/agent-snapshot.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { loadManifest } from '../../firmware/apps/index.js';
import { warmUpSample } from '../../firmware/agent-bundle.js';
import { warmUpSchemas, warmUpSpawn, warmUpStreams } from '../../updater/device/warm-up.js';
import type { ImageInfo } from '../../updater/device/image-info.js';

const info = (app: string): ImageInfo => ({
  formatVersion: 1,
  board: 'qemu-virt',
  hardwareIds: ['linux,dummy-virt'],
  version: '2.7.1',
  buildEpoch: 1_700_000_000,
  bootControl: 'uboot-bootcount',
  app: loadManifest(app).manifest,
});

describe('agent snapshot warm-up', () => {
  it('validates every shipped app as the agent will at boot', () => {
    for (const app of ['demo', 'storage-zapp']) expect(() => warmUpSchemas(warmUpSample(info(app)))).not.toThrow();
    expect(() => warmUpSchemas({})).not.toThrow();
  });

  it('blanks what changes between versions, so one snapshot serves every version of an app on a board', () => {
    const a = warmUpSample(info('demo'));
    const b = warmUpSample({ ...info('demo'), version: '9.9.9', buildEpoch: 1_800_000_000 });
    expect(a).toEqual(b);
    expect(a.imageInfo).toMatchObject({ version: '0.0.0', buildEpoch: 0, app: { name: 'demo' } });
  });

  it('fails, naming the field, on an image info the agent would refuse', () => {
    const bad = { ...info('demo'), bootControl: 'floppy' };
    expect(() => warmUpSchemas({ imageInfo: bad })).toThrow(/agent snapshot warm-up: the image info does not validate: bootControl/);
  });
});

describe('stream warm-up', () => {
  it('opens nothing and leaves nothing pending (the snapshot builder would refuse a live handle)', async () => {
    const before = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap').sort();
    warmUpStreams();
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    expect(process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap').sort()).toEqual(before);
  });

  it('the spawn warm-up runs nothing and leaves nothing once its ENOENT has arrived', async () => {
    const before = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap').sort();
    const errors: unknown[] = [];
    const onUncaught = (e: unknown) => errors.push(e);
    process.on('uncaughtException', onUncaught);
    try {
      warmUpSpawn();
      for (let i = 0; i < 20 && process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap').length > before.length; i++) await new Promise((r) => setTimeout(r, 10));
    } finally {
      process.off('uncaughtException', onUncaught);
    }
    expect(errors).toEqual([]);
    expect(process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap').sort()).toEqual(before);
  });
});
