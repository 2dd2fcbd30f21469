/**
 * The CA directory (`uz ca init --out <dir>`):
 *
 *   ca.crt          the fleet CA certificate (public: brokers, servers and devices trust it)
 *   ca.key          its private key, mode 0600, never printed (keep the directory offline if you can)
 *   ca-state.json   revoked serials and the CRL number
 *   crl.pem         the current CRL (rewritten by `uz ca revoke` and `uz ca crl`)
 */
import { X509Certificate } from 'node:crypto';
import { mkdir, open, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { UzError } from '../../lib/errors.js';
import { parseWith } from '../../lib/validate.js';
import { caFromPem, createCa, issueServerCertificate, type FleetCa, type KeyAndCertificate } from './ca.js';
import { REVOCATION_REASONS, generateCrl, type RevocationReason } from './crl.js';
import { normalizeSerial } from './der.js';

export const CA_CERT_FILE = 'ca.crt';
export const CA_KEY_FILE = 'ca.key';
export const CA_STATE_FILE = 'ca-state.json';
export const CRL_FILE = 'crl.pem';

const ReasonName = z.enum(Object.keys(REVOCATION_REASONS) as [RevocationReason, ...RevocationReason[]]);
const CaState = z
  .object({
    formatVersion: z.literal(1),
    name: z.string(),
    crlNumber: z.number().int().min(0),
    revoked: z.array(z.object({ serial: z.string().regex(/^[0-9a-f]+$/), revokedAt: z.iso.datetime(), reason: ReasonName.optional() }).strict()),
  })
  .strict();
export type CaState = z.infer<typeof CaState>;

/** Creates a file that must not exist yet; secrets get 0600. */
export async function writeNewFile(path: string, data: string, mode: number): Promise<void> {
  let fh;
  try {
    fh = await open(path, 'wx', mode);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new UzError('CA_EXISTS', `${path} already exists; refusing to overwrite it`, { path });
    if (code === 'EACCES' || code === 'EPERM') throw new UzError('CA_PERMISSION', `cannot create ${path}: permission denied`, { path });
    throw e;
  }
  try {
    await fh.writeFile(data);
    await fh.chmod(mode); // whatever the umask was
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function writeAtomic(path: string, data: string, mode = 0o644): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, data, { mode });
  await rename(tmp, path);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function refuseExisting(paths: string[]): Promise<void> {
  for (const p of paths) if (await exists(p)) throw new UzError('CA_EXISTS', `${p} already exists; refusing to overwrite it`, { path: p });
}

export interface CaInitResult {
  dir: string;
  certPath: string;
  keyPath: string;
  crlPath: string;
  subject: string;
  serial: string;
  notAfter: string;
  fingerprint256: string;
  algorithm: string;
}

/** `uz ca init`: a new CA in `out` (created 0700). Refuses (CA_EXISTS) before writing anything if any file exists. */
export async function initCaDir(o: { out: string; name?: string; now?: Date; validityDays?: number }): Promise<CaInitResult> {
  const name = o.name ?? 'uz-fleet';
  const paths = [CA_CERT_FILE, CA_KEY_FILE, CA_STATE_FILE, CRL_FILE].map((f) => join(o.out, f));
  await refuseExisting(paths);
  await mkdir(o.out, { recursive: true, mode: 0o700 });
  const ca = await createCa({ name, now: o.now, validityDays: o.validityDays });
  const state: CaState = { formatVersion: 1, name, crlNumber: 1, revoked: [] };
  // Key first (0600): if anything later fails, no certificate exists without its key.
  await writeNewFile(paths[1]!, ca.keyPem, 0o600);
  await writeNewFile(paths[0]!, ca.certPem, 0o644);
  await writeNewFile(paths[2]!, `${JSON.stringify(state, null, 2)}\n`, 0o644);
  await writeNewFile(paths[3]!, generateCrl(ca, [], { crlNumber: 1, now: o.now }), 0o644);
  const x = new X509Certificate(ca.certPem);
  return {
    dir: o.out,
    certPath: paths[0]!,
    keyPath: paths[1]!,
    crlPath: paths[3]!,
    subject: x.subject.replace(/\n/g, ', '),
    serial: normalizeSerial(x.serialNumber),
    notAfter: new Date(x.validTo).toISOString(),
    fingerprint256: x.fingerprint256,
    algorithm: 'RSA 3072 / SHA-256',
  };
}

/** Loads the CA of a CA directory. Like ssh, refuses a key readable by group/others (CA_KEY_PERMISSIONS). */
export async function loadCaDir(dir: string): Promise<FleetCa> {
  const keyPath = join(dir, CA_KEY_FILE);
  const certPath = join(dir, CA_CERT_FILE);
  let st;
  try {
    st = await stat(keyPath);
  } catch {
    throw new UzError('CA_NOT_FOUND', `no CA key at ${keyPath} (create a CA with: uz ca init --out ${dir})`, { dir });
  }
  if (process.platform !== 'win32' && (st.mode & 0o077) !== 0) {
    throw new UzError('CA_KEY_PERMISSIONS', `CA key ${keyPath} is accessible by group/others (chmod 600 it)`, { path: keyPath });
  }
  let certPem: string;
  let keyPem: string;
  try {
    [certPem, keyPem] = await Promise.all([readFile(certPath, 'utf8'), readFile(keyPath, 'utf8')]);
  } catch (e) {
    throw new UzError('CA_NOT_FOUND', `cannot read the CA in ${dir}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, { dir });
  }
  return caFromPem(certPem, keyPem);
}

export async function readCaState(dir: string): Promise<CaState> {
  const path = join(dir, CA_STATE_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new UzError('CA_NOT_FOUND', `no CA state at ${path}`, { dir });
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    throw new UzError('CA_STATE_INVALID', `${path} is not valid JSON`, { path });
  }
  return parseWith(CaState, data, 'CA_STATE_INVALID', path);
}

function revokedEntries(state: CaState) {
  return state.revoked.map((r) => ({ serial: r.serial, revokedAt: new Date(r.revokedAt), reason: r.reason }));
}

/** Issues the next CRL (CRL number + 1) and writes it to <dir>/crl.pem (and `out` if given). */
export async function writeCrlInCaDir(dir: string, o: { out?: string; validityDays?: number; now?: Date } = {}): Promise<{ crlPath: string; crlNumber: number; revoked: number; pem: string }> {
  const ca = await loadCaDir(dir);
  const state = await readCaState(dir);
  state.crlNumber += 1;
  const pem = generateCrl(ca, revokedEntries(state), { crlNumber: state.crlNumber, now: o.now, validityDays: o.validityDays });
  await writeAtomic(join(dir, CA_STATE_FILE), `${JSON.stringify(state, null, 2)}\n`);
  await writeAtomic(join(dir, CRL_FILE), pem);
  if (o.out) await writeAtomic(o.out, pem);
  return { crlPath: o.out ?? join(dir, CRL_FILE), crlNumber: state.crlNumber, revoked: state.revoked.length, pem };
}

/** `uz ca revoke`: records the serial (idempotent) and writes a fresh CRL. */
export async function revokeInCaDir(
  dir: string,
  serialHex: string,
  o: { reason?: RevocationReason; now?: Date; validityDays?: number } = {},
): Promise<{ serial: string; alreadyRevoked: boolean; crlPath: string; crlNumber: number }> {
  const raw = String(serialHex).trim().toLowerCase().replace(/^0x/, '').replace(/:/g, '');
  if (!/^[0-9a-f]{1,40}$/.test(raw)) throw new UzError('CA_SERIAL_INVALID', `serial must be 1-40 hex digits (colons allowed), got "${String(serialHex).slice(0, 60)}"`);
  const serial = normalizeSerial(raw);
  if (o.reason !== undefined && !ReasonName.safeParse(o.reason).success) {
    throw new UzError('CA_INVALID_OPTION', `reason must be one of ${Object.keys(REVOCATION_REASONS).join(', ')}`);
  }
  await loadCaDir(dir); // the key must be there to sign the CRL: fail before changing state
  const state = await readCaState(dir);
  const alreadyRevoked = state.revoked.some((r) => r.serial === serial);
  if (!alreadyRevoked) {
    state.revoked.push({ serial, revokedAt: (o.now ?? new Date()).toISOString(), ...(o.reason ? { reason: o.reason } : {}) });
    await writeAtomic(join(dir, CA_STATE_FILE), `${JSON.stringify(state, null, 2)}\n`);
  }
  const r = await writeCrlInCaDir(dir, { now: o.now, validityDays: o.validityDays });
  return { serial, alreadyRevoked, crlPath: r.crlPath, crlNumber: r.crlNumber };
}

/** `uz ca server-cert`: server.crt, server.key (0600) and a copy of ca.crt in `out`. Refuses to overwrite. */
export async function writeServerCertificate(
  caDir: string,
  o: { hosts: string[]; out: string; validityDays?: number; now?: Date },
): Promise<{ certPath: string; keyPath: string; caPath: string; cert: Omit<KeyAndCertificate, 'keyPem' | 'certPem'> }> {
  const ca = await loadCaDir(caDir);
  const certPath = join(o.out, 'server.crt');
  const keyPath = join(o.out, 'server.key');
  const caPath = join(o.out, CA_CERT_FILE);
  await refuseExisting([certPath, keyPath, caPath]);
  const issued = await issueServerCertificate(ca, { hosts: o.hosts, validityDays: o.validityDays, now: o.now });
  await mkdir(o.out, { recursive: true, mode: 0o700 });
  await writeNewFile(keyPath, issued.keyPem, 0o600);
  await writeNewFile(certPath, issued.certPem, 0o644);
  await writeNewFile(caPath, ca.certPem, 0o644);
  const { keyPem: _k, certPem: _c, ...cert } = issued;
  return { certPath, keyPath, caPath, cert };
}
