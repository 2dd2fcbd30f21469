/**
 * The agent's first instant in the image: wait for rcS to have mounted the data partition (it works in the
 * background while this process starts), then start the workload before the rest of the agent is needed.
 *
 * Why this is separate from main.ts: without the start-up snapshot, Node needs seconds to compile and
 * evaluate the whole agent (zod, MQTT, TUF, the update engine) on a slow core — several seconds under
 * emulation — and the workload's own start-up can run on the other core meanwhile. So this module imports only
 * what starting the workload needs (the supervisor and the log persister, no zod); everything with update
 * policy in it is in main.ts, which the caller hands over as `loadMain`:
 *   - entry.ts (the plain ESM bundle, /opt/uz/agent.mjs): a dynamic import, emitted as its own chunk;
 *   - snapshot-entry.ts (the start-up snapshot, /opt/uz/agent.blob): main.ts is already in the heap.
 *
 * /etc/uz/image.json is written by the builder from a validated manifest and ships inside the signed,
 * verified slot; here only the fields that start the workload are checked, and main.ts validates the whole
 * file with its zod schema before any update policy reads it.
 */
import { existsSync, readFileSync, writeSync } from 'node:fs';
import { Supervisor } from '../workload/supervisor.js';
import { LogPersister } from '../workload/log-persist.js';
import { dataVerdictAtStart, IMAGE_INFO_PATH, readSlot, workloadStartOf } from './early.js';

/**
 * Console lines go straight to fd 1 (init's console). process.stdout would first build a TTY stream (Node's
 * tty and net modules: ~0.3 s of CPU on the emulated board, before the workload could start). A console
 * that would block (EAGAIN) gets the stream after all.
 */
const say = (line: string) => {
  try {
    writeSync(1, `${line}\n`);
  } catch {
    process.stdout.write(`${line}\n`);
  }
};

/** Written by /etc/uz/rcS when the modules are loaded, the disk found and the data partition mounted. */
export const SYSINIT_DONE = '/run/uz/sysinit.done';

/**
 * init starts the agent while rcS is still loading modules and checking the data partition in the background,
 * so Node.js comes up meanwhile; the workload needs that work done. A slow fsck or repair can take minutes on
 * a large card: wait as long as it takes, and say so once a minute.
 */
async function sysinitDone(): Promise<void> {
  const started = Date.now();
  let said = 0;
  while (!existsSync(SYSINIT_DONE)) {
    await new Promise((r) => setTimeout(r, 20));
    const minutes = Math.floor((Date.now() - started) / 60_000);
    if (minutes > said) {
      said = minutes;
      say(`UZ-AGENT waiting for system init (modules, disk, data check) minutes=${minutes}`);
    }
  }
}

let sup: Supervisor | null = null;

type MainModule = typeof import('./main.js');

/** How this process was started: from the V8 start-up snapshot, or from the plain ESM bundle. */
export type AgentForm = 'snapshot' | 'bundle';

async function start(loadMain: () => Promise<MainModule>, form: AgentForm): Promise<void> {
  const raw: unknown = JSON.parse(readFileSync(IMAGE_INFO_PATH, 'utf8'));
  const { version, app } = workloadStartOf(raw);
  await sysinitDone();
  const slot = readSlot();
  say(`UZ-AGENT start slot=${slot ?? 'unknown'} version=${version} app=${app.name} from=${form}`);

  // The workload's output: to the console, and sparingly (every 10 min, and when it exits) to the data partition.
  const logs = new LogPersister(`/data/uz/logs/${app.name}.log`);
  const s = new Supervisor(app, (line) => {
    say(`[${app.name}] ${line}`);
    logs.push(line);
  });
  sup = s;
  s.on('snapshotRejected', () => say('UZ-WARN code=NODE_SNAPSHOT_REJECTED detail="this CPU does not match the Node.js start-up snapshot; workload started without it"'));
  s.on('exited', (code, signal, wait) => {
    say(`UZ-WORKLOAD exited code=${code} signal=${signal} restart_in_ms=${wait}`);
    void logs.flush().catch(() => {});
  });
  // A data partition that cannot be read (not mounted: rcS said why) does not hold the workload back.
  const verdict = await dataVerdictAtStart(app).catch(() => null);
  const heldForData = verdict !== null && !verdict.ok ? { code: verdict.code, message: verdict.detail } : undefined;
  if (heldForData) say(`UZ-ERROR code=${heldForData.code} detail=${JSON.stringify(heldForData.message)} workload-held`);
  else s.start();
  logs.start();
  const stop = async () => {
    await s.stop();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  const { runAgent } = await loadMain();
  await runAgent({ rawInfo: raw, slot, sup: s, say, ...(heldForData ? { heldForData } : {}) });
}

/** Starts the agent; never rejects (a crash is reported on the console and ends the process for init to respawn). */
export function startAgent(loadMain: () => Promise<MainModule>, form: AgentForm): Promise<void> {
  return start(loadMain, form).catch(async (e) => {
    const detail = JSON.stringify((e as Error).message);
    const code = (e as { code?: unknown }).code;
    say(typeof code === 'string' ? `UZ-ERROR code=${code} detail=${detail}` : `UZ-ERROR code=AGENT_CRASH detail=${detail}`);
    // init respawns the agent, which starts the workload again: never leave this one running beside it.
    await sup?.stop(5_000).catch(() => {});
    process.exit(1);
  });
}
