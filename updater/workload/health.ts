import { connect } from 'node:net';
import type { HealthCheck } from '../../firmware/apps/schema.js';

export interface HealthResult {
  ok: boolean;
  detail: string;
  /** For JSON-RPC sync checks (znnd): the node's current height, when it reports one. */
  height?: number;
}

/** One health probe with a hard timeout; never throws. */
export async function probeHealth(check: HealthCheck, timeoutMs = 5000): Promise<HealthResult> {
  try {
    switch (check.type) {
      case 'http': {
        const res = await fetch(check.url, { signal: AbortSignal.timeout(timeoutMs) });
        await res.arrayBuffer();
        return { ok: res.status === check.expectStatus, detail: `http ${res.status}` };
      }
      case 'tcp':
        return await new Promise<HealthResult>((resolve) => {
          const sock = connect({ host: check.host, port: check.port });
          const timer = setTimeout(() => {
            sock.destroy();
            resolve({ ok: false, detail: 'tcp timeout' });
          }, timeoutMs);
          sock.once('connect', () => {
            clearTimeout(timer);
            sock.end();
            resolve({ ok: true, detail: 'tcp connected' });
          });
          sock.once('error', (e) => {
            clearTimeout(timer);
            resolve({ ok: false, detail: `tcp ${(e as NodeJS.ErrnoException).code ?? e.message}` });
          });
        });
      case 'jsonrpc': {
        const res = await fetch(check.url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: check.method, params: check.params }),
          signal: AbortSignal.timeout(timeoutMs),
        });
        const body = (await res.json()) as { result?: unknown; error?: { message?: string } };
        if (body.error || body.result === undefined) {
          return { ok: false, detail: `jsonrpc error: ${body.error?.message ?? 'no result'}` };
        }
        const r = body.result as { currentHeight?: unknown; height?: unknown };
        const h = typeof r?.currentHeight === 'number' ? r.currentHeight : typeof r?.height === 'number' ? r.height : undefined;
        return { ok: true, detail: 'jsonrpc ok', ...(h !== undefined ? { height: h } : {}) };
      }
    }
  } catch (e) {
    return { ok: false, detail: (e as Error).message };
  }
}
