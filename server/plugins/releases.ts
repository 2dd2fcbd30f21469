/**
 * Releases and channels. POST /api/v1/releases takes the raw `.uzb` (application/octet-stream), streams it to
 * disk while hashing, then verifies it completely (header signatures against the fleet root.json, every payload
 * chunk) with firmware/bundle's verifier before it becomes an artifact.
 */
import { z } from 'zod';
import { isUzError } from '../../lib/errors.js';
import { verifyBundleFile } from '../../firmware/bundle/index.js';
import { loadTrustedRoot } from '../../firmware/trust/index.js';
import type { RootMetadata } from '../../firmware/trust/index.js';
import { requireRole } from '../auth.js';
import { parse, type UzPlugin } from '../context.js';
import { httpError } from '../errors.js';
import type { ReleaseRow } from '../storage/types.js';

const Channel = z.string().min(1).max(64).regex(/^[A-Za-z0-9._-]+$/);

export function releaseView(r: ReleaseRow): Omit<ReleaseRow, 'manifest'> & { chunks: number } {
  const { manifest, ...rest } = r;
  return { ...rest, chunks: ((manifest as { payload?: { chunkSha256?: unknown[] } }).payload?.chunkSha256 ?? []).length };
}

export const releasesPlugin: UzPlugin = async (app, { ctx }) => {
  const s = ctx.storage;
  // Encapsulated to this plugin: the body stays a stream (no buffering, no JSON parsing).
  app.addContentTypeParser(['application/octet-stream', 'application/vnd.uz.bundle'], (_req, payload, done) => done(null, payload));

  app.post('/api/v1/releases', {
    preHandler: requireRole(s, 'operator'),
    bodyLimit: ctx.config.maxBundleBytes,
    schema: { tags: ['releases'], summary: 'Upload a signed .uzb bundle (raw body, application/octet-stream); ?channel= also points that channel at it', querystring: { type: 'object', properties: { channel: { type: 'string' } } } },
  }, async (req, reply) => {
    const q = parse(z.object({ channel: Channel.optional() }), req.query, 'query');
    if (!req.body || typeof (req.body as NodeJS.ReadableStream).pipe !== 'function') throw httpError('BAD_REQUEST', 'send the bundle as the raw body with Content-Type: application/octet-stream');
    let root: RootMetadata;
    try {
      root = await loadTrustedRoot(ctx.trustRootPath);
    } catch (e) {
      throw httpError('NO_TRUST_ROOT', `cannot load the fleet root of trust ${ctx.trustRootPath}: ${(e as Error).message}`);
    }
    const staged = await ctx.artifacts.stage(req.body as NodeJS.ReadableStream as import('node:stream').Readable, ctx.config.maxBundleBytes);
    let committed = false;
    try {
      let verdict;
      try {
        verdict = await verifyBundleFile(staged.tmpPath, { root, now: new Date(ctx.now()) });
      } catch (e) {
        const code = isUzError(e) ? e.code : 'MALFORMED';
        ctx.metrics.releasesRejected.inc({ code });
        await s.appendAudit({ ts: ctx.now(), actor: req.actor!, action: 'release.reject', target: staged.sha256, details: { code, message: (e as Error).message } });
        throw httpError('RELEASE_INVALID', `bundle rejected: ${code}: ${(e as Error).message}`, { reason: code });
      }
      const m = verdict.manifest;
      const same = await s.getReleaseBySha(staged.sha256);
      let release: ReleaseRow;
      if (same) {
        release = same;
        reply.status(200);
      } else {
        const clash = await s.findRelease(m.board.id, m.version);
        if (clash) throw httpError('RELEASE_EXISTS', `release ${clash.id} (board ${m.board.id}, version ${m.version}) already exists with different content`);
        await ctx.artifacts.commit(staged.tmpPath, staged.sha256);
        committed = true;
        release = {
          id: `${m.board.id}_${m.version}`, sha256: staged.sha256, size: staged.size, board: m.board.id, version: m.version, rollbackCounter: m.rollbackCounter,
          workload: m.workload, manifest: m, signedBy: verdict.signedBy, createdAt: ctx.now(), yanked: false, yankedReason: null,
        };
        await s.insertRelease(release);
        ctx.metrics.releasesPublished.inc();
        await s.appendAudit({ ts: ctx.now(), actor: req.actor!, action: 'release.publish', target: release.id, details: { sha256: release.sha256, size: release.size } });
        reply.status(201);
      }
      if (q.channel) {
        if (release.yanked) throw httpError('RELEASE_YANKED', `release ${release.id} is yanked`);
        await s.setChannel(q.channel, release.id, ctx.now());
        await s.appendAudit({ ts: ctx.now(), actor: req.actor!, action: 'channel.set', target: q.channel, details: { releaseId: release.id } });
      }
      return { release: releaseView(release), existing: !!same, channel: q.channel ?? null };
    } finally {
      if (!committed) await ctx.artifacts.discard(staged.tmpPath);
    }
  });

  app.get('/api/v1/releases', { preHandler: requireRole(s, 'viewer'), schema: { tags: ['releases'], summary: 'List releases (newest first)' } }, async () => ({
    releases: (await s.listReleases()).map(releaseView),
    channels: await s.listChannels(),
  }));
  app.get('/api/v1/releases/:id', { preHandler: requireRole(s, 'viewer'), schema: { tags: ['releases'], summary: 'One release with its signed manifest' } }, async (req) => {
    const { id } = parse(z.object({ id: z.string().max(200) }), req.params, 'params');
    const r = await s.getRelease(id);
    if (!r) throw httpError('NOT_FOUND', `no release ${id}`);
    return { release: r };
  });
  app.post('/api/v1/releases/:id/yank', { preHandler: requireRole(s, 'operator'), schema: { tags: ['releases'], summary: 'Yank a release: no new rollouts; channels pointing at it are cleared' } }, async (req) => {
    const { id } = parse(z.object({ id: z.string().max(200) }), req.params, 'params');
    const b = parse(z.object({ reason: z.string().max(500).default('yanked') }).default({ reason: 'yanked' }), req.body ?? undefined, 'body');
    if (!(await s.yankRelease(id, b.reason))) throw httpError('NOT_FOUND', `no release ${id}`);
    for (const ch of await s.listChannels()) if (ch.releaseId === id) await s.setChannel(ch.name, null, ctx.now());
    await s.appendAudit({ ts: ctx.now(), actor: req.actor!, action: 'release.yank', target: id, details: b });
    return { release: releaseView((await s.getRelease(id))!) };
  });

  app.get('/api/v1/channels', { preHandler: requireRole(s, 'viewer'), schema: { tags: ['releases'], summary: 'Channels and their current release' } }, async () => ({ channels: await s.listChannels() }));
  app.put('/api/v1/channels/:name', { preHandler: requireRole(s, 'operator'), schema: { tags: ['releases'], summary: 'Point a channel at a release (or null)' } }, async (req) => {
    const { name } = parse(z.object({ name: Channel }), req.params, 'params');
    const b = parse(z.strictObject({ releaseId: z.string().max(200).nullable() }), req.body, 'body');
    if (b.releaseId) {
      const r = await s.getRelease(b.releaseId);
      if (!r) throw httpError('NOT_FOUND', `no release ${b.releaseId}`);
      if (r.yanked) throw httpError('RELEASE_YANKED', `release ${b.releaseId} is yanked`);
    }
    await s.setChannel(name, b.releaseId, ctx.now());
    await s.appendAudit({ ts: ctx.now(), actor: req.actor!, action: 'channel.set', target: name, details: b });
    return { channel: await s.getChannel(name) };
  });
};
