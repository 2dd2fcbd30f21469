/**
 * `uz keys …`, `uz bundle create`, `uz sign`, `uz verify`. Register with registerTrustCommands(program).
 *
 * Errors follow bin/cli.ts: commands throw UzError and the top level prints `uz: CODE: message` (exit 2).
 * Exception: `uz verify` reports a failed verification itself — one line `CODE: reason` on stderr (or one JSON
 * object on stdout with --json) and exit code 1 — so scripts can tell "bundle rejected" (1) from usage errors.
 */
import { readFile, stat } from 'node:fs/promises';
import { InvalidArgumentError, type Command } from 'commander';
import semver from 'semver';
import { UzError, isUzError } from '../../lib/errors.js';
import { hashPayloadFile, readBundleHeaderFile, signBundle, verifyBundleFile, verifyBundleHeader, writeBundle } from '../bundle/index.js';
import { generateSigningKey } from './keys.js';
import { keysInit, loadPrivateKeys, loadTrustedRoot, writePrivateKeyFile, writeRootFile } from './io.js';
import { ROLE_NAMES, assertRootNotExpired, parseRootMetadata, rotateRootSigned, signRoot, updateTrustedRoot, verifyRootSelfSigned, type RoleName, type RootChange } from './root.js';
import { writeTufRepository } from './tuf.js';
import { basename } from 'node:path';

function int(min: number, max: number) {
  return (v: string): number => {
    if (!/^\d+$/.test(v)) throw new InvalidArgumentError('expected a non-negative integer');
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`expected an integer in ${min}..${max}`);
    return n;
  };
}
const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

function roleAssignments(list: readonly string[], what: string): { role: RoleName; value: string }[] {
  return list.map((s) => {
    const i = s.indexOf('=');
    const role = s.slice(0, i) as RoleName;
    if (i < 1 || !ROLE_NAMES.includes(role)) throw new UzError('USAGE', `${what}: expected <role>=<value> with role one of ${ROLE_NAMES.join(', ')}`, { value: s });
    return { role, value: s.slice(i + 1) };
  });
}

async function mustExist(path: string, what: string): Promise<void> {
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new Error('not a file');
  } catch {
    throw new UzError('NOT_FOUND', `${what} ${path} not found`, { path });
  }
}

function out(line: string): void {
  process.stdout.write(line + '\n');
}

