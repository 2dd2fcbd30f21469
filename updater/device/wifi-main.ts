/**
 * Entry point bundled to /opt/uz/wifi.mjs (firmware/agent-bundle.ts) on boards with Wi-Fi; run once per boot by
 * /etc/uz/wifi. Exit 0 when the env file is written (whatever the plan), 1 on an unexpected error (the script
 * then reports `UZ-NET wifi state=failed reason=setup-error`). Prints nothing: the script owns the console.
 */
import { prepareWifi } from './wifi.js';

const [deviceFile, confPath, envPath] = process.argv.slice(2);
if (!deviceFile || !confPath || !envPath) {
  process.stderr.write('usage: wifi.mjs <uz-device.json> <wpa_supplicant.conf> <wifi.env>\n');
  process.exit(2);
}
prepareWifi(deviceFile, confPath, envPath).then(
  () => process.exit(0),
  (e: unknown) => {
    // Only the error's kind: a message could, in principle, quote a path or value.
    process.stderr.write(`wifi setup failed: ${(e as NodeJS.ErrnoException).code ?? (e as Error).name}\n`);
    process.exit(1);
  },
);
