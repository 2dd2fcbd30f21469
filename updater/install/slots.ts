/**
 * Where slots live. On a device: partition 2 = A, 3 = B of the disk whose partition 1 (the boot-control
 * partition) init found by label and wrote to /run/uz/bootpart (e.g. /dev/vda1 → /dev/vda2; /dev/mmcblk0p1 →
 * /dev/mmcblk0p2). In simulation: files.
 */
import { UzError } from '../../lib/errors.js';
import { type Slot, partitionOf } from '../bootctl/types.js';

export interface SlotLayout {
  pathOf(slot: Slot): string;
}

/** Derives slot device paths from the boot partition's device path. */
export function slotPathsFromBootPartition(bootpart: string): SlotLayout {
  const m = /^(\/dev\/[A-Za-z0-9/_-]*?)(p?)1$/.exec(bootpart.trim());
  if (!m) throw new UzError('SLOT_DEVICE_UNKNOWN', `cannot derive slot devices from boot partition "${bootpart.trim()}"`, { bootpart });
  const [, disk, sep] = m;
  return { pathOf: (s) => `${disk}${sep}${partitionOf(s)}` };
}

export function fileSlots(pathOf: (s: Slot) => string): SlotLayout {
  return { pathOf };
}
