/**
 * CLI commands of the update server: `uz server`, `uz release publish|list|yank`, `uz rollout
 * create|status|pause|resume|abort|list`, `uz devices`, `uz fleet sim`. Client commands talk to the HTTP API
 * (--server / UZ_API_URL, --token / UZ_API_TOKEN); errors from the server surface as `uz: CODE: message`.
 */
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { Command } from 'commander';
import { UzError } from '../lib/errors.js';
import { loadConfig, readConfigFile } from './config.js';
import { createServer } from './index.js';
import { FleetSim, type DownloadMode } from './sim.js';

const DEFAULT_API = 'http://127.0.0.1:8080';

interface ClientOpts {
  server?: string;
  token?: string;
  tokenFile?: string;
}

async function client(o: ClientOpts): Promise<{ base: string; token: string }> {
  const base = (o.server ?? process.env.UZ_API_URL ?? DEFAULT_API).replace(/\/+$/, '');
  let token = o.token ?? process.env.UZ_API_TOKEN;
  if (!token && o.tokenFile) token = (await readFile(o.tokenFile, 'utf8')).trim();
  if (!token) throw new UzError('UNAUTHORIZED', 'no API token: pass --token, --token-file or set UZ_API_TOKEN (the server wrote the first admin token to <data>/admin.token)');
  return { base, token };
}

export async function api<T = Record<string, unknown>>(o: ClientOpts, method: string, path: string, body?: unknown, raw?: { stream: Readable; length: number }): Promise<T> {
  const { base, token } = await client(o);
  let res: Response;
  try {
    res = await fetch(base + path, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(raw ? { 'content-type': 'application/octet-stream', 'content-length': String(raw.length) } : body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      body: raw ? (Readable.toWeb(raw.stream) as ReadableStream) : body !== undefined ? JSON.stringify(body) : undefined,
      ...(raw ? { duplex: 'half' } : {}),
    } as RequestInit);
  } catch (e) {
    throw new UzError('SERVER_UNREACHABLE', `cannot reach ${base}: ${(e as Error & { cause?: Error }).cause?.message ?? (e as Error).message}`, { base });
  }
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  if (!res.ok) {
    const err = (json as { error?: { code?: string; message?: string } } | undefined)?.error;
    throw new UzError(err?.code ?? 'API_ERROR', err?.message ?? `HTTP ${res.status}: ${text.slice(0, 200)}`, { status: res.status });
  }
  return json as T;
}

const withClient = (c: Command): Command =>
  c
    .option('--server <url>', `update server URL (default $UZ_API_URL or ${DEFAULT_API})`)
    .option('--token <token>', 'API token (default $UZ_API_TOKEN)')
    .option('--token-file <path>', 'read the API token from a file (e.g. <data>/admin.token)');

function out(json: boolean, value: unknown, human: () => string): void {
  process.stdout.write(json ? JSON.stringify(value) + '\n' : human() + '\n');
}

function table(rows: (string | number)[][]): string {
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => String(r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => String(c).padEnd(w[i]!)).join('  ').trimEnd()).join('\n');
}

function int(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new UzError('BAD_REQUEST', `--${name} must be a number`);
    return n;
  };
}

export interface RolloutStatusJson {
  rollout: { id: string; state: string; stageIndex: number; reason: string | null; releaseId: string };
  stages: { stage: number; label: string; cutoff: number; total: number; pending: number; dispatched: number; succeeded: number; failed: number; skipped: number }[];
  totals: { total: number; succeeded: number; failed: number; dispatched: number; pending: number; skipped: number };
}

function rolloutHuman(s: RolloutStatusJson): string {
  const r = s.rollout;
  const head = `${r.id}  ${r.state.toUpperCase()}  release ${r.releaseId}  stage ${r.stageIndex + 1}/${s.stages.length}${r.reason ? `\n  reason: ${r.reason}` : ''}`;
  const rows: (string | number)[][] = [['stage', 'target', 'devices', 'pending', 'in-flight', 'succeeded', 'failed', 'skipped']];
  for (const st of s.stages) rows.push([`${st.stage + 1}${st.stage === r.stageIndex ? '*' : ''}`, st.label, st.total, st.pending, st.dispatched, st.succeeded, st.failed, st.skipped]);
  return `${head}\n${table(rows)}`;
}

