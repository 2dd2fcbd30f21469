// The MQTT agent against a real embedded broker (Aedes on 127.0.0.1): connect out, presence + last will,
// retained status, fuzzed payloads rejected without harm, persistent session across a dropped connection,
// block requests matched by txid.
import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { StatusSchema, decode, encode, topics, type Desired } from '../../lib/protocol.js';
import { MqttAgent, type AgentDeps } from '../../updater/agent.js';
import { parseConfig } from '../../updater/config.js';
import type { StateRecord } from '../../updater/state/store.js';
import { rng, observer, startBroker, until, type TestBroker } from './helpers.js';

const ID = 'dev-0001';
let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => {});
  cleanup = [];
});

const record: StateRecord = { v: 1, state: 'idle', update: null, committed: { slot: 'A', version: '1.0.0', rollbackCounter: 1 }, floor: 1, done: null, lastError: null, savedAt: 0 };

function fakeEngine() {
  const offered: Desired[] = [];
  return { offered, engine: { offer: async (d: Desired) => (offered.push(d), 'started' as const), record, bootedSlot: 'A' as const } };
}

async function agentOn(broker: TestBroker, over: Partial<AgentDeps> = {}) {
  const logs: string[] = [];
  const config = parseConfig({ deviceId: ID, brokerUrl: broker.url, serverUrl: 'http://127.0.0.1:1', trustRoot: '/x', devMode: true, keepaliveSeconds: 5 }, 'test');
  const agent = new MqttAgent({
    config,
    log: (l) => logs.push(l),
    statusExtra: async () => ({ board: 'qemu-virt', version: '1.0.0', workload: { name: 'demo', version: '1', healthy: true, detail: 'ok', restarts: 0 }, bootControl: { primary: 'A', tryPending: null, bad: [] } }),
    reconnect: { baseMs: 20, capMs: 200 },
    requestTimeoutMs: 500,
    ...over,
  });
  const fe = fakeEngine();
  agent.attach(fe.engine);
  agent.start();
  cleanup.push(() => agent.stop());
  return { agent, logs, ...fe };
}

const desired = (txid: string): Desired => ({
  v: 1,
  txid,
  deploymentId: 'dep',
  issuedAt: 1,
  release: { version: '2.0.0', board: 'qemu-virt', rollbackCounter: 2, bundleUrl: 'http://127.0.0.1:1/b.uzb', size: 1000, sha256: 'a'.repeat(64) },
});

