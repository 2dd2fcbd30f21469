import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { afterAll, describe, expect, it } from 'vitest';
import { registerTrustCommands } from '../../firmware/trust/cli.js';
import { randomPayload, tempDir } from '../bundle/helpers.js';

// The real CLI, the one users run (bin/uz.js registers tsx itself).
const uzBin = fileURLToPath(new URL('../../bin/uz.js', import.meta.url));
const dir = tempDir();
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function uz(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, [uzBin, ...args], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

describe('uz CLI (keys init, bundle, sign, verify)', () => {
  it('registers its commands on a program', () => {
    const p = new Command();
    registerTrustCommands(p);
    expect(p.commands.map((c) => c.name()).sort()).toEqual(['bundle', 'keys', 'repo', 'sign', 'verify']);
    expect(p.commands.find((c) => c.name() === 'keys')!.commands.map((c) => c.name()).sort()).toEqual(['init', 'new', 'rotate', 'update-root']);
  });

  it('end to end: init, build, sign, verify, attacks, rotation', () => {
    // keys init: 2-of-3 root, 2-of-2 release
    let r = uz('keys', 'init', '--out', 'keys', '--keys', '3', '--threshold', '2', '--release-keys', '2', '--release-threshold', '2');
    expect(r.code, r.err).toBe(0);
    const priv = join(dir, 'keys', 'private');
    expect(statSync(priv).mode & 0o777).toBe(0o700);
    const files = readdirSync(priv).sort();
    expect(files).toEqual(['release-1.key.json', 'release-2.key.json', 'root-1.key.json', 'root-2.key.json', 'root-3.key.json', 'snapshot-1.key.json', 'targets-1.key.json', 'timestamp-1.key.json']);
    for (const f of files) {
      expect(statSync(join(priv, f)).mode & 0o777).toBe(0o600);
      const secret = JSON.parse(readFileSync(join(priv, f), 'utf8')).keyval.private as string;
      expect(r.out).not.toContain(secret); // never printed
      expect(r.err).not.toContain(secret);
    }
    const root = JSON.parse(readFileSync(join(dir, 'keys', 'root.json'), 'utf8'));
    expect(root.signed.roles.root.threshold).toBe(2);
    expect(root.signatures).toHaveLength(3);
    expect(root.signed.roles.release.keyids).toHaveLength(2);

    // refuses to overwrite
    r = uz('keys', 'init', '--out', 'keys');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^uz: KEYS_EXIST: /);

    writeFileSync(join(dir, 'fw.img'), randomPayload(2 * 1024 * 1024 + 5));
    r = uz('bundle', 'fw.img', '--out', 'fw.uzb', '--board', 'rpi4', '--fw-version', '1.4.0', '--counter', '10', '--workload', 'app@1.4.0', '--key', 'keys/private/release-1.key.json');
    expect(r.code, r.err).toBe(0);

    // one of two release signatures: THRESHOLD, exit 1, one line
    r = uz('verify', 'fw.uzb', '--trust', 'keys/root.json', '--board', 'rpi4');
    expect(r.code).toBe(1);
    expect(r.err.trim()).toMatch(/^THRESHOLD: /);
    expect(r.err.trim().split('\n')).toHaveLength(1);

    r = uz('sign', 'fw.uzb', '--key', 'keys/private/release-2.key.json');
    expect(r.code, r.err).toBe(0);
    r = uz('verify', 'fw.uzb', '--trust', 'keys/root.json', '--board', 'rpi4', '--min-counter', '10');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^OK: rpi4 1\.4\.0 counter 10/);

    r = uz('verify', 'fw.uzb', '--trust', 'keys/root.json', '--board', 'rpi4', '--json');
    expect(r.code).toBe(0);
    const ok = JSON.parse(r.out);
    expect(ok.ok).toBe(true);
    expect(ok.manifest.version).toBe('1.4.0');

    for (const [args, code] of [
      [['--board', 'rpi5'], 'WRONG_BOARD'],
      [['--min-counter', '11'], 'ROLLBACK'],
    ] as const) {
      r = uz('verify', 'fw.uzb', '--trust', 'keys/root.json', ...args, '--json');
      expect(r.code).toBe(1);
      expect(JSON.parse(r.out)).toMatchObject({ ok: false, code });
    }

    // payload bit flip / truncation / trailing bytes
    const bytes = readFileSync(join(dir, 'fw.uzb'));
    const flipped = Buffer.from(bytes);
    flipped[bytes.length - 1000]! ^= 4;
    writeFileSync(join(dir, 'flip.uzb'), flipped);
    writeFileSync(join(dir, 'trunc.uzb'), bytes.subarray(0, bytes.length - 1));
    writeFileSync(join(dir, 'tail.uzb'), Buffer.concat([bytes, Buffer.from('\n')]));
    for (const [f, code] of [['flip.uzb', 'HASH_MISMATCH'], ['trunc.uzb', 'TRUNCATED'], ['tail.uzb', 'TRAILING_DATA']]) {
      r = uz('verify', f!, '--trust', 'keys/root.json');
      expect(r.code).toBe(1);
      expect(r.err.trim()).toMatch(new RegExp(`^${code}: `));
    }

    // a root key cannot sign bundles
    r = uz('sign', 'fw.uzb', '--key', 'keys/private/root-1.key.json');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/KEY_ROLE/);

    // rotation: revoke release-1, add a new release key, sign with 2 root keys
    const rel1 = JSON.parse(readFileSync(join(priv, 'release-1.key.json'), 'utf8')).keyid as string;
    r = uz('keys', 'new', '--role', 'release', '--out', 'release-3.key.json');
    expect(r.code, r.err).toBe(0);
    r = uz('keys', 'rotate', '--trust', 'keys/root.json', '--out', 'root-v2.json', '--sign', 'keys/private/root-1.key.json', '--sign', 'keys/private/root-2.key.json', '--remove', `release=${rel1}`, '--add', 'release=release-3.key.json');
    expect(r.code, r.err).toBe(0);
    // only one root key: a device would refuse it, so the tool refuses to write it
    r = uz('keys', 'rotate', '--trust', 'keys/root.json', '--out', 'root-v2b.json', '--sign', 'keys/private/root-1.key.json');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/THRESHOLD/);
    expect(existsSync(join(dir, 'root-v2b.json'))).toBe(false);

    r = uz('keys', 'update-root', '--trust', 'keys/root.json', 'root-v2.json');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/v2/);
    r = uz('verify', 'fw.uzb', '--trust', 'root-v2.json');
    expect(r.code).toBe(1);
    expect(r.err.trim()).toMatch(/^REVOKED_KEY: /);

    // missing files and bad args
    r = uz('verify', 'nope.uzb', '--trust', 'keys/root.json');
    expect(r.code).toBe(1);
    expect(r.err.trim()).toMatch(/^NOT_FOUND: /);
    r = uz('verify', 'fw.uzb', '--trust', 'keys/root.json', '--min-counter', '-1');
    expect(r.code).not.toBe(0);
  });
});
