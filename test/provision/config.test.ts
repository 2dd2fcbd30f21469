/**
 * uz-device.json as the agent reads it at boot: strict schema, field-named errors, and no secret (Wi-Fi PSK,
 * enroll token, or anything under a secret-looking key) in any error text — checked by example and by
 * property over random secrets planted in broken documents.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { deviceConfigConsoleLine, parseDeviceConfig, redactDeviceConfig, serializeDeviceConfig } from '../../firmware/provision/config.js';

const PSK = 'correct horse battery staple';
const TOKEN = 'enr_9f8e7d6c5b4a39281706f5e4d3c2b1a0';

function base(): Record<string, unknown> {
  return {
    formatVersion: 1,
    deviceName: 'pump-station-07',
    server: { httpUrl: 'https://uz.example.com', mqttUrl: 'mqtts://uz.example.com:8883' },
    wifi: { ssid: 'plant-floor', psk: PSK, country: 'DE' },
    enrollToken: TOKEN,
    appConfig: { RPC: { port: 8545 } },
    ntpServers: ['ntp.example.com', '192.0.2.1'],
    channel: 'beta',
  };
}

function fail(doc: unknown): { field: string; message: string; code: string } {
  const r = parseDeviceConfig(typeof doc === 'string' ? doc : JSON.stringify(doc));
  if (r.ok) throw new Error(`expected a failure for ${JSON.stringify(doc).slice(0, 200)}`);
  return r;
}

describe('parseDeviceConfig', () => {
  it('accepts a full config and applies defaults to a minimal one', () => {
    const r = parseDeviceConfig(JSON.stringify(base()));
    expect(r.ok).toBe(true);
    const min = parseDeviceConfig(JSON.stringify({ formatVersion: 1, deviceName: 'abc', server: { httpUrl: 'http://10.0.2.2:8080', mqttUrl: 'mqtt://10.0.2.2:1883' } }));
    expect(min).toEqual({
      ok: true,
      config: { formatVersion: 1, deviceName: 'abc', server: { httpUrl: 'http://10.0.2.2:8080', mqttUrl: 'mqtt://10.0.2.2:1883' }, ntpServers: [], channel: 'stable' },
    });
  });

  it('accepts what Windows editors write: a UTF-8 BOM and CRLF line ends', () => {
    const text = '\ufeff' + JSON.stringify(base(), null, 2).replace(/\n/g, '\r\n');
    expect(parseDeviceConfig(Buffer.from(text, 'utf8')).ok).toBe(true);
  });

  it('names the offending field', () => {
    const cases: Array<[(d: Record<string, any>) => void, string]> = [
      [(d) => (d.deviceName = 'Pump_7'), 'deviceName'],
      [(d) => (d.deviceName = '-abc'), 'deviceName'],
      [(d) => (d.deviceName = 'a'.repeat(64)), 'deviceName'],
      [(d) => (d.server.httpUrl = 'ftp://x'), 'server.httpUrl'],
      [(d) => (d.server.httpUrl = 'https://user:pw@x'), 'server.httpUrl'],
      [(d) => (d.server.mqttUrl = 'https://x'), 'server.mqttUrl'],
      [(d) => delete d.server.mqttUrl, 'server.mqttUrl'],
      [(d) => (d.wifi.psk = 'short'), 'wifi.psk'],
      [(d) => (d.wifi.psk = 12345678), 'wifi.psk'],
      [(d) => (d.wifi.ssid = 'x'.repeat(33)), 'wifi.ssid'],
      [(d) => (d.wifi.country = 'de'), 'wifi.country'],
      [(d) => (d.enrollToken = 'short'), 'enrollToken'],
      [(d) => (d.enrollToken = `${TOKEN} with spaces`), 'enrollToken'],
      [(d) => (d.appConfig = [1, 2]), 'appConfig'],
      [(d) => (d.ntpServers = ['ok.example', 'not a host!']), 'ntpServers.1'],
      [(d) => (d.channel = 'Beta'), 'channel'],
      [(d) => (d.extra = true), 'extra'],
      [(d) => (d.wifi.hidden = true), 'wifi.hidden'],
      [(d) => (d.formatVersion = 2), 'formatVersion'],
      [(d) => delete d.formatVersion, 'formatVersion'],
    ];
    for (const [mutate, field] of cases) {
      const d = base() as Record<string, any>;
      mutate(d);
      const f = fail(d);
      expect(f.code).toBe('DEVICE_CONFIG_INVALID');
      expect(f.field, JSON.stringify(d)).toBe(field);
      expect(f.message).not.toContain(PSK);
      expect(f.message).not.toContain(TOKEN);
    }
    expect(fail('{"formatVersion": 1,').field).toBe('(json)');
    expect(fail('[]').field).toBe('(root)');
    const r = parseDeviceConfig(Buffer.from([0x7b, 0xff, 0x7d]));
    expect(r.ok === false && r.field).toBe('(file)');
    expect(parseDeviceConfig('x'.repeat(70_000)).ok).toBe(false);
  });

  it('never puts the PSK or the token into an error, even when the JSON around them is broken', () => {
    const pretty = JSON.stringify(base(), null, 2);
    const broken = [
      pretty.replace(`"${PSK}"`, `"${PSK}`), // unterminated string
      pretty.replace(`"psk": "${PSK}"`, `"psk": ${PSK}`), // bare word
      pretty.replace(`"enrollToken": "${TOKEN}"`, `"enrollToken": ${TOKEN}`),
      pretty.replace('"channel": "beta"', '"channel": "beta",'),
      pretty.slice(0, pretty.indexOf(PSK) + 5),
      JSON.stringify({ ...base(), [PSK]: 1 }), // a secret pasted as a key
      JSON.stringify({ ...base(), wifi: { ssid: 'x', psk: PSK, [TOKEN]: true } }),
      JSON.stringify({ ...base(), deviceName: PSK }), // secret pasted into the wrong field
      JSON.stringify({ ...base(), channel: TOKEN }),
      JSON.stringify({ ...base(), appConfig: { password: 'hunter2-hunter2', nested: { apiKey: TOKEN } }, channel: 'BAD' }),
    ];
    for (const text of broken) {
      const r = parseDeviceConfig(text);
      expect(r.ok, text).toBe(false);
      if (r.ok) continue;
      for (const secret of [PSK, TOKEN, 'hunter2-hunter2', PSK.slice(0, 12), TOKEN.slice(0, 12)]) {
        expect(r.message, text).not.toContain(secret);
        expect(r.field).not.toContain(secret);
      }
      expect(deviceConfigConsoleLine(r)).toMatch(/^UZ-ERROR code=DEVICE_CONFIG_INVALID field=[A-Za-z0-9._()[\]-]+$/);
    }
  });

  it('property: random secrets in random broken documents never reach the message', () => {
    const secret = fc.string({ minLength: 8, maxLength: 40, unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !#%&*+-./:;<=>?@^_~'.split('')) });
    const breakage = fc.constantFrom('truncate', 'badkey', 'badtype', 'badname', 'bareword', 'wrongversion', 'secretAsName');
    fc.assert(
      fc.property(secret, secret, breakage, fc.nat(1000), (psk, token, how, cut) => {
        const doc = { ...base(), wifi: { ssid: 'net', psk }, enrollToken: token } as Record<string, any>;
        let text: string;
        switch (how) {
          case 'truncate': {
            const t = JSON.stringify(doc);
            text = t.slice(0, Math.min(t.length - 1, cut));
            break;
          }
          case 'badkey':
            text = JSON.stringify({ ...doc, unknownThing: psk });
            break;
          case 'badtype':
            text = JSON.stringify({ ...doc, ntpServers: psk });
            break;
          case 'badname':
            text = JSON.stringify({ ...doc, deviceName: `${token}!` });
            break;
          case 'bareword':
            text = JSON.stringify(doc).replace(JSON.stringify(psk), psk);
            break;
          case 'wrongversion':
            text = JSON.stringify({ ...doc, formatVersion: psk });
            break;
          default:
            text = JSON.stringify({ ...doc, channel: psk, [token]: 1 });
        }
        const r = parseDeviceConfig(text);
        if (r.ok) return; // some truncations/barewords can still be valid JSON of a valid document
        expect(r.message.includes(psk) && psk.trim().length >= 3).toBe(false);
        expect(r.message.includes(token) && token.trim().length >= 3).toBe(false);
        expect(r.field.includes(psk) || r.field.includes(token)).toBe(false);
      }),
      { numRuns: 400 },
    );
  });

  it('serialize/redact: round-trips, and the printable form hides secrets', () => {
    const text = serializeDeviceConfig(base() as never);
    const r = parseDeviceConfig(text);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    const shown = JSON.stringify(redactDeviceConfig(r.config));
    expect(shown).not.toContain(PSK);
    expect(shown).not.toContain(TOKEN);
    expect(shown).toContain('"psk":"(set)"');
    expect(() => serializeDeviceConfig({ ...base(), wifi: { ssid: 'x', psk: 'tiny' } } as never)).toThrow(/wifi\.psk/);
  });
});
