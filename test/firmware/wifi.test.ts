/**
 * Wi-Fi on boards that have it: the board field, the supplicant config the device renders from uz-device.json
 * (never the passphrase itself), the boot step as bundled into the image, the event filter of /etc/uz/wifi fed
 * with recorded wpa_supplicant output, the ELF library closure, and what the real images carry. The bring-up
 * itself runs on the emulated board in test/e2e/wifi-qemu.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { getBoard, listBoards, parseBoard } from '../../boards/index.js';
import { readLock, fetchLocked } from '../../firmware/debian/lock.js';
import { extractDeb, type DebEntry } from '../../firmware/debian/deb.js';
import { readFat32 } from '../../firmware/fs/fat32.js';
import { readCpio } from '../../firmware/initramfs/cpio.js';
import { readElfDynamic } from '../../firmware/initramfs/elf.js';
import { FileTree } from '../../firmware/initramfs/tree.js';
import { addElfClosure, wifiFirmwareFiles } from '../../firmware/initramfs/wifi.js';
import { bundleWifiHelper } from '../../firmware/agent-bundle.js';
import { isUzError } from '../../lib/errors.js';
import { planWifi, renderWifiEnv, renderWpaSupplicantConf, ssidForConsole, wpaPsk } from '../../updater/device/wifi.js';
import { ensureImage, readPartition } from '../helpers/images.js';
import { TEST_AP, wifiTestBoard } from '../helpers/wifi.js';

const dir = mkdtempSync(join(tmpdir(), 'uz-wifi-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const script = fileURLToPath(new URL('../../firmware/initramfs/files/wifi', import.meta.url));

const device = (wifi?: unknown) =>
  JSON.stringify({ formatVersion: 1, deviceName: 'pump-07', server: { httpUrl: 'https://uz.example.com', mqttUrl: 'mqtts://uz.example.com:8883' }, ...(wifi ? { wifi } : {}) });

describe('board data: wifi', () => {
  it('the Pi boards have Wi-Fi on wlan0 with brcmfmac (+ vendor modules, cfg80211); qemu-virt has none', () => {
    for (const b of listBoards()) {
      if (b.id === 'qemu-virt') {
        expect(b.wifi).toBeUndefined();
        continue;
      }
      expect(b.wifi?.interface, b.id).toBe('wlan0');
      expect(b.wifi?.firmware.length, b.id).toBeGreaterThan(0);
      for (const m of ['cfg80211', 'brcmfmac', 'brcmfmac_wcc']) expect(b.optionalModules, `${b.id} ${m}`).toContain(m);
    }
    expect(getBoard('rpi-zero-2w').wifi?.firmware).toContain('brcm/brcmfmac43430-sdio.raspberrypi,model-zero-2-w.txt');
    expect(getBoard('rpi4').wifi?.firmware).toContain('brcm/brcmfmac43455-sdio.raspberrypi,4-model-b.txt');
  });

  it('rejects a bad interface, unknown keys and firmware paths that climb out', () => {
    const good = JSON.parse(readFileSync('boards/rpi4.json', 'utf8'));
    expect(() => parseBoard({ ...good, wifi: { interface: 'wlan 0', firmware: [] } }, 'x.json')).toThrow(/wifi\.interface/);
    expect(() => parseBoard({ ...good, wifi: { interface: 'wlan0', psk: 'x' } }, 'x.json')).toThrow(/psk|Unrecognized/i);
    expect(() => parseBoard({ ...good, wifi: { interface: 'wlan0', firmware: ['../../etc/shadow'] } }, 'x.json')).toThrow(/wifi\.firmware/);
    expect(() => parseBoard({ ...good, wifi: { interface: 'wlan0', firmware: ['/abs/path'] } }, 'x.json')).toThrow(/wifi\.firmware/);
    expect(parseBoard({ ...good, wifi: { interface: 'wlan0' } }, 'x.json').wifi).toEqual({ interface: 'wlan0', firmware: [] });
  });

  it('the test board is qemu-virt plus simulated radios, and is not one of the product boards', () => {
    const t = wifiTestBoard();
    const q = getBoard('qemu-virt');
    expect(t.wifi).toEqual({ interface: 'wlan0', firmware: [] });
    expect(t.modules).toEqual([...q.modules, 'mac80211_hwsim', 'ccm', 'cmac']);
    expect({ ...t, id: q.id, name: q.name, modules: q.modules, wifi: undefined, verification: q.verification }).toEqual({ ...q, wifi: undefined });
    expect(listBoards().map((b) => b.id)).not.toContain(t.id);
  });

  it('every firmware file a board names is in the locked firmware-brcm80211 (symlinks resolved)', async () => {
    const lock = await readLock();
    const pkgs: Array<{ entries: DebEntry[] }> = [];
    for (const d of await fetchLocked(lock, 'wifi-firmware', { progress: false })) pkgs.push({ entries: (await extractDeb(d.path, { name: d.name, version: d.version })).entries });
    for (const b of listBoards().filter((x) => x.wifi)) {
      const files = wifiFirmwareFiles(b, pkgs);
      expect(files.map((f) => f.path), b.id).toEqual(b.wifi!.firmware.map((n) => `usr/lib/firmware/${n}`));
      for (const f of files) expect(f.data.length, f.path).toBeGreaterThan(100);
    }
    // The chips Debian has no firmware for (docs/boards.md): the Pi 400's 43456 and the Zero 2 W's 43430 rev 2.
    const missing = { ...getBoard('rpi4'), wifi: { interface: 'wlan0', firmware: ['brcm/brcmfmac43456-sdio.bin', 'brcm/brcmfmac43430b0-sdio.bin'] } };
    expect(() => wifiFirmwareFiles(missing, pkgs)).toThrow(/BOARD_WIFI_FIRMWARE_MISSING|43456-sdio\.bin, brcm\/brcmfmac43430b0/);
  }, 120_000);
});

describe('wpa_supplicant config rendered on the device', () => {
  it('derives the WPA key like wpa_passphrase (IEEE 802.11i vector) and passes 64 hex digits through', () => {
    expect(wpaPsk('IEEE', 'password')).toBe('f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e');
    expect(wpaPsk('x', 'AB'.repeat(32))).toBe('ab'.repeat(32));
  });

  it('the test access point is keyed with the passphrase the test provisions', () => {
    const ap = readFileSync('test/fixtures/wifi-ap/ap.conf', 'utf8');
    expect(ap).toContain(`ssid="${TEST_AP.ssid}"`);
    expect(ap).toContain(`psk=${wpaPsk(TEST_AP.ssid, TEST_AP.passphrase)}`);
  });

  it('holds only hex: quotes, # and backslashes in the passphrase or SSID cannot break the syntax', () => {
    const w = { ssid: 'caf\u00e9 "net" #1', psk: 'a"b#c\\d e\'f$(x)`y`', country: 'DE' };
    const conf = renderWpaSupplicantConf(w);
    expect(conf).toBe(
      [
        '# Written at boot by /etc/uz/wifi from uz-device.json (docs/provisioning.md). Mode 0600, tmpfs; never logged.',
        'country=DE',
        'network={',
        `\tssid=${Buffer.from(w.ssid).toString('hex')}`,
        '\tscan_ssid=1',
        '\tkey_mgmt=WPA-PSK WPA-PSK-SHA256',
        '\tieee80211w=1',
        `\tpsk=${wpaPsk(w.ssid, w.psk)}`,
        '}',
        '',
      ].join('\n'),
    );
    expect(conf).not.toContain(w.psk);
    expect(conf).not.toContain('mode=');
    expect(renderWpaSupplicantConf({ ssid: 'x', psk: '12345678' })).not.toContain('country=');
  });

  it('shows the SSID as one console token, and the env file survives sh whatever the SSID holds', () => {
    expect(ssidForConsole('plant-floor')).toBe('plant-floor');
    expect(ssidForConsole('uz lab-ap')).toBe('"uz lab-ap"');
    expect(ssidForConsole('a"b')).toBe('"a\\"b"');
    const nasty = `it's $(reboot) \`x\` "q" ;|&`;
    const env = renderWifiEnv({ state: 'configured', ssid: nasty, country: 'DE', conf: '' });
    writeFileSync(join(dir, 'env'), env);
    const r = spawnSync('sh', ['-c', `. "${join(dir, 'env')}"; printf '%s|%s|%s' "$UZ_WIFI_STATE" "$UZ_WIFI_SSID" "$UZ_WIFI_COUNTRY"`], { encoding: 'utf8' });
    expect(r.stdout).toBe(`configured|${JSON.stringify(nasty)}|DE`);
  });

  it('plans from uz-device.json: configured, unprovisioned (no file, no wifi), invalid (field only)', async () => {
    const f = join(dir, 'uz-device.json');
    expect(await planWifi(join(dir, 'absent.json'))).toEqual({ state: 'unprovisioned' });
    writeFileSync(f, device());
    expect(await planWifi(f)).toEqual({ state: 'unprovisioned' });
    writeFileSync(f, device({ ssid: 'home', psk: 'short' }));
    expect(await planWifi(f)).toEqual({ state: 'invalid', field: 'wifi.psk' });
    writeFileSync(f, device({ ssid: 'home', psk: 'correct horse battery', country: 'NL' }));
    const p = await planWifi(f);
    expect(p).toMatchObject({ state: 'configured', ssid: 'home', country: 'NL' });
    expect(JSON.stringify(p)).not.toContain('correct horse');
  });

  it('the bundled boot step writes the config and env file 0600 and prints nothing', async () => {
    const helper = join(dir, 'wifi.mjs');
    writeFileSync(helper, await bundleWifiHelper());
    const f = join(dir, 'dev.json');
    writeFileSync(f, device({ ssid: 'plant floor', psk: 'correct horse battery', country: 'DE' }));
    const out = join(dir, 'run');
    const r = spawnSync(process.execPath, [helper, f, join(out, 'wpa_supplicant.conf'), join(out, 'wifi.env')], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout + r.stderr).toBe('');
    for (const n of ['wpa_supplicant.conf', 'wifi.env']) expect(statSync(join(out, n)).mode & 0o777, n).toBe(0o600);
    expect(statSync(out).mode & 0o777).toBe(0o700);
    expect(readFileSync(join(out, 'wpa_supplicant.conf'), 'utf8')).toContain(`psk=${wpaPsk('plant floor', 'correct horse battery')}`);
    expect(readFileSync(join(out, 'wifi.env'), 'utf8')).toBe(`UZ_WIFI_STATE='configured'\nUZ_WIFI_SSID='"plant floor"'\nUZ_WIFI_COUNTRY='DE'\n`);
    // Malformed: only the env file, naming the field; no config left behind.
    writeFileSync(f, device({ ssid: 'plant floor', psk: 'short' }));
    const out2 = join(dir, 'run2');
    expect(spawnSync(process.execPath, [helper, f, join(out2, 'wpa_supplicant.conf'), join(out2, 'wifi.env')]).status).toBe(0);
    expect(readFileSync(join(out2, 'wifi.env'), 'utf8')).toBe(`UZ_WIFI_STATE='invalid'\nUZ_WIFI_FIELD='wifi.psk'\n`);
    expect(existsSync(join(out2, 'wpa_supplicant.conf'))).toBe(false);
  }, 60_000);
});

describe('/etc/uz/wifi --events: wpa_supplicant lines to console lines', () => {
  const events = (lines: string[], ssid = '"uz lab-ap"') => {
    const r = spawnSync('sh', [script, '--events', ssid], { input: `${lines.join('\n')}\n`, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    return r.stdout.trim().split('\n').filter(Boolean);
  };

  it('association (then DHCP), regulatory domain once, a drop and a reconnect', () => {
    expect(
      events([
        'Successfully initialized wpa_supplicant',
        'wlan0: CTRL-EVENT-REGDOM-CHANGE init=USER type=COUNTRY alpha2=DE',
        'wlan0: CTRL-EVENT-NETWORK-NOT-FOUND',
        'wlan0: CTRL-EVENT-NETWORK-NOT-FOUND',
        "wlan0: SME: Trying to authenticate with 02:00:00:00:01:00 (SSID='uz lab-ap' freq=2437 MHz)",
        'wlan0: WPA: Key negotiation completed with 02:00:00:00:01:00 [PTK=CCMP GTK=CCMP]',
        'wlan0: CTRL-EVENT-CONNECTED - Connection to 02:00:00:00:01:00 completed [id=0 id_str=]',
        'wlan0: CTRL-EVENT-REGDOM-CHANGE init=USER type=COUNTRY alpha2=DE',
        'wlan0: CTRL-EVENT-DISCONNECTED bssid=02:00:00:00:01:00 reason=4 locally_generated=1',
        'wlan0: CTRL-EVENT-DISCONNECTED bssid=02:00:00:00:01:00 reason=4 locally_generated=1',
        'wlan0: CTRL-EVENT-CONNECTED - Connection to 02:00:00:00:01:00 completed [id=0 id_str=]',
      ]),
    ).toEqual([
      'UZ-NET wifi regdomain=DE',
      'UZ-NET wifi ssid="uz lab-ap" state=searching reason=network-not-found',
      'UZ-NET wifi ssid="uz lab-ap" state=associated bssid=02:00:00:00:01:00',
      'DHCP',
      'UZ-NET wifi ssid="uz lab-ap" state=disconnected reason=4',
      'UZ-NET wifi ssid="uz lab-ap" state=associated bssid=02:00:00:00:01:00',
      'DHCP',
    ]);
  });

  it('a wrong key is one failure line however often the supplicant retries (recorded from the emulated board)', () => {
    const attempt = (n: number) => [
      "wlan0: Trying to associate with 02:00:00:00:01:00 (SSID='uz lab-ap' freq=2437 MHz)",
      'wlan0: Associated with 02:00:00:00:01:00',
      'wlan0: CTRL-EVENT-DISCONNECTED bssid=02:00:00:00:01:00 reason=15',
      'wlan0: WPA: 4-Way Handshake failed - pre-shared key may be incorrect',
      `wlan0: CTRL-EVENT-SSID-TEMP-DISABLED id=0 ssid="uz lab-ap" auth_failures=${n} duration=${10 * n} reason=WRONG_KEY`,
      'wlan0: CTRL-EVENT-SSID-REENABLED id=0 ssid="uz lab-ap"',
    ];
    expect(events([...attempt(1), ...attempt(2), ...attempt(3)])).toEqual(['UZ-NET wifi ssid="uz lab-ap" state=failed reason=wrong-key']);
  });

  it('other failures, an SSID that looks like a field, and a supplicant that exits', () => {
    expect(
      events(
        [
          'wlan0: CTRL-EVENT-SSID-TEMP-DISABLED id=0 ssid="reason=WRONG_KEY x" auth_failures=1 duration=10 reason=CONN_FAILED',
          'wlan0: CTRL-EVENT-ASSOC-REJECT bssid=02:00:00:00:01:00 status_code=17',
          'wlan0: CTRL-EVENT-AUTH-REJECT 02:00:00:00:01:00 auth_type=0 auth_transaction=2 status_code=1',
          'nl80211: Driver does not support authentication/association or connect commands',
          'UZ-WIFI-EXIT rc=255',
        ],
        '"reason=WRONG_KEY x"',
      ),
    ).toEqual([
      'UZ-NET wifi ssid="reason=WRONG_KEY x" state=failed reason=conn-failed',
      'UZ-NET wifi ssid="reason=WRONG_KEY x" state=failed reason=association-rejected status=17',
      'UZ-NET wifi ssid="reason=WRONG_KEY x" state=failed reason=authentication-rejected status=1',
      'UZ-NET wifi ssid="reason=WRONG_KEY x" state=failed reason=supplicant-exited rc=255 retry_in_s=30',
    ]);
  });

  it('keeps the raw lines in a bounded log, never on stdout', () => {
    const log = join(dir, 'events.log');
    const lines = Array.from({ length: 450 }, (_, i) => `wlan0: noise ${i}`);
    const r = spawnSync('sh', [script, '--events', 'x', log], { input: `${lines.join('\n')}\n`, encoding: 'utf8' });
    expect(r.stdout).toBe('');
    const kept = readFileSync(log, 'utf8').trim().split('\n');
    expect(kept.length).toBeLessThanOrEqual(400);
    expect(kept.at(-1)).toBe('wlan0: noise 449');
  });
});

/** A minimal ELF64 little-endian file with a .dynamic section (what readelf -d reads). */
function fakeElf(needed: string[], soname?: string): Buffer {
  const names = [...needed, ...(soname ? [soname] : [])];
  let strtab = Buffer.from([0]);
  const offsets = names.map((n) => {
    const o = strtab.length;
    strtab = Buffer.concat([strtab, Buffer.from(`${n}\0`, 'latin1')]);
    return o;
  });
  const strOff = 64;
  const dynOff = strOff + Math.ceil(strtab.length / 8) * 8;
  const entries: Array<[bigint, number]> = [...needed.map((_, i) => [1n, offsets[i]!] as [bigint, number]), ...(soname ? [[14n, offsets.at(-1)!] as [bigint, number]] : []), [0n, 0]];
  const dyn = Buffer.alloc(entries.length * 16);
  entries.forEach(([tag, val], i) => {
    dyn.writeBigInt64LE(tag, i * 16);
    dyn.writeBigUInt64LE(BigInt(val), i * 16 + 8);
  });
  const shOff = dynOff + dyn.length;
  const b = Buffer.alloc(shOff + 3 * 64);
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = 2;
  b[5] = 1;
  b[6] = 1;
  b.writeUInt16LE(3, 0x10); // ET_DYN
  b.writeUInt16LE(183, 0x12); // aarch64
  b.writeBigUInt64LE(BigInt(shOff), 0x28);
  b.writeUInt16LE(64, 0x3a);
  b.writeUInt16LE(3, 0x3c);
  strtab.copy(b, strOff);
  dyn.copy(b, dynOff);
  const sh = (i: number, type: number, off: number, size: number, link: number) => {
    const o = shOff + i * 64;
    b.writeUInt32LE(type, o + 4);
    b.writeBigUInt64LE(BigInt(off), o + 0x18);
    b.writeBigUInt64LE(BigInt(size), o + 0x20);
    b.writeUInt32LE(link, o + 0x28);
  };
  sh(1, 3, strOff, strtab.length, 0);
  sh(2, 6, dynOff, dyn.length, 1);
  return b;
}

