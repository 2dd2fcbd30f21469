/**
 * `uz provision`, `uz flash`, `uz imager-json`. Register with registerProvisionCommands(program).
 * Errors follow bin/cli.ts (UzError → `uz: CODE: message`, exit 2). `uz provision --check` reports an
 * invalid or missing uz-device.json itself (one line, exit 1), like `uz verify`.
 * Secrets (Wi-Fi PSK, enroll token) are read from files only, never from argv, and never printed.
 */
import { readFile, stat } from 'node:fs/promises';
import { createInterface } from 'node:readline/promises';
import cliProgress from 'cli-progress';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { UzError } from '../../lib/errors.js';
import { info, printJson } from '../../lib/output.js';
import { MAX_DEVICE_CONFIG_BYTES, type DeviceConfigInput } from './config.js';
import { flashImage, type FlashPlan, type FlashProgress } from './flash.js';
import { checkProvisionedImage, provisionImage } from './image.js';
import { writeImagerJson } from './imager.js';

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];
const out = (line: string): void => void process.stdout.write(`${line}\n`);
const MiB = 1024 * 1024;

/** Reads a one-line secret from a file; the value never appears in an error. */
export async function readSecretFile(path: string, what: string): Promise<string> {
  let st;
  try {
    st = await stat(path);
  } catch {
    throw new UzError('PROVISION_SECRET_FILE', `cannot read the ${what} file ${path}`, { path });
  }
  if (!st.isFile() || st.size > 4096) throw new UzError('PROVISION_SECRET_FILE', `the ${what} file ${path} must be a regular file of at most 4096 bytes`, { path });
  if (process.platform !== 'win32' && (st.mode & 0o077) !== 0) info(`uz: warning: ${path} (${what}) is readable by group/others; chmod 600 it`);
  let text = await readFile(path, 'utf8');
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  text = text.replace(/\r?\n$/, '');
  if (/[\r\n]/.test(text)) throw new UzError('PROVISION_SECRET_FILE', `the ${what} file ${path} must hold exactly one line`, { path });
  if (text === '') throw new UzError('PROVISION_SECRET_FILE', `the ${what} file ${path} is empty`, { path });
  return text;
}

/** Default broker URL for a server URL: mqtts://host:8883 for https, mqtt://host:1883 for http. */
export function defaultMqttUrl(serverUrl: string): string {
  let u: URL;
  try {
    u = new URL(serverUrl);
  } catch {
    throw new UzError('PROVISION_CONFIG_INVALID', `--server must be an http(s) URL, got "${serverUrl.slice(0, 200)}"`, { field: 'server.httpUrl' });
  }
  const host = u.hostname.includes(':') && !u.hostname.startsWith('[') ? `[${u.hostname}]` : u.hostname;
  return u.protocol === 'http:' ? `mqtt://${host}:1883` : `mqtts://${host}:8883`;
}

interface ProvisionOpts {
  check?: boolean;
  deviceName?: string;
  server?: string;
  mqttUrl?: string;
  serverCa?: string;
  wifiSsid?: string;
  wifiPskFile?: string;
  wifiCountry?: string;
  enrollTokenFile?: string;
  appConfig?: string;
  ntp?: string[];
  channel?: string;
  out?: string;
  json?: boolean;
  wifiPsk?: string;
  enrollToken?: string;
}

