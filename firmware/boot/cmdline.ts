import type { Board } from '../../boards/schema.js';

/**
 * The kernel command line every board boots with (before the bootloader adds `uz.slot=` on U-Boot boards):
 *   - `console=`: the board's serial console, where the UZ- lines go;
 *   - `panic=5`: a panicking kernel reboots after 5 s, so the bootloader can count the failed try;
 *   - `loglevel=5`: warnings and worse on the console, not the whole boot log;
 *   - `cryptomgr.notests`: skip the kernel crypto self-tests run when each algorithm registers (correctness
 *     checks of the kernel's own implementations, not a run-time protection; a few hundred ms of every
 *     emulated boot). Debian's kernel enables them; embedded kernels usually build them out.
 * Hardening defaults stay as Debian ships them (e.g. init_on_alloc, kpti); docs/benchmarks.md says what
 * turning them off would save.
 */
export function kernelCommandLine(board: Board): string[] {
  return [`console=${board.console}`, 'panic=5', 'loglevel=5', 'cryptomgr.notests', ...board.kernel.cmdline];
}
