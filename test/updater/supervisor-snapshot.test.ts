/**
 * A Node.js workload that opted in (nodeStartupSnapshot) is started from the image's start-up snapshot with
 * the snapshot's V8 flags; when V8 refuses the snapshot (exit code 14: a CPU other than the one it was built
 * for), the supervisor starts it again at once without the snapshot, and says so once.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Supervisor } from '../../updater/workload/supervisor.js';
import { RUNTIME_SNAPSHOT } from '../../lib/node-snapshots.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A stand-in for node: exits 14 (as node does for a refused snapshot) when given --snapshot-blob, else runs. */
function fakeNode(dir: string, refuse: boolean): string {
  const p = join(dir, 'node');
  writeFileSync(
    p,
    `#!/bin/sh\necho "argv: $*"\ncase "$*" in *--snapshot-blob*) ${refuse ? 'exit 14' : 'exec sleep 30'};; esac\nexec sleep 30\n`,
  );
  chmodSync(p, 0o755);
  return p;
}

function supervise(dir: string, refuse: boolean, optIn = true) {
  const blob = join(dir, 'node-runtime.blob');
  writeFileSync(blob, 'not really a snapshot');
  const lines: string[] = [];
  const s = new Supervisor(
    { command: fakeNode(dir, refuse), args: ['/opt/app/demo.mjs', '--config', 'c.json'], env: {}, dataDir: join(dir, 'data'), restart: { initialBackoffMs: 100, maxBackoffMs: 1000 }, nodeStartupSnapshot: optIn },
    (l) => lines.push(l),
    blob,
  );
  return { s, lines, blob };
}

const until = async (f: () => boolean, ms = 5000) => {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe('workload start-up snapshot', () => {
  it('starts an opted-in workload from the snapshot with its flags', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'uz-sup-'));
    dirs.push(dir);
    const { s, lines, blob } = supervise(dir, false);
    s.start();
    await until(() => lines.length > 0);
    expect(lines[0]).toBe(`argv: ${RUNTIME_SNAPSHOT.flags.join(' ')} --snapshot-blob ${blob} /opt/app/demo.mjs --config c.json`);
    await s.stop(1000);
  });

  it('starts it plainly, at once and for good, when V8 refuses the snapshot', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'uz-sup-'));
    dirs.push(dir);
    const { s, lines } = supervise(dir, true);
    let rejected = 0;
    let exited = 0;
    s.on('snapshotRejected', () => rejected++);
    s.on('exited', () => exited++);
    s.start();
    await until(() => lines.length >= 2);
    expect(lines[1]).toBe('argv: /opt/app/demo.mjs --config c.json');
    expect(rejected).toBe(1);
    expect(exited).toBe(0); // not a workload failure: no restart counted, no backoff
    expect(s.restarts).toBe(0);
    await s.stop(1000);
  });

  it('leaves a workload that did not opt in alone', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'uz-sup-'));
    dirs.push(dir);
    const { s, lines } = supervise(dir, true, false);
    s.start();
    await until(() => lines.length > 0);
    expect(lines[0]).toBe('argv: /opt/app/demo.mjs --config c.json');
    await s.stop(1000);
  });
});

describe('workload output', () => {
  it('is announced line by line (the agent probes health when a workload says something)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'uz-sup-'));
    dirs.push(dir);
    const { s, lines } = supervise(dir, false, false);
    const heard: string[] = [];
    s.on('output', (l) => heard.push(l));
    s.start();
    await until(() => lines.length > 0);
    expect(heard).toEqual(lines);
    expect(heard[0]).toMatch(/^argv: /);
    await s.stop(1000);
  });
});