async function configFromOptions(o: ProvisionOpts): Promise<DeviceConfigInput> {
  if (!o.deviceName) throw new UzError('USAGE', '--device-name is required (or use --check)');
  if (!o.server) throw new UzError('USAGE', '--server <url> is required (or use --check)');
  const config: DeviceConfigInput = {
    formatVersion: 1,
    deviceName: o.deviceName,
    server: { httpUrl: o.server, mqttUrl: o.mqttUrl ?? defaultMqttUrl(o.server) },
    ntpServers: o.ntp ?? [],
    channel: o.channel ?? 'stable',
  };
  if (o.serverCa) {
    try {
      config.server.caCert = (await readFile(o.serverCa, 'utf8')).trim() + '\n';
    } catch {
      throw new UzError('PROVISION_CONFIG_INVALID', `cannot read --server-ca ${o.serverCa}`, { field: 'server.caCert' });
    }
  }
  if (o.wifiSsid !== undefined || o.wifiPskFile !== undefined || o.wifiCountry !== undefined) {
    if (o.wifiSsid === undefined || o.wifiPskFile === undefined) throw new UzError('USAGE', 'Wi-Fi needs both --wifi-ssid and --wifi-psk-file');
    config.wifi = { ssid: o.wifiSsid, psk: await readSecretFile(o.wifiPskFile, 'Wi-Fi PSK'), ...(o.wifiCountry ? { country: o.wifiCountry } : {}) };
  }
  if (o.enrollTokenFile !== undefined) config.enrollToken = await readSecretFile(o.enrollTokenFile, 'enroll token');
  if (o.appConfig !== undefined) {
    let parsed: unknown;
    try {
      const st = await stat(o.appConfig);
      if (st.size > MAX_DEVICE_CONFIG_BYTES) throw new Error('too large');
      parsed = JSON.parse(await readFile(o.appConfig, 'utf8'));
    } catch {
      throw new UzError('PROVISION_CONFIG_INVALID', `--app-config ${o.appConfig} must be a readable JSON file under ${MAX_DEVICE_CONFIG_BYTES} bytes`, { field: 'appConfig' });
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw new UzError('PROVISION_CONFIG_INVALID', `--app-config ${o.appConfig} must hold a JSON object`, { field: 'appConfig' });
    }
    config.appConfig = parsed as Record<string, unknown>;
  }
  return config;
}

async function askYes(plan: FlashPlan): Promise<boolean> {
  if (!process.stdin.isTTY || !process.stderr.isTTY) {
    throw new UzError('FLASH_CONFIRM_REQUIRED', `writing ${plan.target} erases it; pass --yes to confirm (no terminal to ask on)`, { target: plan.target });
  }
  const what = plan.device ? `${plan.target} (${plan.description ?? plan.device}, ${(plan.targetBytes / 1e9).toFixed(1)} GB)` : `the file ${plan.target}`;
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const a = await rl.question(`Write ${plan.image} (${(plan.imageBytes / MiB).toFixed(0)} MiB) to ${what}?\nEverything on it will be erased. Type "yes" to continue: `);
    return a.trim().toLowerCase() === 'yes';
  } finally {
    rl.close();
  }
}

function progressBar(enabled: boolean): { onProgress?: (p: FlashProgress) => void; stop: () => void } {
  if (!enabled) return { stop: () => {} };
  let bar: cliProgress.SingleBar | undefined;
  let phase = '';
  const stop = () => {
    bar?.stop();
    bar = undefined;
  };
  return {
    stop,
    onProgress: (p) => {
      if (p.phase !== phase) {
        stop();
        phase = p.phase;
        bar = new cliProgress.SingleBar(
          { stream: process.stderr, format: `${p.phase === 'write' ? 'writing  ' : 'verifying'} [{bar}] {percentage}% | {value}/{total} MiB | {eta_formatted}`, hideCursor: true },
          cliProgress.Presets.shades_classic,
        );
        bar.start(Math.ceil(p.total / MiB), 0);
      }
      bar?.update(Math.floor(p.done / MiB));
    },
  };
}

