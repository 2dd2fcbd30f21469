// The broker contract: every broker the server can run with (embedded Aedes, external Mosquitto; password or
// certificate identities) must keep devices apart exactly like this. test/server/broker-acl.test.ts runs it.
import { expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import { encode, topics } from '../../lib/protocol.js';
import type { TestServer } from './helpers.js';

export interface BrokerFixture {
  /** The uz server using this broker. */
  t: TestServer;
  /** Connects as a device (password or certificate identity); `clientId` overrides the MQTT client id. */
  connect(id: string, o?: { clientId?: string }): Promise<MqttClient>;
  /** Aedes refuses a subscription outside the ACL (SUBACK 0x80); Mosquitto 2.0 grants it and filters delivery. */
  foreignSubscribe: 'refused' | 'filtered';
  /** Aedes disconnects on a forbidden publish; Mosquitto drops it (MQTT 3.1.1 has no publish NACK). */
  forbiddenPublish: 'disconnects' | 'dropped';
  /** Aedes refuses a client id that is not the identity; Mosquitto replaces it with the identity (use_username_as_clientid). */
  foreignClientId: 'refused' | 'replaced';
  stop(): Promise<void>;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export async function until<T>(f: () => Promise<T> | T, ms = 10_000, what = 'condition'): Promise<NonNullable<T>> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

export const statusMsg = (id: string, version = '1.0.0') => encode('status', {
  v: 1, deviceId: id, ts: Date.now(), board: 'rpi4', version, slot: 'A', rollbackCounter: 1, bootControl: { primary: 'A', tryPending: null, bad: [] },
  state: 'idle', workload: { name: 'app', version: '1', healthy: true, detail: '', restarts: 0 },
});
const evil = (txid: string) => encode('desired', { v: 1, txid, deploymentId: null, issuedAt: 1, release: null });

export function brokerContract(fx: () => BrokerFixture, A = 'acl-dev-a', B = 'acl-dev-b'): void {
  it('device A can neither read nor write device B, nor publish desired; the server still reaches both', async () => {
    const { t, connect, foreignSubscribe, forbiddenPublish } = fx();
    const st = t.server.ctx.storage;
    let a = await connect(A);
    const b = await connect(B);
    const seenByA: string[] = [];
    const seenByB: string[] = [];
    const watchA = (c: MqttClient) => c.on('message', (topic, p) => seenByA.push(`${topic} ${p.toString().slice(0, 40)}`));
    watchA(a);
    b.on('message', (topic, p) => seenByB.push(`${topic} ${p.toString().slice(0, 40)}`));
    const grant = (c: MqttClient, filter: string) => new Promise<number>((res) => c.subscribe(filter, { qos: 1 }, (err, g) => res(err ? 128 : g![0]!.qos)));
    const foreign = [topics.desired(B), topics.response(B), 'uz/v1/dev/+/status', 'uz/v1/dev/+/desired', '#'];
    const grants: number[] = [];
    for (const f of foreign) grants.push(await grant(a, f));
    expect(await grant(a, topics.desired(A))).toBe(1);
    expect(await grant(b, topics.desired(B))).toBe(1);
    if (foreignSubscribe === 'refused') expect(grants).toEqual(foreign.map(() => 128));

    // allowed traffic flows: B's and A's own status reach the server
    await b.publishAsync(topics.status(B), statusMsg(B), { qos: 1 });
    await a.publishAsync(topics.status(A), statusMsg(A), { qos: 1 });
    await until(async () => (await st.getDevice(B))?.status?.version === '1.0.0' && (await st.getDevice(A))?.status, 10_000, 'both statuses stored');

    // the server's desired state reaches B and only B (positive control: "A saw nothing" is not vacuous)
    t.server.ctx.devices.publishDesired(B, { v: 1, txid: 'for-b', deploymentId: null, issuedAt: 1, release: null });
    await until(() => seenByB.some((m) => m.includes('for-b')), 5000, 'B received its desired state');

    // forbidden publishes: B's desired, A's own desired, B's status, B's response
    const forbidden: [string, Buffer][] = [
      [topics.desired(B), evil('evil-b')],
      [topics.desired(A), evil('evil-a')],
      [topics.status(B), statusMsg(B, '6.6.6')],
      [topics.response(B), Buffer.from('{"v":1,"txid":"x","status":"ok"}')],
    ];
    for (const [topic, payload] of forbidden) {
      if (forbiddenPublish === 'disconnects') {
        const closed = new Promise<void>((r) => a.once('close', () => r()));
        a.publish(topic, payload, { qos: 1 });
        await closed;
        a = await connect(A);
        watchA(a);
        await grant(a, topics.desired(A));
      } else {
        a.publish(topic, payload, { qos: 1 });
      }
    }
    await sleep(400);
    expect(seenByA.filter((m) => !m.startsWith(`${topics.desired(A)} `) || m.includes('evil'))).toEqual([]); // nothing of B's, no forged desired
    expect(seenByB.filter((m) => !m.includes('for-b'))).toEqual([]);
    expect((await st.getDevice(B))!.status!.version).toBe('1.0.0');
    expect(b.connected).toBe(true);
    await a.endAsync(true);
    await b.endAsync(true);
  });

  it('a device cannot take over another device\'s session by using its client id', async () => {
    const { t, connect, foreignClientId } = fx();
    const b = await connect(B);
    const seenByB: string[] = [];
    await b.subscribeAsync(topics.desired(B), { qos: 1 });
    b.on('message', (topic) => seenByB.push(topic));
    if (foreignClientId === 'refused') {
      await expect(connect(A, { clientId: B })).rejects.toThrow();
    } else {
      const a = await connect(A, { clientId: B }); // the broker makes it A again
      a.publish(topics.status(B), statusMsg(B, '6.6.6'), { qos: 1 });
      await sleep(300);
      await a.endAsync(true);
    }
    await sleep(200);
    expect(b.connected).toBe(true);
    expect((await t.server.ctx.storage.getDevice(B))?.status?.version ?? '1.0.0').toBe('1.0.0');
    await b.endAsync(true);
  });
}