export function registerTrustCommands(program: Command): void {
  const keys = program.command('keys').description('root of trust: generate keys, rotate and check root metadata');

  keys
    .command('init')
    .description('generate root/release/targets/snapshot/timestamp keys and a signed root.json (private keys 0600, never printed)')
    .requiredOption('--out <dir>', 'output directory (root.json + private/)')
    .option('--threshold <k>', 'root signatures required', int(1, 16), 1)
    .option('--keys <n>', 'number of root keys', int(1, 16), 1)
    .option('--release-threshold <k>', 'release signatures required on bundles', int(1, 16), 1)
    .option('--release-keys <n>', 'number of release keys', int(1, 16), 1)
    .option('--expires-days <d>', 'root metadata lifetime in days', int(1, 36500), 365)
    .option('--json', 'print a JSON summary')
    .action(async (o: { out: string; threshold: number; keys: number; releaseThreshold: number; releaseKeys: number; expiresDays: number; json?: boolean }) => {
      const r = await keysInit({ out: o.out, threshold: o.threshold, keys: o.keys, releaseThreshold: o.releaseThreshold, releaseKeys: o.releaseKeys, expiresDays: o.expiresDays });
      if (o.json) return out(JSON.stringify(r));
      out(`wrote ${r.rootPath} (root v${r.version}, expires ${r.expires}, root ${o.threshold}-of-${o.keys}, release ${o.releaseThreshold}-of-${o.releaseKeys})`);
      for (const role of ROLE_NAMES) for (const k of r.keys[role]) out(`  ${role.padEnd(9)} ${k.keyid}  ${k.path}`);
      out('Move each root key to its own offline medium now; see docs/security.md (key ceremony).');
    });

  keys
    .command('new')
    .description('generate one private key file (0600) for a role, e.g. before a rotation')
    .requiredOption('--role <role>', `one of ${ROLE_NAMES.join(', ')}`)
    .requiredOption('--out <file>', 'private key file to create (never overwritten)')
    .action(async (o: { role: string; out: string }) => {
      if (!ROLE_NAMES.includes(o.role as RoleName)) throw new UzError('USAGE', `--role must be one of ${ROLE_NAMES.join(', ')}`, {});
      const k = generateSigningKey();
      await writePrivateKeyFile(o.out, k, o.role);
      out(`${o.role} ${k.keyid}  ${o.out}`);
    });

  keys
    .command('rotate')
    .description('write the next root version: add/remove keys, change thresholds; sign with old AND new root keys')
    .requiredOption('--trust <root.json>', 'current root metadata')
    .requiredOption('--out <file>', 'new root metadata file (never overwritten)')
    .option('--sign <keyfile>', 'root private key to sign with (repeat; needs a threshold of the old and of the new root keys)', collect, [])
    .option('--add <role=keyfile>', 'add the key in a private key file to a role (repeat)', collect, [])
    .option('--remove <role=keyid>', 'remove a keyid from a role (repeat); removing a release key revokes it', collect, [])
    .option('--set-threshold <role=k>', 'set a role threshold (repeat)', collect, [])
    .option('--expires-days <d>', 'lifetime of the new root in days', int(1, 36500), 365)
    .action(async (o: { trust: string; out: string; sign: string[]; add: string[]; remove: string[]; setThreshold: string[]; expiresDays: number }) => {
      const current = await loadTrustedRoot(o.trust);
      const change: RootChange = { expires: new Date(Date.now() + o.expiresDays * 86_400_000), add: {}, remove: {}, thresholds: {} };
      for (const { role, value } of roleAssignments(o.add, '--add')) {
        const [k] = await loadPrivateKeys([value]);
        change.add![role] = [...(change.add![role] ?? []), k!];
      }
      for (const { role, value } of roleAssignments(o.remove, '--remove')) change.remove![role] = [...(change.remove![role] ?? []), value];
      for (const { role, value } of roleAssignments(o.setThreshold, '--set-threshold')) change.thresholds![role] = int(1, 256)(value);
      const next = signRoot(rotateRootSigned(current.signed, change), await loadPrivateKeys(o.sign));
      updateTrustedRoot(current, next); // refuse to write a root a device would not accept
      await writeRootFile(o.out, next);
      out(`wrote ${o.out} (root v${next.signed.version}, ${next.signatures.length} signature(s), expires ${next.signed.expires})`);
    });

  keys
    .command('update-root')
    .description('check a chain of newer root versions against a trusted root, as a device does (TUF 5.3)')
    .requiredOption('--trust <root.json>', 'currently trusted root metadata')
    .argument('[new-roots...]', 'root metadata files, in version order (none: just check the trusted root)')
    .option('--write', 'replace the --trust file with the final root when the chain is valid')
    .action(async (newRoots: string[], o: { trust: string; write?: boolean }) => {
      let cur = await loadTrustedRoot(o.trust);
      for (const p of newRoots) {
        await mustExist(p, 'root metadata');
        cur = updateTrustedRoot(cur, await readFile(p));
      }
      assertRootNotExpired(cur, new Date());
      if (o.write) await writeRootFile(o.trust, cur, { overwrite: true });
      out(`OK: trusted root is now v${cur.signed.version}${o.write ? ` (written to ${o.trust})` : ''}`);
    });

  program
    .command('repo')
    .description('TUF repository for bundles')
    .command('publish')
    .description('write <dir>/metadata/{N.root.json,targets,snapshot,timestamp}.json and <dir>/targets/<board>/<bundle>')
    .argument('<bundles...>', '.uzb files to publish (target path: <board>/<file name>)')
    .requiredOption('--dir <repo>', 'repository directory')
    .requiredOption('--root <file>', 'root metadata versions, oldest first (repeat)', collect, [])
    .requiredOption('--targets-key <keyfile>', 'targets private key (repeat for a threshold)', collect, [])
    .requiredOption('--snapshot-key <keyfile>', 'snapshot private key (repeat)', collect, [])
    .requiredOption('--timestamp-key <keyfile>', 'timestamp private key (repeat)', collect, [])
    .requiredOption('--metadata-version <n>', 'version of targets/snapshot/timestamp (increase on every publish)', int(1, Number.MAX_SAFE_INTEGER))
    .option('--timestamp-days <d>', 'timestamp lifetime', int(1, 365), 1)
    .option('--snapshot-days <d>', 'snapshot lifetime', int(1, 3650), 7)
    .option('--targets-days <d>', 'targets lifetime', int(1, 3650), 90)
    .action(async (bundles: string[], o: { dir: string; root: string[]; targetsKey: string[]; snapshotKey: string[]; timestampKey: string[]; metadataVersion: number; timestampDays: number; snapshotDays: number; targetsDays: number }) => {
      const roots = [];
      for (const p of o.root) {
        await mustExist(p, 'root metadata');
        roots.push(parseRootMetadata(await readFile(p)));
      }
      if (roots.length === 0) throw new UzError('USAGE', 'give at least one --root', {});
      let cur = roots[0]!;
      verifyRootSelfSigned(cur);
      for (const r of roots.slice(1)) cur = updateTrustedRoot(cur, r);
      const targets = [];
      for (const b of bundles) {
        await mustExist(b, 'bundle');
        const { header } = await readBundleHeaderFile(b);
        const m = header.signed;
        const h = await hashPayloadFile(b);
        targets.push({ file: b, path: `${m.board.id}/${basename(b)}`, length: h.size, sha256: h.sha256, custom: { board: m.board.id, version: m.version, rollbackCounter: m.rollbackCounter } });
      }
      const day = (d: number) => new Date(Date.now() + d * 86_400_000);
      const r = await writeTufRepository({
        dir: o.dir,
        roots,
        targets,
        version: o.metadataVersion,
        keys: { targets: await loadPrivateKeys(o.targetsKey), snapshot: await loadPrivateKeys(o.snapshotKey), timestamp: await loadPrivateKeys(o.timestampKey) },
        expires: { targets: day(o.targetsDays), snapshot: day(o.snapshotDays), timestamp: day(o.timestampDays) },
      });
      out(`published ${Object.keys(r.targets.targets).length} target(s) to ${o.dir} (metadata v${o.metadataVersion}, root v${cur.signed.version})`);
    });

  program
    .command('bundle')
    .description('write a .uzb update bundle (streamed; header signed with release keys)')
    .argument('<payload>', 'payload file (e.g. firmware image)')
    .requiredOption('--out <file.uzb>', 'bundle to write')
    .requiredOption('--board <id>', 'board id the bundle is for')
    .option('--hardware-id <id>', 'restrict to hardware id (repeat)', collect, [])
    .requiredOption('--fw-version <semver>', 'firmware version')
    .requiredOption('--counter <n>', 'anti-rollback counter', int(0, 0xffffffff))
    .requiredOption('--workload <name@version>', 'workload name and version')
    .option('--gzip', 'store the payload gzip-compressed')
    .option('--chunk-size <bytes>', 'chunk size (power of two, 4096..67108864)', int(4096, 64 * 1024 * 1024))
    .option('--expires-days <d>', 'bundle expiry in days', int(1, 36500))
    .option('--downgrade-override', 'allow installing over a newer semver version (never below the counter)')
    .option('--key <keyfile>', 'release private key to sign with (repeat)', collect, [])
    .action(async (payload: string, o: { out: string; board: string; hardwareId: string[]; fwVersion: string; counter: number; workload: string; gzip?: boolean; chunkSize?: number; expiresDays?: number; downgradeOverride?: boolean; key: string[] }) => {
      await mustExist(payload, 'payload');
      const at = o.workload.lastIndexOf('@');
      if (at < 1) throw new UzError('USAGE', '--workload must be <name>@<version>', { workload: o.workload });
      if (semver.valid(o.fwVersion) !== o.fwVersion) throw new UzError('USAGE', '--fw-version must be a semver version', { version: o.fwVersion });
      const keys = await loadPrivateKeys(o.key);
      for (const k of keys) if (k.role !== 'release') throw new UzError('KEY_ROLE', `key ${k.keyid.slice(0, 16)} is a ${k.role} key, bundles are signed with release keys`, {});
      const now = new Date();
      const h = await writeBundle({
        payload,
        out: o.out,
        keys,
        manifest: {
          board: { id: o.board, hardwareIds: o.hardwareId },
          version: o.fwVersion,
          rollbackCounter: o.counter,
          workload: { name: o.workload.slice(0, at), version: o.workload.slice(at + 1) },
          compression: o.gzip ? 'gzip' : 'none',
          chunkSize: o.chunkSize,
          createdAt: now,
          expiresAt: o.expiresDays ? new Date(now.getTime() + o.expiresDays * 86_400_000) : undefined,
          downgradeOverride: o.downgradeOverride ? true : undefined,
        },
      });
      out(`wrote ${o.out} (${h.signed.board.id} ${h.signed.version}, counter ${h.signed.rollbackCounter}, ${h.signed.payload.size} payload bytes, ${h.signatures.length} signature(s))`);
    });

  program
    .command('sign')
    .description('add release-key signatures to a bundle (payload hashes are re-checked while rewriting)')
    .argument('<bundle>', '.uzb file')
    .option('--key <keyfile>', 'release private key (repeat)', collect, [])
    .option('--out <file>', 'write the signed bundle here instead of in place')
    .action(async (bundle: string, o: { key: string[]; out?: string }) => {
      await mustExist(bundle, 'bundle');
      const keys = await loadPrivateKeys(o.key);
      if (keys.length === 0) throw new UzError('NO_KEYS', 'give at least one --key', {});
      for (const k of keys) if (k.role !== 'release') throw new UzError('KEY_ROLE', `key ${k.keyid.slice(0, 16)} is a ${k.role} key, bundles are signed with release keys`, {});
      const h = await signBundle(bundle, keys, o.out ?? bundle);
      out(`signed ${o.out ?? bundle}: ${h.signatures.length} signature(s)`);
    });

  program
    .command('verify')
    .description('verify a bundle against a trust root: exit 0 only if every check passes, else 1 and `CODE: reason`')
    .argument('<bundle>', '.uzb file')
    .requiredOption('--trust <root.json>', 'trusted root metadata')
    .option('--board <id>', 'device board id (WRONG_BOARD if different)')
    .option('--hardware-id <id>', 'device hardware id')
    .option('--min-counter <n>', 'device anti-rollback minimum (ROLLBACK if lower)', int(0, 0xffffffff), 0)
    .option('--current-version <semver>', 'running version (a lower bundle version needs downgradeOverride)')
    .option('--header-only', 'check header and signatures only, skip the payload')
    .option('--json', 'print one JSON object {ok, code?, message?, manifest?}')
    .action(async (bundle: string, o: { trust: string; board?: string; hardwareId?: string; minCounter: number; currentVersion?: string; headerOnly?: boolean; json?: boolean }) => {
      try {
        await mustExist(o.trust, 'trust root');
        await mustExist(bundle, 'bundle');
        const root = await loadTrustedRoot(o.trust);
        const policy = { root, board: o.board, hardwareId: o.hardwareId, minCounter: o.minCounter, currentVersion: o.currentVersion };
        let v;
        if (o.headerOnly) {
          v = verifyBundleHeader((await readBundleHeaderFile(bundle)).header, policy);
        } else v = await verifyBundleFile(bundle, policy);
        const m = v.manifest;
        if (o.json) out(JSON.stringify({ ok: true, manifest: m, signedBy: v.signedBy }));
        else out(`OK: ${m.board.id} ${m.version} counter ${m.rollbackCounter}, ${m.payload.size} payload bytes${o.headerOnly ? ' (header only)' : ''}, ${v.signedBy.length} release signature(s)`);
      } catch (e) {
        if (!isUzError(e)) throw e;
        if (o.json) out(JSON.stringify({ ok: false, code: e.code, message: e.message }));
        else process.stderr.write(`${e.toLine()}\n`);
        process.exitCode = 1;
      }
    });
}
