/**
 * `uz build` with bad input: one clear line with a reason code, a non-zero exit, and no half-written output.
 */
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { createHash } from 'node:crypto';

/** Runs the CLI without blocking the event loop (a test may serve HTTP to it from this process). */
function uz(args: string[]): Promise<{ status: number | null; stderr: string; stdout: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, ['bin/uz.js', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    c.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

function expectRefused(r: { status: number | null; stderr: string }, code: string, out: string): void {
  expect(r.status, r.stderr).toBe(2);
  const lines = r.stderr.split('\n').filter((l) => l.startsWith('uz: '));
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(new RegExp(`^uz: ${code}: `));
  expect(existsSync(out) ? readdirSync(out) : []).toEqual([]);
}

describe('uz build refuses bad input cleanly', () => {
  const base = ['build', '--version', '1.0.0'];

  it('unknown board, bad version, invalid manifest, missing or foreign binary', async () => {
    const out = mkdtempSync(join(tmpdir(), 'uz-bad-'));
    expectRefused(await uz([...base, '--board', 'rpi9', '--app', 'demo', '--out', out]), 'BOARD_UNKNOWN', out);
    expectRefused(await uz(['build', '--board', 'qemu-virt', '--app', 'demo', '--version', 'v1', '--out', out]), 'BUILD_BAD_VERSION', out);
    const bad = join(mkdtempSync(join(tmpdir(), 'uz-man-')), 'app.json');
    writeFileSync(bad, JSON.stringify({ ...JSON.parse(readFileSync('firmware/apps/demo/app.json', 'utf8')), dataDir: '/etc/state' }));
    expectRefused(await uz([...base, '--board', 'qemu-virt', '--app', bad, '--out', out]), 'APP_MANIFEST_INVALID', out);
    expectRefused(await uz([...base, '--board', 'qemu-virt', '--app', 'znnd', '--out', out]), 'APP_BINARY_MISSING', out);
    const x86 = join(tmpdir(), `znnd-x86-${process.pid}`);
    const elf = Buffer.alloc(64);
    Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1]).copy(elf);
    elf.writeUInt16LE(62, 18); // x86-64
    writeFileSync(x86, elf);
    expectRefused(await uz([...base, '--board', 'qemu-virt', '--app', 'znnd', '--app-binary', x86, '--out', out]), 'APP_BINARY_WRONG_ARCH', out);
  }, 120_000);

  it('a downloaded binary whose checksum does not match', async () => {
    const out = mkdtempSync(join(tmpdir(), 'uz-bad-'));
    const body = Buffer.from('not the binary you expected');
    const server = createServer((_q, res) => res.end(body)).listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/znnd`;
    try {
      const wrong = createHash('sha256').update('something else').digest('hex');
      expectRefused(await uz([...base, '--board', 'qemu-virt', '--app', 'znnd', '--app-binary-url', url, '--app-binary-sha256', wrong, '--out', out]), 'APP_BINARY_CHECKSUM', out);
    } finally {
      server.close();
    }
  }, 120_000);

  it('content larger than a slot', async () => {
    const out = mkdtempSync(join(tmpdir(), 'uz-bad-'));
    const dir = mkdtempSync(join(tmpdir(), 'uz-big-'));
    const manifest = JSON.parse(readFileSync('firmware/apps/demo/app.json', 'utf8'));
    manifest.files = [
      { from: join(process.cwd(), 'firmware/apps/demo/demo-node.mjs'), to: '/opt/app/demo-node.mjs', mode: 420 },
      { from: 'blob.bin', to: '/opt/app/blob.bin', mode: 420 },
    ];
    writeFileSync(join(dir, 'app.json'), JSON.stringify(manifest));
    // Random bytes do not compress: the initramfs alone outgrows the 256 MiB slot.
    writeFileSync(join(dir, 'blob.bin'), randomBytes(300 * 1024 * 1024));
    expectRefused(await uz([...base, '--board', 'qemu-virt', '--app', join(dir, 'app.json'), '--out', out]), 'BUILD_SLOT_TOO_SMALL', out);
  }, 300_000);
});
