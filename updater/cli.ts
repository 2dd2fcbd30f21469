/**
 * `uz agent …` commands. `uz agent --sim --slots <dir> --config <file>` runs the device agent on a host with
 * file-backed slots and boot control (updater/sim/host-agent.ts); `uz agent status [--json]` prints the saved
 * state. On a device the agent runs from the image (/opt/uz/agent.mjs = updater/device/main.ts).
 */
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { UzError } from '../lib/errors.js';
import { loadConfig } from './config.js';
import { nodeStorage } from './io/storage.js';
import { runSimAgent } from './sim/host-agent.js';
import { StateStore, type StateRecord } from './state/store.js';

interface AgentOpts {
  sim?: boolean;
  slots?: string;
  config?: string;
  scheme: string;
  board: string;
  factoryVersion: string;
  slotMib: string;
  unhealthy?: string[];
  maxBoots?: string;
}

/** Where the saved state lives: the sim's data folder, or the config's stateDir. */
async function stateDirFor(o: { slots?: string; config?: string }): Promise<string> {
  if (o.slots) return join(resolve(o.slots), 'data', 'uz');
  if (o.config) return (await loadConfig(o.config)).stateDir;
  return '/data/uz';
}

export function formatStatus(rec: StateRecord | null): string {
  if (!rec) return 'no saved agent state (never started, or the data partition is new)';
  const lines = [
    `state:      ${rec.state}`,
    `committed:  slot ${rec.committed.slot}, version ${rec.committed.version}, rollback floor ${rec.floor}`,
  ];
  if (rec.update) {
    const u = rec.update;
    lines.push(`update:     ${u.release.version} (txid ${u.txid}) ${u.fromSlot} → ${u.targetSlot}, trial boots ${u.attempts}, saves ${u.saves}, retries ${u.retries}`);
  }
  if (rec.done) lines.push(`last done:  txid ${rec.done.txid}: ${rec.done.outcome}`);
  if (rec.lastError) lines.push(`last error: ${rec.lastError.code}: ${rec.lastError.message}`);
  lines.push(`saved at:   ${new Date(rec.savedAt).toISOString()}`);
  return lines.join('\n');
}

export function registerAgentCommands(program: Command): void {
  const agent = program
    .command('agent')
    .description('run the update agent (on a host: --sim with file-backed slots), or show its state')
    .option('--sim', 'run on this host with file-backed slots and boot control')
    .option('--slots <dir>', 'folder of the simulated board (created on first use)')
    .option('--config <file>', 'agent config (JSON, see docs/agent.md)')
    .option('--scheme <scheme>', 'simulated boot scheme: uboot-bootcount | rpi-tryboot', 'uboot-bootcount')
    .option('--board <id>', 'board id the simulated device reports', 'qemu-virt')
    .option('--factory-version <v>', 'version of the factory image in both simulated slots', '0.1.0')
    .option('--slot-mib <n>', 'size of each simulated slot in MiB', '64')
    .option('--unhealthy <versions...>', 'simulate a workload that never gets healthy on these versions')
    .option('--max-boots <n>', 'stop after this many simulated boots')
    .action(async (o: AgentOpts) => {
      if (!o.sim) throw new UzError('AGENT_HOST', 'on a host the agent runs with --sim; on a device it runs from the image (/opt/uz/agent.mjs)');
      if (!o.slots || !o.config) throw new UzError('AGENT_USAGE', 'uz agent --sim needs --slots <dir> and --config <file>');
      if (o.scheme !== 'uboot-bootcount' && o.scheme !== 'rpi-tryboot') throw new UzError('AGENT_USAGE', `unknown scheme ${o.scheme}`);
      const config = await loadConfig(o.config);
      const ac = new AbortController();
      const stop = () => ac.abort();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      const unhealthy = new Set(o.unhealthy ?? []);
      await runSimAgent({
        slotsDir: resolve(o.slots),
        config,
        scheme: o.scheme,
        board: o.board,
        factoryVersion: o.factoryVersion,
        slotBytes: Number(o.slotMib) * 1024 * 1024,
        health: (v) => (unhealthy.has(v) ? { ok: false, detail: 'sim: unhealthy by --unhealthy' } : { ok: true, detail: 'sim: healthy' }),
        log: (l) => process.stdout.write(`${l}\n`),
        signal: ac.signal,
        ...(o.maxBoots ? { maxBoots: Number(o.maxBoots) } : {}),
      });
    });

  agent
    .command('status')
    .description('print the agent state saved on the data partition')
    .option('--json', 'one JSON object')
    .option('--slots <dir>', 'simulated board folder (uz agent --sim)')
    .option('--config <file>', 'agent config (its stateDir)')
    .action(async (o: { json?: boolean; slots?: string; config?: string }, cmd: Command) => {
      const parent = cmd.parent?.opts() as Partial<AgentOpts> | undefined;
      const dir = await stateDirFor({ slots: o.slots ?? parent?.slots, config: o.config ?? parent?.config });
      const rec = await new StateStore(nodeStorage, dir).load();
      process.stdout.write(o.json ? `${JSON.stringify(rec)}\n` : `${formatStatus(rec)}\n`);
    });
}
