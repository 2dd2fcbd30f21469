/**
 * Streaming bundle verifier. `openBundle` reads and fully verifies the header (signatures by the trusted root's
 * release role, board, anti-rollback counter, expiry) before a single payload byte is read; the returned object
 * then yields verified payload chunks (see stream.ts) in constant memory.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import semver from 'semver';
import { UzError } from '../../lib/errors.js';
import { canonicalBytes } from '../trust/canonical.js';
import { assertRootNotExpired, releaseRoleKeys, type RootMetadata } from '../trust/root.js';
import { verifyThreshold } from '../trust/signatures.js';
import { PREAMBLE_BYTES, parseHeader, parsePreamble, type BundleHeader } from './format.js';
import type { Manifest } from './manifest.js';
import { ByteReader, verifiedChunkPieces, verifiedChunks, type ByteSource } from './stream.js';

export interface VerifyPolicy {
  /** Trusted root metadata (already verified: loadTrustedRoot / updateTrustedRoot). */
  root: RootMetadata;
  /** Device board id; when given, manifest.board.id must equal it (WRONG_BOARD). */
  board?: string;
  /** Device hardware id; when given and the manifest lists hardwareIds, it must be among them (WRONG_BOARD). */
  hardwareId?: string;
  /** Anti-rollback floor: manifest.rollbackCounter must be ≥ this (ROLLBACK). Default 0. */
  minCounter?: number;
  /** Running version: a lower manifest.version needs a signed downgradeOverride (ROLLBACK). */
  currentVersion?: string;
  /** Clock for expiry checks. Default: now. */
  now?: Date;
  /** Check that the trusted root itself has not expired (TUF freeze-attack protection). Default true. */
  checkRootExpiry?: boolean;
}

export interface HeaderVerdict {
  manifest: Manifest;
  /** keyids whose signatures counted. */
  signedBy: string[];
}

/**
 * Pure policy check of a parsed header: signatures first (strict: every signature must be by a release key and
 * valid, and at least `threshold` of them), then board, rollback counter / version, expiry.
 */
export function verifyBundleHeader(header: BundleHeader, policy: VerifyPolicy): HeaderVerdict {
  const now = policy.now ?? new Date();
  if (policy.checkRootExpiry !== false) assertRootNotExpired(policy.root, now);
  const { validKeyids } = verifyThreshold(canonicalBytes(header.signed), header.signatures, releaseRoleKeys(policy.root), true);
  const m = header.signed;
  if (policy.board !== undefined && m.board.id !== policy.board) {
    throw new UzError('WRONG_BOARD', `bundle is for board ${m.board.id}, device is ${policy.board}`, { bundle: m.board.id, device: policy.board });
  }
  if (policy.hardwareId !== undefined && m.board.hardwareIds.length > 0 && !m.board.hardwareIds.includes(policy.hardwareId)) {
    throw new UzError('WRONG_BOARD', `bundle does not list hardware id ${policy.hardwareId}`, { hardwareId: policy.hardwareId });
  }
  const min = policy.minCounter ?? 0;
  if (m.rollbackCounter < min) {
    throw new UzError('ROLLBACK', `rollback counter ${m.rollbackCounter} is below the device minimum ${min}`, { counter: m.rollbackCounter, min });
  }
  if (policy.currentVersion !== undefined && semver.valid(policy.currentVersion) && semver.lt(m.version, policy.currentVersion) && m.downgradeOverride !== true) {
    throw new UzError('ROLLBACK', `version ${m.version} is older than running ${policy.currentVersion} and the bundle has no signed downgradeOverride`, {
      version: m.version,
      current: policy.currentVersion,
    });
  }
  if (m.expiresAt !== undefined && Date.parse(m.expiresAt) <= now.getTime()) {
    throw new UzError('EXPIRED', `bundle expired at ${m.expiresAt}`, { expiresAt: m.expiresAt });
  }
  return { manifest: m, signedBy: validKeyids };
}

export interface OpenedBundle extends HeaderVerdict {
  header: BundleHeader;
  /** Byte offset of the payload in the bundle (8 + header length). */
  payloadOffset: number;
  /**
   * Verified stored-payload chunks. Each chunk is yielded only after its hash matched; the last one only after
   * the whole-payload hash matched and the stream ended exactly there. Throws UzError on the first problem.
   * Single use.
   */
  chunks(): AsyncGenerator<Buffer, void, undefined>;
  /** chunks() as a Readable; decompress: true gunzips a gzip payload (bytes are verified before inflating). */
  stream(opts?: { decompress?: boolean }): Readable;
  /** Consume and verify the rest of the payload without keeping it. Returns the number of payload bytes. */
  drain(): Promise<number>;
  /** Abandon the payload (closes the source). */
  close(): Promise<void>;
}