describe('ELF library closure', () => {
  it('reads NEEDED and SONAME; a non-ELF or static file needs nothing', () => {
    expect(readElfDynamic(fakeElf(['libc.so.6', 'libnl-3.so.200'], 'libx.so.1'))).toEqual({ needed: ['libc.so.6', 'libnl-3.so.200'], soname: 'libx.so.1' });
    expect(readElfDynamic(Buffer.from('#!/bin/sh\n'))).toEqual({ needed: [] });
  });

  it('adds exactly the libraries reached, with their links, reusing what the root has', () => {
    const tree = new FileTree();
    tree.file('usr/lib/aarch64-linux-gnu/libc.so.6', fakeElf([]));
    tree.file('usr/sbin/wpa', fakeElf(['libfoo.so.1', 'libc.so.6']), 0o755);
    const pkgs = [
      {
        entries: [
          { path: 'usr/lib/aarch64-linux-gnu/libfoo.so.1', type: 'symlink' as const, mode: 0o777, linkname: 'libfoo.so.1.2.3' },
          { path: 'usr/lib/aarch64-linux-gnu/libfoo.so.1.2.3', type: 'file' as const, mode: 0o644, data: fakeElf(['libbar.so.2', 'libc.so.6']) },
          { path: 'lib/aarch64-linux-gnu/libbar.so.2', type: 'file' as const, mode: 0o644, data: fakeElf([]) },
          { path: 'usr/lib/aarch64-linux-gnu/libreadline.so.8', type: 'file' as const, mode: 0o644, data: fakeElf([]) },
          { path: 'usr/lib/aarch64-linux-gnu/libc.so.6', type: 'file' as const, mode: 0o644, data: Buffer.from('other libc') },
        ],
      },
    ];
    expect(addElfClosure(tree, 'usr/sbin/wpa', pkgs)).toEqual(['libbar.so.2', 'libfoo.so.1']);
    expect(tree.get('usr/lib/aarch64-linux-gnu/libfoo.so.1')).toEqual({ type: 'symlink', target: 'libfoo.so.1.2.3' });
    expect(tree.get('usr/lib/aarch64-linux-gnu/libfoo.so.1.2.3')?.type).toBe('file');
    expect(tree.has('usr/lib/aarch64-linux-gnu/libbar.so.2')).toBe(true);
    expect(tree.has('usr/lib/aarch64-linux-gnu/libreadline.so.8')).toBe(false);
    const libc = tree.get('usr/lib/aarch64-linux-gnu/libc.so.6');
    expect(libc?.type === 'file' && Buffer.from(libc.data).equals(fakeElf([]))).toBe(true); // the root's own libc stays
  });

  it('names a library nobody provides', () => {
    const tree = new FileTree();
    tree.file('usr/sbin/wpa', fakeElf(['libdbus-1.so.3']), 0o755);
    try {
      addElfClosure(tree, 'usr/sbin/wpa', []);
      expect.unreachable();
    } catch (e) {
      expect(isUzError(e, 'ROOTFS_LIB_MISSING')).toBe(true);
      expect((e as Error).message).toMatch(/usr\/sbin\/wpa needs libdbus-1\.so\.3/);
    }
  });
});

