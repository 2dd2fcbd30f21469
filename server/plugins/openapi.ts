/** OpenAPI 3 document generated from the route schemas (@fastify/swagger), at /api/v1/openapi.json. */
import swagger from '@fastify/swagger';
import type { FastifyInstance } from 'fastify';

/** Must be registered before the routes (it collects them through onRoute). */
export async function registerOpenapi(app: FastifyInstance): Promise<void> {
  await app.register(swagger, {
    openapi: {
      info: { title: 'unikernel-z update server', version: '1.0.0', description: 'Fleet, releases, rollouts and artifacts. Errors: {"error":{"code","message"}} (codes in docs/server.md).' },
      components: { securitySchemes: { token: { type: 'http', scheme: 'bearer', description: 'uzt_… API token' } } },
      security: [{ token: [] }],
    },
  });
}

export async function openapiRoutes(app: FastifyInstance): Promise<void> {
  app.get('/api/v1/openapi.json', { schema: { hide: true } }, async () => app.swagger());
}
