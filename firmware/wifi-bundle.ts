import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

/** Where the Wi-Fi boot step lives in the image (run by /etc/uz/wifi). */
export const WIFI_HELPER_PATH = 'opt/uz/wifi.mjs';

/**
 * The Wi-Fi boot step (updater/device/wifi-main.ts) as one file for the image's Node.js, on boards with Wi-Fi
 * only. It shares parseDeviceConfig() with the agent and `uz provision --check`. Reproducible like the agent
 * bundle: no timestamps or absolute paths in the output.
 */
export async function bundleWifiHelper(): Promise<string> {
  const entry = fileURLToPath(new URL('../updater/device/wifi-main.ts', import.meta.url));
  const root = fileURLToPath(new URL('..', import.meta.url));
  const result = await build({
    entryPoints: [entry],
    absWorkingDir: root,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    write: false,
    minify: true,
    legalComments: 'none',
    sourcemap: false,
    logLevel: 'silent',
  });
  return result.outputFiles[0]!.text;
}
