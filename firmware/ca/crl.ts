/**
 * X.509 v2 certificate revocation lists (RFC 5280 §5): generated with node-forge's ASN.1 encoder (forge has
 * no CRL support), parsed with our DER reader so the signed bytes are checked exactly as received.
 * OpenSSL (`openssl crl`, `openssl verify -crl_check`) and node:tls (`crl` option) read what we write.
 */
import { X509Certificate, createPublicKey, verify as cryptoVerify } from 'node:crypto';
import forge from 'node-forge';
import { UzError } from '../../lib/errors.js';
import type { FleetCa } from './ca.js';
import { children, derToPem, integerHex, normalizeSerial, oidString, parseDer, pemToDer, readTime, type Tlv } from './der.js';

const { asn1 } = forge;
const U = asn1.Class.UNIVERSAL;
const T = asn1.Type;

export const CRL_VALIDITY_DAYS = 30;
const SHA256_RSA = '1.2.840.113549.1.1.11';
const OID_CRL_NUMBER = '2.5.29.20';
const OID_AKI = '2.5.29.35';
const OID_REASON = '2.5.29.21';

/** RFC 5280 CRLReason values we accept on revocation. */
export const REVOCATION_REASONS = {
  unspecified: 0,
  keyCompromise: 1,
  cACompromise: 2,
  affiliationChanged: 3,
  superseded: 4,
  cessationOfOperation: 5,
  certificateHold: 6,
  privilegeWithdrawn: 9,
} as const;
export type RevocationReason = keyof typeof REVOCATION_REASONS;

export interface RevokedEntry {
  /** Hex serial (any case; normalized). */
  serial: string;
  revokedAt: Date;
  reason?: RevocationReason;
}

export interface ParsedCrl {
  issuerDer: Buffer;
  thisUpdate: Date;
  nextUpdate: Date | null;
  crlNumber: string | null;
  revoked: Array<{ serial: string; revokedAt: Date; reasonCode?: number }>;
  tbsDer: Buffer;
  signatureAlgorithm: string;
  signature: Buffer;
}

function integerBytes(hex: string): string {
  let h = normalizeSerial(hex);
  if (!/^[0-9a-f]+$/.test(h)) throw new UzError('CA_SERIAL_INVALID', `serial "${hex.slice(0, 80)}" is not hexadecimal`, { serial: hex.slice(0, 80) });
  if (h.length % 2) h = '0' + h;
  if (parseInt(h.slice(0, 2), 16) & 0x80) h = '00' + h;
  return forge.util.hexToBytes(h);
}

function time(d: Date): forge.asn1.Asn1 {
  // RFC 5280: UTCTime through 2049, GeneralizedTime from 2050.
  return d.getUTCFullYear() < 2050
    ? asn1.create(U, T.UTCTIME, false, asn1.dateToUtcTime(d))
    : asn1.create(U, T.GENERALIZEDTIME, false, asn1.dateToGeneralizedTime(d));
}

function algId(): forge.asn1.Asn1 {
  return asn1.create(U, T.SEQUENCE, true, [
    asn1.create(U, T.OID, false, asn1.oidToDer(SHA256_RSA).getBytes()),
    asn1.create(U, T.NULL, false, ''),
  ]);
}

function extension(oid: string, value: forge.asn1.Asn1): forge.asn1.Asn1 {
  return asn1.create(U, T.SEQUENCE, true, [
    asn1.create(U, T.OID, false, asn1.oidToDer(oid).getBytes()),
    asn1.create(U, T.OCTETSTRING, false, asn1.toDer(value).getBytes()),
  ]);
}

