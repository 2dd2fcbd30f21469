/**
 * `uz provision` on real unikernel-z disk images (made by the builder's writer): only p1 changes, p1 stays
 * fsck-clean, mtools reads uz-device.json back, `--check` validates like the device, secrets never printed.
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addFat32File, readFat32 } from '../../firmware/fs/fat32.js';
import { DEVICE_CONFIG_FILE, parseDeviceConfig, serializeDeviceConfig, type DeviceConfigInput } from '../../firmware/provision/config.js';
import { checkProvisionedImage, provisionImage } from '../../firmware/provision/image.js';
import { fsckClean, hashExcept, makeTestImage, partitionInfo, readRange, run, tempDir, uz } from './helpers.js';

const PSK = 'S3cret Wifi Pass!';
const TOKEN = 'tok_0123456789abcdef0123456789abcdef';
let tmp: { dir: string; cleanup: () => void };
let image: string;
let p1: { offset: number; size: number };

beforeAll(async () => {
  tmp = tempDir('provision');
  image = join(tmp.dir, 'rpi4-1.2.3.img');
  await makeTestImage(image, { board: 'rpi4' });
  p1 = await partitionInfo(image, 1);
});
afterAll(() => tmp.cleanup());

const config: DeviceConfigInput = {
  formatVersion: 1,
  deviceName: 'sensor-0001',
  server: { httpUrl: 'https://uz.example.com', mqttUrl: 'mqtts://uz.example.com:8883' },
  wifi: { ssid: 'Plant Floor', psk: PSK, country: 'DE' },
  enrollToken: TOKEN,
  appConfig: { RPC: { HTTPHost: '0.0.0.0' } },
  ntpServers: ['pool.ntp.org'],
  channel: 'stable',
};

/** p1 of `img` as a standalone file, for fsck.fat. */
async function extractP1(img: string, name: string): Promise<string> {
  const out = join(tmp.dir, name);
  writeFileSync(out, await readRange(img, p1.offset, p1.size));
  return out;
}

describe('provisionImage', () => {
  it('writes uz-device.json into p1 of a copy; everything else byte-identical; fsck clean; mcopy reads it', async () => {
    const origHash = await hashExcept(image, 0, 0);
    const origOutsideP1 = await hashExcept(image, p1.offset, p1.offset + p1.size);
    const origP1 = await readRange(image, p1.offset, p1.size);
    const out = join(tmp.dir, 'sensor-0001.img');
    const r = await provisionImage({ image, config, out });
    expect(r.image).toBe(out);
    expect(r.bytesWritten).toBeGreaterThan(0);
    expect(r.bytesWritten).toBeLessThanOrEqual(6 * 4096);
    expect(JSON.stringify(r)).not.toContain(PSK);
    expect(JSON.stringify(r)).not.toContain(TOKEN);

    expect(await hashExcept(image, 0, 0)).toBe(origHash); // the source image is untouched
    expect(await hashExcept(out, p1.offset, p1.offset + p1.size)).toBe(origOutsideP1);

    const newP1 = await readRange(out, p1.offset, p1.size);
    const before = readFat32(origP1);
    const after = readFat32(newP1);
    expect(after.label).toBe('UZBOOT');
    expect(after.volumeId).toBe(before.volumeId);
    for (const e of before.list()) if (!e.isDir) expect(after.readFile(e.path).equals(before.readFile(e.path)), e.path).toBe(true);
    expect(after.list().map((e) => e.path).sort()).toEqual([...before.list().map((e) => e.path), DEVICE_CONFIG_FILE].sort());

    fsckClean(await extractP1(out, 'p1-a.img'));
    const mc = run('mcopy', ['-n', '-i', `${out}@@${p1.offset}`, `::${DEVICE_CONFIG_FILE}`, '-']);
    expect(mc.status, mc.stderr).toBe(0);
    expect(mc.stdout).toBe(serializeDeviceConfig(config));
    const parsed = parseDeviceConfig(mc.stdout);
    expect(parsed.ok && parsed.config.wifi?.psk).toBe(PSK);

    const check = await checkProvisionedImage(out);
    expect(check.ok).toBe(true);
    expect(JSON.stringify(check)).not.toContain(PSK);
    await expect(provisionImage({ image, config, out })).rejects.toMatchObject({ code: 'PROVISION_OUT_EXISTS' });
  });

  it('in place, and again: the second run replaces the file; the image stays clean', async () => {
    const img = join(tmp.dir, 'inplace.img');
    copyFileSync(image, img);
    const outside = await hashExcept(img, p1.offset, p1.offset + p1.size);
    await provisionImage({ image: img, config });
    const r = await provisionImage({ image: img, config: { ...config, deviceName: 'sensor-0002', wifi: undefined, enrollToken: undefined } });
    expect(r.replaced).toBe(true);
    expect(await hashExcept(img, p1.offset, p1.offset + p1.size)).toBe(outside);
    const p1file = await extractP1(img, 'p1-b.img');
    fsckClean(p1file);
    expect(readFileSync(p1file).indexOf(Buffer.from(PSK))).toBe(-1); // the old PSK is wiped, not just unlinked
    const check = await checkProvisionedImage(img);
    expect(check.ok && check.config.deviceName).toBe('sensor-0002');
  });

  it('works on a U-Boot board image (rpi3: p1 with firmware, U-Boot, boot.scr, uzboot.env)', async () => {
    const img = join(tmp.dir, 'rpi3.img');
    await makeTestImage(img, { board: 'rpi3' });
    const p = await partitionInfo(img, 1);
    const outside = await hashExcept(img, p.offset, p.offset + p.size);
    await provisionImage({ image: img, config });
    expect(await hashExcept(img, p.offset, p.offset + p.size)).toBe(outside);
    const vol = await readRange(img, p.offset, p.size);
    const f = join(tmp.dir, 'rpi3-p1.img');
    writeFileSync(f, vol);
    fsckClean(f);
    expect(readFat32(vol).readFile('uzboot.env').length).toBeGreaterThan(0);
    expect((await checkProvisionedImage(img)).ok).toBe(true);
  });

  it('refuses what is not a unikernel-z image, and invalid configs (without echoing secrets)', async () => {
    const junk = join(tmp.dir, 'junk.img');
    writeFileSync(junk, Buffer.alloc(1024 * 1024));
    await expect(provisionImage({ image: junk, config })).rejects.toMatchObject({ code: 'PROVISION_NOT_UZ_IMAGE' });
    const bad = provisionImage({ image, config: { ...config, wifi: { ssid: 'x', psk: 'short!' } }, out: join(tmp.dir, 'never.img') });
    await expect(bad).rejects.toMatchObject({ code: 'PROVISION_CONFIG_INVALID' });
    await bad.catch((e: Error) => expect(e.message).not.toContain('short!'));
  });
});

