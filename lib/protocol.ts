import { z } from 'zod';

/**
 * The device <-> server protocol over MQTT: ONE module shared by the server and the agent (and the spec in
 * docs/protocol.md is written from it). Every topic has exactly one payload schema; every payload carries the
 * protocol version `v`; requests and responses share one envelope with a transaction id echoed back.
 *
 * Devices only ever connect OUT to the broker (NAT-friendly) and may only use topics under their own
 * `uz/v1/dev/{deviceId}/` (broker ACLs enforce this).
 */
export const PROTOCOL_VERSION = 1 as const;
export const TOPIC_ROOT = 'uz/v1';

/** Largest MQTT payload either side accepts; bigger messages are dropped with a logged reason. */
export const MAX_MESSAGE_BYTES = 256 * 1024;
/** Largest artifact block served over MQTT (AWS IoT OTA streams use the same order of size). */
export const MAX_BLOCK_BYTES = 128 * 1024;

export const DeviceId = z.string().regex(/^[a-z0-9][a-z0-9-]{2,63}$/, 'device ids are 3-64 chars of a-z, 0-9 and -');
export type DeviceId = z.infer<typeof DeviceId>;
const TxId = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/);
const Sha256 = z.string().regex(/^[0-9a-f]{64}$/);
const SemVer = z.string().regex(/^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$/).max(64);
const Slot = z.enum(['A', 'B']);
const ErrorInfo = z.object({ code: z.string().regex(/^[A-Z][A-Z0-9_]{1,63}$/), message: z.string().max(1000) }).strict();
const Ts = z.number().int().nonnegative();

export const topics = {
  /** device -> server, retained: what the device is and how it is doing. */
  status: (id: string) => `${TOPIC_ROOT}/dev/${id}/status`,
  /** device -> server, retained; also the MQTT last will ({online:false}). */
  presence: (id: string) => `${TOPIC_ROOT}/dev/${id}/presence`,
  /** server -> device, retained: the release the device should run. */
  desired: (id: string) => `${TOPIC_ROOT}/dev/${id}/desired`,
  /** device -> server: update progress and outcomes. */
  events: (id: string) => `${TOPIC_ROOT}/dev/${id}/events`,
  /** device -> server requests (artifact blocks, enrollment). */
  request: (id: string) => `${TOPIC_ROOT}/dev/${id}/req`,
  /** server -> device responses, matched by txid. */
  response: (id: string) => `${TOPIC_ROOT}/dev/${id}/res`,
  /** Subscription filter for the server: every device topic. */
  allDevices: `${TOPIC_ROOT}/dev/+/+`,
} as const;

export type TopicKind = 'status' | 'presence' | 'desired' | 'events' | 'request' | 'response';
const KIND_BY_SUFFIX: Record<string, TopicKind> = { status: 'status', presence: 'presence', desired: 'desired', events: 'events', req: 'request', res: 'response' };

/** Splits `uz/v1/dev/{id}/{kind}`; null for anything else. */
export function parseTopic(topic: string): { deviceId: string; kind: TopicKind } | null {
  const m = /^uz\/v1\/dev\/([^/]+)\/([a-z]+)$/.exec(topic);
  if (!m) return null;
  const kind = KIND_BY_SUFFIX[m[2]!];
  if (!kind || !DeviceId.safeParse(m[1]).success) return null;
  return { deviceId: m[1]!, kind };
}

export const PresenceSchema = z.object({ v: z.literal(1), online: z.boolean(), ts: Ts.optional() }).strict();

export const AgentState = z.enum([
  'idle', 'checking', 'downloading', 'installing', 'armed', 'rebooting', 'verifying', 'committing', 'rolled-back', 'failed',
]);

export const StatusSchema = z
  .object({
    v: z.literal(1),
    deviceId: DeviceId,
    ts: Ts,
    board: z.string().max(32),
    version: SemVer,
    slot: Slot,
    rollbackCounter: z.number().int().nonnegative(),
    bootControl: z.object({ primary: Slot, tryPending: Slot.nullable(), bad: z.array(Slot).max(2) }).strict(),
    state: AgentState,
    workload: z
      .object({
        name: z.string().max(64),
        version: z.string().max(64),
        healthy: z.boolean(),
        detail: z.string().max(500),
        height: z.number().int().nonnegative().optional(),
        restarts: z.number().int().nonnegative(),
      })
      .strict(),
    data: z
      .object({ freeBytes: z.number().nonnegative(), usedBytes: z.number().nonnegative(), quotaBytes: z.number().nonnegative().optional() })
      .strict()
      .optional(),
    lastError: ErrorInfo.optional(),
  })
  .strict();
