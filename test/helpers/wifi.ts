import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseBoard, type Board } from '../../boards/index.js';
import { buildImage } from '../../firmware/build.js';
import { buildOnce, runDir, TEST_EPOCH } from './images.js';

/** The test access point's network (test/fixtures/wifi-ap/ap.conf holds the same SSID and this passphrase's PSK). */
export const TEST_AP = { ssid: 'uz lab-ap', passphrase: 'c0rrect "horse" #battery\\staple' };
export const TEST_AP_APP = fileURLToPath(new URL('../fixtures/wifi-ap/app.json', import.meta.url));

/**
 * TEST ONLY: the emulated board with Wi-Fi. Exactly qemu-virt (read from its board file, so it follows it) plus
 * mac80211_hwsim, the kernel's simulated radios (two by default, radios=2: wlan0 for the board's client, wlan1 for
 * the test access point) with the crypto modules mac80211 needs, and a `wifi` block naming wlan0 (no firmware:
 * simulated radios need none). Not in boards/, so
 * `uz boards` never lists it and no product image is built from it.
 */
export function wifiTestBoard(): Board {
  const base = JSON.parse(readFileSync(fileURLToPath(new URL('../../boards/qemu-virt.json', import.meta.url)), 'utf8')) as Record<string, unknown>;
  return parseBoard(
    {
      ...base,
      id: 'qemu-virt-wifi',
      name: 'TEST ONLY: qemu-virt with two simulated Wi-Fi radios (mac80211_hwsim)',
      // mac80211 (a SoftMAC stack, unlike the Pi's FullMAC brcmfmac) encrypts in the kernel: CCMP needs ccm(aes),
      // management-frame protection cmac(aes). The kernel would request them by name, but the image has no modprobe.
      modules: [...(base.modules as string[]), 'mac80211_hwsim', 'ccm', 'cmac'],
      wifi: { interface: 'wlan0', firmware: [] },
      verification: 'Test board of test/e2e/wifi-qemu.test.ts.',
    },
    'test/helpers/wifi.ts',
  );
}

/** Builds (once per test run) the Wi-Fi test image: the test board with the test access point as its workload. */
export async function ensureWifiImage(version = '1.0.0'): Promise<string> {
  const out = join(runDir(), 'qemu-virt-wifi');
  const image = join(out, `qemu-virt-wifi-${version}.img`);
  await buildOnce(`qemu-virt-wifi-${version}`, [image], () => buildImage({ board: wifiTestBoard(), app: TEST_AP_APP, version, outDir: out, sourceDateEpoch: TEST_EPOCH }));
  return image;
}
