/**
 * The storage contract. Every method is async so a PostgreSQL implementation can satisfy the same interface;
 * test/server/storage-contract.ts runs one suite against every implementation.
 *
 * Dispatch coordination happens HERE, not in memory: `claimForDispatch` atomically moves rollout members from
 * `pending` to `dispatched` (incrementing `attempts`) and returns only the rows this caller won. SQLite does
 * it inside one IMMEDIATE transaction; PostgreSQL would use
 *   UPDATE rollout_devices SET … WHERE (rollout_id, device_id) IN
 *     (SELECT … WHERE state='pending' … ORDER BY position LIMIT $n FOR UPDATE SKIP LOCKED) RETURNING …
 * so two server instances never dispatch the same device. Result transitions (`finishMember`) only apply
 * from `dispatched` and are therefore idempotent (a duplicate success event changes nothing).
 */
import type { Desired, Status } from '../../lib/protocol.js';

export type Role = 'viewer' | 'operator' | 'admin';
export const ROLES: readonly Role[] = ['viewer', 'operator', 'admin'];

export interface DeviceRow {
  id: string;
  channel: string;
  tags: string[];
  online: boolean;
  lastSeen: number | null;
  /** Last status message (validated) or null before the first one. */
  status: Status | null;
  desired: Desired | null;
  createdAt: number;
  /** Certificate enrollment: none (password device), pending (asked, awaiting an operator), approved, rejected, revoked. */
  enrollment: EnrollmentState;
  /** Serial (lower-case hex) of the last client certificate issued to it, or null. */
  certSerial: string | null;
}

export type EnrollmentState = 'none' | 'pending' | 'approved' | 'rejected' | 'revoked';

export interface EnrollTokenRow {
  id: string;
  /** Device the token was created for, or bound to on first use (one token enrolls one device). */
  deviceId: string | null;
  /** The device is approved as soon as it enrolls with this token (no operator step). */
  preApproved: boolean;
  expiresAt: number;
  usedAt: number | null;
  createdBy: string;
  createdAt: number;
}

export interface DeviceEventRow {
  id: number;
  deviceId: string;
  ts: number;
  kind: 'event' | 'status' | 'presence' | 'rejected';
  data: unknown;
}

export interface ReleaseRow {
  id: string;
  sha256: string;
  size: number;
  board: string;
  version: string;
  rollbackCounter: number;
  workload: { name: string; version: string };
  manifest: unknown;
  signedBy: string[];
  createdAt: number;
  yanked: boolean;
  yankedReason: string | null;
}

export interface ChannelRow {
  name: string;
  releaseId: string | null;
  updatedAt: number;
}

export type RolloutState = 'running' | 'paused' | 'aborted' | 'completed';
export type MemberState = 'pending' | 'dispatched' | 'succeeded' | 'failed' | 'skipped';

export interface Stage {
  /** Cumulative share of the target: exactly one of percent / count. */
  percent?: number;
  count?: number;
}

export interface RolloutPolicy {
  stages: Stage[];
  /** Fraction (0..1] of decided devices in stages ≤ current that must have succeeded to advance. */
  successThreshold: number;
  /** Early brake: act when failures reach this count and/or percent of decided devices… */
  failureThreshold: { count?: number; percent?: number };
  /** …but only once at least this many devices have decided (succeeded or failed). */
  minDevices: number;
  onFailure: 'pause' | 'abort';
  maxInFlight: number;
  ratePerMinute: number;
  /** A dispatched device that reports no outcome within this many seconds is timed out. */
  timeoutSec: number;
  /** Re-dispatches after a timeout (a reported failure is final). */
  retries: number;
  /** UTC maintenance window; dispatch only inside it. days: 0=Sunday … 6=Saturday. */
  window?: { start: string; end: string; days?: number[] };
  /** Once the last stage is reached, offline devices still pending after this long are skipped. */
  offlineGraceSec: number;
}

export interface RolloutTarget {
  channel?: string;
  tag?: string;
  devices?: string[];
}