export type Status = z.infer<typeof StatusSchema>;

export const ReleaseRef = z
  .object({
    version: SemVer,
    board: z.string().max(32),
    rollbackCounter: z.number().int().nonnegative(),
    /** HTTP(S) URL of the `.uzb` bundle (Range requests supported); the bundle is verified on the device. */
    bundleUrl: z.url().max(2048),
    size: z.number().int().positive(),
    /** SHA-256 of the whole bundle file, so a download can be resumed and checked before parsing. */
    sha256: Sha256,
  })
  .strict();
export type ReleaseRef = z.infer<typeof ReleaseRef>;

export const DesiredSchema = z
  .object({
    v: z.literal(1),
    txid: TxId,
    deploymentId: z.string().max(64).nullable(),
    issuedAt: Ts,
    release: ReleaseRef.nullable(),
  })
  .strict();
export type Desired = z.infer<typeof DesiredSchema>;

export const UpdatePhase = z.enum(['accepted', 'downloading', 'installing', 'rebooting', 'verifying', 'success', 'failure', 'rolled-back']);

export const EventSchema = z
  .object({
    v: z.literal(1),
    txid: TxId,
    deploymentId: z.string().max(64).nullable(),
    ts: Ts,
    phase: UpdatePhase,
    version: SemVer,
    progress: z.object({ bytes: z.number().int().nonnegative(), total: z.number().int().nonnegative() }).strict().optional(),
    error: ErrorInfo.optional(),
  })
  .strict();
export type UpdateEvent = z.infer<typeof EventSchema>;

export const RequestSchema = z.discriminatedUnion('type', [
  z
    .object({
      v: z.literal(1),
      txid: TxId,
      type: z.literal('block'),
      /** The bundle's SHA-256 (as in ReleaseRef). */
      artifact: Sha256,
      offset: z.number().int().nonnegative(),
      length: z.number().int().positive().max(MAX_BLOCK_BYTES),
    })
    .strict(),
  z
    .object({
      v: z.literal(1),
      txid: TxId,
      type: z.literal('enroll'),
      token: z.string().min(16).max(256),
      csrPem: z.string().max(8192),
    })
    .strict(),
]);
export type DeviceRequest = z.infer<typeof RequestSchema>;

export const ResponseSchema = z
  .object({
    v: z.literal(1),
    txid: TxId,
    status: z.enum(['ok', 'error']),
    /** Block responses carry base64 data; enrollment responses carry PEM certificates. */
    data: z
      .union([
        z.object({ type: z.literal('block'), offset: z.number().int().nonnegative(), dataB64: z.string().max(Math.ceil(MAX_BLOCK_BYTES / 3) * 4 + 4), eof: z.boolean() }).strict(),
        z.object({ type: z.literal('enroll'), certPem: z.string().max(8192), caPem: z.string().max(8192) }).strict(),
      ])
      .optional(),
    error: ErrorInfo.optional(),
  })
  .strict();
export type DeviceResponse = z.infer<typeof ResponseSchema>;

export const schemaFor = {
  status: StatusSchema,
  presence: PresenceSchema,
  desired: DesiredSchema,
  events: EventSchema,
  request: RequestSchema,
  response: ResponseSchema,
} as const;

export type DecodeResult<T> = { ok: true; value: T } | { ok: false; code: 'MSG_TOO_LARGE' | 'MSG_NOT_JSON' | 'MSG_INVALID'; reason: string };

/** Validates an incoming payload at the edge: size, JSON, schema. Never throws. */
export function decode<K extends TopicKind>(kind: K, payload: Uint8Array): DecodeResult<z.infer<(typeof schemaFor)[K]>> {
  if (payload.byteLength > MAX_MESSAGE_BYTES) return { ok: false, code: 'MSG_TOO_LARGE', reason: `${payload.byteLength} bytes > ${MAX_MESSAGE_BYTES}` };
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(payload).toString('utf8'));
  } catch (e) {
    return { ok: false, code: 'MSG_NOT_JSON', reason: (e as Error).message };
  }
  const r = schemaFor[kind].safeParse(json);
  if (!r.success) return { ok: false, code: 'MSG_INVALID', reason: r.error.issues.slice(0, 3).map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') };
  return { ok: true, value: r.data as z.infer<(typeof schemaFor)[K]> };
}

export function encode<K extends TopicKind>(kind: K, value: z.infer<(typeof schemaFor)[K]>): Buffer {
  return Buffer.from(JSON.stringify(schemaFor[kind].parse(value)));
}
