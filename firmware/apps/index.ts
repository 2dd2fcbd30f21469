import { readFileSync, existsSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UzError } from '../../lib/errors.js';
import { parseWith } from '../../lib/validate.js';
import { AppManifestSchema, type AppManifest } from './schema.js';

const here = dirname(fileURLToPath(import.meta.url));

export interface ResolvedApp {
  manifest: AppManifest;
  /** Folder the manifest came from; `files[].from` are relative to it. */
  dir: string;
  /** Files to place in the image (absolute path in the image -> bytes, mode). */
  files: Array<{ path: string; data: Buffer; mode: number }>;
  /** The rendered config file, if the manifest has one. */
  config?: { path: string; data: Buffer };
}

export interface AppInputs {
  /** Local path of the workload binary (for `binary.kind = input`). */
  binaryPath?: string;
  /** Or a URL plus its SHA-256; fetched by the caller and passed as bytes. */
  binaryBytes?: Buffer;
  /** JSON merged over the manifest's config template (deep merge; arrays replace). */
  configOverrides?: Record<string, unknown>;
}

export function builtinApps(): string[] {
  return ['demo', 'storage-zapp', 'znnd'];
}

/** `--app demo` names a built-in app; anything with a slash or ending in .json is a manifest path. */
export function loadManifest(nameOrPath: string): { manifest: AppManifest; dir: string } {
  const isPath = nameOrPath.includes('/') || nameOrPath.endsWith('.json');
  const file = isPath ? resolve(nameOrPath) : join(here, nameOrPath, 'app.json');
  if (!existsSync(file)) {
    throw new UzError(
      isPath ? 'APP_MANIFEST_MISSING' : 'APP_UNKNOWN',
      isPath ? `app manifest not found: ${file}` : `unknown app "${nameOrPath}" (built in: ${builtinApps().join(', ')}; or pass a manifest path)`,
      { app: nameOrPath },
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UzError('APP_MANIFEST_INVALID', `${file}: not valid JSON (${(e as Error).message})`, { file });
  }
  return { manifest: parseWith(AppManifestSchema, json, 'APP_MANIFEST_INVALID', file), dir: dirname(file) };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function deepMerge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isPlainObject(b) && isPlainObject(v) ? deepMerge(b, v) : v;
  }
  return out;
}

/** Canonical-ish JSON for rendered config: sorted keys so the same inputs give the same bytes. */
export function stableJson(v: unknown): string {
  const sort = (x: unknown): unknown =>
    Array.isArray(x) ? x.map(sort) : isPlainObject(x) ? Object.fromEntries(Object.keys(x).sort().map((k) => [k, sort(x[k])])) : x;
  return `${JSON.stringify(sort(v), null, 2)}\n`;
}

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

export function checkElf(bytes: Buffer, machine: number, what: string): void {
  if (bytes.length < 20 || !bytes.subarray(0, 4).equals(ELF_MAGIC)) {
    throw new UzError('APP_BINARY_INVALID', `${what} is not an ELF executable`, { what });
  }
  const m = bytes.readUInt16LE(18);
  if (m !== machine) {
    throw new UzError('APP_BINARY_WRONG_ARCH', `${what} is built for ELF machine ${m}, the board needs ${machine} (aarch64)`, { what, machine: m });
  }
}

export function sha256Hex(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Resolves everything an app puts into the image. Pure apart from reading the manifest's own files. */
export function resolveApp(nameOrPath: string, inputs: AppInputs = {}): ResolvedApp {
  const { manifest, dir } = loadManifest(nameOrPath);
  const files: ResolvedApp['files'] = [];
  for (const f of manifest.files) {
    const src = resolve(dir, f.from);
    if (!existsSync(src) || !statSync(src).isFile()) {
      throw new UzError('APP_FILE_MISSING', `${manifest.name}: file "${f.from}" not found next to the manifest`, { src });
    }
    files.push({ path: f.to, data: readFileSync(src), mode: f.mode });
  }
  if (manifest.binary.kind === 'input') {
    let bytes = inputs.binaryBytes;
    if (!bytes && inputs.binaryPath) {
      if (!existsSync(inputs.binaryPath)) {
        throw new UzError('APP_BINARY_MISSING', `${manifest.name}: binary not found: ${inputs.binaryPath}`, { path: inputs.binaryPath });
      }
      bytes = readFileSync(inputs.binaryPath);
    }
    if (!bytes) {
      throw new UzError(
        'APP_BINARY_MISSING',
        `${manifest.name} needs its arm64 binary: pass --app-binary <path> or --app-binary-url <url> --app-binary-sha256 <hex>`,
        { app: manifest.name },
      );
    }
    checkElf(bytes, manifest.binary.elfMachine, `${manifest.name} binary`);
    files.push({ path: manifest.binary.installAs, data: bytes, mode: 0o755 });
  }
  let config: ResolvedApp['config'];
  if (manifest.config) {
    const merged = deepMerge(manifest.config.template, inputs.configOverrides ?? {});
    config = { path: manifest.config.path, data: Buffer.from(stableJson(merged)) };
  }
  return { manifest, dir, files, config };
}
