import { readFileSync } from 'node:fs';
import { createServer as netServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { isUzError } from '../../lib/errors.js';
import { configFromEnv, envKeys, loadConfig } from '../../server/config.js';
import { PROCESS_ERRORS, SERVER_ERRORS } from '../../server/errors.js';
import { testServer, tmp } from './helpers.js';

const code = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    if (isUzError(e)) return e.code;
    throw e;
  }
  return 'OK';
};

describe('server config', () => {
  it('derives UZ_SERVER_* variables from the schema; precedence defaults < file < env < flags; frozen', () => {
    const names = envKeys().map((k) => k.env);
    expect(names).toEqual(expect.arrayContaining(['UZ_SERVER_DATA_DIR', 'UZ_SERVER_HTTP_PORT', 'UZ_SERVER_MQTT_PORT', 'UZ_SERVER_MQTT_DEVICE_MSG_PER_SEC', 'UZ_SERVER_JSON_LOGS', 'UZ_SERVER_ROLLOUT_TICK_MS', 'UZ_SERVER_TRUST_ROOT']));
    const c = loadConfig({ file: { dataDir: '/tmp/a', http: { port: 1 } }, env: { UZ_SERVER_HTTP_PORT: '2', UZ_SERVER_JSON_LOGS: 'true', PATH: '/bin' }, flags: { mqtt: { port: 3 } } });
    expect(c.http).toMatchObject({ port: 2, host: '127.0.0.1' });
    expect(c.mqtt).toMatchObject({ port: 3, wsPath: '/mqtt', autoRegister: true });
    expect(c.jsonLogs).toBe(true);
    expect(Object.isFrozen(c) && Object.isFrozen(c.http)).toBe(true);
    expect(loadConfig({ flags: { dataDir: '/tmp/a' }, env: {} }).http.port).toBe(8080);
  });

  it('rejects unknown keys, unknown variables and bad values with CONFIG_INVALID', () => {
    expect(code(() => loadConfig({ flags: { dataDir: '/x', htp: {} } }))).toBe('CONFIG_INVALID');
    expect(code(() => loadConfig({ flags: { dataDir: '/x', http: { prot: 1 } } }))).toBe('CONFIG_INVALID');
    expect(code(() => configFromEnv({ UZ_SERVER_HTTP_PROT: '1' }))).toBe('CONFIG_INVALID');
    expect(code(() => configFromEnv({ UZ_SERVER_HTTP_PORT: 'eighty' }))).toBe('CONFIG_INVALID');
    expect(code(() => configFromEnv({ UZ_SERVER_JSON_LOGS: 'maybe' }))).toBe('CONFIG_INVALID');
    expect(code(() => loadConfig({ flags: { dataDir: '/x', http: { port: 70000 } } }))).toBe('CONFIG_INVALID');
    expect(code(() => loadConfig({ flags: {} }))).toBe('CONFIG_INVALID');
  });

  it('a taken port is a clear PORT_IN_USE error', async () => {
    const blocker = netServer().listen(0, '127.0.0.1');
    await new Promise((r) => blocker.once('listening', r));
    const port = (blocker.address() as { port: number }).port;
    const s = await testServer({ start: false, config: { mqtt: { port } } }).catch((e) => e);
    await expect(s.server.start()).rejects.toMatchObject({ code: 'PORT_IN_USE', message: expect.stringContaining(`${port}`) });
    await s.server.close();
    const s2 = await testServer({ start: false, config: { http: { port } } });
    await expect(s2.server.start()).rejects.toMatchObject({ code: 'PORT_IN_USE', message: expect.stringContaining('--http-port') });
    await s2.server.close();
    blocker.close();
  });
});

describe('coded errors registry', () => {
  const doc = readFileSync(new URL('../../docs/server.md', import.meta.url), 'utf8');
  it('every HTTP error code and process error code is documented in docs/server.md with its status', () => {
    for (const [c, { status }] of Object.entries(SERVER_ERRORS)) expect(doc, c).toMatch(new RegExp(`\\|\\s*\`${c}\`\\s*\\|\\s*${status}\\s*\\|`));
    for (const c of Object.keys(PROCESS_ERRORS)) expect(doc, c).toMatch(new RegExp(`\\|\\s*\`${c}\`\\s*\\|`));
  });
  it('the protocol error codes are documented in docs/protocol.md', () => {
    const p = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
    for (const c of ['MSG_TOO_LARGE', 'MSG_NOT_JSON', 'MSG_INVALID', 'NOT_FOUND', 'BAD_OFFSET', 'NOT_SUPPORTED', 'HEALTH_CHECK_FAILED']) expect(p, c).toContain(`\`${c}\``);
    expect(tmp()).toBeTruthy();
  });
});
