// A malformed uz-device.json at boot, with the agent's own pieces (updater/device/boot-config.ts, the MQTT agent)
// on the host: one console line naming the field and never a value, the best remaining config still used
// (the last good provisioning remembered on the data partition, or a baked agent.json), and the error reported
// to the real server in the device's status (lastError).
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serializeDeviceConfig, type DeviceConfigInput } from '../../firmware/provision/config.js';
import { MqttAgent } from '../../updater/agent.js';
import { resolveBootConfig, type BootConfigPaths } from '../../updater/device/boot-config.js';
import type { StateRecord } from '../../updater/state/store.js';
import { auth, testServer, tmp, type TestServer } from '../server/helpers.js';

let t: TestServer;
const stops: Array<() => Promise<unknown>> = [];
beforeAll(async () => {
  t = await testServer();
}, 60_000);
afterAll(async () => {
  for (const s of stops.reverse()) await s().catch(() => {});
  await t.server.close();
});

const PSK = 'hunter2-but-longer-secret';
const TOKEN = 'uze_0badc0de_thisIsTheSecretPartOfTheToken0123456789abcd';

function dirs(): BootConfigPaths & { root: string } {
  const root = tmp('uz-home-cfg-');
  for (const d of ['boot', 'data/uz', 'run', 'etc']) mkdirSync(join(root, d), { recursive: true });
  return {
    root,
    agentJson: [join(root, 'data/uz/agent.json'), join(root, 'etc/agent.json')],
    deviceFile: join(root, 'boot/uz-device.json'),
    lastGood: join(root, 'data/uz/device-last-good.json'),
    tlsDir: join(root, 'data/uz/tls'),
    runDir: join(root, 'run'),
    trustRoot: join(root, 'root.json'),
  };
}

const good = (): DeviceConfigInput => ({
  formatVersion: 1,
  deviceName: 'home-cfg-01',
  server: { httpUrl: t.urls!.http, mqttUrl: t.urls!.mqtt },
  wifi: { ssid: 'home', psk: PSK },
  enrollToken: TOKEN,
  channel: 'beta',
});

const secretsIn = (lines: string[]) => lines.filter((l) => l.includes(PSK) || l.includes(TOKEN) || l.includes('ThisIsTheSecret'));

