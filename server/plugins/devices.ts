/** Device inventory: list, detail with history, registration (returns the secret once), channel/tags. */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { DeviceId } from '../../lib/protocol.js';
import { hashSecret, requireRole } from '../auth.js';
import { parse, type UzPlugin } from '../context.js';
import { httpError } from '../errors.js';

const Name = z.string().min(1).max(64).regex(/^[A-Za-z0-9._-]+$/);
const Register = z.strictObject({ id: DeviceId, channel: Name.optional(), tags: z.array(Name).max(32).optional() });
const Patch = z.strictObject({ channel: Name.optional(), tags: z.array(Name).max(32).optional() });

export const devicesPlugin: UzPlugin = async (app, { ctx }) => {
  const s = ctx.storage;
  const ListQuery = z.object({
    channel: Name.optional(),
    tag: Name.optional(),
    enrollment: z.enum(['none', 'pending', 'approved', 'rejected', 'revoked']).optional(),
    /** Case-insensitive substring of "<id> <version> <state>". */
    q: z.string().min(1).max(64).optional(),
    /** Page size; without it every matching device is returned. */
    limit: z.coerce.number().int().min(1).max(10_000).optional(),
    /** Keyset cursor: the `next` of the previous page (devices are ordered by id). */
    after: z.string().max(64).optional(),
  });
  app.get('/api/v1/devices', { preHandler: requireRole(s, 'viewer'), schema: { tags: ['devices'], summary: 'List devices (filter by channel, tag or enrollment state; paginate with limit + after)', querystring: z.toJSONSchema(ListQuery) } }, async (req) => {
    const { q: search, ...q } = parse(ListQuery, req.query, 'query');
    const devices = await s.listDevices({ ...q, ...(search !== undefined ? { search } : {}) });
    return { devices, next: q.limit !== undefined && devices.length === q.limit ? devices[devices.length - 1]!.id : null };
  });
  const SummaryQuery = z.object({ channel: Name.optional(), tag: Name.optional() });
  app.get('/api/v1/fleet/summary', { preHandler: requireRole(s, 'viewer'), schema: { tags: ['devices'], summary: 'Fleet aggregates: devices, online, reporting, by version and state, unhealthy, with errors', querystring: z.toJSONSchema(SummaryQuery) } }, async (req) => ({
    summary: await s.deviceSummary(parse(SummaryQuery, req.query, 'query')),
  }));
  app.get('/api/v1/devices/:id', { preHandler: requireRole(s, 'viewer'), schema: { tags: ['devices'], summary: 'One device with its update history and rollouts' } }, async (req) => {
    const { id } = parse(z.object({ id: DeviceId }), req.params, 'params');
    const d = await s.getDevice(id);
    if (!d) throw httpError('NOT_FOUND', `no device ${id}`);
    return { device: d, history: await s.listDeviceEvents(id, 100), active: await s.activeMemberships(id) };
  });
  app.post('/api/v1/devices', { preHandler: requireRole(s, 'admin'), schema: { tags: ['devices'], summary: 'Register a device; returns its MQTT password once', body: z.toJSONSchema(Register) } }, async (req, reply) => {
    const b = parse(Register, req.body, 'device');
    const secret = randomBytes(32).toString('base64url');
    if (!(await s.registerDevice({ id: b.id, secretHash: await hashSecret(secret), channel: b.channel, tags: b.tags, now: ctx.now() }))) throw httpError('DEVICE_EXISTS', `device ${b.id} already exists`);
    await s.appendAudit({ ts: ctx.now(), actor: req.actor!, action: 'device.register', target: b.id, details: { channel: b.channel, tags: b.tags } });
    reply.status(201);
    return { id: b.id, username: b.id, password: secret };
  });
  app.patch('/api/v1/devices/:id', { preHandler: requireRole(s, 'operator'), schema: { tags: ['devices'], summary: 'Set channel and/or tags', body: z.toJSONSchema(Patch) } }, async (req) => {
    const { id } = parse(z.object({ id: DeviceId }), req.params, 'params');
    const b = parse(Patch, req.body, 'patch');
    if (!(await s.updateDeviceMeta(id, b))) throw httpError('NOT_FOUND', `no device ${id}`);
    await s.appendAudit({ ts: ctx.now(), actor: req.actor!, action: 'device.update', target: id, details: b });
    return { device: await s.getDevice(id) };
  });
};
