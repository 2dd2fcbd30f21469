import { build } from 'esbuild';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';

/** One output file of the agent bundle: its name in /opt/uz/ and its text. */
export interface AgentBundleFile {
  name: string;
  text: string;
}

/** The file init runs (`/etc/uz/agent` → `node /opt/uz/agent.mjs`). */
export const AGENT_ENTRY_FILE = 'agent.mjs';

/**
 * The on-device agent for the image's Node.js (Debian 13 ships Node 20): esbuild bundles
 * updater/device/entry.ts with its npm dependencies into agent.mjs plus chunks. entry.ts starts the workload
 * and then imports main.ts dynamically; code splitting puts the bulk of the agent in a chunk so the
 * workload starts before that chunk is compiled. No timestamps or absolute paths end up in the output
 * (chunk names are content hashes), so the bundle is reproducible.
 */
export async function bundleAgent(): Promise<AgentBundleFile[]> {
  const entry = fileURLToPath(new URL('../updater/device/entry.ts', import.meta.url));
  const root = fileURLToPath(new URL('..', import.meta.url));
  const result = await build({
    entryPoints: [entry],
    absWorkingDir: root,
    bundle: true,
    splitting: true,
    outdir: 'agent-out',
    entryNames: 'agent',
    chunkNames: 'agent-[hash]',
    outExtension: { '.js': '.mjs' },
    platform: 'node',
    target: 'node20',
    format: 'esm',
    write: false,
    minify: true,
    legalComments: 'none',
    sourcemap: false,
    logLevel: 'silent',
    // Some CommonJS dependencies call require(); give them one in the ESM bundle (every output file).
    banner: { js: "import { createRequire as __uzCreateRequire } from 'node:module'; const require = __uzCreateRequire(import.meta.url);" },
  });
  const files = result.outputFiles.map((f) => ({ name: basename(f.path), text: f.text }));
  if (!files.some((f) => f.name === AGENT_ENTRY_FILE)) throw new Error(`agent bundle has no ${AGENT_ENTRY_FILE}: ${files.map((f) => f.name).join(', ')}`);
  return files.sort((a, b) => (a.name < b.name ? -1 : 1));
}