describe('malformed uz-device.json at boot', () => {
  it('no other config: one UZ-ERROR line with the field, no values, no agent config (the device still boots)', async () => {
    const p = dirs();
    writeFileSync(p.deviceFile, serializeDeviceConfig(good()).replace(PSK, 'short'));
    const lines: string[] = [];
    const b = await resolveBootConfig(p, (l) => lines.push(l));
    expect(lines).toEqual(['UZ-ERROR code=DEVICE_CONFIG_INVALID field=wifi.psk']);
    expect(b).toMatchObject({ config: null, source: 'none', configError: { code: 'DEVICE_CONFIG_INVALID' } });
    expect(b.configError!.message).toMatch(/^uz-device\.json: wifi\.psk: /);
    expect(JSON.stringify(b)).not.toContain('short"');
    expect(secretsIn([...lines, JSON.stringify(b)])).toEqual([]);
  });

  it('after a good boot the card is edited badly: the last good provisioning (without secrets) keeps the device connected, and the server sees lastError', async () => {
    const p = dirs();
    writeFileSync(p.deviceFile, serializeDeviceConfig(good()));
    const first = await resolveBootConfig(p, () => {});
    expect(first).toMatchObject({ source: 'uz-device.json', config: { deviceId: 'home-cfg-01', channel: 'beta', devMode: true } });
    const remembered = readFileSync(p.lastGood, 'utf8');
    expect(remembered).toContain('home-cfg-01');
    expect(secretsIn([remembered])).toEqual([]);
    expect(remembered).not.toMatch(/psk|enrollToken|wifi/);

    // someone edits the file on a laptop and leaves a syntax error (the secrets are still in it)
    writeFileSync(p.deviceFile, serializeDeviceConfig(good()).replace('"channel": "beta"', '"channel": "beta",'));
    const lines: string[] = [];
    const b = await resolveBootConfig(p, (l) => lines.push(l));
    expect(lines).toEqual(['UZ-ERROR code=DEVICE_CONFIG_INVALID field=(json)', 'UZ-WARN device-config-fallback source=last-good device=home-cfg-01']);
    expect(b).toMatchObject({ source: 'last-good', config: { deviceId: 'home-cfg-01', brokerUrl: t.urls!.mqtt, channel: 'beta' }, configError: { code: 'DEVICE_CONFIG_INVALID' } });
    expect(b.enroll).toBeUndefined();
    expect(secretsIn([...lines, JSON.stringify(b)])).toEqual([]);

    // the agent connects with it and its status carries the error
    const record: StateRecord = { v: 1, state: 'idle', update: null, committed: { slot: 'A', version: '1.0.0', rollbackCounter: 1 }, floor: 1, done: null, lastError: null, savedAt: 0 };
    const agent = new MqttAgent({
      config: b.config!,
      log: () => {},
      password: 'a-device-secret-of-at-least-32-characters',
      statusExtra: async () => ({ board: 'rpi4', version: '1.0.0', workload: { name: 'demo', version: '1', healthy: true, detail: 'ok', restarts: 0 }, bootControl: { primary: 'A', tryPending: null, bad: [] }, ...(b.configError ? { lastError: b.configError } : {}) }),
      reconnect: { baseMs: 50, capMs: 300 },
    });
    agent.attach({ offer: async () => 'started' as const, record, bootedSlot: 'A' as const });
    agent.start();
    stops.push(() => agent.stop());
    let dev: { online: boolean; status: { lastError?: { code: string; message: string } } | null } | undefined;
    for (let i = 0; i < 100 && !dev?.status; i++) {
      await new Promise((r) => setTimeout(r, 100));
      const r = await t.server.app.inject({ method: 'GET', url: '/api/v1/devices', headers: auth(t.token) });
      dev = (r.json() as { devices: Array<typeof dev & { id: string }> }).devices.find((d) => d!.id === 'home-cfg-01');
    }
    expect(dev).toMatchObject({ online: true, status: { lastError: { code: 'DEVICE_CONFIG_INVALID' } } });
    expect(dev!.status!.lastError!.message).toMatch(/^uz-device\.json: uz-device\.json is not valid JSON/);
    await agent.stop();
  });

  it('a baked agent.json wins over uz-device.json, and a malformed uz-device.json is still reported', async () => {
    const p = dirs();
    writeFileSync(p.deviceFile, '{"formatVersion":1,"deviceName":"home-cfg-02","server":{"httpUrl":"http://x","mqttUrl":"mqtt://x:1883"},"wfi":{}}');
    writeFileSync(p.agentJson[1]!, JSON.stringify({ deviceId: 'home-cfg-02', brokerUrl: 'mqtt://127.0.0.1:1883', serverUrl: 'http://127.0.0.1:8080', trustRoot: 'root.json', devMode: true }));
    const lines: string[] = [];
    const b = await resolveBootConfig(p, (l) => lines.push(l));
    expect(lines).toEqual(['UZ-ERROR code=DEVICE_CONFIG_INVALID field=wfi']);
    expect(b).toMatchObject({ source: 'agent.json', config: { deviceId: 'home-cfg-02' }, configError: { code: 'DEVICE_CONFIG_INVALID' } });
  });

  it('an invalid agent.json on the data partition is reported and the next config is used; an unprovisioned card says so', async () => {
    const p = dirs();
    writeFileSync(p.agentJson[0]!, '{"deviceId": "home-cfg-03", "brokr": 1}');
    writeFileSync(p.deviceFile, serializeDeviceConfig({ formatVersion: 1, deviceName: 'home-cfg-03', server: { httpUrl: 'http://10.0.2.100:8080', mqttUrl: 'mqtt://10.0.2.100:1883' } }));
    const lines: string[] = [];
    const b = await resolveBootConfig(p, (l) => lines.push(l));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^UZ-ERROR code=CONFIG_INVALID detail=".*brokr/);
    expect(b).toMatchObject({ source: 'uz-device.json', config: { deviceId: 'home-cfg-03' }, configError: { code: 'CONFIG_INVALID' } });

    const q = dirs();
    const l2: string[] = [];
    expect(await resolveBootConfig(q, (l) => l2.push(l))).toEqual({ config: null, source: 'none' });
    expect(l2).toEqual(['UZ-WARN device-config-missing file=uz-device.json']);
  });

  it('an enroll token with a plain mqtt:// broker does not enroll (a certificate needs mqtts://) and says why', async () => {
    const p = dirs();
    writeFileSync(p.deviceFile, serializeDeviceConfig({ formatVersion: 1, deviceName: 'home-cfg-04', server: { httpUrl: 'http://10.0.2.100:8080', mqttUrl: 'mqtt://10.0.2.100:1883' }, enrollToken: TOKEN }));
    const lines: string[] = [];
    const b = await resolveBootConfig(p, (l) => lines.push(l));
    expect(b.enroll).toBeUndefined();
    expect(b.config).toMatchObject({ devMode: true, brokerUrl: 'mqtt://10.0.2.100:1883' });
    expect(lines).toEqual(['UZ-WARN enroll-skipped reason=plain-mqtt-url detail="a certificate needs an mqtts:// broker"']);
    expect(secretsIn(lines)).toEqual([]);
  });
});
