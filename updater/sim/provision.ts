import { writeFile, mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { CrashStorage } from './crash-storage.js';
import { type SimMachine, factoryBootFiles } from './machine.js';
import type { Slot } from '../bootctl/types.js';

/**
 * Lays down a freshly "flashed" simulated board: factory boot files and both slot images. On CrashStorage
 * the files are durable from the start; on a real folder they are plain files.
 */
export async function provisionSim(m: SimMachine, slots: Record<Slot, Uint8Array>): Promise<void> {
  const files: [string, Uint8Array][] = [
    ...Object.entries(factoryBootFiles(m.scheme)).map(([n, t]) => [join(m.paths.bootDir, n), Buffer.from(t)] as [string, Uint8Array]),
    [m.paths.slotFile('A'), slots.A],
    [m.paths.slotFile('B'), slots.B],
  ];
  for (const [path, data] of files) {
    if (m.storage instanceof CrashStorage) m.storage.createDurable(path, data);
    else {
      await mkdir(dirname(path), { recursive: true });
      await writeFile(path, data);
    }
  }
  if (!(m.storage instanceof CrashStorage)) {
    for (const d of [m.paths.dtDir, dirname(m.paths.runSlot), m.paths.dataDir]) await mkdir(d, { recursive: true });
  }
}
