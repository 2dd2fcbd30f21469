import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { EventEmitter } from 'node:events';
import { probeHealth } from '../../updater/workload/health.js';

// The workload health probe against a real loopback HTTP server playing a workload in various moods.
let server: Server;
let base = '';
beforeAll(async () => {
  server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      if (req.url === '/hang') return; // never answers
      if (req.url === '/status/503') return res.writeHead(503).end('busy');
      if (req.url === '/ok') return res.writeHead(200).end('fine');
      if (req.url === '/garbage') return res.writeHead(200).end('<html>not json');
      const msg = JSON.parse(body || '{}');
      res.writeHead(200, { 'content-type': 'application/json' });
      if (msg.method === 'stats.syncInfo') res.end(JSON.stringify({ jsonrpc: '2.0', id: msg.id, result: { currentHeight: 42, targetHeight: 50 } }));
      else res.end(JSON.stringify({ jsonrpc: '2.0', id: msg.id, error: { code: -32601, message: `method not found: ${msg.method}` } }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => {
  server.closeAllConnections();
  server.close();
});

describe('probeHealth', () => {
  it('http: compares the status with the expected one', async () => {
    expect(await probeHealth({ type: 'http', url: `${base}/ok`, expectStatus: 200 })).toEqual({ ok: true, detail: 'http 200' });
    expect(await probeHealth({ type: 'http', url: `${base}/status/503`, expectStatus: 200 })).toEqual({ ok: false, detail: 'http 503' });
  });

  it('jsonrpc: healthy with the sync height, unhealthy on an RPC error or a non-JSON answer', async () => {
    expect(await probeHealth({ type: 'jsonrpc', url: base, method: 'stats.syncInfo', params: [] })).toEqual({ ok: true, detail: 'jsonrpc ok', height: 42 });
    const err = await probeHealth({ type: 'jsonrpc', url: base, method: 'nope', params: [] });
    expect(err).toEqual({ ok: false, detail: 'jsonrpc error: method not found: nope' });
    const garbage = await probeHealth({ type: 'jsonrpc', url: `${base}/garbage`, method: 'stats.syncInfo', params: [] });
    expect(garbage.ok).toBe(false);
  });

  it('gives up after its timeout and reports refused connections, never throwing', async () => {
    const t0 = Date.now();
    const hung = await probeHealth({ type: 'http', url: `${base}/hang`, expectStatus: 200 }, 300);
    expect(hung).toEqual({ ok: false, detail: 'no answer within 300 ms' });
    expect(Date.now() - t0).toBeLessThan(5000);
    const closed = `http://127.0.0.1:1`;
    expect((await probeHealth({ type: 'jsonrpc', url: closed, method: 'stats.syncInfo', params: [] })).ok).toBe(false);
    expect(await probeHealth({ type: 'tcp', host: '127.0.0.1', port: 1 })).toEqual({ ok: false, detail: 'tcp ECONNREFUSED' });
    expect(await probeHealth({ type: 'tcp', host: '127.0.0.1', port: Number(new URL(base).port) })).toEqual({ ok: true, detail: 'tcp connected' });
  });
});

describe('warmUpHttp', () => {
  it('closes its loopback server and socket: nothing is left listening or pending', async () => {
    const { warmUpHttp } = await import('../../updater/workload/health.js');
    const before = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().length;
    await warmUpHttp();
    await new Promise((r) => setTimeout(r, 50));
    expect((process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().length).toBeLessThanOrEqual(before);
  });
});

describe('untilProbeDue (the start-up probe pacing)', () => {
  const pace = async (emitAtMs: number[]): Promise<{ resolvedAtMs: number; listeners: number }> => {
    vi.useFakeTimers();
    try {
      const { untilProbeDue } = await import('../../updater/workload/health.js');
      const sup = new EventEmitter();
      let resolvedAtMs = -1;
      const t0 = Date.now();
      void untilProbeDue(sup, 250, 100).then(() => (resolvedAtMs = Date.now() - t0));
      let at = 0;
      for (const ms of emitAtMs) {
        await vi.advanceTimersByTimeAsync(ms - at);
        at = ms;
        sup.emit('output', 'a line');
      }
      await vi.advanceTimersByTimeAsync(400 - at);
      return { resolvedAtMs, listeners: sup.listenerCount('output') };
    } finally {
      vi.useRealTimers();
    }
  };

  it('waits the whole interval while the workload is silent', async () => {
    expect(await pace([])).toEqual({ resolvedAtMs: 250, listeners: 0 });
  });

  it('probes as soon as the workload writes a line, but never sooner than the minimum gap', async () => {
    expect(await pace([120])).toEqual({ resolvedAtMs: 120, listeners: 0 });
    expect(await pace([10, 20, 30])).toEqual({ resolvedAtMs: 100, listeners: 0 });
  });
});
