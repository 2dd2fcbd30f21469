/**
 * Operator API tokens (roles viewer < operator < admin), device credentials (dev mode: MQTT username = device
 * id, password = per-device secret, stored as a salted scrypt hash) and signed short-lived artifact URLs.
 */
import { createHash, createHmac, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { httpError } from './errors.js';
import type { Role, Storage } from './storage/types.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Who is calling: token name for operators, `device:<id>` for devices. */
    actor?: string;
    role?: Role;
  }
}

const RANK: Record<Role, number> = { viewer: 1, operator: 2, admin: 3 };
export const TOKEN_PREFIX = 'uzt_';

export function tokenHash(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** A new random token `uzt_<id>_<secret>` (the secret part is 256 bits). Only its hash is stored. */
export function newToken(): { id: string; token: string } {
  const id = randomBytes(4).toString('hex');
  return { id, token: `${TOKEN_PREFIX}${id}_${randomBytes(32).toString('base64url')}` };
}

export async function createApiToken(s: Storage, name: string, role: Role, now: number): Promise<{ id: string; token: string }> {
  const t = newToken();
  await s.createToken({ id: t.id, name, role, hash: tokenHash(t.token), now });
  return t;
}

// Device secrets are server-generated 256-bit values (or ≥ 16 chars in dev TOFU mode), so a moderate scrypt
// cost suffices; it runs on the libuv pool (never blocks the event loop) and reconnect storms hit the cache.
const SCRYPT = { N: 1 << 12, r: 8, p: 1, maxmem: 64 * 1024 * 1024 };
const scryptAsync = promisify(scrypt) as (pw: string, salt: Buffer, len: number, o: typeof SCRYPT) => Promise<Buffer>;

export async function hashSecret(secret: string): Promise<string> {
  const salt = randomBytes(16);
  const h = await scryptAsync(secret, salt, 32, SCRYPT);
  return `scrypt$${SCRYPT.N}$${salt.toString('base64url')}$${h.toString('base64url')}`;
}

export async function verifySecret(secret: string, stored: string): Promise<boolean> {
  const [alg, n, salt, hash] = stored.split('$');
  if (alg !== 'scrypt' || !n || !salt || !hash || !/^\d+$/.test(n) || Number(n) > 1 << 20) return false;
  const want = Buffer.from(hash, 'base64url');
  const got = await scryptAsync(secret, Buffer.from(salt, 'base64url'), want.length, { ...SCRYPT, N: Number(n) });
  return got.length === want.length && timingSafeEqual(got, want);
}

/** Device authentication with a small cache of (id, sha256(password)) that already verified. */
export class DeviceAuth {
  private readonly ok = new Map<string, string>();
  constructor(private readonly s: Storage, private readonly autoRegister: boolean, private readonly now: () => number) {}

  async check(deviceId: string, password: string | undefined): Promise<boolean> {
    if (!password || password.length < 16 || password.length > 256) return false;
    const quick = createHash('sha256').update(password).digest('hex');
    if (this.ok.get(deviceId) === quick) return true;
    const stored = await this.s.deviceSecretHash(deviceId);
    if (stored === undefined) {
      if (!this.autoRegister) return false;
      const created = await this.s.registerDevice({ id: deviceId, secretHash: await hashSecret(password), now: this.now() });
      if (!created) return this.check(deviceId, password); // raced with another connect
      this.ok.set(deviceId, quick);
      return true;
    }
    if (stored === null || !(await verifySecret(password, stored))) return false;
    if (this.ok.size > 100_000) this.ok.clear();
    this.ok.set(deviceId, quick);
    return true;
  }

  forget(deviceId: string): void {
    this.ok.delete(deviceId);
  }
}

export function bearer(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  if (typeof h === 'string' && h.startsWith('Bearer ')) return h.slice(7).trim();
  return undefined;
}

/** Route preHandler: requires a valid operator token of at least `role`. */
export function requireRole(s: Storage, role: Role) {
  return async (req: FastifyRequest, _reply: FastifyReply): Promise<void> => {
    const tok = bearer(req);
    if (!tok) throw httpError('UNAUTHORIZED', 'missing API token (Authorization: Bearer uzt_…)');
    const row = await s.tokenByHash(tokenHash(tok));
    if (!row) throw httpError('UNAUTHORIZED', 'unknown or revoked API token');
    if (RANK[row.role] < RANK[role]) throw httpError('FORBIDDEN', `role ${row.role} cannot do this (needs ${role})`);
    req.actor = row.name;
    req.role = row.role;
  };
}

/** HMAC-signed artifact URL parameters: valid for one artifact, one device, until `exp` (unix seconds). */
export class UrlSigner {
  constructor(private readonly key: Buffer) {}

  private mac(sha256: string, deviceId: string, exp: number): string {
    return createHmac('sha256', this.key).update(`${sha256}\n${deviceId}\n${exp}`).digest('base64url');
  }

  sign(sha256: string, deviceId: string, exp: number): string {
    return `d=${encodeURIComponent(deviceId)}&e=${exp}&s=${this.mac(sha256, deviceId, exp)}`;
  }

  /** null if valid, else the reason. */
  check(sha256: string, q: { d?: unknown; e?: unknown; s?: unknown }, nowSec: number): string | null {
    if (typeof q.d !== 'string' || typeof q.e !== 'string' || typeof q.s !== 'string') return 'no signature';
    const exp = Number(q.e);
    if (!Number.isInteger(exp)) return 'bad expiry';
    if (exp < nowSec) return 'signed URL expired';
    const want = Buffer.from(this.mac(sha256, q.d, exp));
    const got = Buffer.from(q.s);
    if (want.length !== got.length || !timingSafeEqual(want, got)) return 'bad signature';
    return null;
  }
}