export interface RolloutRow {
  id: string;
  releaseId: string;
  target: RolloutTarget;
  policy: RolloutPolicy;
  state: RolloutState;
  stageIndex: number;
  /** Cumulative member count at the end of each stage (same length as policy.stages). */
  stageCutoffs: number[];
  reason: string | null;
  /** Failures/decisions acknowledged by an operator resume (thresholds count only what came after). */
  ackFailed: number;
  ackDecided: number;
  /** Stage whose success gate an operator overrode by resuming. */
  gateOverride: number | null;
  lastStageAt: number;
  createdAt: number;
  updatedAt: number;
  createdBy: string;
  /** Optimistic-concurrency counter, bumped by every update. */
  rev: number;
}

export interface MemberRow {
  rolloutId: string;
  deviceId: string;
  position: number;
  stage: number;
  state: MemberState;
  attempts: number;
  dispatchedAt: number | null;
  finishedAt: number | null;
  txid: string | null;
  error: string | null;
}

export interface StageStats {
  stage: number;
  total: number;
  pending: number;
  dispatched: number;
  succeeded: number;
  failed: number;
  skipped: number;
}

export interface TokenRow {
  id: string;
  name: string;
  role: Role;
  createdAt: number;
  revoked: boolean;
}

export interface AuditRow {
  id: number;
  ts: number;
  actor: string;
  action: string;
  target: string;
  details: unknown;
}

export interface DeviceFilter {
  channel?: string;
  tag?: string;
  ids?: string[];
  enrollment?: EnrollmentState;
  /** Case-insensitive substring of "<id> <version> <state>" (version and state from the last status). */
  search?: string;
  /** Keyset pagination: only ids greater than this (the list is ordered by id). */
  after?: string;
  /** At most this many rows. */
  limit?: number;
}

/** Fleet aggregates (what a dashboard or a benchmark polls instead of every device row). */
export interface DeviceSummary {
  total: number;
  online: number;
  /** Devices that have sent at least one status. */
  reporting: number;
  /** Running version (from the last status) → devices; devices without a status are not counted. */
  versions: Record<string, number>;
  /** Agent state (from the last status) → devices. */
  states: Record<string, number>;
  /** Active slot (from the last status) → devices. */
  slots: Record<string, number>;
  unhealthy: number;
  /** Devices whose last status carries a lastError. */
  withError: number;
}

export interface Storage {
  readonly kind: string;
  close(): Promise<void>;

  // devices
  registerDevice(d: { id: string; secretHash: string | null; channel?: string; tags?: string[]; now: number; enrollment?: EnrollmentState }): Promise<boolean>;
  /** Sets the enrollment state and/or certificate serial; false if there is no such device. */
  setEnrollment(id: string, patch: { state?: EnrollmentState; certSerial?: string | null }): Promise<boolean>;
  deviceSecretHash(id: string): Promise<string | null | undefined>;
  getDevice(id: string): Promise<DeviceRow | null>;
  listDevices(f?: DeviceFilter): Promise<DeviceRow[]>;
  /** Aggregates over the devices matching the filter (channel/tag only), computed in the database. */
  deviceSummary(f?: Pick<DeviceFilter, 'channel' | 'tag'>): Promise<DeviceSummary>;
  updateDeviceMeta(id: string, patch: { channel?: string; tags?: string[] }): Promise<boolean>;
  setPresence(id: string, online: boolean, now: number): Promise<void>;
  setStatus(id: string, status: Status, now: number): Promise<void>;
  setDesired(id: string, desired: Desired | null): Promise<void>;
  markAllOffline(): Promise<void>;
  appendDeviceEvent(deviceId: string, ts: number, kind: DeviceEventRow['kind'], data: unknown): Promise<void>;
  listDeviceEvents(deviceId: string, limit: number): Promise<DeviceEventRow[]>;

  // releases + channels
  insertRelease(r: ReleaseRow): Promise<void>;
  getRelease(id: string): Promise<ReleaseRow | null>;
  getReleaseBySha(sha256: string): Promise<ReleaseRow | null>;
  findRelease(board: string, version: string): Promise<ReleaseRow | null>;
  listReleases(): Promise<ReleaseRow[]>;
  yankRelease(id: string, reason: string): Promise<boolean>;
  setChannel(name: string, releaseId: string | null, now: number): Promise<void>;
  getChannel(name: string): Promise<ChannelRow | null>;
  listChannels(): Promise<ChannelRow[]>;

