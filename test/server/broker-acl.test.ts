// ONE broker contract (broker-contract.ts) over every broker setup: embedded Aedes with passwords and with
// mutual TLS (fleet CA), a real Mosquitto started from the shipped mosquitto.conf (mutual TLS) and
// mosquitto-dev.conf (passwords) with the shipped ACL, the uz server connected to it as uz.server.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe } from 'vitest';
import { createCsr, generateRsaKeyPem, initCaDir, issueDeviceCertificate, loadCaDir } from '../../firmware/ca/index.js';
import { simPassword } from '../../server/sim.js';
import { SERVER_IDENTITY } from '../../server/pki.js';
import { brokerContract, type BrokerFixture } from './broker-contract.js';
import { testServer, tmp } from './helpers.js';
import { deviceCerts, makeTlsFiles, startMosquitto } from './mosquitto-harness.js';

const IDS = ['acl-dev-a', 'acl-dev-b'];
const PW = (id: string) => simPassword('acl', id);

function open(url: string, o: IClientOptions): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...o });
    c.once('connect', () => resolve(c));
    c.once('error', (e) => (c.end(true), reject(e)));
    c.once('close', () => reject(new Error('connection closed before CONNACK')));
  });
}

type Setup = () => Promise<BrokerFixture>;

const aedesPassword: Setup = async () => {
  const t = await testServer();
  return {
    t, foreignSubscribe: 'refused', forbiddenPublish: 'disconnects', foreignClientId: 'refused',
    connect: (id, o = {}) => open(t.urls!.mqtt, { clientId: o.clientId ?? id, username: id, password: PW(id) }),
    stop: () => t.server.close(),
  };
};

const aedesTls: Setup = async () => {
  const caDir = join(tmp('uz-acl-ca-'), 'ca');
  await initCaDir({ out: caDir, name: 'acl' });
  const ca = await loadCaDir(caDir);
  const t = await testServer({ config: { caDir, mqtt: { tlsPort: 0 } } });
  const key = await generateRsaKeyPem(2048);
  const certs = new Map<string, string>();
  for (const id of IDS) {
    const c = issueDeviceCertificate(ca, createCsr(id, key), id);
    await t.server.ctx.storage.registerDevice({ id, secretHash: null, now: Date.now(), enrollment: 'approved' });
    await t.server.ctx.storage.setEnrollment(id, { certSerial: c.serial });
    certs.set(id, c.certPem);
  }
  return {
    t, foreignSubscribe: 'refused', forbiddenPublish: 'disconnects', foreignClientId: 'refused',
    connect: (id, o = {}) => open(t.urls!.mqtts!, { clientId: o.clientId ?? id, ca: ca.certPem, cert: certs.get(id)!, key }),
    stop: () => t.server.close(),
  };
};

const mosquittoTls: Setup = async () => {
  const tls = await makeTlsFiles();
  const m = await startMosquitto({ variant: 'tls', tls });
  const certs = await deviceCerts(tls.ca, IDS);
  const files = tmp('uz-acl-id-');
  writeFileSync(join(files, 'ca.crt'), tls.caPem);
  writeFileSync(join(files, 'server.crt'), tls.identity.certPem);
  writeFileSync(join(files, 'server.key'), tls.identity.keyPem, { mode: 0o600 });
  const t = await testServer({ config: { mqtt: { url: `mqtts://127.0.0.1:${m.serverPort}`, caFile: join(files, 'ca.crt'), certFile: join(files, 'server.crt'), keyFile: join(files, 'server.key') } } });
  return {
    t, foreignSubscribe: 'filtered', forbiddenPublish: 'dropped', foreignClientId: 'replaced',
    connect: (id, o = {}) => open(`mqtts://127.0.0.1:${m.devicePort}`, { clientId: o.clientId ?? id, ca: tls.caPem, cert: certs.get(id)!.cert, key: certs.get(id)!.key }),
    stop: async () => {
      await t.server.close();
      await m.stop();
    },
  };
};

const mosquittoDev: Setup = async () => {
  const serverPassword = 'server-' + simPassword('acl', 'server');
  const m = await startMosquitto({ variant: 'dev', serverPassword, devices: new Map(IDS.map((id) => [id, PW(id)])) });
  const t = await testServer({ config: { mqtt: { url: `mqtt://127.0.0.1:${m.serverPort}`, username: SERVER_IDENTITY, password: serverPassword } } });
  return {
    t, foreignSubscribe: 'filtered', forbiddenPublish: 'dropped', foreignClientId: 'replaced',
    connect: (id, o = {}) => open(`mqtt://127.0.0.1:${m.devicePort}`, { clientId: o.clientId ?? id, username: id, password: PW(id) }),
    stop: async () => {
      await t.server.close();
      await m.stop();
    },
  };
};

const setups: [string, Setup][] = [
  ['embedded Aedes, passwords', aedesPassword],
  ['embedded Aedes, mutual TLS (fleet CA)', aedesTls],
  ['Mosquitto, shipped mosquitto.conf (mutual TLS)', mosquittoTls],
  ['Mosquitto, shipped mosquitto-dev.conf (passwords)', mosquittoDev],
];

describe.each(setups)('broker contract: %s', (_name, setup) => {
  let f: BrokerFixture;
  beforeAll(async () => {
    f = await setup();
  }, 60_000);
  afterAll(async () => {
    await f?.stop();
  });
  brokerContract(() => f);
});


