/**
 * Streaming bundle verification throughput vs `sha256sum`, and Ed25519 verify speed (noble vs node:crypto).
 *
 *   npx tsx bench/verify.ts --json [--size-mib 1024] [--rounds 2]
 *
 * Creates a bundle of the given payload size in a temp dir (random-ish payload written streaming), then times
 * full streaming verification (header + every chunk hash + whole-payload hash + trailing check) and sha256sum
 * of the same .uzb file, alternating, best of --rounds each, page cache warmed by a first read. Prints one JSON
 * line with --json.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { verifyBundleFile, writeBundle } from '../firmware/bundle/index.js';
import { generateSigningKey } from '../firmware/trust/keys.js';
import { createRootSigned, signRoot } from '../firmware/trust/root.js';
import { signEd25519, verifyNoble, verifyNode } from '../firmware/trust/ed25519.js';
import { argValue } from './lib/args.js';

const json = process.argv.includes('--json');
const sizeMiB = Number(argValue('--size-mib') ?? 1024);
const rounds = Number(argValue('--rounds') ?? 2);
if (!Number.isFinite(sizeMiB) || sizeMiB <= 0) throw new Error('--size-mib must be a positive number');
const log = (s: string) => {
  if (!json) process.stderr.write(s + '\n');
};

async function writePayload(path: string, bytes: number): Promise<void> {
  const block = randomBytes(4 * 1024 * 1024);
  const ws = createWriteStream(path);
  let left = bytes;
  let i = 0;
  while (left > 0) {
    const n = Math.min(left, block.length);
    const b = Buffer.from(block.subarray(0, n));
    b.writeUInt32BE(i++ >>> 0, 0); // make blocks differ
    if (!ws.write(b)) await once(ws, 'drain');
    left -= n;
  }
  ws.end();
  await once(ws, 'finish');
}

function opsPerSecond(fn: () => void, ms = 1000): number {
  for (let i = 0; i < 50; i++) fn();
  let n = 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < ms) {
    for (let i = 0; i < 50; i++) fn();
    n += 50;
    t = performance.now();
  }
  return n / ((t - t0) / 1000);
}

const dir = await mkdtemp(join(tmpdir(), 'uz-bench-'));
try {
  const release = generateSigningKey();
  const rootKey = generateSigningKey();
  const one = { keys: [rootKey], threshold: 1 };
  const root = signRoot(
    createRootSigned({ expires: new Date(Date.now() + 86_400_000), root: one, targets: one, snapshot: one, timestamp: one, release: { keys: [release], threshold: 1 } }),
    [rootKey],
  );
  const payload = join(dir, 'payload.bin');
  const bundle = join(dir, 'bench.uzb');
  log(`writing ${sizeMiB} MiB payload + bundle in ${dir}`);
  await writePayload(payload, Math.round(sizeMiB * 1024 * 1024));
  await writeBundle({ payload, out: bundle, keys: [release], manifest: { board: { id: 'bench' }, version: '1.0.0', rollbackCounter: 1, workload: { name: 'bench', version: '1' } } });
  await rm(payload);
  const fileMiB = (await stat(bundle)).size / (1024 * 1024);

  const sha256sum = (): number => {
    const t0 = performance.now();
    const r = spawnSync('sha256sum', [bundle], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`sha256sum failed: ${r.stderr}`);
    return (performance.now() - t0) / 1000;
  };
  const ours = async (): Promise<number> => {
    const t0 = performance.now();
    await verifyBundleFile(bundle, { root, board: 'bench', minCounter: 1 });
    return (performance.now() - t0) / 1000;
  };
  sha256sum(); // warm the page cache
  let bestOurs = Infinity;
  let bestSum = Infinity;
  for (let r = 0; r < rounds; r++) {
    bestOurs = Math.min(bestOurs, await ours());
    bestSum = Math.min(bestSum, sha256sum());
  }
  const oursMiBps = fileMiB / bestOurs;
  const sumMiBps = fileMiB / bestSum;

  const msg = randomBytes(1024);
  const sig = signEd25519(msg, release.secretKey);
  const noble = opsPerSecond(() => {
    if (!verifyNoble(sig, msg, release.publicKey)) throw new Error('noble verify failed');
  });
  const node = opsPerSecond(() => {
    if (!verifyNode(sig, msg, release.publicKey)) throw new Error('node verify failed');
  });
  const r1 = (x: number) => Math.round(x * 10) / 10;
  const result = {
    ours_MiBps: r1(oursMiBps),
    sha256sum_MiBps: r1(sumMiBps),
    ratio: Math.round((oursMiBps / sumMiBps) * 1000) / 1000,
    ed25519_noble_verify_per_s: Math.round(noble),
    ed25519_node_verify_per_s: Math.round(node),
  };
  if (json) process.stdout.write(JSON.stringify(result) + '\n');
  else {
    log(`bundle ${fileMiB.toFixed(1)} MiB: ours ${result.ours_MiBps} MiB/s, sha256sum ${result.sha256sum_MiBps} MiB/s, ratio ${result.ratio}`);
    log(`ed25519 verify/s: noble ${result.ed25519_noble_verify_per_s}, node:crypto ${result.ed25519_node_verify_per_s}`);
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
