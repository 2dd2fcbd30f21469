import { build, type BuildOptions } from 'esbuild';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ImageInfo } from '../updater/device/image-info.js';
import type { WarmUpSample } from '../updater/device/warm-up.js';

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
  return (await imageBuildResult(entryFromRoot, extra)).outputFiles ?? [];
}

async function imageBuildResult(entryFromRoot: string, extra: BuildOptions = {}) {
  return build({
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

/**
 * The warm-up sample for an image's agent snapshot: its own image info with the version and build time
 * blanked, so a new version of the same app on the same board reuses the cached snapshot.
 */
export function warmUpSample(imageInfo: ImageInfo): WarmUpSample {
  return { imageInfo: { ...imageInfo, version: '0.0.0', buildEpoch: 0 } };
}

/**
 * Built-in modules Node 20 cannot put in a user start-up snapshot (lib/internal/main/mksnapshot.js lists the
 * supported ones; loading e.g. node:http while building fails). The snapshot script binds these lazily: a
 * module gets a stand-in whose first property access loads the real one, at run time on the device.
 *
 * `child_process` is not in mksnapshot.js's list either, but Node 20.19 snapshots it (with a "not yet
 * verified" warning at build time) and spawns correctly from the deserialised heap, so it is loaded and warmed
 * while the snapshot is built (updater/device/warm-up.ts warmUpSpawn): starting the workload is the first thing
 * the agent does at boot, and compiling child_process there was on the way to UZ-READY. What vouches for it
 * here: every QEMU test starts, supervises, restarts and stops the workload from this snapshot.
 */
export const SNAPSHOT_LAZY_BUILTINS: readonly string[] = [
  'async_hooks', 'cluster', 'dgram', 'domain', 'http', 'http2', 'https', 'inspector', 'module',
  'perf_hooks', 'readline', 'repl', 'tls', 'trace_events', 'tty', 'worker_threads',
];

/**
 * Prepended to the snapshot script: shadows the bundle's `require` for SNAPSHOT_LAZY_BUILTINS. A property read
 * while the snapshot is being built would load the module then, so it is refused with a message naming the
 * module: such code has to bind its import on first use instead (as updater/clock.ts does with execFile).
 */
const LAZY_REQUIRE = `var __uzRequire = require;
var __uzLazy = new Set(${JSON.stringify(SNAPSHOT_LAZY_BUILTINS)});
var require = function (id) {
  var name = id.startsWith('node:') ? id.slice(5) : id;
  if (!__uzLazy.has(name)) return __uzRequire(id);
  var real;
  var load = function () {
    if (!real) {
      if (__uzRequire('node:v8').startupSnapshot.isBuildingSnapshot()) throw new Error('the agent uses ' + id + ' while its start-up snapshot is built: bind it on first use');
      real = __uzRequire(id);
    }
    return real;
  };
  return new Proxy({}, {
    get: function (_, k) { return load()[k]; },
    has: function (_, k) { return k in load(); },
    ownKeys: function () { return Reflect.ownKeys(load()); },
    getOwnPropertyDescriptor: function (_, k) { var d = Reflect.getOwnPropertyDescriptor(load(), k); if (d) d.configurable = true; return d; },
  });
};
`;

/**
 * The agent as one CommonJS script for `node --build-snapshot` (updater/device/snapshot-entry.ts; see
 * firmware/node-snapshot.ts). Same sources and settings as bundleAgent(), but no code splitting (a snapshot
 * script is a single file), and `debug` (used by mqtt) replaced by a silent stand-in that reads neither the
 * environment nor the terminal while modules load.
 */
export async function bundleAgentSnapshotScript(warmUp: WarmUpSample = {}): Promise<string> {
  const r = await imageBuildResult('updater/device/snapshot-entry.ts', {
    format: 'cjs',
    // The warm-up sample (updater/device/warm-up.ts) travels as data in the script, so it is part of the
    // snapshot's cache key like the code.
    banner: { js: `${LAZY_REQUIRE}var __UZ_WARM_UP__ = ${JSON.stringify(warmUp)};\n` },
    alias: { debug: './updater/device/no-debug.cjs' },
    metafile: true,
  });
  const file = r.outputFiles?.[0];
  if (!file) throw new Error('the agent snapshot script bundled to nothing');
  // A script compiled into a snapshot has no dynamic-import support at run time (ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING):
  // bundled modules become require() calls, but import() of a built-in would stay and fail on the device.
  const dynamic = Object.values(r.metafile?.outputs ?? {}).flatMap((o) => o.imports.filter((i) => i.kind === 'dynamic-import' && i.external).map((i) => i.path));
  if (dynamic.length) throw new Error(`the agent imports ${dynamic.join(', ')} dynamically; its start-up snapshot cannot: import it statically`);
  return file.text;
}
