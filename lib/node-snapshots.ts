/**
 * The Node.js start-up snapshots an image can carry: where each lives and the V8 flags it must run with.
 * Shared by the builder (firmware/node-snapshot.ts makes them) and the device (/etc/uz/agent and the
 * workload supervisor run them); data only, so the agent's early code can import it.
 */
export interface SnapshotSpec {
  /** Image path of the blob. */
  blob: string;
  /** Image path the script has while the blob is built (recorded in the blob). */
  scriptPath: string;
  /** V8 flags the blob is built with; whoever runs it must pass exactly these (V8 hashes them into it). */
  flags: readonly string[];
}

/**
 * The agent: `--max-old-space-size` is its heap cap; `--single-threaded` (no concurrent GC or compiler threads
 * racing the serializer) keeps the build deterministic.
 */
export const AGENT_SNAPSHOT: SnapshotSpec = { blob: 'opt/uz/agent.blob', scriptPath: 'opt/uz/agent-snapshot.cjs', flags: ['--single-threaded', '--max-old-space-size=96'] };

/**
 * Node.js itself, bootstrapped, for workloads that opt in (app manifest `nodeStartupSnapshot`): the supervisor
 * runs `node --single-threaded --snapshot-blob <blob> <script> <args>`, and the snapshot's main function runs
 * the script as node would (Module.runMain: CommonJS or ESM).
 */
export const RUNTIME_SNAPSHOT: SnapshotSpec = { blob: 'usr/lib/uz/node-runtime.blob', scriptPath: 'usr/lib/uz/node-runtime.cjs', flags: ['--single-threaded'] };

/** Node's exit code when V8 refuses a snapshot (built with other flags, or for a CPU with other features). */
export const SNAPSHOT_REJECTED_EXIT_CODE = 14;
