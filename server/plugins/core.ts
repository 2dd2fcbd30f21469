/** config + storage + broker lifecycle concerns: effective config (admin), health, storage/broker shutdown, MQTT over WebSocket. */
import { WebSocketServer, createWebSocketStream } from 'ws';
import { requireRole } from '../auth.js';
import type { UzPlugin } from '../context.js';
import { redactConfig } from '../config.js';

export const configPlugin: UzPlugin = async (app, { ctx }) => {
  app.get('/api/v1/config', { preHandler: requireRole(ctx.storage, 'admin'), schema: { tags: ['server'], summary: 'Effective server configuration (frozen; passwords masked)' } }, async () => redactConfig(ctx.config));
};

export const storagePlugin: UzPlugin = async (app, { ctx }) => {
  app.get('/healthz', { schema: { tags: ['server'], summary: 'Liveness: storage answers' } }, async () => {
    await ctx.storage.countTokens();
    return { ok: true, storage: ctx.storage.kind, broker: ctx.broker?.kind ?? null, mqttClients: ctx.broker?.connectedCount() ?? 0 };
  });
  app.addHook('onClose', async () => {
    await ctx.storage.close();
  });
};

export const brokerPlugin: UzPlugin = async (app, { ctx }) => {
  const path = ctx.config.mqtt.wsPath;
  const broker = ctx.broker;
  if (path && broker?.handleStream) {
    const wss = new WebSocketServer({ noServer: true, maxPayload: 512 * 1024 });
    wss.on('connection', (ws, req) => broker.handleStream!(createWebSocketStream(ws), req));
    app.server.on('upgrade', (req, socket, head) => {
      if ((req.url ?? '').split('?')[0] !== path) return socket.destroy();
      wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
    });
    app.addHook('onClose', async () => {
      for (const c of wss.clients) c.terminate();
      await new Promise<void>((r) => wss.close(() => r()));
    });
  }
  app.addHook('onClose', async () => {
    await ctx.broker?.close();
  });
};
