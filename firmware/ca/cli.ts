/**
 * `uz ca …`: the fleet CA. Register with registerCaCommands(program).
 * Errors follow bin/cli.ts: commands throw UzError, the top level prints `uz: CODE: message` (exit 2).
 * Private keys are written 0600 and never printed.
 */
import { readFile } from 'node:fs/promises';
import { InvalidArgumentError, type Command } from 'commander';
import { UzError } from '../../lib/errors.js';
import { printJson } from '../../lib/output.js';
import { issueDeviceCertificate } from './ca.js';
import { REVOCATION_REASONS, type RevocationReason } from './crl.js';
import { createDeviceKeyAndCsr } from './device.js';
import { initCaDir, loadCaDir, revokeInCaDir, writeCrlInCaDir, writeNewFile, writeServerCertificate } from './store.js';

function days(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 36500) throw new InvalidArgumentError('expected a number of days (1..36500)');
  return Number(v);
}
const collect = (v: string, prev: string[] = []): string[] => [...prev, v];
const out = (line: string): void => void process.stdout.write(`${line}\n`);

export function registerCaCommands(program: Command): void {
  const ca = program.command('ca').description('fleet certificate authority: broker/server TLS certificates, device client certificates, revocation');

  ca.command('init')
    .description('create a CA (RSA 3072, SHA-256): <out>/ca.crt, ca.key (0600, never printed), ca-state.json, crl.pem')
    .requiredOption('--out <dir>', 'CA directory (created 0700; existing CA files are never overwritten)')
    .option('--name <fleet>', 'fleet name used in the CA subject', 'uz-fleet')
    .option('--days <n>', 'CA certificate lifetime in days', days, 3650)
    .option('--json', 'print a JSON summary')
    .action(async (o: { out: string; name: string; days: number; json?: boolean }) => {
      const r = await initCaDir({ out: o.out, name: o.name, validityDays: o.days });
      if (o.json) return printJson(r);
      out(`wrote ${r.certPath} (${r.subject}, ${r.algorithm}, valid until ${r.notAfter})`);
      out(`      ${r.keyPath} (private, 0600)  ${r.crlPath}`);
      out(`SHA-256 fingerprint ${r.fingerprint256}`);
      out('Keep the CA directory offline when you are not issuing certificates; back up ca.key securely.');
    });

  ca.command('server-cert')
    .description('issue a TLS server certificate (MQTT broker / HTTPS) with the given names as subjectAltName')
    .requiredOption('--ca <dir>', 'CA directory')
    .requiredOption('--host <name|ip>', 'DNS name or IP address the server is reached by (repeatable)', collect)
    .requiredOption('--out <dir>', 'writes server.crt, server.key (0600) and ca.crt here; never overwrites')
    .option('--days <n>', 'lifetime in days', days, 730)
    .option('--json', 'print a JSON summary')
    .action(async (o: { ca: string; host: string[]; out: string; days: number; json?: boolean }) => {
      const r = await writeServerCertificate(o.ca, { hosts: o.host, out: o.out, validityDays: o.days });
      if (o.json) return printJson({ certPath: r.certPath, keyPath: r.keyPath, caPath: r.caPath, serial: r.cert.serial, notAfter: r.cert.notAfter.toISOString(), hosts: o.host });
      out(`wrote ${r.certPath} (serial ${r.cert.serial}, ${o.host.join(', ')}, valid until ${r.cert.notAfter.toISOString()})`);
      out(`      ${r.keyPath} (private, 0600)  ${r.caPath}`);
    });

  ca.command('issue')
    .description('issue a device client certificate from a CSR whose subject is CN=<device-id> (the server does this at enrollment)')
    .requiredOption('--ca <dir>', 'CA directory')
    .requiredOption('--csr <file>', 'PEM certificate request made on the device')
    .requiredOption('--device-id <id>', 'the device id the certificate is for')
    .requiredOption('--out <file>', 'certificate file to create (never overwritten)')
    .option('--days <n>', 'lifetime in days', days, 730)
    .option('--json', 'print a JSON summary')
    .action(async (o: { ca: string; csr: string; deviceId: string; out: string; days: number; json?: boolean }) => {
      const fleet = await loadCaDir(o.ca);
      let csr: string;
      try {
        csr = await readFile(o.csr, 'utf8');
      } catch {
        throw new UzError('CA_CSR_INVALID', `cannot read CSR ${o.csr}`, { path: o.csr });
      }
      const c = issueDeviceCertificate(fleet, csr, o.deviceId, { validityDays: o.days });
      await writeNewFile(o.out, c.certPem, 0o644);
      if (o.json) return printJson({ path: o.out, deviceId: o.deviceId, serial: c.serial, notAfter: c.notAfter.toISOString(), fingerprint256: c.fingerprint256 });
      out(`wrote ${o.out} (CN=${o.deviceId}, serial ${c.serial}, valid until ${c.notAfter.toISOString()})`);
    });

  ca.command('revoke')
    .description('revoke a certificate by serial number and write a fresh CRL (<ca>/crl.pem)')
    .requiredOption('--ca <dir>', 'CA directory')
    .requiredOption('--serial <hex>', 'serial number in hex (as `uz ca issue` or `openssl x509 -serial` print it)')
    .option('--reason <reason>', `one of ${Object.keys(REVOCATION_REASONS).join(', ')}`)
    .option('--json', 'print a JSON summary')
    .action(async (o: { ca: string; serial: string; reason?: string; json?: boolean }) => {
      const r = await revokeInCaDir(o.ca, o.serial, { reason: o.reason as RevocationReason | undefined });
      if (o.json) return printJson(r);
      out(`${r.alreadyRevoked ? 'already revoked' : 'revoked'} serial ${r.serial}; wrote ${r.crlPath} (CRL #${r.crlNumber})`);
      out('Distribute the new CRL to the broker and servers (their TLS settings load crl.pem).');
    });

  ca.command('crl')
    .description('issue a fresh CRL (new number and dates) to <ca>/crl.pem and optionally --out; run it before the old one expires')
    .requiredOption('--ca <dir>', 'CA directory')
    .option('--out <file>', 'also write the CRL here')
    .option('--days <n>', 'days until nextUpdate', days, 30)
    .option('--json', 'print a JSON summary')
    .action(async (o: { ca: string; out?: string; days: number; json?: boolean }) => {
      const r = await writeCrlInCaDir(o.ca, { out: o.out, validityDays: o.days });
      if (o.json) return printJson({ crlPath: r.crlPath, crlNumber: r.crlNumber, revoked: r.revoked });
      out(`wrote ${r.crlPath} (CRL #${r.crlNumber}, ${r.revoked} revoked, valid ${o.days} days)`);
    });

  ca.command('device-csr')
    .description('device side, for manual enrollment and tests: make (or reuse) <key-dir>/device.key (0600) and write a CSR')
    .requiredOption('--device-id <id>', 'device id (becomes the certificate CN)')
    .requiredOption('--key-dir <dir>', 'where device.key lives (it never leaves this directory)')
    .requiredOption('--out <file>', 'CSR file to create')
    .action(async (o: { deviceId: string; keyDir: string; out: string }) => {
      const r = await createDeviceKeyAndCsr(o.deviceId, o.keyDir);
      await writeNewFile(o.out, r.csrPem, 0o644);
      out(`wrote ${o.out} (${r.created ? 'new' : 'existing'} key ${r.keyPath})`);
    });
}
