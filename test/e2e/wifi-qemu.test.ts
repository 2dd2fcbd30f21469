// Wi-Fi for real on the emulated board: the test board is qemu-virt plus the kernel's simulated radios
// (mac80211_hwsim, two on one simulated medium; test/helpers/wifi.ts). Its workload is a TEST-ONLY access point
// (test/fixtures/wifi-ap: wpa_supplicant in AP mode + busybox udhcpd on wlan1). The card is provisioned with
// `uz provision --wifi-ssid … --wifi-psk-file … --wifi-country DE`, exactly as a user would, and the image's own
// bring-up (/etc/uz/wifi: wpa_supplicant + udhcpc on wlan0) must associate, get a lease and say so on the console.
// A second boot with a wrong passphrase must print a clear failure line and still reach UZ-READY. The passphrase
// (and the key derived from it) must never appear on the console.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { requireQemu } from '../../firmware/qemu.js';
import { wpaPsk } from '../../updater/device/wifi.js';
import { copyImage, runDir } from '../helpers/images.js';
import { QemuSession } from '../helpers/qemu-session.js';
import { ensureWifiImage, TEST_AP } from '../helpers/wifi.js';

const BOOT_MS = 5 * 60_000;
const SSID = '"uz lab-ap"'; // as the console shows it (it has a space)

function provision(disk: string, name: string, passphrase: string): void {
  const pskFile = join(runDir(), `${name}-${process.pid}.psk`);
  writeFileSync(pskFile, `${passphrase}\n`, { mode: 0o600 });
  const r = spawnSync(
    process.execPath,
    ['bin/uz.js', 'provision', disk, '--device-name', name, '--server', 'http://10.0.2.100:8080', '--wifi-ssid', TEST_AP.ssid, '--wifi-psk-file', pskFile, '--wifi-country', 'DE'],
    { encoding: 'utf8' },
  );
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout + r.stderr).not.toContain(passphrase);
}

/** Every form of the secret that must stay off the console. */
function secrets(passphrase: string): string[] {
  return [passphrase, wpaPsk(TEST_AP.ssid, passphrase), 'battery\\staple', 'wrong-but-long'];
}

describe('emulated board with Wi-Fi (mac80211_hwsim)', () => {
  let board: QemuSession | undefined;
  afterEach(async () => {
    await board?.stop();
    board = undefined;
  });

  it('associates with the provisioned network, sets the country, gets a DHCP lease on wlan0; the PSK never reaches the console', async () => {
    requireQemu();
    let t = Date.now();
    const image = await ensureWifiImage();
    process.stderr.write(`    [timing] Wi-Fi test image ready: ${((Date.now() - t) / 1000).toFixed(1)} s\n`);
    const disk = await copyImage(image, 'wifi-good');
    provision(disk, 'qemu-wifi-01', TEST_AP.passphrase);

    t = Date.now();
    board = new QemuSession(disk, []);
    await board.waitFor(new RegExp(`^UZ-NET wifi ssid=${SSID} state=starting interface=wlan0 country=DE$`), BOOT_MS);
    const [assoc, bound] = await Promise.all([
      board.waitFor(new RegExp(`^UZ-NET wifi ssid=${SSID} state=associated bssid=02:00:00:00:01:00$`), BOOT_MS),
      board.waitFor(/^UZ-NET bound interface=wlan0 ip=192\.168\.77\.\d+ router=$/, BOOT_MS),
      board.waitFor(/^UZ-NET wifi regdomain=DE$/, BOOT_MS),
      board.waitFor(/^UZ-READY slot=A version=1\.0\.0$/, BOOT_MS),
    ]);
    process.stderr.write(`    [timing] Wi-Fi boot: associated and leased in ${((Date.now() - t) / 1000).toFixed(1)} s\n`);
    expect(assoc).toBeTruthy();
    const ip = /ip=(192\.168\.77\.\d+)/.exec(bound)![1]!;
    const last = Number(ip.split('.')[3]);
    expect(last).toBeGreaterThanOrEqual(100); // from the test AP's udhcpd pool
    expect(last).toBeLessThanOrEqual(150);

    const uz = board.uzLines();
    expect(uz.filter((l) => / state=(failed|off)/.test(l))).toEqual([]);
    expect(uz.filter((l) => l.startsWith('UZ-ERROR'))).toEqual([]);
    const all = board.lines.join('\n');
    for (const s of secrets(TEST_AP.passphrase)) expect(all, 'secret on the console').not.toContain(s);
  }, BOOT_MS + 300_000);

  it('a wrong passphrase gives one clear failure line, no lease, and the board still becomes READY', async () => {
    requireQemu();
    const image = await ensureWifiImage();
    const disk = await copyImage(image, 'wifi-wrong');
    const wrong = 'wrong-but-long "passphrase" #2';
    provision(disk, 'qemu-wifi-02', wrong);

    const t = Date.now();
    board = new QemuSession(disk, []);
    await Promise.all([
      board.waitFor(new RegExp(`^UZ-NET wifi ssid=${SSID} state=failed reason=wrong-key$`), BOOT_MS),
      board.waitFor(/^UZ-READY slot=A version=1\.0\.0$/, BOOT_MS),
    ]);
    process.stderr.write(`    [timing] wrong-passphrase boot: failure line and READY in ${((Date.now() - t) / 1000).toFixed(1)} s\n`);
    // The supplicant keeps retrying (and failing) meanwhile: still exactly one line, and never a lease.
    await new Promise((r) => setTimeout(r, 15_000));
    const uz = board.uzLines();
    expect(uz.filter((l) => l.includes('reason=wrong-key'))).toHaveLength(1);
    expect(uz.filter((l) => / state=associated|^UZ-NET bound interface=wlan0/.test(l))).toEqual([]);
    expect(uz.filter((l) => l.startsWith('UZ-ERROR code=AGENT_CRASH'))).toEqual([]);
    const all = board.lines.join('\n');
    for (const s of secrets(wrong)) expect(all, 'secret on the console').not.toContain(s);
  }, BOOT_MS + 120_000);
});
