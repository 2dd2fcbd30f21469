/** API tokens and the audit log. */
import { z } from 'zod';
import { createApiToken, requireRole } from '../auth.js';
import { parse, type UzPlugin } from '../context.js';
import { httpError } from '../errors.js';

const TokenCreate = z.strictObject({ name: z.string().min(1).max(64).regex(/^[A-Za-z0-9._@-]+$/), role: z.enum(['viewer', 'operator', 'admin']) });

export const authPlugin: UzPlugin = async (app, { ctx }) => {
  const s = ctx.storage;
  app.get('/api/v1/whoami', { preHandler: requireRole(s, 'viewer'), schema: { tags: ['auth'], summary: 'The calling token' } }, async (req) => ({ name: req.actor, role: req.role }));
  app.get('/api/v1/tokens', { preHandler: requireRole(s, 'admin'), schema: { tags: ['auth'], summary: 'List API tokens (never their secrets)' } }, async () => ({ tokens: await s.listTokens() }));
  app.post('/api/v1/tokens', { preHandler: requireRole(s, 'admin'), schema: { tags: ['auth'], summary: 'Create an API token (shown once)', body: z.toJSONSchema(TokenCreate) } }, async (req, reply) => {
    const b = parse(TokenCreate, req.body, 'token');
    const t = await createApiToken(s, b.name, b.role, ctx.now());
    await s.appendAudit({ ts: ctx.now(), actor: req.actor!, action: 'token.create', target: t.id, details: { name: b.name, role: b.role } });
    reply.status(201);
    return { id: t.id, name: b.name, role: b.role, token: t.token };
  });
  app.delete('/api/v1/tokens/:id', { preHandler: requireRole(s, 'admin'), schema: { tags: ['auth'], summary: 'Revoke an API token' } }, async (req) => {
    const { id } = parse(z.object({ id: z.string().max(64) }), req.params, 'params');
    if (!(await s.revokeToken(id))) throw httpError('NOT_FOUND', `no active token ${id}`);
    await s.appendAudit({ ts: ctx.now(), actor: req.actor!, action: 'token.revoke', target: id });
    return { ok: true };
  });
  app.get('/api/v1/audit', { preHandler: requireRole(s, 'viewer'), schema: { tags: ['auth'], summary: 'Audit log of operator actions (newest first)' } }, async (req) => {
    const { limit } = parse(z.object({ limit: z.coerce.number().int().min(1).max(1000).default(100) }), req.query, 'query');
    return { audit: await s.listAudit(limit) };
  });
};
