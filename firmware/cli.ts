import type { Command } from 'commander';

/** Firmware commands (`uz build`, `uz inspect`, `uz qemu`, `uz boards`, `uz lock`) are registered here. */
export function registerFirmwareCommands(program: Command): void {
  void program;
}