describe('MQTT agent with a real broker', () => {
  it('connects out, announces presence (retained) and a schema-valid retained status, and takes desired releases', async () => {
    const broker = await startBroker();
    cleanup.push(broker.close);
    const obs = await observer(broker.url);
    cleanup.push(() => obs.client.endAsync());
    const a = await agentOn(broker);
    await until(() => a.agent.connected, 5000, 'connect');
    await until(() => obs.seen.some((m) => m.topic === topics.status(ID)), 5000, 'status');
    const presence = obs.seen.find((m) => m.topic === topics.presence(ID))!;
    expect(JSON.parse(presence.payload.toString())).toMatchObject({ v: 1, online: true });
    const status = obs.seen.find((m) => m.topic === topics.status(ID))!;
    expect(StatusSchema.safeParse(JSON.parse(status.payload.toString())).success).toBe(true);
    await obs.client.publishAsync(topics.desired(ID), encode('desired', desired('t1')), { qos: 1, retain: true });
    await until(() => a.offered.length === 1, 5000, 'desired');
    expect(a.offered[0]!.txid).toBe('t1');
  });

  it('fuzzed and oversized payloads are rejected with a reason and the agent keeps working', async () => {
    const broker = await startBroker();
    cleanup.push(broker.close);
    const obs = await observer(broker.url);
    cleanup.push(() => obs.client.endAsync());
    const a = await agentOn(broker);
    await until(() => a.agent.connected, 5000, 'connect');
    const r = rng(42);
    const valid = encode('desired', desired('tx-ok')).toString();
    const fuzz: Buffer[] = [Buffer.alloc(0), Buffer.from('null'), Buffer.from('[]'), Buffer.from('{"v":1}'), Buffer.alloc(300 * 1024, 0x7b), Buffer.from('{"__proto__":{"x":1},"v":1}')];
    for (let i = 0; i < 120; i++) {
      const kind = i % 3;
      if (kind === 0) fuzz.push(randomBytes(1 + Math.floor(r() * 400)));
      else if (kind === 1) {
        // mutate one character of a valid message
        const at = Math.floor(r() * valid.length);
        fuzz.push(Buffer.from(valid.slice(0, at) + String.fromCharCode(32 + Math.floor(r() * 90)) + valid.slice(at + 1)));
      } else {
        const obj = JSON.parse(valid) as Record<string, unknown>;
        const keys = Object.keys(obj);
        obj[keys[Math.floor(r() * keys.length)]!] = [null, -1, 'x'.repeat(5000), {}, [], 1e308][Math.floor(r() * 6)];
        fuzz.push(Buffer.from(JSON.stringify(obj)));
      }
    }
    for (const f of fuzz) await obs.client.publishAsync(topics.desired(ID), f, { qos: 1 });
    await obs.client.publishAsync(topics.response(ID), Buffer.from('{"v":1,"txid":"nope","status":"ok"}'), { qos: 1 });
    await obs.client.publishAsync(topics.desired(ID), encode('desired', desired('t-after')), { qos: 1 });
    await until(() => a.offered.some((d) => d.txid === 't-after'), 8000, 'the valid message after the fuzz');
    // Every fuzzed payload that does not decode must have been rejected and logged; none crashed the agent.
    const expectedRejects = fuzz.filter((f) => !decode('desired', f).ok).length;
    expect(a.agent.stats.rejected).toBe(expectedRejects + 1);
    expect(a.logs.filter((l) => l.startsWith('UZ-REJECT')).length).toBe(expectedRejects + 1);
    expect(a.logs.some((l) => /code=MSG_TOO_LARGE/.test(l))).toBe(true);
    expect(a.agent.connected).toBe(true);
  }, 20_000);

  it('the broker publishes the retained last will {online:false} when the device vanishes', async () => {
    const broker = await startBroker();
    cleanup.push(broker.close);
    const obs = await observer(broker.url);
    cleanup.push(() => obs.client.endAsync());
    const a = await agentOn(broker);
    await until(() => a.agent.connected, 5000, 'connect');
    a.agent.kill();
    await until(() => obs.seen.some((m) => m.topic === topics.presence(ID) && JSON.parse(m.payload.toString()).online === false), 5000, 'last will');
  });

  it('reconnects with backoff after a dropped connection; the persistent session delivers what was sent meanwhile', async () => {
    const broker = await startBroker();
    cleanup.push(broker.close);
    const obs = await observer(broker.url);
    cleanup.push(() => obs.client.endAsync());
    const a = await agentOn(broker, { reconnect: { baseMs: 400, capMs: 400 }, random: () => 1 });
    await until(() => a.agent.connected, 5000, 'connect');
    const stream = (a.agent as unknown as { client: { stream: { destroy: () => void } } }).client.stream;
    stream.destroy();
    await until(() => !a.agent.connected, 2000, 'disconnect');
    await new Promise((r) => setTimeout(r, 100));
    await obs.client.publishAsync(topics.desired(ID), encode('desired', desired('while-away')), { qos: 1 });
    await until(() => a.agent.stats.connects === 2, 5000, 'reconnect');
    await until(() => a.offered.some((d) => d.txid === 'while-away'), 5000, 'queued message');
    expect(a.logs.some((l) => /reconnecting in 400 ms/.test(l))).toBe(true);
  });

  it('block requests are answered by txid; a silent server times out with MQTT_TIMEOUT', async () => {
    const broker = await startBroker();
    cleanup.push(broker.close);
    const server = await observer(broker.url, topics.request(ID));
    cleanup.push(() => server.client.endAsync());
    const a = await agentOn(broker);
    await until(() => a.agent.connected, 5000, 'connect');
    const data = randomBytes(1000);
    let answer = true;
    server.client.on('message', (_t, payload) => {
      const r = decode('request', payload);
      if (!r.ok || r.value.type !== 'block' || !answer) return;
      const { txid, offset, length } = r.value;
      void server.client.publishAsync(topics.response(ID), encode('response', { v: 1, txid, status: 'ok', data: { type: 'block', offset, dataB64: data.subarray(offset, offset + length).toString('base64'), eof: offset + length >= data.length } }), { qos: 1 });
    });
    const got = await a.agent.requestBlock('b'.repeat(64), 100, 200, new AbortController().signal);
    expect(got.offset).toBe(100);
    expect(got.data.equals(data.subarray(100, 300))).toBe(true);
    answer = false;
    await expect(a.agent.requestBlock('b'.repeat(64), 0, 10, new AbortController().signal)).rejects.toMatchObject({ code: 'MQTT_TIMEOUT' });
  });
});
