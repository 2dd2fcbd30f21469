import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { UzError } from '../lib/errors.js';
import { printJson, info, stepReporter } from '../lib/output.js';
import { listBoards } from '../boards/index.js';
import { buildImage } from './build.js';
import { inspectImage, formatReport } from './inspect.js';
import { runQemu } from './qemu.js';
import { updateLock, DEFAULT_LOCK_PATH } from './debian/lock.js';
import type { AppInputs } from './apps/index.js';

function positiveInt(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) <= 0) throw new InvalidArgumentError('expected a positive integer');
  return Number(v);
}

async function appInputs(o: { appBinary?: string; appBinaryUrl?: string; appBinarySha256?: string; appConfig?: string }): Promise<AppInputs> {
  const inputs: AppInputs = {};
  if (o.appBinary) inputs.binaryPath = o.appBinary;
  if (o.appBinaryUrl) {
    if (!o.appBinarySha256 || !/^[0-9a-f]{64}$/i.test(o.appBinarySha256)) {
      throw new UzError('APP_BINARY_SHA256_REQUIRED', '--app-binary-url needs --app-binary-sha256 <64 hex chars>');
    }
    let res: Response;
    try {
      res = await fetch(o.appBinaryUrl, { signal: AbortSignal.timeout(300_000) });
    } catch (e) {
      throw new UzError('APP_BINARY_FETCH', `cannot download ${o.appBinaryUrl}: ${(e as Error).message}`);
    }
    if (!res.ok) throw new UzError('APP_BINARY_FETCH', `download of ${o.appBinaryUrl} failed: HTTP ${res.status}`);
    const bytes = Buffer.from(await res.arrayBuffer());
    const got = createHash('sha256').update(bytes).digest('hex');
    if (got !== o.appBinarySha256.toLowerCase()) {
      throw new UzError('APP_BINARY_CHECKSUM', `checksum mismatch for ${o.appBinaryUrl}: expected ${o.appBinarySha256}, got ${got}`);
    }
    inputs.binaryBytes = bytes;
  }
  if (o.appConfig) {
    try {
      inputs.configOverrides = JSON.parse(readFileSync(o.appConfig, 'utf8')) as Record<string, unknown>;
    } catch (e) {
      throw new UzError('APP_CONFIG_INVALID', `--app-config ${o.appConfig}: ${(e as Error).message}`);
    }
    if (typeof inputs.configOverrides !== 'object' || inputs.configOverrides === null || Array.isArray(inputs.configOverrides)) {
      throw new UzError('APP_CONFIG_INVALID', `--app-config ${o.appConfig}: must be a JSON object`);
    }
  }
  return inputs;
}