/** A signed CRL (PEM "X509 CRL") listing `revoked`, valid from `now` for `validityDays`. */
export function generateCrl(ca: FleetCa, revoked: readonly RevokedEntry[], opts: { crlNumber: number; now?: Date; validityDays?: number }): string {
  const now = new Date(Math.floor((opts.now ?? new Date()).getTime() / 1000) * 1000);
  const days = opts.validityDays ?? CRL_VALIDITY_DAYS;
  if (!Number.isInteger(days) || days < 1 || days > 3650) throw new UzError('CA_INVALID_OPTION', `CRL validity must be 1..3650 days, got ${days}`, { days });
  if (!Number.isSafeInteger(opts.crlNumber) || opts.crlNumber < 0) throw new UzError('CA_INVALID_OPTION', 'CRL number must be a non-negative integer');
  const next = new Date(now.getTime() + days * 86_400_000);
  const entries = [...revoked]
    .sort((a, b) => a.revokedAt.getTime() - b.revokedAt.getTime())
    .map((r) => {
      const fields: forge.asn1.Asn1[] = [asn1.create(U, T.INTEGER, false, integerBytes(r.serial)), time(new Date(Math.floor(r.revokedAt.getTime() / 1000) * 1000))];
      if (r.reason !== undefined && r.reason !== 'unspecified') {
        const code = REVOCATION_REASONS[r.reason];
        fields.push(asn1.create(U, T.SEQUENCE, true, [extension(OID_REASON, asn1.create(U, T.ENUMERATED, false, String.fromCharCode(code)))]));
      }
      return asn1.create(U, T.SEQUENCE, true, fields);
    });
  const tbsFields: forge.asn1.Asn1[] = [
    asn1.create(U, T.INTEGER, false, String.fromCharCode(1)), // v2
    algId(),
    forge.pki.distinguishedNameToAsn1(ca.cert.subject),
    time(now),
    time(next),
  ];
  if (entries.length) tbsFields.push(asn1.create(U, T.SEQUENCE, true, entries));
  const crlNumber = asn1.create(U, T.INTEGER, false, integerBytes(opts.crlNumber.toString(16)));
  const aki = asn1.create(U, T.SEQUENCE, true, [asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, false, ca.cert.generateSubjectKeyIdentifier().getBytes())]);
  tbsFields.push(asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [asn1.create(U, T.SEQUENCE, true, [extension(OID_AKI, aki), extension(OID_CRL_NUMBER, crlNumber)])]));
  const tbs = asn1.create(U, T.SEQUENCE, true, tbsFields);
  const md = forge.md.sha256.create();
  md.update(asn1.toDer(tbs).getBytes());
  const sig = ca.key.sign(md);
  const crl = asn1.create(U, T.SEQUENCE, true, [tbs, algId(), asn1.create(U, T.BITSTRING, false, String.fromCharCode(0) + sig)]);
  return derToPem(Buffer.from(asn1.toDer(crl).getBytes(), 'binary'), 'X509 CRL');
}

function asParsed(crl: string | Buffer | ParsedCrl): ParsedCrl {
  return typeof crl === 'string' || Buffer.isBuffer(crl) ? parseCrl(crl) : crl;
}

function crlDer(crl: string | Buffer): Buffer {
  if (Buffer.isBuffer(crl)) return crl;
  return pemToDer(crl, 'X509 CRL', 'CA_CRL_INVALID');
}

/** Parses a CRL (PEM or DER). Does not check its signature: see verifyCrl. */
export function parseCrl(crl: string | Buffer): ParsedCrl {
  const C = 'CA_CRL_INVALID';
  const top = parseDer(crlDer(crl), C);
  const [tbs, alg, sigBits] = children(top, C);
  if (!tbs || !alg || !sigBits || sigBits.tag !== 0x03 || tbs.tag !== 0x30) throw new UzError(C, 'malformed CRL: expected tbsCertList, algorithm, signature');
  const f = children(tbs, C);
  let i = 0;
  if (f[i]?.tag === 0x02) i++; // version
  const innerAlg = f[i++];
  const issuer = f[i++];
  const thisUpdate = f[i++];
  if (!innerAlg || !issuer || issuer.tag !== 0x30 || !thisUpdate) throw new UzError(C, 'malformed CRL: missing issuer or thisUpdate');
  let nextUpdate: Date | null = null;
  if (f[i] && (f[i]!.tag === 0x17 || f[i]!.tag === 0x18)) nextUpdate = readTime(f[i++]!, C);
  const revoked: ParsedCrl['revoked'] = [];
  if (f[i]?.tag === 0x30) {
    for (const e of children(f[i++]!, C)) {
      const ef = children(e, C);
      if (ef[0]?.tag !== 0x02 || !ef[1]) throw new UzError(C, 'malformed CRL entry');
      const entry: ParsedCrl['revoked'][number] = { serial: integerHex(ef[0]), revokedAt: readTime(ef[1], C) };
      if (ef[2]) {
        for (const ext of children(ef[2], C)) {
          const [oid, ...rest] = children(ext, C);
          const val = rest[rest.length - 1];
          if (oid && oidString(oid) === OID_REASON && val) entry.reasonCode = parseDer(val.content, C).content[0];
        }
      }
      revoked.push(entry);
    }
  }
  let crlNumber: string | null = null;
  const extsWrap = f[i];
  if (extsWrap && extsWrap.tag === 0xa0) {
    const [exts] = children(extsWrap, C);
    for (const ext of exts ? children(exts, C) : []) {
      const [oid, ...rest] = children(ext, C);
      const val = rest[rest.length - 1] as Tlv | undefined;
      if (oid && oidString(oid) === OID_CRL_NUMBER && val) crlNumber = integerHex(parseDer(val.content, C));
    }
  }
  const algOid = children(alg, C)[0];
  return {
    issuerDer: Buffer.from(issuer.raw),
    thisUpdate: readTime(thisUpdate, C),
    nextUpdate,
    crlNumber,
    revoked,
    tbsDer: Buffer.from(tbs.raw),
    signatureAlgorithm: algOid ? oidString(algOid) : '',
    signature: Buffer.from(sigBits.content.subarray(1)),
  };
}

