/** Prometheus metrics (prom-client), one registry per server instance. Gauges are computed at scrape time. */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { Storage } from './storage/types.js';

export class Metrics {
  readonly registry = new Registry();
  readonly messages = new Counter({ name: 'uz_device_messages_total', help: 'Accepted device messages by topic kind', labelNames: ['kind'], registers: [this.registry] });
  readonly rejected = new Counter({ name: 'uz_device_messages_rejected_total', help: 'Device messages rejected (size, JSON, schema, topic, ACL, rate)', labelNames: ['reason'], registers: [this.registry] });
  readonly bytesServed = new Counter({ name: 'uz_artifact_bytes_served_total', help: 'Artifact bytes sent', labelNames: ['via'], registers: [this.registry] });
  readonly rolloutEvents = new Counter({ name: 'uz_rollout_device_outcomes_total', help: 'Rollout member transitions', labelNames: ['outcome'], registers: [this.registry] });
  readonly releasesPublished = new Counter({ name: 'uz_releases_published_total', help: 'Releases accepted', registers: [this.registry] });
  readonly releasesRejected = new Counter({ name: 'uz_releases_rejected_total', help: 'Uploads that failed verification', labelNames: ['code'], registers: [this.registry] });

  constructor(storage: Storage, connected: () => number) {
    collectDefaultMetrics({ register: this.registry, prefix: 'uz_process_' });
    const reg = [this.registry];
    new Gauge({
      name: 'uz_devices', help: 'Registered devices by presence', labelNames: ['presence'], registers: reg,
      async collect() {
        const d = await storage.deviceSummary(); // counted in the database, not by loading every row
        this.set({ presence: 'online' }, d.online);
        this.set({ presence: 'offline' }, d.total - d.online);
      },
    });
    new Gauge({ name: 'uz_mqtt_connected_clients', help: 'Clients connected to the embedded broker', registers: reg, collect() { this.set(connected()); } });
    new Gauge({
      name: 'uz_rollout_devices', help: 'Members of active (running/paused) rollouts by state', labelNames: ['rollout', 'state'], registers: reg,
      async collect() {
        this.reset();
        for (const r of await storage.listRollouts(['running', 'paused'])) {
          const t = { pending: 0, dispatched: 0, succeeded: 0, failed: 0, skipped: 0 };
          for (const s of await storage.stageStats(r.id)) for (const k of Object.keys(t) as (keyof typeof t)[]) t[k] += s[k];
          for (const [k, v] of Object.entries(t)) this.set({ rollout: r.id, state: k }, v);
        }
      },
    });
    new Gauge({
      name: 'uz_rollout_stage', help: 'Current stage index (0-based) of active rollouts; state label running|paused', labelNames: ['rollout', 'state'], registers: reg,
      async collect() {
        this.reset();
        for (const r of await storage.listRollouts(['running', 'paused'])) this.set({ rollout: r.id, state: r.state }, r.stageIndex);
      },
    });
  }
}
