import { createServer, request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import type { HealthCheck } from '../../firmware/apps/schema.js';

export interface HealthResult {
  ok: boolean;
  detail: string;
  /** For JSON-RPC sync checks (znnd): the node's current height, when it reports one. */
  height?: number;
}

/**
 * One HTTP exchange on node:http (not fetch): fetch is undici, whose JavaScript and WebAssembly parser Node
 * loads and compiles on first use — seconds on a slow core, on the path to UZ-READY at every boot.
 */
function exchange(url: string, o: { method: 'GET' | 'POST'; body?: string; timeoutMs: number }): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const send = u.protocol === 'https:' ? httpsRequest : httpRequest;
    const headers: Record<string, string | number> = o.body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(o.body) };
    const req = send(u, { method: o.method, headers, timeout: o.timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        // A health answer is small; a workload streaming megabytes at the probe gets cut off, not buffered.
        if (size > 1 << 20) req.destroy(new Error('health answer larger than 1 MiB'));
        else chunks.push(c);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${o.timeoutMs} ms`)));
    req.on('error', reject);
    req.end(o.body);
  });
}

/** One health probe with a hard timeout; never throws. */
export async function probeHealth(check: HealthCheck, timeoutMs = 5000): Promise<HealthResult> {
  try {
    switch (check.type) {
      case 'http': {
        const res = await exchange(check.url, { method: 'GET', timeoutMs });
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
        const res = await exchange(check.url, {
          method: 'POST',
          body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: check.method, params: check.params }),
          timeoutMs,
        });
        const body = JSON.parse(res.body) as { result?: unknown; error?: { message?: string } };
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

/**
 * One HTTP exchange with a throw-away server on loopback, so Node compiles its HTTP client and response
 * parser (lazily compiled on first use: ~0.2 s on the emulated board) while the agent waits for the workload
 * to start, not in the first successful probe on the way to UZ-READY. Never throws.
 */
export async function warmUpHttp(): Promise<void> {
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end('{"jsonrpc":"2.0","id":1,"result":{}}'));
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const { port } = server.address() as { port: number };
    await probeHealth({ type: 'jsonrpc', url: `http://127.0.0.1:${port}`, method: 'warm.up', params: [] }, 2000);
  } catch {
    /* only an optimisation */
  } finally {
    server.close();
  }
}

/** Where the workload's lines are announced (the Supervisor's 'output' event). */
export interface WorkloadOutput {
  on(event: 'output', listener: () => void): unknown;
  off(event: 'output', listener: () => void): unknown;
}

/** How often the workload's health is probed until it first passes. */
export const STARTUP_PROBE_INTERVAL_MS = 250;

/**
 * Resolves after `intervalMs`, or as soon as the workload writes a line: servers usually log when they start
 * listening, so the next probe goes out then instead of up to an interval later (~125 ms on average, on every
 * boot and every update trial). Never sooner than `minGapMs` after the previous probe, so a chatty workload
 * does not turn start-up into a probe loop.
 */
export function untilProbeDue(sup: WorkloadOutput, intervalMs: number, minGapMs = 100): Promise<void> {
  return new Promise((resolve) => {
    const since = Date.now();
    const done = () => {
      clearTimeout(timer);
      sup.off('output', hint);
      resolve();
    };
    const hint = () => {
      sup.off('output', hint);
      clearTimeout(timer);
      timer = setTimeout(done, Math.max(0, minGapMs - (Date.now() - since)));
    };
    let timer = setTimeout(done, intervalMs);
    sup.on('output', hint);
  });
}
