// `uz agent --sim` end to end on loopback: a real broker (Aedes), a real HTTP server with the bundle, the host
// agent with file-backed slots; the "server" publishes a desired release and the agent installs, reboots into
// the try slot, verifies and commits. Also `uz agent status --json` and config validation.
import { afterEach, describe, expect, it } from 'vitest';
import { Command } from 'commander';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { encode, topics, type Desired } from '../../lib/protocol.js';
import { writeRootFile } from '../../firmware/trust/io.js';
import { registerAgentCommands } from '../../updater/cli.js';
import { agentConfigFromDevice, loadConfig, parseConfig } from '../../updater/config.js';
import { runSimAgent } from '../../updater/sim/host-agent.js';
import { simBundle, simTrust } from '../../updater/sim/releases.js';
import { observer, serveArtifact, startBroker, tempDir, until } from './helpers.js';

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

describe('uz agent --sim', () => {
  it('installs a desired release end to end over MQTT + HTTP and commits it after the simulated reboot', async () => {
    const t = tempDir();
    cleanup.push(t.cleanup);
    const trust = simTrust();
    await writeRootFile(join(t.dir, 'root.json'), trust.root);
    const bundle = simBundle({ payload: randomBytes(3 * 1024 * 1024 + 5), version: '2.0.0', rollbackCounter: 2, chunkSize: 1 << 20, keys: [trust.releaseKey] });
    const srv = await serveArtifact(bundle.bytes);
    cleanup.push(srv.close);
    const broker = await startBroker();
    cleanup.push(broker.close);
    const obs = await observer(broker.url);
    cleanup.push(() => void obs.client.endAsync());
    writeFileSync(join(t.dir, 'agent.json'), JSON.stringify({ deviceId: 'sim-0001', brokerUrl: broker.url, serverUrl: new URL(srv.url).origin, trustRoot: 'root.json', devMode: true }));
    const config = await loadConfig(join(t.dir, 'agent.json'));
    const lines: string[] = [];
    const ac = new AbortController();
    const done = runSimAgent({ slotsDir: join(t.dir, 'board'), config, scheme: 'uboot-bootcount', board: 'qemu-virt', factoryVersion: '0.1.0', slotBytes: 8 * 1024 * 1024, log: (l) => lines.push(l), signal: ac.signal, maxBoots: 2 });
    const why = (w: string) => `${w}; agent said:\n${lines.join('\n')}`;
    await until(() => lines.includes('UZ-READY slot=A version=0.1.0'), 10_000, why('first boot ready'));
    const d: Desired = { v: 1, txid: 'tx-sim-1', deploymentId: 'dep-1', issuedAt: Date.now(), release: bundle.release(srv.url) };
    await obs.client.publishAsync(topics.desired('sim-0001'), encode('desired', d), { qos: 1, retain: true });
    await until(() => lines.includes('UZ-READY slot=B version=2.0.0'), 20_000, why('ready on the new slot'));
    ac.abort();
    await done;
    expect(lines.filter((l) => l.startsWith('UZ-BOOT')).map((l) => l.split(' ').slice(0, 3).join(' '))).toEqual(['UZ-BOOT slot=A version=0.1.0', 'UZ-BOOT slot=B version=2.0.0']);
    const phases = obs.seen.filter((m) => m.topic === topics.events('sim-0001')).map((m) => JSON.parse(m.payload.toString()).phase as string);
    expect([...new Set(phases)]).toEqual(['accepted', 'downloading', 'installing', 'rebooting', 'verifying', 'success']);
    // The CLI command, in-process (bin/cli.ts registers it with one line).
    const program = new Command().exitOverride();
    registerAgentCommands(program);
    let stdout = '';
    const write = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((chunk: string) => ((stdout += chunk), true)) as typeof process.stdout.write;
    try {
      await program.parseAsync(['node', 'uz', 'agent', 'status', '--json', '--slots', join(t.dir, 'board')]);
    } finally {
      process.stdout.write = write;
    }
    expect(JSON.parse(stdout)).toMatchObject({ state: 'idle', committed: { slot: 'B', version: '2.0.0' }, floor: 2, done: { txid: 'tx-sim-1', outcome: 'success' } });
  }, 60_000);
});

