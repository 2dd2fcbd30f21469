/** The dashboard: static HTML + one small script, served from server/dashboard/ (no build step). */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { UzPlugin } from '../context.js';

const dir = fileURLToPath(new URL('../dashboard/', import.meta.url));
const FILES: Record<string, string> = { 'index.html': 'text/html; charset=utf-8', 'app.js': 'text/javascript; charset=utf-8', 'style.css': 'text/css; charset=utf-8' };

export const dashboardPlugin: UzPlugin = async (app) => {
  const send = (name: string) => async (_req: unknown, reply: import('fastify').FastifyReply) => {
    reply.header('content-type', FILES[name]!).header('cache-control', 'no-cache')
      .header('content-security-policy', "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'");
    return readFile(dir + name);
  };
  app.get('/', { schema: { hide: true } }, send('index.html'));
  app.get('/dashboard/app.js', { schema: { hide: true } }, send('app.js'));
  app.get('/dashboard/style.css', { schema: { hide: true } }, send('style.css'));
};
