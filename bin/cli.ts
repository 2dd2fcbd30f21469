import { Command, CommanderError } from 'commander';
import { UzError } from '../lib/errors.js';
import { registerFirmwareCommands } from '../firmware/cli.js';
import { registerTrustCommands } from '../firmware/trust/cli.js';
import { registerStartCommand } from './start.js';
import { registerCaCommands } from '../firmware/ca/cli.js';
import { registerProvisionCommands } from '../firmware/provision/cli.js';

const program = new Command();
program
  .name('uz')
  .description('unikernel-z: signed A/B firmware for Raspberry Pi-class boards, its update server and agent')
  .version('0.1.0')
  .showHelpAfterError('(run with --help for usage)')
  .enablePositionalOptions()
  .exitOverride();

registerFirmwareCommands(program);
import { registerServerCommands } from '../server/cli.js'; registerServerCommands(program);
registerTrustCommands(program);
import { registerAgentCommands } from '../updater/cli.js'; registerAgentCommands(program);
registerStartCommand(program);
registerCaCommands(program);
registerProvisionCommands(program);

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
