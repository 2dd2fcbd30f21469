/**
 * `npm run bench:powercut -- --trials <n> [--seed <s>] [--json]`: randomized power cuts during the whole update
 * flow on simulated boards (U-Boot bootcount and Pi tryboot), see updater/sim/powercut.ts.
 * --json prints ONE line: {"trials":n,"unbootable":u,"completed":c}.
 */
import { parseArgs } from 'node:util';
import { runPowerCutTrials } from '../updater/sim/powercut.js';

const { values } = parseArgs({
  options: { trials: { type: 'string', default: '200' }, seed: { type: 'string', default: '1' }, json: { type: 'boolean', default: false } },
});
const trials = Number(values.trials);
if (!Number.isInteger(trials) || trials < 1) {
  process.stderr.write('bench:powercut: --trials must be a positive integer\n');
  process.exit(2);
}
const t0 = performance.now();
const r = await runPowerCutTrials({ trials, seed: Number(values.seed), log: values.json ? undefined : (l) => process.stderr.write(`${l}\n`) });
if (values.json) {
  process.stdout.write(`${JSON.stringify({ trials: r.trials, unbootable: r.unbootable, completed: r.completed })}\n`);
} else {
  process.stdout.write(
    `${r.trials} trials, ${r.cuts} power cuts: ${r.unbootable} unbootable, ${r.completed} completed, ${r.violations.length} invariant violations (${((performance.now() - t0) / 1000).toFixed(1)} s)\n`,
  );
  for (const v of r.violations.slice(0, 20)) process.stdout.write(`  ${v}\n`);
}
process.exitCode = r.unbootable === 0 && r.violations.length === 0 && r.completed === r.trials ? 0 : 1;
