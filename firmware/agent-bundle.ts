import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

/**
 * The on-device agent as ONE file for the image's Node.js (Debian 13 ships Node 20): esbuild bundles
 * updater/device/main.ts with its npm dependencies. No timestamps or absolute paths end up in the output,
 * so the bundle is reproducible.
 */
export async function bundleAgent(): Promise<string> {
  const entry = fileURLToPath(new URL('../updater/device/main.ts', import.meta.url));
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
    // Some CommonJS dependencies call require(); give them one in the ESM bundle.
    banner: { js: "import { createRequire as __uzCreateRequire } from 'node:module'; const require = __uzCreateRequire(import.meta.url);" },
  });
  return result.outputFiles[0]!.text;
}
