/** Prometheus exposition at /metrics (unauthenticated, like most exporters; bind it to a private interface). */
import type { UzPlugin } from '../context.js';

export const metricsPlugin: UzPlugin = async (app, { ctx }) => {
  app.get('/metrics', { schema: { tags: ['server'], summary: 'Prometheus metrics' } }, async (_req, reply) => {
    reply.header('content-type', ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
};
