import type { Board } from '../../boards/schema.js';

/**
 * Cores Linux itself knows are not affected by Meltdown (CVE-2017-5754): Cortex-A53 and A72 are on the
 * kernel's `kpti_safe_list`, and the A76 reports CSV3 in ID_AA64PFR0_EL1 (arch/arm64/kernel/cpufeature.c).
 * A CPU added to the board schema later is not in this set until someone decides it is.
 */
export const CPUS_WITHOUT_MELTDOWN: ReadonlySet<string> = new Set<Board['cpu']>(['cortex-a53', 'cortex-a72', 'cortex-a76']);

/**
 * The kernel command line every board boots with (before the bootloader adds `uz.slot=` on U-Boot boards):
 *   - `console=`: the board's serial console, where the UZ- lines go;
 *   - `panic=5`: a panicking kernel reboots after 5 s, so the bootloader can count the failed try;
 *   - `loglevel=5`: warnings and worse on the console, not the whole boot log;
 *   - `cryptomgr.notests`: skip the kernel crypto self-tests run when each algorithm registers (correctness
 *     checks of the kernel's own implementations, not a run-time protection; a few hundred ms of every
 *     emulated boot). Debian's kernel enables them; embedded kernels usually build them out.
 *   - `kpti=0` on cores without Meltdown (CPUS_WITHOUT_MELTDOWN): there Debian's kernel turns page-table
 *     isolation on only because KASLR is on, to make the kernel's randomised address harder to find by timing
 *     (the kernel stays randomised either way). Every exception and system call from user space then switches
 *     page tables through a trampoline. This image runs one workload and the agent and no other local code,
 *     so that protection guards little here (the trade is written out in docs/security.md, §9a). On real
 *     cores the saving is a few per cent of a syscall-heavy workload; on the emulated board each switch
 *     flushes QEMU's whole TLB, ~0.7 s of every boot.
 * Other hardening defaults stay as Debian ships them (e.g. init_on_alloc, module signatures);
 * docs/benchmarks.md says what turning them off would save.
 */
export function kernelCommandLine(board: Board): string[] {
  return [
    `console=${board.console}`,
    'panic=5',
    'loglevel=5',
    'cryptomgr.notests',
    ...(CPUS_WITHOUT_MELTDOWN.has(board.cpu) ? ['kpti=0'] : []),
    ...board.kernel.cmdline,
  ];
}
