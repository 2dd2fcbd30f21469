import { z } from 'zod';

/**
 * The app manifest: the one workload an image carries. It says how to run it (command, args, env), what to
 * render into the image (config files), where its persistent data lives (on the data partition, never in a
 * slot), which ports it uses, how its health is checked and how much data it may keep.
 * Documented for users in docs/apps.md.
 */
const AbsPath = z.string().regex(/^\/[A-Za-z0-9._\-/]+$/, 'must be an absolute path of safe characters').max(256);
const DataPath = AbsPath.refine((p) => p.startsWith('/data/'), 'must live on the data partition (/data/...)');
const Port = z.number().int().min(1).max(65535);

export const HealthCheckSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('http'), url: z.url(), expectStatus: z.number().int().default(200) }).strict(),
  z.object({ type: z.literal('tcp'), host: z.string().default('127.0.0.1'), port: Port }).strict(),
  z
    .object({
      type: z.literal('jsonrpc'),
      url: z.url(),
      method: z.string().min(1).max(128),
      params: z.array(z.unknown()).default([]),
    })
    .strict(),
]);
export type HealthCheck = z.infer<typeof HealthCheckSchema>;

/** Where the workload's program comes from. */
export const AppBinarySchema = z.discriminatedUnion('kind', [
  /** Runs on the image's own runtime (Node.js or busybox); nothing extra to fetch. */
  z.object({ kind: z.literal('builtin') }).strict(),
  /** An input the builder must be given: `--app-binary <path>` or `--app-binary-url <url> --app-binary-sha256 <hex>`. */
  z
    .object({
      kind: z.literal('input'),
      installAs: AbsPath,
      /** ELF machine the binary must be built for (aarch64 = 183). */
      elfMachine: z.literal(183).default(183),
    })
    .strict(),
]);

export const AppManifestSchema = z
  .object({
    name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,31}$/),
    version: z.string().min(1).max(64),
    description: z.string().max(500).default(''),
    binary: AppBinarySchema,
    command: AbsPath,
    args: z.array(z.string().max(512)).max(64).default([]),
    env: z.record(z.string().regex(/^[A-Z_][A-Z0-9_]*$/), z.string().max(1024)).default({}),
    /** Files shipped with the manifest (relative to the manifest's folder), copied into the image. */
    files: z
      .array(z.object({ from: z.string().regex(/^[A-Za-z0-9._\-/]+$/).max(256), to: AbsPath, mode: z.number().int().default(0o644) }).strict())
      .max(32)
      .default([]),
    /** The workload's config file, rendered at build time from `template` merged with `--app-config`. */
    config: z
      .object({ path: AbsPath, format: z.literal('json'), template: z.record(z.string(), z.unknown()) })
      .strict()
      .optional(),
    ports: z
      .array(
        z
          .object({
            port: Port,
            protocol: z.enum(['tcp', 'udp']),
            purpose: z.string().max(120),
            /** Whether the port is reachable from the network (RPC stays on loopback unless opted in). */
            exposed: z.boolean(),
          })
          .strict(),
      )
      .max(16)
      .default([]),
    dataDir: DataPath,
    health: z
      .object({
        check: HealthCheckSchema,
        intervalSeconds: z.number().int().min(1).max(3600).default(10),
        /** A try boot that is not healthy within this time is rolled back. */
        startupDeadlineSeconds: z.number().int().min(5).max(3600).default(180),
      })
      .strict(),
    restart: z
      .object({
        initialBackoffMs: z.number().int().min(100).default(1000),
        maxBackoffMs: z.number().int().min(100).default(60_000),
      })
      .strict()
      .default({ initialBackoffMs: 1000, maxBackoffMs: 60_000 }),
    /** Data quota for storage-renting zApps: the agent stops the workload's writes beyond it and reports. */
    quota: z.object({ maxBytes: z.number().int().positive() }).strict().optional(),
    /** Free space kept on the data partition; below it the workload is stopped before the disk fills. */
    minFreeBytes: z.number().int().min(0).default(256 * 1024 * 1024),
    /**
     * For workloads run by the image's Node.js (command /usr/bin/node, first argument the script): start them
     * from a V8 start-up snapshot of Node.js built with the image (docs/apps.md). Saves Node's bootstrap
     * (about a second on a slow core); the workload's V8 then runs single-threaded (no background GC or
     * compiler threads). Falls back to a plain start when the board's CPU rejects the snapshot.
     */
    nodeStartupSnapshot: z.boolean().default(false),
  })
  .strict()
  .refine((m) => !m.nodeStartupSnapshot || (m.command === '/usr/bin/node' && m.args.length > 0 && !m.args[0]!.startsWith('-')), {
    message: 'nodeStartupSnapshot needs command /usr/bin/node with the script as the first argument (no node options)',
    path: ['nodeStartupSnapshot'],
  });

export type AppManifest = z.infer<typeof AppManifestSchema>;