/** Firmware commands: `uz boards`, `uz build`, `uz inspect`, `uz qemu`, `uz lock update`. */
export function registerFirmwareCommands(program: Command): void {
  program
    .command('boards')
    .description('list the supported boards (boards/*.json)')
    .option('--json', 'print JSON')
    .action((o: { json?: boolean }) => {
      const boards = listBoards();
      if (o.json) return printJson(boards);
      for (const b of boards) {
        process.stdout.write(`${b.id.padEnd(12)} ${b.bootControl.padEnd(16)} ${b.name}\n${' '.repeat(13)}${b.verification}\n`);
      }
    });

  program
    .command('build')
    .description('build a flashable A/B disk image <out>/<board>-<version>.img (and the slot volume <board>-<version>.slot)')
    .requiredOption('--board <id>', 'board id (see `uz boards`)')
    .requiredOption('--app <name|manifest>', 'built-in app (demo, storage-zapp, znnd) or a path to an app manifest')
    .requiredOption('--version <semver>', 'image version, e.g. 1.0.0')
    .option('--out <dir>', 'output directory', 'out')
    .option('--app-binary <path>', 'workload binary for apps that need one (e.g. an arm64 znnd)')
    .option('--app-binary-url <url>', 'download the workload binary instead (needs --app-binary-sha256)')
    .option('--app-binary-sha256 <hex>', 'expected SHA-256 of --app-binary-url')
    .option('--app-config <file>', 'JSON merged over the app config template (e.g. {"RPC":{"HTTPHost":"0.0.0.0"}})')
    .option('--trust <root.json>', 'embed this trust root (devices verify updates against it)')
    .option('--keys <dir>', 'also write a signed update bundle <board>-<version>.uzb with the release keys in <dir>/private (embeds <dir>/root.json)')
    .option('--counter <n>', 'rollback counter of the bundle (with --keys); devices refuse lower counters', (v: string) => {
      if (!/^\d+$/.test(v)) throw new InvalidArgumentError('expected a non-negative integer');
      return Number(v);
    })
    .option('--debug', 'add a shell on the serial console (never on the network)')
    .option('--no-node-snapshots', 'leave out the V8 start-up snapshots (then no qemu-user is needed; the agent and Node.js workloads start seconds slower)')
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const result = await buildImage({
        nodeSnapshots: o.nodeSnapshots !== false,
        board: o.board,
        app: o.app,
        version: o.version,
        outDir: o.out,
        debug: !!o.debug,
        appInputs: await appInputs(o),
        trustRoot: o.trust,
        sign: o.keys ? { keysDir: o.keys, rollbackCounter: o.counter ?? 0 } : undefined,
        onStep: stepReporter((o.keys ? 6 : 5) + (o.nodeSnapshots !== false ? 1 : 0), !!o.json),
        onWarn: (m: string) => process.stderr.write(`uz: warning: ${m}\n`),
      });
      if (o.json) return printJson(result);
      const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
      if (o.counter !== undefined && !o.keys) throw new UzError('USAGE', '--counter only makes sense with --keys');
      process.stdout.write(
        `${result.image}\n${result.bundle ? `${result.bundle}\n` : ''}  board ${result.board}, version ${result.version}, kernel ${result.kernel}\n` +
          `  image ${mib(result.sizes.imageBytes)} (sparse), slot ${mib(result.sizes.slotUsedBytes)} used of ${mib(result.sizes.slotBytes)}, ` +
          `initramfs ${mib(result.sizes.initrdBytes)}, kernel ${mib(result.sizes.kernelBytes)}\n`,
      );
    });

  program
    .command('inspect <image>')
    .description('show partitions, slot contents and versions, and the boot-control state of an image')
    .option('--json', 'print JSON')
    .action(async (image: string, o: { json?: boolean }) => {
      const r = await inspectImage(image);
      if (o.json) return printJson(r);
      process.stdout.write(`${formatReport(r)}\n`);
    });

  program
    .command('qemu <image>')
    .description('boot an image on the emulated reference board (qemu-system-aarch64 + Debian U-Boot); streams the console')
    .addOption(new Option('--until <marker>', 'exit 0 at the first console line starting with UZ-<marker>').choices(['READY', 'BOOT', 'AGENT']))
    .option('--timeout <seconds>', 'give up after this long (exit 1)', positiveInt, 600)
    .option('--quiet', 'do not stream the console')
    .option('--forward <guest:host>', 'let the guest reach host loopback port <host> at 10.0.2.100:<guest> (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .action(async (image: string, o: { until?: string; timeout: number; quiet?: boolean; forward?: string[] }) => {
      const forwards = (o.forward ?? []).map((f) => {
        const m = /^(\d+):(\d+)$/.exec(f);
        if (!m) throw new UzError('USAGE', `--forward expects guestPort:hostPort, got "${f}"`);
        return { guestPort: Number(m[1]), hostPort: Number(m[2]) };
      });
      const ac = new AbortController();
      process.once('SIGINT', () => ac.abort());
      const r = await runQemu({
        image,
        until: o.until ? new RegExp(`^UZ-${o.until}\\b`) : undefined,
        timeoutMs: o.timeout * 1000,
        onLine: o.quiet ? undefined : (l) => process.stdout.write(`${l}\n`),
        forwards,
        signal: ac.signal,
      });
      if (!o.until && r.reason === 'timeout') {
        // Without --until the timeout is simply how long to watch the console: not a failure.
        info(`uz: stopped the board after ${o.timeout} s`);
      } else if (!r.ok && r.reason !== 'aborted') {
        info(`uz: QEMU_${r.reason.toUpperCase()}: ${r.reason === 'timeout' ? `no UZ-${o.until} within ${o.timeout} s` : (r.match ?? 'QEMU exited')}`);
        process.exitCode = 1;
      } else if (o.until) info(`uz: reached "${r.match}" after ${r.seconds.toFixed(1)} s`);
    });

  const lock = program.command('lock').description('the pinned, verified Debian package lock (firmware/debian/debian.lock.json)');
  lock
    .command('update')
    .description('re-resolve every component from the signed Debian archive and rewrite the lock')
    .option('--path <file>', 'lock file to write', DEFAULT_LOCK_PATH)
    .option('--json', 'print the new lock summary as JSON')
    .action(async (o: { path: string; json?: boolean }) => {
      const l = await updateLock(undefined, { path: o.path });
      const summary = Object.fromEntries(Object.entries(l.components).map(([k, c]) => [k, c.packages.map((p) => `${p.name}=${p.version}`)]));
      if (o.json) return printJson({ path: o.path, suite: l.suite, components: summary });
      for (const [k, v] of Object.entries(summary)) process.stdout.write(`${k}: ${v.join(', ')}\n`);
    });
}