describe('agent config', () => {
  const ok = { deviceId: 'dev-0001', brokerUrl: 'mqtts://broker.example:8883', serverUrl: 'https://updates.example', trustRoot: '/etc/uz/root.json', tls: { cert: 'c.pem', key: 'k.pem' } };

  it('accepts a production config and fills defaults; the result is frozen', () => {
    const c = parseConfig(ok, 't');
    expect(c).toMatchObject({ channel: 'stable', devMode: false, stateDir: '/data/uz', transport: 'http', configVersion: 1 });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('rejects unknown keys, bad ids, plain TCP or missing client certs outside dev mode — with clear messages', () => {
    expect(() => parseConfig({ ...ok, brokr: 'x' }, 'agent.json')).toThrow(/agent.json: .*brokr/);
    expect(() => parseConfig({ ...ok, deviceId: 'A!' }, 'agent.json')).toThrow(/deviceId: device ids are/);
    expect(() => parseConfig({ ...ok, brokerUrl: 'mqtt://b:1883' }, 'agent.json')).toThrow(/brokerUrl: must use mqtts/);
    const { tls: _t, ...noTls } = ok;
    void _t;
    expect(() => parseConfig(noTls, 'agent.json')).toThrow(/tls: a client certificate/);
    expect(() => parseConfig({ ...noTls, brokerUrl: 'mqtt://10.0.2.2:1883', serverUrl: 'http://10.0.2.2:8080', devMode: true }, 'a')).not.toThrow();
    expect(() => parseConfig([], 'a')).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID' }));
  });

  it('environment overrides come from the schema keys (UZ_AGENT_BROKER_URL, UZ_AGENT_DEV_MODE)', () => {
    const c = parseConfig({ ...ok }, 't', { UZ_AGENT_BROKER_URL: 'mqtt://127.0.0.1:1883', UZ_AGENT_DEV_MODE: 'true', UZ_AGENT_KEEPALIVE_SECONDS: '10' });
    expect(c).toMatchObject({ brokerUrl: 'mqtt://127.0.0.1:1883', devMode: true, keepaliveSeconds: 10 });
  });

  it('loadConfig resolves relative paths against the file and reports a missing file', async () => {
    const t = tempDir();
    cleanup.push(t.cleanup);
    writeFileSync(join(t.dir, 'a.json'), JSON.stringify({ ...ok, trustRoot: 'root.json' }));
    expect((await loadConfig(join(t.dir, 'a.json'), {})).trustRoot).toBe(join(t.dir, 'root.json'));
    await expect(loadConfig(join(t.dir, 'nope.json'), {})).rejects.toMatchObject({ code: 'CONFIG_NOT_FOUND' });
    writeFileSync(join(t.dir, 'b.json'), '{ nope');
    await expect(loadConfig(join(t.dir, 'b.json'), {})).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
  });

  it('a card provisioned with uz-device.json maps onto the agent config (lab broker = dev mode; enrolled cert = TLS)', () => {
    const dev = { deviceName: 'pi-kitchen-07', server: { httpUrl: 'https://uz.example.com', mqttUrl: 'mqtts://uz.example.com:8883' }, channel: 'beta' };
    const prod = agentConfigFromDevice(dev, { trustRoot: '/etc/uz/trust/root.json', tls: { cert: '/data/uz/tls/device.crt', key: '/data/uz/tls/device.key' } });
    expect(prod).toMatchObject({ deviceId: 'pi-kitchen-07', brokerUrl: 'mqtts://uz.example.com:8883', serverUrl: 'https://uz.example.com', channel: 'beta', devMode: false });
    const lab = agentConfigFromDevice({ ...dev, server: { httpUrl: 'http://10.0.2.2:8080', mqttUrl: 'mqtt://10.0.2.2:1883' } }, { trustRoot: '/etc/uz/trust/root.json' });
    expect(lab).toMatchObject({ devMode: true, brokerUrl: 'mqtt://10.0.2.2:1883' });
  });
});
