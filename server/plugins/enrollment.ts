/**
 * Certificate enrollment (server/enrollment.ts): enrollment tokens, approve / reject / revoke, and HTTP
 * enrollment (POST /api/v1/enroll, for fleets whose broker is external so that devices without a certificate
 * cannot reach the server over MQTT).
 */
import { z } from 'zod';
import { DeviceId } from '../../lib/protocol.js';
import { requireRole } from '../auth.js';
import { parse, type UzPlugin } from '../context.js';
import { httpError } from '../errors.js';

const TokenCreate = z.strictObject({
  /** Only this device may use the token (default: the first device that uses it). */
  deviceId: DeviceId.optional(),
  ttlSec: z.number().int().positive().max(365 * 86_400).optional(),
  /** The device is approved as soon as it enrolls (no operator step). */
  preApproved: z.boolean().optional(),
});
const Enroll = z.strictObject({ deviceId: DeviceId, token: z.string().min(16).max(256), csrPem: z.string().max(8192) });
const Revoke = z.strictObject({ reason: z.enum(['keyCompromise', 'privilegeWithdrawn', 'cessationOfOperation']).optional() });

export const enrollmentPlugin: UzPlugin = async (app, { ctx }) => {
  const s = ctx.storage;
  const e = ctx.enrollment;
  app.post('/api/v1/enrollment-tokens', { preHandler: requireRole(s, 'operator'), schema: { tags: ['enrollment'], summary: 'Create a one-time enrollment token (shown once)', body: z.toJSONSchema(TokenCreate) } }, async (req, reply) => {
    const b = parse(TokenCreate, req.body ?? {}, 'token');
    const t = await e.createToken({ ...b, actor: req.actor! });
    reply.status(201);
    return t;
  });
  app.get('/api/v1/enrollment-tokens', { preHandler: requireRole(s, 'operator'), schema: { tags: ['enrollment'], summary: 'Enrollment tokens (never the tokens themselves)' } }, async () => ({
    tokens: await s.listEnrollTokens(),
  }));
  app.delete('/api/v1/enrollment-tokens/:id', { preHandler: requireRole(s, 'operator'), schema: { tags: ['enrollment'], summary: 'Delete an enrollment token' } }, async (req) => {
    const { id } = parse(z.object({ id: z.string().max(64) }), req.params, 'params');
    if (!(await s.deleteEnrollToken(id))) throw httpError('NOT_FOUND', `no enrollment token ${id}`);
    await s.appendAudit({ ts: ctx.now(), actor: req.actor!, action: 'enroll-token.delete', target: id });
    return { ok: true };
  });
  for (const action of ['approve', 'reject', 'revoke'] as const) {
    app.post(`/api/v1/devices/:id/${action}`, { preHandler: requireRole(s, 'operator'), schema: { tags: ['enrollment'], summary: `${action[0]!.toUpperCase()}${action.slice(1)} a device's certificate enrollment${action === 'approve' ? ' (pre-approves an id that has not enrolled yet)' : action === 'revoke' ? ' (CRL updated; refused at the broker)' : ''}` } }, async (req) => {
      const { id } = parse(z.object({ id: DeviceId }), req.params, 'params');
      if (action === 'approve') return { device: await e.approve(id, req.actor!) };
      if (action === 'reject') return { device: await e.reject(id, req.actor!) };
      const b = parse(Revoke, req.body ?? {}, 'revoke');
      return e.revoke(id, req.actor!, b.reason);
    });
  }
  app.post('/api/v1/enroll', { schema: { tags: ['enrollment'], summary: 'Enroll a device over HTTPS: {deviceId, token, csrPem} → {certPem, caPem} (same rules as the MQTT enroll request)', body: z.toJSONSchema(Enroll) } }, async (req, reply) => {
    const b = parse(Enroll, req.body, 'enroll');
    const r = await e.enroll(b.deviceId, b.token, b.csrPem);
    if (r.ok) return { certPem: r.certPem, caPem: r.caPem };
    const status = r.code === 'ENROLL_PENDING' ? 202 : r.code === 'ENROLL_TOKEN_INVALID' ? 401 : r.code === 'ENROLL_REJECTED' ? 403 : r.code === 'NOT_SUPPORTED' ? 409 : r.code === 'ENROLL_CSR_INVALID' ? 400 : 500;
    reply.status(status);
    return { error: { code: r.code, message: r.message } };
  });
};