describe('uz provision CLI', () => {
  it('provisions a copy from secret files, prints no secret; --check passes', () => {
    const cwd = tmp.dir;
    writeFileSync(join(cwd, 'psk.txt'), `${PSK}\n`, { mode: 0o600 });
    writeFileSync(join(cwd, 'token.txt'), `${TOKEN}\n`, { mode: 0o600 });
    writeFileSync(join(cwd, 'app.json'), '{"RPC":{"HTTPHost":"0.0.0.0"}}');
    let r = uz(cwd, 'provision', image, '--device-name', 'cli-0001', '--server', 'https://uz.example.com', '--wifi-ssid', 'Plant Floor', '--wifi-psk-file', 'psk.txt',
      '--enroll-token-file', 'token.txt', '--app-config', 'app.json', '--ntp', 'time.example.com', '--out', 'cli.img', '--json');
    expect(r.code, r.err).toBe(0);
    for (const s of [PSK, TOKEN]) expect(r.out + r.err).not.toContain(s);
    const j = JSON.parse(r.out);
    expect(j.config.wifi.psk).toBe('(set)');
    expect(j.config.server.mqttUrl).toBe('mqtts://uz.example.com:8883');

    r = uz(cwd, 'provision', '--check', 'cli.img');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^ok: cli\.img: /);
    for (const s of [PSK, TOKEN]) expect(r.out + r.err).not.toContain(s);
  });

  it('--check reports a missing and a hand-broken file (exit 1, field named, no secret); argv secrets refused', async () => {
    const cwd = tmp.dir;
    let r = uz(cwd, 'provision', '--check', image);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^DEVICE_CONFIG_MISSING field=\(file\): /);

    // someone edits the file on their laptop and breaks the PSK
    const img = join(cwd, 'handedit.img');
    copyFileSync(image, img);
    const vol = await readRange(img, p1.offset, p1.size);
    const broken = serializeDeviceConfig(config).replace(`"psk": "${PSK}"`, `"psk": "${PSK}${'x'.repeat(60)}"`);
    addFat32File(vol, DEVICE_CONFIG_FILE, Buffer.from(broken));
    const { open } = await import('node:fs/promises');
    const fh = await open(img, 'r+');
    await fh.write(vol, 0, vol.length, p1.offset);
    await fh.close();
    r = uz(cwd, 'provision', '--check', img);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^DEVICE_CONFIG_INVALID field=wifi\.psk: /);
    expect(r.out + r.err).not.toContain(PSK);

    r = uz(cwd, 'provision', image, '--device-name', 'x-001', '--server', 'https://a.example', '--wifi-psk', 'argv-secret-123', '--out', 'no.img');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^uz: USAGE: .*--wifi-psk-file/);
    expect(r.out + r.err).not.toContain('argv-secret-123');
  });
});
