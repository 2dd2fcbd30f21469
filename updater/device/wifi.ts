/**
 * Wi-Fi at boot, the part that needs a real parser: /etc/uz/wifi (busybox sh, started by rcS on boards with
 * Wi-Fi hardware) runs `node /opt/uz/wifi.mjs` once per boot. It validates uz-device.json with the SAME
 * parseDeviceConfig() the agent and `uz provision --check` use (JSON in busybox sh would be fragile), writes
 * the wpa_supplicant config to tmpfs (mode 0600) and an env file the shell script sources; the script then
 * runs wpa_supplicant and DHCP and prints the `UZ-NET wifi …` console lines (docs/troubleshooting.md).
 *
 * Secrets: the passphrase never leaves this process except as the derived WPA key inside the 0600 config file.
 * The config holds only hex (SSID bytes, the 256-bit PSK), so no byte of the user's strings can break the
 * wpa_supplicant config syntax (quotes, `#`, backslashes, newlines). Nothing here prints a value from the file
 * except the SSID, which is not secret.
 */
import { pbkdf2Sync } from 'node:crypto';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { loadDeviceConfig, type DeviceConfig } from '../../firmware/provision/config.js';

export type WifiSettings = NonNullable<DeviceConfig['wifi']>;

const HEX64 = /^[0-9a-fA-F]{64}$/;

/**
 * The 256-bit WPA pre-shared key: a 64-hex-digit PSK as given, else IEEE 802.11i's PBKDF2-HMAC-SHA1 of the
 * passphrase with the SSID as salt, 4096 rounds (what `wpa_passphrase` computes).
 */
export function wpaPsk(ssid: string, psk: string): string {
  if (HEX64.test(psk)) return psk.toLowerCase();
  return pbkdf2Sync(Buffer.from(psk, 'utf8'), Buffer.from(ssid, 'utf8'), 4096, 32, 'sha1').toString('hex');
}

/**
 * wpa_supplicant.conf for one WPA2-Personal network. WPA-PSK-SHA256 and optional management-frame protection
 * (ieee80211w=1) are offered; WPA3-only (SAE) networks are not supported: SAE needs the passphrase itself and
 * driver support that the Pi's brcmfmac firmware does not reliably have. Transition-mode (WPA2/WPA3) networks
 * are joined with WPA2.
 */
export function renderWpaSupplicantConf(w: WifiSettings): string {
  const lines = [
    '# Written at boot by /etc/uz/wifi from uz-device.json (docs/provisioning.md). Mode 0600, tmpfs; never logged.',
    ...(w.country ? [`country=${w.country}`] : []),
    'network={',
    `\tssid=${Buffer.from(w.ssid, 'utf8').toString('hex')}`,
    // Also finds networks that do not broadcast their name.
    '\tscan_ssid=1',
    '\tkey_mgmt=WPA-PSK WPA-PSK-SHA256',
    '\tieee80211w=1',
    `\tpsk=${wpaPsk(w.ssid, w.psk)}`,
    '}',
  ];
  return `${lines.join('\n')}\n`;
}

/** The SSID as one token of a console line: plain when it is simple, else a JSON string (`ssid="plant floor"`). */
export function ssidForConsole(ssid: string): string {
  return /^[A-Za-z0-9._:@+-]{1,32}$/.test(ssid) ? ssid : JSON.stringify(ssid);
}

/** POSIX sh single-quoting: safe to `.` (source) whatever the string holds. */
export function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export type WifiPlan =
  | { state: 'configured'; ssid: string; country?: string; conf: string }
  | { state: 'unprovisioned' }
  | { state: 'invalid'; field: string };

/** What the device does about Wi-Fi given uz-device.json (never throws, like loadDeviceConfig). */
export async function planWifi(deviceFile: string): Promise<WifiPlan> {
  const r = await loadDeviceConfig(deviceFile);
  if (!r.ok) return r.code === 'DEVICE_CONFIG_MISSING' ? { state: 'unprovisioned' } : { state: 'invalid', field: r.field };
  const w = r.config.wifi;
  if (!w) return { state: 'unprovisioned' };
  return { state: 'configured', ssid: w.ssid, ...(w.country ? { country: w.country } : {}), conf: renderWpaSupplicantConf(w) };
}

/** The env file /etc/uz/wifi sources: the plan's state and the values the console lines may show. */
export function renderWifiEnv(plan: WifiPlan): string {
  const v: Record<string, string> = { UZ_WIFI_STATE: plan.state };
  if (plan.state === 'configured') {
    v.UZ_WIFI_SSID = ssidForConsole(plan.ssid);
    v.UZ_WIFI_COUNTRY = plan.country ?? '';
  }
  if (plan.state === 'invalid') v.UZ_WIFI_FIELD = plan.field;
  return Object.entries(v).map(([k, x]) => `${k}=${shQuote(x)}\n`).join('');
}

async function writePrivate(path: string, text: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp`;
  await writeFile(tmp, text, { mode: 0o600 });
  await rename(tmp, path);
}

/** `node wifi.mjs <uz-device.json> <wpa_supplicant.conf> <wifi.env>`: the config only when configured. */
export async function prepareWifi(deviceFile: string, confPath: string, envPath: string): Promise<WifiPlan> {
  const plan = await planWifi(deviceFile);
  if (plan.state === 'configured') await writePrivate(confPath, plan.conf);
  await writePrivate(envPath, renderWifiEnv(plan));
  return plan;
}
