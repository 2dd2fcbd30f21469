import { build, type BuildOptions } from 'esbuild';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';

/** One output file of the agent bundle: its name in /opt/uz/ and its text. */
export interface AgentBundleFile {
  name: string;
  text: string;
}

/** The file init runs (`/etc/uz/agent` → `node /opt/uz/agent.mjs`). */
export const AGENT_ENTRY_FILE = 'agent.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));

/**
 * esbuild settings shared by everything that runs on the image's Node.js (Debian 13 ships Node 20): npm
 * dependencies bundled in, minified, and no timestamps or absolute paths in the output, so bundles are
 * reproducible.
 */
async function imageBuild(entryFromRoot: string, extra: BuildOptions = {}): Promise<Array<{ path: string; text: string }>> {
  const result = await build({
    entryPoints: [fileURLToPath(new URL(`../${entryFromRoot}`, import.meta.url))],
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
    ...extra,
  });
  return result.outputFiles ?? [];
}

/**
 * The on-device agent: updater/device/entry.ts bundled into agent.mjs plus chunks. entry.ts starts the
 * workload and then imports main.ts dynamically; code splitting puts the bulk of the agent in a chunk so the
 * workload starts before that chunk is compiled (chunk names are content hashes).
 */
export async function bundleAgent(): Promise<AgentBundleFile[]> {
  const out = await imageBuild('updater/device/entry.ts', {
    splitting: true,
    outdir: 'agent-out',
    entryNames: 'agent',
    chunkNames: 'agent-[hash]',
    outExtension: { '.js': '.mjs' },
    // Some CommonJS dependencies call require(); give them one in the ESM bundle (every output file).
    banner: { js: "import { createRequire as __uzCreateRequire } from 'node:module'; const require = __uzCreateRequire(import.meta.url);" },
  });
  const files = out.map((f) => ({ name: basename(f.path), text: f.text }));
  if (!files.some((f) => f.name === AGENT_ENTRY_FILE)) throw new Error(`agent bundle has no ${AGENT_ENTRY_FILE}: ${files.map((f) => f.name).join(', ')}`);
  return files.sort((a, b) => (a.name < b.name ? -1 : 1));
}

/**
 * The Wi-Fi boot step (updater/device/wifi-main.ts) as one file, on boards with Wi-Fi only. It shares
 * parseDeviceConfig() with the agent and `uz provision --check`.
 */
export async function bundleWifiHelper(): Promise<string> {
  const [file] = await imageBuild('updater/device/wifi-main.ts');
  if (!file) throw new Error('the Wi-Fi boot step bundled to nothing');
  return file.text;
}
