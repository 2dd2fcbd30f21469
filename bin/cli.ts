import { Command, CommanderError } from 'commander';
import { UzError } from '../lib/errors.js';
import { registerFirmwareCommands } from '../firmware/cli.js';
import { registerTrustCommands } from '../firmware/trust/cli.js';
import { registerStartCommand } from './start.js';

const program = new Command();
program
  .name('uz')
  .description('unikernel-z: signed A/B firmware for Raspberry Pi-class boards, its update server and agent')
  .version('0.1.0')
  .showHelpAfterError('(run with --help for usage)')
  .enablePositionalOptions()
  .exitOverride();

registerFirmwareCommands(program);
registerTrustCommands(program);
registerStartCommand(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode;
  } else if (err instanceof UzError) {
    process.stderr.write(`uz: ${err.toLine()}\n`);
    process.exitCode = 2;
  } else {
    process.stderr.write(`uz: INTERNAL: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exitCode = 70;
  }
}