export function registerServerCommands(program: Command): void {
  program
    .command('server')
    .description('run the update server: HTTP API + dashboard, embedded MQTT broker (TCP + WebSocket), embedded storage')
    .requiredOption('--data <dir>', 'data directory (database, artifacts, keys, first admin token)')
    .option('--http-port <port>', 'HTTP port (default 8080)', int('http-port'))
    .option('--mqtt-port <port>', 'MQTT port (default 1883)', int('mqtt-port'))
    .option('--host <addr>', 'bind address for HTTP and MQTT (default 127.0.0.1)')
    .option('--public-url <url>', 'base URL devices use for downloads')
    .option('--trust-root <path>', 'fleet root.json (default <data>/root.json)')
    .option('--database-url <url>', 'PostgreSQL instead of the embedded SQLite (postgres://user:pass@host:5432/db); instances may share it')
    .option('--mqtt-url <url>', 'external broker (Mosquitto/EMQX: mqtt:// or mqtts://) instead of the embedded one')
    .option('--ca <dir>', 'fleet CA directory (uz ca init): certificate enrollment, revocation, --mqtt-tls-port')
    .option('--mqtt-tls-port <port>', 'embedded broker: also listen with TLS requiring fleet client certificates', int('mqtt-tls-port'))
    .option('--config <file>', 'JSON config file (same keys as UZ_SERVER_* variables)')
    .option('--json-logs', 'JSON log lines (pino) instead of human-readable ones')
    .action(async (o: { data: string; httpPort?: number; mqttPort?: number; host?: string; publicUrl?: string; trustRoot?: string; config?: string; jsonLogs?: boolean; databaseUrl?: string; mqttUrl?: string; ca?: string; mqttTlsPort?: number }) => {
      const flags: Record<string, unknown> = { dataDir: o.data };
      if (o.httpPort !== undefined || o.host || o.publicUrl) flags.http = { ...(o.httpPort !== undefined ? { port: o.httpPort } : {}), ...(o.host ? { host: o.host } : {}), ...(o.publicUrl ? { publicUrl: o.publicUrl } : {}) };
      if (o.mqttPort !== undefined || o.host || o.mqttUrl || o.mqttTlsPort !== undefined) {
        flags.mqtt = { ...(o.mqttPort !== undefined ? { port: o.mqttPort } : {}), ...(o.host ? { host: o.host } : {}), ...(o.mqttUrl ? { url: o.mqttUrl } : {}), ...(o.mqttTlsPort !== undefined ? { tlsPort: o.mqttTlsPort } : {}) };
      }
      if (o.trustRoot) flags.trustRoot = o.trustRoot;
      if (o.databaseUrl) flags.databaseUrl = o.databaseUrl;
      if (o.ca) flags.caDir = o.ca;
      if (o.jsonLogs) flags.jsonLogs = true;
      const config = loadConfig({ file: o.config ? readConfigFile(o.config) : undefined, env: process.env, flags });
      const srv = await createServer(config);
      let urls;
      try {
        urls = await srv.start();
      } catch (e) {
        await srv.close().catch(() => undefined);
        throw e;
      }
      const lines = [
        'uz server ready',
        `  api:       ${urls.http}/api/v1   (OpenAPI: ${urls.http}/api/v1/openapi.json)`,
        `  dashboard: ${urls.dashboard}`,
        `  mqtt:      ${urls.mqtt}${srv.ctx.broker?.kind === 'external' ? '   (external broker)' : ''}`,
        ...(urls.mqtts ? [`  mqtts:     ${urls.mqtts}   (fleet client certificates; enrollment without one)`] : []),
        `  storage:   ${srv.ctx.storage.kind}`,
        ...(urls.ws ? [`  mqtt-ws:   ${urls.ws}`] : []),
        `  metrics:   ${urls.http}/metrics`,
        ...(srv.bootstrapToken ? [`  admin token (shown once; also in ${config.dataDir}/admin.token): ${srv.bootstrapToken}`] : []),
      ];
      process.stderr.write(lines.join('\n') + '\n');
      await new Promise<void>((resolve) => {
        const stop = (): void => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          void srv.close().then(resolve, resolve);
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
    });

  const release = program.command('release').description('publish, list and yank firmware releases on the update server');
  withClient(release.command('publish <bundle>').description('upload a signed .uzb (verified by the server against the fleet root.json)'))
    .option('--channel <name>', 'also point this channel at the release')
    .option('--json', 'print JSON')
    .action(async (bundle: string, o: ClientOpts & { channel?: string; json?: boolean }) => {
      const st = await stat(bundle).catch((e: unknown) => {
        throw new UzError('NOT_FOUND', `cannot read ${bundle}`, { path: bundle }, { cause: e });
      });
      const r = await api<{ release: { id: string; version: string; board: string; sha256: string; size: number }; existing: boolean; channel: string | null }>(
        o, 'POST', `/api/v1/releases${o.channel ? `?channel=${encodeURIComponent(o.channel)}` : ''}`, undefined, { stream: createReadStream(bundle), length: st.size },
      );
      out(!!o.json, r, () => `${r.existing ? 'already published' : 'published'} ${r.release.id} (board ${r.release.board}, version ${r.release.version}, ${r.release.size} bytes, sha256 ${r.release.sha256})${r.channel ? `; channel ${r.channel} -> ${r.release.id}` : ''}`);
    });
  withClient(release.command('list').description('list releases and channels'))
    .option('--json', 'print JSON')
    .action(async (o: ClientOpts & { json?: boolean }) => {
      const r = await api<{ releases: { id: string; board: string; version: string; size: number; createdAt: number; yanked: boolean }[]; channels: { name: string; releaseId: string | null }[] }>(o, 'GET', '/api/v1/releases');
      out(!!o.json, r, () => {
        const ch = new Map<string, string[]>();
        for (const c of r.channels) if (c.releaseId) ch.set(c.releaseId, [...(ch.get(c.releaseId) ?? []), c.name]);
        return table([['id', 'board', 'version', 'size', 'created', 'channels', 'yanked'], ...r.releases.map((x) => [x.id, x.board, x.version, x.size, new Date(x.createdAt).toISOString().slice(0, 19), (ch.get(x.id) ?? []).join(',') || '-', x.yanked ? 'YANKED' : ''])]);
      });
    });
  withClient(release.command('yank <id>').description('yank a release (no new rollouts; channels pointing at it are cleared)'))
    .option('--reason <text>', 'why', 'yanked')
    .option('--json', 'print JSON')
    .action(async (id: string, o: ClientOpts & { reason: string; json?: boolean }) => {
      const r = await api(o, 'POST', `/api/v1/releases/${encodeURIComponent(id)}/yank`, { reason: o.reason });
      out(!!o.json, r, () => `yanked ${id}`);
    });

  const rollout = program.command('rollout').description('staged rollouts of a release to a channel, tag or device list');
  withClient(rollout.command('create').description('create and start a rollout'))
    .option('--release <id>', 'release id (default: the channel release)')
    .option('--channel <name>', 'target: devices on this channel')
    .option('--tag <tag>', 'target: devices with this tag')
    .option('--devices <ids>', 'target: comma-separated device ids')
    .option('--stages <list>', 'cumulative stages, percentages or counts', '1%,10%,50%,100%')
    .option('--success-threshold <0..1>', 'share of decided devices that must succeed to advance a stage', int('success-threshold'))
    .option('--failure-percent <pct>', 'pause/abort when this % of decided devices failed', int('failure-percent'))
    .option('--failure-count <n>', 'pause/abort when this many devices failed', int('failure-count'))
    .option('--min-devices <n>', 'apply the failure threshold only after this many devices decided', int('min-devices'))
    .option('--on-failure <action>', 'pause | abort')
    .option('--max-in-flight <n>', 'devices updating at once', int('max-in-flight'))
    .option('--rate <n>', 'dispatches per minute', int('rate'))
    .option('--timeout <sec>', 'per-device in-progress timeout', int('timeout'))
    .option('--retries <n>', 're-dispatches after a timeout', int('retries'))
    .option('--window <HH:MM-HH:MM>', 'UTC maintenance window')
    .option('--window-days <list>', 'weekdays of the window, 0=Sunday (e.g. 1,2,3,4,5)')
    .option('--seed <s>', 'ordering seed (reproducible canary selection)')
    .option('--json', 'print JSON')
    .action(async (o: ClientOpts & Record<string, string | number | boolean | undefined>) => {
      const body: Record<string, unknown> = {};
      if (o.release) body.releaseId = o.release;
      if (o.channel) body.channel = o.channel;
      if (o.tag) body.tag = o.tag;
      if (o.devices) body.devices = String(o.devices).split(',').map((x) => x.trim()).filter(Boolean);
      body.stages = String(o.stages).split(',').map((x) => x.trim());
      if (o.successThreshold !== undefined) body.successThreshold = o.successThreshold;
      if (o.failurePercent !== undefined || o.failureCount !== undefined) body.failureThreshold = { ...(o.failurePercent !== undefined ? { percent: o.failurePercent } : {}), ...(o.failureCount !== undefined ? { count: o.failureCount } : {}) };
      for (const [flag, key] of [['minDevices', 'minDevices'], ['maxInFlight', 'maxInFlight'], ['rate', 'ratePerMinute'], ['timeout', 'timeoutSec'], ['retries', 'retries']] as const) if (o[flag] !== undefined) body[key] = o[flag];
      if (o.onFailure) body.onFailure = o.onFailure;
      if (o.seed) body.seed = o.seed;
      if (o.window) {
        const m = /^(\d\d:\d\d)-(\d\d:\d\d)$/.exec(String(o.window));
        if (!m) throw new UzError('BAD_REQUEST', '--window must look like 22:00-04:00 (UTC)');
        body.window = { start: m[1], end: m[2], ...(o.windowDays ? { days: String(o.windowDays).split(',').map(Number) } : {}) };
      }
      const r = await api<RolloutStatusJson>(o, 'POST', '/api/v1/rollouts', body);
      out(!!o.json, r, () => rolloutHuman(r));
    });
  withClient(rollout.command('status <id>').description('per-stage progress of a rollout'))
    .option('--json', 'print JSON')
    .option('--wait', 'poll until the rollout is no longer running, then print')
    .option('--wait-timeout <sec>', 'give up waiting after this many seconds', int('wait-timeout'), 3600)
    .action(async (id: string, o: ClientOpts & { json?: boolean; wait?: boolean; waitTimeout: number }) => {
      const end = Date.now() + o.waitTimeout * 1000;
      let r = await api<RolloutStatusJson>(o, 'GET', `/api/v1/rollouts/${encodeURIComponent(id)}`);
      while (o.wait && r.rollout.state === 'running' && Date.now() < end) {
        await new Promise((res) => setTimeout(res, 500));
        r = await api<RolloutStatusJson>(o, 'GET', `/api/v1/rollouts/${encodeURIComponent(id)}`);
      }
      out(!!o.json, r, () => rolloutHuman(r));
    });
  withClient(rollout.command('list').description('all rollouts'))
    .option('--json', 'print JSON')
    .action(async (o: ClientOpts & { json?: boolean }) => {
      const r = await api<{ rollouts: RolloutStatusJson[] }>(o, 'GET', '/api/v1/rollouts');
      out(!!o.json, r, () => table([['id', 'state', 'release', 'stage', 'succeeded', 'failed', 'devices'], ...r.rollouts.map((x) => [x.rollout.id, x.rollout.state, x.rollout.releaseId, `${x.rollout.stageIndex + 1}/${x.stages.length}`, x.totals.succeeded, x.totals.failed, x.totals.total])]));
    });
  for (const action of ['pause', 'resume', 'abort'] as const) {
    withClient(rollout.command(`${action} <id>`).description(`${action} a rollout`))
      .option('--json', 'print JSON')
      .action(async (id: string, o: ClientOpts & { json?: boolean }) => {
        const r = await api<RolloutStatusJson>(o, 'POST', `/api/v1/rollouts/${encodeURIComponent(id)}/${action}`);
        out(!!o.json, r, () => rolloutHuman(r));
      });
  }

  const devices = withClient(program.command('devices').description('list the fleet: presence, version, slot, health; enrollment: token, pending, approve, reject, revoke'));
  devices
    .option('--channel <name>', 'only this channel')
    .option('--tag <tag>', 'only this tag')
    .option('--json', 'print JSON')
    .action(async (o: ClientOpts & { channel?: string; tag?: string; json?: boolean }) => {
      const q = new URLSearchParams({ ...(o.channel ? { channel: o.channel } : {}), ...(o.tag ? { tag: o.tag } : {}) }).toString();
      const r = await api<{ devices: { id: string; online: boolean; channel: string; tags: string[]; lastSeen: number | null; status: { version: string; slot: string; state: string; workload: { healthy: boolean }; lastError?: { code: string } } | null }[] }>(o, 'GET', `/api/v1/devices${q ? `?${q}` : ''}`);
      out(!!o.json, r, () => {
        const on = r.devices.filter((d) => d.online).length;
        return `${r.devices.length} devices, ${on} online\n` + table([['id', 'online', 'channel', 'version', 'slot', 'state', 'healthy', 'last error'], ...r.devices.map((d) => [d.id, d.online ? 'yes' : 'no', d.channel, d.status?.version ?? '-', d.status?.slot ?? '-', d.status?.state ?? '-', d.status ? (d.status.workload.healthy ? 'yes' : 'NO') : '-', d.status?.lastError?.code ?? ''])]);
      });
    });

  const token = devices.command('token').description('one-time enrollment tokens (certificate enrollment; the server needs --ca)');
  withClient(token.command('create').description('create a one-time enrollment token (printed once; only its hash is stored)'))
    .option('--device <id>', 'only this device id may use it (default: the first device that uses it)')
    .option('--ttl <sec>', 'lifetime in seconds (default: the server\'s enrollTokenTtlSec, 24 h)', int('ttl'))
    .option('--pre-approved', 'the device is approved as soon as it enrolls (no operator step)')
    .option('--json', 'print JSON')
    .action(async (o: ClientOpts & { device?: string; ttl?: number; preApproved?: boolean; json?: boolean }) => {
      const r = await api<{ id: string; token: string; deviceId: string | null; preApproved: boolean; expiresAt: number }>(o, 'POST', '/api/v1/enrollment-tokens', {
        ...(o.device ? { deviceId: o.device } : {}), ...(o.ttl !== undefined ? { ttlSec: o.ttl } : {}), ...(o.preApproved ? { preApproved: true } : {}),
      });
      out(!!o.json, r, () => `${r.token}\n  (token ${r.id}${r.deviceId ? ` for ${r.deviceId}` : ''}${r.preApproved ? ', pre-approved' : ''}, expires ${new Date(r.expiresAt).toISOString().slice(0, 19)}Z; shown once)`);
    });
  withClient(token.command('list').description('enrollment tokens (never the tokens themselves)'))
    .option('--json', 'print JSON')
    .action(async (o: ClientOpts & { json?: boolean }) => {
      const r = await api<{ tokens: { id: string; deviceId: string | null; preApproved: boolean; expiresAt: number; usedAt: number | null; createdBy: string }[] }>(o, 'GET', '/api/v1/enrollment-tokens');
      out(!!o.json, r, () => table([['id', 'device', 'pre-approved', 'expires', 'used', 'by'], ...r.tokens.map((x) => [x.id, x.deviceId ?? '-', x.preApproved ? 'yes' : 'no', new Date(x.expiresAt).toISOString().slice(0, 19), x.usedAt ? new Date(x.usedAt).toISOString().slice(0, 19) : '-', x.createdBy])]));
    });
  withClient(devices.command('pending').description('devices waiting for enrollment approval'))
    .option('--json', 'print JSON')
    .action(async (o: ClientOpts & { json?: boolean }) => {
      const r = await api<{ devices: { id: string; createdAt: number }[] }>(o, 'GET', '/api/v1/devices?enrollment=pending');
      out(!!o.json, r, () => (r.devices.length ? table([['id', 'asked'], ...r.devices.map((d) => [d.id, new Date(d.createdAt).toISOString().slice(0, 19)])]) : 'no pending devices'));
    });
  for (const action of ['approve', 'reject', 'revoke'] as const) {
    const cmd = withClient(devices.command(`${action} <id>`).description(
      action === 'approve' ? 'approve a pending device (or pre-approve an id that has not enrolled yet)' : action === 'reject' ? 'reject a pending device' : 'revoke a device: its certificate goes on the CRL and the broker refuses it',
    )).option('--json', 'print JSON');
    if (action === 'revoke') cmd.option('--reason <r>', 'keyCompromise | privilegeWithdrawn | cessationOfOperation', 'privilegeWithdrawn');
    cmd.action(async (id: string, o: ClientOpts & { json?: boolean; reason?: string }) => {
      const r = await api<{ device: { id: string; enrollment: string }; serial?: string | null; crlNumber?: number | null }>(o, 'POST', `/api/v1/devices/${encodeURIComponent(id)}/${action}`, action === 'revoke' ? { reason: o.reason } : {});
      out(!!o.json, r, () => `${r.device.id}: ${r.device.enrollment}${r.serial ? ` (certificate ${r.serial} revoked, CRL #${r.crlNumber})` : ''}`);
    });
  }

  const fleet = program.command('fleet').description('fleet tools');
  fleet
    .command('broker-identity')
    .description('issue the update server\'s MQTT client certificate (CN uz.server, full access in server/mosquitto/acl) from the fleet CA')
    .requiredOption('--ca <dir>', 'fleet CA directory (uz ca init)')
    .requiredOption('--out <dir>', 'writes uz-server.crt, uz-server.key (0600) and ca.crt; refuses to overwrite')
    .option('--name <cn>', 'identity (must not be a valid device id)', 'uz.server')
    .action(async (o: { ca: string; out: string; name: string }) => {
      const { loadCaDir, writeNewFile } = await import('../firmware/ca/index.js');
      const { issueServerClientCertificate } = await import('./pki.js');
      const { mkdir } = await import('node:fs/promises');
      const { join } = await import('node:path');
      const ca = await loadCaDir(o.ca);
      const id = await issueServerClientCertificate(ca, { name: o.name });
      await mkdir(o.out, { recursive: true, mode: 0o700 });
      await writeNewFile(join(o.out, 'uz-server.key'), id.keyPem, 0o600);
      await writeNewFile(join(o.out, 'uz-server.crt'), id.certPem, 0o644);
      await writeNewFile(join(o.out, 'ca.crt'), ca.certPem, 0o644);
      process.stdout.write(`wrote ${join(o.out, 'uz-server.crt')} (CN ${o.name}, serial ${id.serial}), uz-server.key (0600), ca.crt\n` +
        `use: uz server … --mqtt-url mqtts://<broker>:8884 with UZ_SERVER_MQTT_CA_FILE, UZ_SERVER_MQTT_CERT_FILE, UZ_SERVER_MQTT_KEY_FILE\n`);
    });
  fleet
    .command('sim')
    .description('simulate devices speaking the device protocol (lib/protocol.ts) against a server')
    .requiredOption('--devices <n>', 'number of devices', int('devices'))
    .option('--server <url>', 'mqtt://host:port, ws://host:port/mqtt, or the server http URL (uses its /mqtt WebSocket)', 'mqtt://127.0.0.1:1883')
    .option('--fail-health <pct>', 'percent of devices whose health check fails after updating', int('fail-health'), 0)
    .option('--offline <pct>', 'percent of devices that register and then stay offline', int('offline'), 0)
    .option('--prefix <p>', 'device id prefix', 'sim')
    .option('--seed <s>', 'password seed (dev-mode TOFU credentials)', 'uz-sim')
    .option('--version <v>', 'firmware version the devices start with', '1.0.0')
    .option('--board <b>', 'board id', 'rpi4')
    .option('--step-ms <ms>', 'delay between update phases', int('step-ms'), 200)
    .option('--download <mode>', 'none | range (first 64 KiB over HTTP) | full | mqtt (blocks)', 'range')
    .option('--duration <sec>', 'stop after this many seconds (default: until Ctrl-C)', int('duration'))
    .action(async (o: { devices: number; server: string; failHealth: number; offline: number; prefix: string; seed: string; version: string; board: string; stepMs: number; download: DownloadMode; duration?: number }) => {
      let url = o.server;
      if (/^https?:\/\//.test(url)) url = url.replace(/^http/, 'ws').replace(/\/+$/, '') + '/mqtt';
      if (!['none', 'range', 'full', 'mqtt'].includes(o.download)) throw new UzError('BAD_REQUEST', '--download must be none, range, full or mqtt');
      const sim = new FleetSim({ url, devices: o.devices, failHealthPct: o.failHealth, offlinePct: o.offline, prefix: o.prefix, seed: o.seed, version: o.version, board: o.board, stepMs: o.stepMs, download: o.download, log: (l) => process.stderr.write(l + '\n') });
      try {
        await sim.start();
      } catch (e) {
        await sim.stop();
        throw new UzError('SERVER_UNREACHABLE', `fleet sim cannot connect to ${url}: ${(e as Error).message}`, { url });
      }
      const print = (): void => {
        const s = sim.summary();
        process.stderr.write(`fleet sim: ${s.online}/${s.devices} online, versions ${JSON.stringify(s.versions)}, installs ${s.installs}\n`);
      };
      print();
      const iv = setInterval(print, 5000);
      await new Promise<void>((resolve) => {
        const stop = (): void => resolve();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
        if (o.duration) setTimeout(stop, o.duration * 1000);
      });
      clearInterval(iv);
      print();
      await sim.stop();
      process.exit(0);
    });
}