/** Reads the preamble + header from a reader; structural checks only. */
export async function readHeader(reader: ByteReader): Promise<{ header: BundleHeader; payloadOffset: number }> {
  const pre = await reader.readExactBuffer(PREAMBLE_BYTES, 'the preamble');
  const n = parsePreamble(pre);
  const bytes = await reader.readExactBuffer(n, 'the header');
  return { header: parseHeader(bytes), payloadOffset: PREAMBLE_BYTES + n };
}

function opened(reader: ByteReader, header: BundleHeader, payloadOffset: number, verdict: HeaderVerdict): OpenedBundle {
  let used = false;
  const take = (): void => {
    if (used) throw new Error('bundle payload can only be consumed once');
    used = true;
  };
  const chunks = (): AsyncGenerator<Buffer, void, undefined> => {
    take();
    return verifiedChunks(reader, verdict.manifest.payload, payloadOffset);
  };
  return {
    ...verdict,
    header,
    payloadOffset,
    chunks,
    stream(opts) {
      const r = Readable.from(chunks(), { objectMode: false });
      if (!opts?.decompress || verdict.manifest.payload.compression === 'none') return r;
      const gz = createGunzip();
      r.on('error', (e) => gz.destroy(e));
      return r.pipe(gz);
    },
    async drain() {
      take();
      let n = 0;
      for await (const pieces of verifiedChunkPieces(reader, verdict.manifest.payload, payloadOffset)) for (const p of pieces) n += p.length;
      return n;
    },
    async close() {
      await reader.cancel();
    },
  };
}

async function readFully(fh: FileHandle, length: number, position: number, what: string): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, position + got);
    if (bytesRead === 0) throw new UzError('TRUNCATED', `file ended ${length - got} byte(s) short inside ${what} (at offset ${position + got})`, { offset: position + got });
    got += bytesRead;
  }
  return buf;
}

/** Preamble + header of an open bundle file, by positional reads. */
export async function readHeaderFromHandle(fh: FileHandle): Promise<{ header: BundleHeader; payloadOffset: number }> {
  const n = parsePreamble(await readFully(fh, PREAMBLE_BYTES, 0, 'the preamble'));
  return { header: parseHeader(await readFully(fh, n, PREAMBLE_BYTES, 'the header')), payloadOffset: PREAMBLE_BYTES + n };
}

/** Opens a bundle from any byte source (fs/network stream, async iterable of Uint8Array). */
export async function openBundle(source: ByteSource, policy: VerifyPolicy): Promise<OpenedBundle> {
  const reader = new ByteReader(source);
  try {
    const { header, payloadOffset } = await readHeader(reader);
    return opened(reader, header, payloadOffset, verifyBundleHeader(header, policy));
  } catch (e) {
    await reader.cancel();
    throw e;
  }
}

/**
 * Opens a bundle file. Same checks as openBundle; the payload is then read with chunk-aligned reads from one
 * file handle (no re-open race), so chunks are hashed and handed out without copying.
 */
export async function openBundleFile(path: string, policy: VerifyPolicy): Promise<OpenedBundle> {
  const fh = await open(path, 'r').catch((e: unknown) => {
    throw new UzError('NOT_FOUND', `cannot open bundle ${path}`, { path }, { cause: e });
  });
  let handedOver = false;
  try {
    const { header, payloadOffset } = await readHeaderFromHandle(fh);
    const verdict = verifyBundleHeader(header, policy);
    const hwm = Math.min(header.signed.payload.chunkSize, 8 * 1024 * 1024);
    const reader = new ByteReader(fh.createReadStream({ start: payloadOffset, highWaterMark: hwm, autoClose: true }));
    handedOver = true;
    return opened(reader, header, payloadOffset, verdict);
  } finally {
    if (!handedOver) await fh.close();
  }
}

/** Verifies a whole bundle file (header, then every payload byte). Returns the manifest on success. */
export async function verifyBundleFile(path: string, policy: VerifyPolicy): Promise<HeaderVerdict> {
  const b = await openBundleFile(path, policy);
  await b.drain();
  return { manifest: b.manifest, signedBy: b.signedBy };
}
