// Fixtures for server tests: a fleet root of trust, signed bundles, a started server on ephemeral ports.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeBundle } from '../../firmware/bundle/index.js';
import { createRootSigned, generateSigningKey, signRoot, type RootMetadata, type SigningKey } from '../../firmware/trust/index.js';
import { loadConfig, type ServerConfigInput } from '../../server/config.js';
import { createServer, type CreateServerOptions, type StartedUrls, type UzServer } from '../../server/index.js';

export function tmp(prefix = 'uz-srv-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export interface FleetKeys {
  root: RootMetadata;
  release: SigningKey;
  rootJson: string;
}

export function fleetKeys(): FleetKeys {
  const rootKey = generateSigningKey();
  const release = generateSigningKey();
  const other = generateSigningKey();
  const one = { keys: [other], threshold: 1 };
  const signed = createRootSigned({
    expires: new Date(Date.now() + 365 * 86_400_000),
    root: { keys: [rootKey], threshold: 1 },
    release: { keys: [release], threshold: 1 },
    targets: one,
    snapshot: one,
    timestamp: one,
  });
  const root = signRoot(signed, [rootKey]);
  return { root, release, rootJson: JSON.stringify(root, null, 2) };
}

/** Writes a signed bundle with a random payload; returns its path. `keys: []` makes an unsigned one. */
export async function makeBundle(dir: string, keys: readonly SigningKey[], o: { version?: string; board?: string; size?: number } = {}): Promise<string> {
  const payload = join(dir, `payload-${randomBytes(4).toString('hex')}`);
  writeFileSync(payload, randomBytes(o.size ?? 64 * 1024));
  const out = join(dir, `app-${o.version ?? '2.0.0'}-${randomBytes(3).toString('hex')}.uzb`);
  await writeBundle({
    payload,
    out,
    manifest: { board: { id: o.board ?? 'rpi4' }, version: o.version ?? '2.0.0', rollbackCounter: 2, workload: { name: 'app', version: '1.0.0' }, chunkSize: 16 * 1024 },
    keys,
  });
  return out;
}

export interface TestServer {
  server: UzServer;
  urls: StartedUrls | null;
  token: string;
  dataDir: string;
  keys: FleetKeys;
}

export async function testServer(o: { start?: boolean; config?: Partial<ServerConfigInput>; keys?: FleetKeys; dataDir?: string; opts?: CreateServerOptions } = {}): Promise<TestServer> {
  const dataDir = o.dataDir ?? tmp();
  const keys = o.keys ?? fleetKeys();
  writeFileSync(join(dataDir, 'root.json'), keys.rootJson);
  const config = loadConfig({
    flags: {
      dataDir,
      logLevel: 'silent',
      rolloutTickMs: 100,
      ...o.config,
      http: { port: 0, ...(o.config?.http ?? {}) },
      mqtt: { port: 0, ...(o.config?.mqtt ?? {}) },
    },
  });
  const server = await createServer(config, o.opts);
  const urls = o.start === false ? null : await server.start();
  if (o.start === false) await server.app.ready();
  return { server, urls, token: server.bootstrapToken!, dataDir, keys };
}

export function auth(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}
