import type { BootControl } from './types.js';

/**
 * Boot-control writes are read-modify-write of one small file; two at once (say markGood of the running slot
 * by the health loop and markBad of the target by the download) could lose one of them, and losing a markBad
 * would let the bootloader pick a half-written slot. Every call goes through one queue.
 */
export function serialized(bc: BootControl): BootControl {
  let tail: Promise<unknown> = Promise.resolve();
  const q = <T>(fn: () => Promise<T>): Promise<T> => {
    const next = tail.then(fn);
    tail = next.catch(() => {});
    return next;
  };
  return {
    scheme: bc.scheme,
    bootedSlot: () => bc.bootedSlot(),
    read: () => q(() => bc.read()),
    markGood: (s) => q(() => bc.markGood(s)),
    markBad: (s) => q(() => bc.markBad(s)),
    armTry: (s) => q(() => bc.armTry(s)),
    reboot: () => q(() => bc.reboot()),
  };
}
