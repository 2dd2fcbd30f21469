import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { UbootEnvBootControl } from '../../updater/bootctl/uboot-env.js';
import { parseBootEnv } from '../../firmware/boot/uboot-script.js';

describe('U-Boot bootcount: repeated failed tries never drain the good slot', () => {
  it('arming a try restores the running (fallback) slot to its full attempts', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'uz-ub-'));
    // As after two failed tries of A: each failed try cost the good slot B one boot.
    writeFileSync(join(dir, 'uzboot.env'), 'BOOT_ORDER=A B\nBOOT_A_LEFT=0\nBOOT_B_LEFT=1\n');
    const bc = new UbootEnvBootControl({ dir, booted: async () => 'B' });
    await bc.armTry('A');
    expect(parseBootEnv(readFileSync(join(dir, 'uzboot.env'), 'utf8'))).toEqual({ order: ['A', 'B'], left: { A: 1, B: 3 } });
  });
});