describe('what the images carry', () => {
  const listing = async (image: string) => {
    const stored = readFat32((await readPartition(image, 2)).buf).readFile('initrd.img');
    const cpio = stored[0] === 0x1f && stored[1] === 0x8b ? gunzipSync(stored) : stored;
    return new Map(readCpio(cpio).map((e) => [e.path, e]));
  };

  it('rpi4: wpa_supplicant with its libraries (no readline, no wpa_cli), regdb, firmware, the bring-up; qemu-virt: none of it', async () => {
    const rpi4 = await listing((await ensureImage('rpi4')).image);
    for (const f of [
      'etc/uz/wifi',
      'opt/uz/wifi.mjs',
      'usr/sbin/wpa_supplicant',
      'usr/lib/aarch64-linux-gnu/libnl-3.so.200',
      'usr/lib/aarch64-linux-gnu/libnl-genl-3.so.200',
      'usr/lib/aarch64-linux-gnu/libnl-route-3.so.200',
      'usr/lib/aarch64-linux-gnu/libdbus-1.so.3',
      'usr/lib/firmware/regulatory.db',
      'usr/lib/firmware/regulatory.db.p7s',
      'usr/lib/firmware/brcm/brcmfmac43455-sdio.bin',
      'usr/lib/firmware/brcm/brcmfmac43455-sdio.clm_blob',
      'usr/lib/firmware/brcm/brcmfmac43455-sdio.raspberrypi,4-model-b.txt',
      'usr/bin/pidof',
    ]) {
      expect(rpi4.has(f), f).toBe(true);
    }
    for (const f of ['usr/sbin/wpa_cli', 'usr/bin/wpa_passphrase', 'usr/lib/aarch64-linux-gnu/libreadline.so.8', 'usr/bin/udhcpd', 'usr/bin/dbus-daemon', 'etc/wpa_supplicant/functions.sh']) {
      expect(rpi4.has(f), f).toBe(false);
    }
    expect(rpi4.get('etc/uz/build.env')!.data.toString()).toContain("UZ_WIFI_IF='wlan0'");
    expect(rpi4.get('etc/uz/rcS')!.data.toString()).toContain('[ -x /etc/uz/wifi ] && /etc/uz/wifi &');

    const qemu = await listing((await ensureImage('qemu-virt')).image);
    for (const f of ['etc/uz/wifi', 'opt/uz/wifi.mjs', 'usr/sbin/wpa_supplicant', 'usr/lib/firmware/regulatory.db']) expect(qemu.has(f), f).toBe(false);
    expect(qemu.get('etc/uz/build.env')!.data.toString()).not.toContain('UZ_WIFI_IF');
  }, 600_000);
});