  // rollouts
  createRollout(r: RolloutRow, members: { deviceId: string; position: number; stage: number; state?: MemberState }[]): Promise<void>;
  getRollout(id: string): Promise<RolloutRow | null>;
  listRollouts(states?: RolloutState[]): Promise<RolloutRow[]>;
  /** Applies `patch` only if the stored rev equals `rev`; returns the new row or null on a lost race. */
  updateRollout(id: string, rev: number, patch: Partial<Pick<RolloutRow, 'state' | 'stageIndex' | 'reason' | 'ackFailed' | 'ackDecided' | 'gateOverride' | 'lastStageAt'>>, now: number): Promise<RolloutRow | null>;
  stageStats(rolloutId: string): Promise<StageStats[]>;
  /** Dispatches counted since `since` (for the per-minute rate). */
  dispatchedSince(rolloutId: string, since: number): Promise<number>;
  /**
   * Atomically claims up to `limit` pending members with stage ≤ maxStage (lowest position first, online
   * devices first), marks them dispatched with txid `${rolloutId}-a${attempts}` and returns them. When
   * `desiredFor` is given, each device's desired state is stored in the SAME transaction (so a crash can never
   * leave a claimed member without its desired state; the server republishes stored desired states at start).
   * The claim is also capped in the same transaction by the rollout's policy: never more than
   * maxInFlight − (members in flight) and ratePerMinute − (dispatches in the minute before `now`), so several
   * server instances deciding on the same counts at once cannot overshoot the budget together.
   */
  claimForDispatch(rolloutId: string, maxStage: number, limit: number, now: number, onlineOnly: boolean, desiredFor?: (m: MemberRow) => Desired): Promise<MemberRow[]>;
  /** dispatched -> succeeded|failed. Returns false if the member was not dispatched (duplicate/late report). */
  finishMember(rolloutId: string, deviceId: string, outcome: 'succeeded' | 'failed', error: string | null, now: number): Promise<boolean>;
  /** Dispatched members whose dispatchedAt is older than `before`. */
  timedOut(rolloutId: string, before: number): Promise<MemberRow[]>;
  /** dispatched -> pending (retry after timeout). */
  requeueMember(rolloutId: string, deviceId: string, error: string): Promise<boolean>;
  /** pending members of stages ≤ maxStage -> skipped (offline grace expired). */
  skipPending(rolloutId: string, maxStage: number, reason: string, now: number): Promise<number>;
  listMembers(rolloutId: string, opts?: { state?: MemberState; limit?: number }): Promise<MemberRow[]>;
  /** Pending members of stages ≤ maxStage whose device is online (what the next dispatch could take). */
  countOnlinePending(rolloutId: string, maxStage: number): Promise<number>;
  /** The dispatched member of any running/paused rollout for this device (what an event refers to). */
  activeMemberships(deviceId: string): Promise<MemberRow[]>;

  // auth
  createToken(t: { id: string; name: string; role: Role; hash: string; now: number }): Promise<void>;
  tokenByHash(hash: string): Promise<TokenRow | null>;
  listTokens(): Promise<TokenRow[]>;
  revokeToken(id: string): Promise<boolean>;
  countTokens(): Promise<number>;

  // enrollment tokens (stored as SHA-256 of the token)
  createEnrollToken(t: { id: string; hash: string; deviceId: string | null; preApproved: boolean; expiresAt: number; createdBy: string; now: number }): Promise<void>;
  enrollTokenByHash(hash: string): Promise<EnrollTokenRow | null>;
  /**
   * One-time use: atomically binds the token to `deviceId` (first use) and returns it; a token already bound
   * to the same device is returned again (enrollment retries while pending); a token that is unknown, expired
   * before its first use, revoked, or bound to another device gives null.
   */
  useEnrollToken(hash: string, deviceId: string, now: number): Promise<EnrollTokenRow | null>;
  listEnrollTokens(): Promise<EnrollTokenRow[]>;
  deleteEnrollToken(id: string): Promise<boolean>;

  // audit
  appendAudit(a: { ts: number; actor: string; action: string; target: string; details?: unknown }): Promise<void>;
  listAudit(limit: number): Promise<AuditRow[]>;
}
