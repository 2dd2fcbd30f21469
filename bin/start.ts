import type { Command } from 'commander';
import { buildImage } from '../firmware/build.js';
import { runQemu, requireQemu } from '../firmware/qemu.js';
import { stepReporter, info } from '../lib/output.js';
import { copyFileSync } from 'node:fs';

/**
 * `npm start` = `uz start`: the whole system locally on embedded defaults. Today that is the firmware half:
 * build the reference-board image with the demo workload and boot it under QEMU with Debian's U-Boot,
 * streaming the console until Ctrl-C.
 */
export function registerStartCommand(program: Command): void {
  program
    .command('start')
    .description('run the system locally: build the qemu-virt demo image and boot it in QEMU (Ctrl-C stops)')
    .option('--out <dir>', 'where images go', 'out')
    .option('--timeout <seconds>', 'stop after this long (default: run until Ctrl-C)', (v) => Number(v))
    .action(async (o: { out: string; timeout?: number }) => {
      requireQemu();
      info('unikernel-z: building the qemu-virt image with the demo workload (first run downloads ~130 MB of verified Debian packages)');
      const r = await buildImage({ board: 'qemu-virt', app: 'demo', version: '1.0.0', outDir: o.out, onStep: stepReporter(5) });
      const disk = `${o.out}/qemu-virt-running.img`;
      copyFileSync(r.image, disk);
      info(`unikernel-z: booting ${disk} (qemu-system-aarch64 -M virt, U-Boot from Debian); console follows, Ctrl-C to stop`);
      const ac = new AbortController();
      process.once('SIGINT', () => ac.abort());
      const res = await runQemu({
        image: disk,
        timeoutMs: (o.timeout ?? 365 * 24 * 3600) * 1000,
        onLine: (l) => process.stdout.write(`${l}\n`),
        signal: ac.signal,
      });
      info(`unikernel-z: QEMU stopped (${res.reason}) after ${res.seconds.toFixed(0)} s`);
    });
}
