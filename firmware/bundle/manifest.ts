/**
 * The signed manifest of a `.uzb` bundle. Strict zod schema: unknown fields are rejected and every string and
 * array is length-bounded, so a header can never make the verifier allocate much (the whole header is also
 * capped at MAX_HEADER_BYTES before it is parsed).
 *
 * Semantics of the security-relevant fields:
 *  - board.id / board.hardwareIds: the bundle installs only on that board (and, when hardwareIds is non-empty
 *    and the device reports one, only on those hardware revisions).
 *  - rollbackCounter: anti-rollback floor. A device refuses counter < its stored minimum, ALWAYS.
 *  - version (semver): informational ordering. downgradeOverride: true allows installing a lower semver
 *    `version` than the running one (a deliberate, signed, "go back to the previous release") but never a lower
 *    rollbackCounter. It lives inside the signed manifest, so it can only come from release-key holders; an
 *    unsigned copy of the flag anywhere else is ignored.
 *  - payload.chunkSha256: sha256 of each `chunkSize` slice of the STORED payload bytes (after compression),
 *    the last one possibly shorter; payload.sha256 covers all stored bytes; payload.size is the stored length.
 *  - deltaBase: reserved for delta updates; must be null/absent for now.
 */
import semver from 'semver';
import { z } from 'zod';
import { DateTimeSchema } from '../trust/root.js';

export const MANIFEST_TYPE = 'uz-bundle';
export const FORMAT_VERSION = 1;
export const MIN_CHUNK_SIZE = 4 * 1024;
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024;
export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
/** ≤ 15 000 hashes keeps the header under 1 MiB (each costs 67 bytes). 15 000 × 64 MiB ≈ 1 TB of payload. */
export const MAX_CHUNKS = 15_000;
export const MAX_HARDWARE_IDS = 32;
export const MAX_COUNTER = 0xffff_ffff;

const ID = /^[A-Za-z0-9][A-Za-z0-9._+,-]*$/;
const HEX64 = /^[0-9a-f]{64}$/;
const shortId = z.string().min(1).max(64).regex(ID);

const SemverSchema = z
  .string()
  .min(1)
  .max(64)
  .refine((v) => semver.valid(v) === v, 'must be a semver version (no leading "v")');

export const PayloadInfoSchema = z.strictObject({
  size: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  sha256: z.string().regex(HEX64),
  compression: z.enum(['none', 'gzip']),
  chunkSize: z
    .number()
    .int()
    .min(MIN_CHUNK_SIZE)
    .max(MAX_CHUNK_SIZE)
    .refine((n) => (n & (n - 1)) === 0, 'chunkSize must be a power of two'),
  chunkSha256: z.array(z.string().regex(HEX64)).max(MAX_CHUNKS),
});
export type PayloadInfo = z.infer<typeof PayloadInfoSchema>;

export const ManifestSchema = z
  .strictObject({
    _type: z.literal(MANIFEST_TYPE),
    formatVersion: z.literal(FORMAT_VERSION),
    board: z.strictObject({
      id: shortId,
      hardwareIds: z.array(shortId).max(MAX_HARDWARE_IDS),
    }),
    version: SemverSchema,
    rollbackCounter: z.number().int().min(0).max(MAX_COUNTER),
    payload: PayloadInfoSchema,
    createdAt: DateTimeSchema,
    expiresAt: DateTimeSchema.optional(),
    workload: z.strictObject({ name: shortId, version: z.string().min(1).max(64).regex(ID) }),
    deltaBase: z.null().optional(),
    downgradeOverride: z.boolean().optional(),
  })
  .superRefine((m, ctx) => {
    const want = Math.ceil(m.payload.size / m.payload.chunkSize);
    if (m.payload.chunkSha256.length !== want) {
      ctx.addIssue({ code: 'custom', path: ['payload', 'chunkSha256'], message: `expected ${want} chunk hashes` });
    }
    if (m.expiresAt !== undefined && Date.parse(m.expiresAt) <= Date.parse(m.createdAt)) {
      ctx.addIssue({ code: 'custom', path: ['expiresAt'], message: 'expiresAt must be after createdAt' });
    }
    if (new Set(m.board.hardwareIds).size !== m.board.hardwareIds.length) {
      ctx.addIssue({ code: 'custom', path: ['board', 'hardwareIds'], message: 'duplicate hardware id' });
    }
  });
export type Manifest = z.infer<typeof ManifestSchema>;

/** Smallest power-of-two chunk size ≥ DEFAULT_CHUNK_SIZE that keeps the chunk count within MAX_CHUNKS. */
export function chooseChunkSize(payloadSize: number): number {
  let c = DEFAULT_CHUNK_SIZE;
  while (Math.ceil(payloadSize / c) > MAX_CHUNKS && c < MAX_CHUNK_SIZE) c *= 2;
  return c;
}