/** Raw DER of a certificate's issuer Name and its normalized serial. */
function certIdentity(cert: string | X509Certificate): { issuerDer: Buffer; serial: string } {
  const x = typeof cert === 'string' ? new X509Certificate(cert) : cert;
  const C = 'CA_CERT_INVALID';
  const [tbs] = children(parseDer(x.raw, C), C);
  if (!tbs) throw new UzError(C, 'malformed certificate');
  const f = children(tbs, C);
  let i = 0;
  if (f[0]?.tag === 0xa0) i++; // [0] version
  const serial = f[i];
  const issuer = f[i + 2];
  if (!serial || serial.tag !== 0x02 || !issuer) throw new UzError(C, 'malformed certificate');
  return { issuerDer: Buffer.from(issuer.raw), serial: integerHex(serial) };
}

/**
 * Checks a CRL's signature against the CA certificate, that the CA issued it, and that it is current
 * (thisUpdate ≤ now ≤ nextUpdate). Returns the parsed CRL; throws CA_CRL_* otherwise.
 */
export function verifyCrl(crl: string | Buffer | ParsedCrl, caCertPem: string, now: Date = new Date()): ParsedCrl {
  const p = asParsed(crl);
  const caX = new X509Certificate(caCertPem);
  const caSubject = certSubjectDer(caX);
  if (!caSubject.equals(p.issuerDer)) throw new UzError('CA_CRL_ISSUER_MISMATCH', 'the CRL was not issued by this CA');
  if (p.signatureAlgorithm !== SHA256_RSA) throw new UzError('CA_CRL_INVALID', `unsupported CRL signature algorithm ${p.signatureAlgorithm}`);
  const key = createPublicKey(caX.publicKey.export({ type: 'spki', format: 'pem' }));
  if (!cryptoVerify('sha256', p.tbsDer, key, p.signature)) throw new UzError('CA_CRL_SIGNATURE', 'the CRL signature does not verify against the CA');
  if (p.thisUpdate.getTime() > now.getTime() + 5 * 60_000) throw new UzError('CA_CRL_NOT_YET_VALID', `the CRL is dated ${p.thisUpdate.toISOString()}, in the future`);
  if (p.nextUpdate && p.nextUpdate.getTime() < now.getTime()) {
    throw new UzError('CA_CRL_EXPIRED', `the CRL expired at ${p.nextUpdate.toISOString()}; run uz ca crl to issue a fresh one`);
  }
  return p;
}

function certSubjectDer(x: X509Certificate): Buffer {
  const C = 'CA_CERT_INVALID';
  const [tbs] = children(parseDer(x.raw, C), C);
  const f = children(tbs!, C);
  const i = f[0]?.tag === 0xa0 ? 1 : 0;
  const subject = f[i + 4];
  if (!subject) throw new UzError(C, 'malformed certificate');
  return Buffer.from(subject.raw);
}

/**
 * True when the CRL lists the certificate's serial. The CRL must come from the certificate's issuer
 * (CA_CRL_ISSUER_MISMATCH otherwise: a CRL of another CA says nothing about this certificate). Check the CRL
 * itself once with verifyCrl before relying on it.
 */
export function isRevoked(crl: string | Buffer | ParsedCrl, cert: string | X509Certificate): boolean {
  const p = asParsed(crl);
  const id = certIdentity(cert);
  if (!id.issuerDer.equals(p.issuerDer)) throw new UzError('CA_CRL_ISSUER_MISMATCH', 'the CRL and the certificate have different issuers');
  return p.revoked.some((r) => r.serial === id.serial);
}

/** True when the CRL lists `serialHex` (any case, with or without leading zeros / colons). */
export function isSerialRevoked(crl: string | Buffer | ParsedCrl, serialHex: string): boolean {
  const p = asParsed(crl);
  const s = normalizeSerial(serialHex);
  return p.revoked.some((r) => r.serial === s);
}
