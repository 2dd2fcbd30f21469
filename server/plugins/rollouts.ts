/** Rollout API: create, list, status, pause/resume/abort, members. */
import { z } from 'zod';
import { requireRole } from '../auth.js';
import { parse, type UzPlugin } from '../context.js';
import { RolloutCreateSchema } from '../rollouts.js';

const Id = z.object({ id: z.string().regex(/^ro-[0-9a-f]{12}$/, 'rollout id') });

export const rolloutsPlugin: UzPlugin = async (app, { ctx }) => {
  const s = ctx.storage;
  app.post('/api/v1/rollouts', { preHandler: requireRole(s, 'operator'), schema: { tags: ['rollouts'], summary: 'Create (and start) a rollout', body: z.toJSONSchema(RolloutCreateSchema) } }, async (req, reply) => {
    const b = parse(RolloutCreateSchema, req.body, 'rollout');
    const r = await ctx.rollouts.create(b, req.actor!);
    reply.status(201);
    return ctx.rollouts.status(r.id);
  });
  app.get('/api/v1/rollouts', { preHandler: requireRole(s, 'viewer'), schema: { tags: ['rollouts'], summary: 'All rollouts with per-stage progress' } }, async () => ({
    rollouts: await Promise.all((await s.listRollouts()).map((r) => ctx.rollouts.status(r.id))),
  }));
  app.get('/api/v1/rollouts/:id', { preHandler: requireRole(s, 'viewer'), schema: { tags: ['rollouts'], summary: 'Rollout status with per-stage progress' } }, async (req) => ctx.rollouts.status(parse(Id, req.params, 'params').id));
  app.get('/api/v1/rollouts/:id/devices', { preHandler: requireRole(s, 'viewer'), schema: { tags: ['rollouts'], summary: 'Rollout members (state, attempts, errors)' } }, async (req) => {
    const { id } = parse(Id, req.params, 'params');
    const q = parse(z.object({ state: z.enum(['pending', 'dispatched', 'succeeded', 'failed', 'skipped']).optional(), limit: z.coerce.number().int().min(1).max(100_000).default(1000) }), req.query, 'query');
    await ctx.rollouts.status(id);
    return { devices: await s.listMembers(id, q) };
  });
  for (const action of ['pause', 'resume', 'abort'] as const) {
    app.post(`/api/v1/rollouts/:id/${action}`, { preHandler: requireRole(s, 'operator'), schema: { tags: ['rollouts'], summary: `${action[0]!.toUpperCase()}${action.slice(1)} a rollout` } }, async (req) => {
      const { id } = parse(Id, req.params, 'params');
      await ctx.rollouts[action](id, req.actor!);
      return ctx.rollouts.status(id);
    });
  }
};
