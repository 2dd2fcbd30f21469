/**
 * GET/HEAD /artifacts/{sha256}: Range (one range; resume), strong ETag = sha256, exact Content-Length,
 * streamed from disk. Authorised by (1) a signed short-lived URL (`?d=<device>&e=<unix>&s=<hmac>`, what desired
 * state carries), (2) device credentials (HTTP Basic deviceId:secret), or (3) an API token (viewer+).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { bearer, tokenHash } from '../auth.js';
import { SHA256_RE, parseRange } from '../artifacts.js';
import { parse, type ServerContext, type UzPlugin } from '../context.js';
import { httpError } from '../errors.js';

async function authorise(ctx: ServerContext, req: FastifyRequest, sha256: string): Promise<string> {
  const q = req.query as Record<string, unknown>;
  if (q.s !== undefined) {
    const why = ctx.signer.check(sha256, q, Math.floor(ctx.now() / 1000));
    if (why) throw httpError('UNAUTHORIZED', why);
    return `device:${String(q.d)}`;
  }
  const h = req.headers.authorization;
  if (typeof h === 'string' && h.startsWith('Basic ')) {
    const [user, ...rest] = Buffer.from(h.slice(6), 'base64').toString('utf8').split(':');
    if (user && (await ctx.deviceAuth.check(user, rest.join(':')).catch(() => false))) return `device:${user}`;
    throw httpError('UNAUTHORIZED', 'bad device credentials');
  }
  const tok = bearer(req);
  if (tok && (await ctx.storage.tokenByHash(tokenHash(tok)))) return 'operator';
  throw httpError('UNAUTHORIZED', 'artifact downloads need a signed URL, device credentials or an API token');
}

export const artifactsPlugin: UzPlugin = async (app, { ctx }) => {
  const handler = async (req: FastifyRequest, reply: FastifyReply) => {
    const { sha256 } = parse(z.object({ sha256: z.string().regex(SHA256_RE, 'sha256 hex') }), req.params, 'params');
    await authorise(ctx, req, sha256);
    const size = await ctx.artifacts.size(sha256);
    if (size === null) throw httpError('NOT_FOUND', `no artifact ${sha256}`);
    const etag = `"${sha256}"`;
    reply.header('accept-ranges', 'bytes').header('etag', etag).header('cache-control', 'private, max-age=31536000, immutable').header('content-type', 'application/octet-stream');
    if (req.headers['if-none-match'] === etag) return reply.status(304).send();
    const ifRange = req.headers['if-range'];
    const range = ifRange !== undefined && ifRange !== etag ? { kind: 'full' as const } : parseRange(req.headers.range, size);
    if (range.kind === 'unsatisfiable') {
      reply.header('content-range', `bytes */${size}`);
      throw httpError('RANGE_NOT_SATISFIABLE', `range ${req.headers.range} outside 0..${size - 1}`);
    }
    const [start, end] = range.kind === 'partial' ? [range.start, range.end] : [0, size - 1];
    const len = size === 0 ? 0 : end - start + 1;
    reply.header('content-length', String(len));
    if (range.kind === 'partial') reply.status(206).header('content-range', `bytes ${start}-${end}/${size}`);
    if (req.method === 'HEAD') {
      // keep the real Content-Length (fastify would set 0 for an empty body)
      reply.hijack();
      reply.raw.writeHead(reply.statusCode, reply.getHeaders() as import('node:http').OutgoingHttpHeaders);
      reply.raw.end();
      return reply;
    }
    if (len === 0) return reply.send(Buffer.alloc(0));
    const stream = ctx.artifacts.stream(sha256, start, end);
    stream.on('data', (c: Buffer) => ctx.metrics.bytesServed.inc({ via: 'http' }, c.length));
    return reply.send(stream);
  };
  const schema = { tags: ['artifacts'], summary: 'Download a bundle by sha256 (Range, ETag); signed URL, device Basic auth or API token' };
  app.get('/artifacts/:sha256', { schema }, handler); // fastify answers HEAD from the GET route (exposeHeadRoutes)
};
