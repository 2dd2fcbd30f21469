/**
 * GET /tuf/<N>.root.json, /tuf/timestamp.json, /tuf/snapshot.json, /tuf/targets.json — public, unauthenticated
 * (metadata is signed; devices and any TUF client such as tuf-js verify it). Enabled by config `tuf`.
 * 404 for a root version that does not exist tells clients the chain ends there (TUF 5.3.3).
 */
import { join, resolve } from 'node:path';
import { loadPrivateKey } from '../../firmware/trust/io.js';
import type { UzPlugin } from '../context.js';
import { httpError } from '../errors.js';
import { ROOT_FILE, TufRepo } from './repo.js';

export const tufPlugin: UzPlugin = async (app, { ctx }) => {
  const c = ctx.config.tuf;
  if (!c) return;
  const key = await loadPrivateKey(resolve(c.timestampKey));
  const repo = await TufRepo.open({
    dir: resolve(c.dir),
    timestampKey: key,
    intervalSec: c.timestampIntervalSec,
    ttlSec: c.timestampTtlSec,
    stateFile: join(ctx.config.dataDir, 'tuf', 'timestamp.json'),
    now: ctx.now,
    log: ctx.log,
  });
  // Re-sign on schedule even when nobody asks (requests also re-sign lazily when due).
  const timer = setInterval(() => void repo.refresh().catch((e: unknown) => ctx.log.error({ err: (e as Error).message }, 'tuf timestamp re-signing failed')), Math.min(c.timestampIntervalSec, 60) * 1000);
  timer.unref();
  app.addHook('onClose', async () => clearInterval(timer));

  app.get('/tuf/:name', { schema: { tags: ['tuf'], summary: 'TUF repository metadata: N.root.json, timestamp.json, snapshot.json, targets.json' } }, async (req, reply) => {
    const { name } = req.params as { name: string };
    let body: Buffer | null = null;
    const m = ROOT_FILE.exec(name);
    if (m) body = await repo.root(Number(m[1]));
    else if (name === 'timestamp.json') body = await repo.timestamp();
    else if (name === 'snapshot.json' || name === 'targets.json') body = await repo.file(name);
    if (!body) throw httpError('NOT_FOUND', `no TUF metadata ${name}`);
    reply.header('content-type', 'application/json').header('cache-control', name === 'timestamp.json' ? 'no-store' : 'no-cache');
    return reply.send(body);
  });
};