export function registerProvisionCommands(program: Command): void {
  program
    .command('provision')
    .description('write the per-device uz-device.json into an image\'s boot-control partition (or check one with --check)')
    .argument('<img>', 'disk image built by uz build (modified in place unless --out is given)')
    .option('--check', 'only validate the uz-device.json already in <img>, as the device will at boot')
    .option('--device-name <name>', 'hostname and device id: 3-63 chars of a-z, 0-9, -')
    .option('--server <url>', 'update server URL, e.g. https://uz.example.com')
    .option('--mqtt-url <url>', 'broker URL (default: mqtts://<server host>:8883, mqtt://…:1883 for an http server)')
    .option('--server-ca <ca.crt>', 'fleet CA certificate the device trusts for the broker and server (uz ca init)')
    .option('--wifi-ssid <ssid>', 'Wi-Fi network name')
    .option('--wifi-psk-file <file>', 'file holding the Wi-Fi passphrase (one line; never given on the command line)')
    .option('--wifi-country <CC>', 'Wi-Fi regulatory country, e.g. DE')
    .option('--enroll-token-file <file>', 'file holding the one-time enroll token (one line)')
    .option('--app-config <file>', 'JSON object merged over the workload config on this device')
    .option('--ntp <host>', 'NTP server (repeatable; default: DHCP / the agent\'s defaults)', collect)
    .option('--channel <name>', 'update channel', 'stable')
    .option('--out <img>', 'write a provisioned copy here instead of changing <img> (never overwritten)')
    .option('--json', 'print one JSON object (secrets shown as "(set)")')
    .addOption(new Option('--wifi-psk <psk>').hideHelp())
    .addOption(new Option('--enroll-token <token>').hideHelp())
    .action(async (img: string, o: ProvisionOpts) => {
      if (o.wifiPsk !== undefined) throw new UzError('USAGE', 'the Wi-Fi passphrase is not accepted on the command line (it would land in shell history and ps); use --wifi-psk-file');
      if (o.enrollToken !== undefined) throw new UzError('USAGE', 'the enroll token is not accepted on the command line; use --enroll-token-file');
      if (o.check) {
        const r = await checkProvisionedImage(img);
        if (o.json) printJson(r);
        else if (r.ok) out(`ok: ${img}: ${JSON.stringify(r.config)}`);
        else process.stderr.write(`${r.code} field=${r.field}: ${r.message}\n`);
        if (!r.ok) process.exitCode = 1;
        return;
      }
      const config = await configFromOptions(o);
      if (/^(mqtt|tcp):/.test(config.server.mqttUrl) || config.server.httpUrl.startsWith('http:')) {
        info('uz: warning: plaintext server/broker URL: only for a lab network (devices need devMode for it)');
      }
      const r = await provisionImage({ image: img, config, out: o.out });
      if (o.json) return printJson(r);
      out(`wrote ${r.file} (${r.bytes} bytes${r.replaced ? ', replaced the old one' : ''}) into p${r.partition.index} of ${r.image}; ${r.bytesWritten} bytes of p1 rewritten, other partitions untouched`);
      out(`  ${JSON.stringify(r.config)}`);
    });

  program
    .command('flash')
    .description('write an image to an SD card or USB disk (or a file), fsync, read back and verify SHA-256')
    .argument('<img>', 'disk image')
    .argument('<device>', 'whole-disk device, e.g. /dev/sdb or /dev/mmcblk0 (or an existing file at least as large)')
    .option('--yes', 'do not ask for confirmation')
    .option('--no-verify', 'skip the read-back verification')
    .option('--json', 'print one JSON object')
    .action(async (img: string, device: string, o: { yes?: boolean; verify: boolean; json?: boolean }) => {
      const p = progressBar(Boolean(process.stderr.isTTY) && !o.json);
      let r;
      try {
        r = await flashImage({ image: img, target: device, yes: o.yes, verify: o.verify, confirm: askYes, onProgress: p.onProgress });
      } finally {
        p.stop();
      }
      if (o.json) return printJson(r);
      out(`wrote ${r.imageBytes} bytes to ${r.target} in ${r.writeSeconds.toFixed(1)} s; sha256 ${r.sha256}`);
      out(r.verified ? `verified: read-back matches (${r.verifySeconds.toFixed(1)} s)` : 'not verified (--no-verify)');
    });

  program
    .command('imager-json')
    .description('write a Raspberry Pi Imager repository file (os_list JSON) for images; use with rpi-imager --repo <url>')
    .requiredOption('--image <img>', 'image built by uz build (repeatable)', collect)
    .requiredOption('--url-base <url>', 'URL the image files will be served from')
    .requiredOption('--out <file>', 'os_list JSON to write, e.g. os_list.json')
    .addOption(new Option('--compress <kind>', 'gz: write <img>.gz next to --out and list that').choices(['none', 'gz']).default('none'))
    .option('--icon <url>', 'icon URL (default <url-base>/unikernel-z.png)')
    .option('--website <url>', 'project website shown by Imager')
    .option('--name <text>', 'entry name (default: unikernel-z <version> (<board>))')
    .option('--description <text>', 'entry description')
    .option('--json', 'print the written document')
    .action(async (o: { image: string[]; urlBase: string; out: string; compress: 'none' | 'gz'; icon?: string; website?: string; name?: string; description?: string; json?: boolean }) => {
      if (o.image.length === 0) throw new InvalidArgumentError('give at least one --image');
      const r = await writeImagerJson({ images: o.image, urlBase: o.urlBase, out: o.out, compress: o.compress, icon: o.icon, website: o.website, name: o.name, description: o.description });
      if (o.json) return printJson(r.list);
      for (const e of r.list.os_list) out(`${e.name}: ${e.url} (${e.devices.join(', ')}, ${e.extract_size} bytes, sha256 ${e.extract_sha256})`);
      for (const f of r.files) out(`wrote ${f}`);
      out(`wrote ${r.out}; serve it with the images and run: rpi-imager --repo ${o.urlBase.replace(/\/+$/, '')}/${r.out.split('/').pop()}`);
    });
}
