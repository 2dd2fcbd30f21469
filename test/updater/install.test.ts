// The install pipeline against a real loopback HTTP server and the MQTT block source: resume, verification
// before any write, and hostile inputs that must end with a reason code and nothing in boot selection.
import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { isUzError } from '../../lib/errors.js';
import type { ReleaseRef } from '../../lib/protocol.js';
import { downloadIntoSlot, readBackSlot, type InstallContext } from '../../updater/install/pipeline.js';
import { httpSource } from '../../updater/install/http-source.js';
import { mqttBlockSource, type BlockRequester } from '../../updater/install/mqtt-source.js';
import { memorySource, type RangeSource } from '../../updater/install/source.js';
import { slotPathsFromBootPartition } from '../../updater/install/slots.js';
import { ProgressStore } from '../../updater/install/progress.js';
import { CrashStorage } from '../../updater/sim/crash-storage.js';
import { SimMachine } from '../../updater/sim/machine.js';
import { provisionSim } from '../../updater/sim/provision.js';
import { simBundle, simSlotImage, simTrust, type SimBundle } from '../../updater/sim/releases.js';
import type { Storage } from '../../updater/io/storage.js';
import { serveArtifact, type ServeFault, type TestServer } from './helpers.js';

const NOW = new Date('2031-06-01T00:00:00Z');
const trust = simTrust(NOW);
const SLOT = 512 * 1024;
const v1 = simBundle({ payload: simSlotImage('1.0.0', 100_000), version: '1.0.0', rollbackCounter: 1, keys: [trust.releaseKey], now: NOW });
const v2 = simBundle({ payload: randomBytes(300_000), version: '2.0.0', rollbackCounter: 2, chunkSize: 16384, keys: [trust.releaseKey], now: NOW });

let servers: TestServer[] = [];
afterEach(async () => {
  for (const s of servers) await s.close();
  servers = [];
});

async function world(wrap?: (c: CrashStorage) => Storage) {
  const crash = new CrashStorage();
  const m = new SimMachine('uboot-bootcount', wrap ? wrap(crash) : crash, '/m');
  const pad = (b: Buffer) => Buffer.concat([b, Buffer.alloc(SLOT - b.length)]);
  await provisionSim(new SimMachine('uboot-bootcount', crash, '/m'), { A: pad(v1.slotContent), B: pad(v1.slotContent) });
  await m.boot({ A: true, B: true });
  return { crash, m, bootctl: m.bootControl() };
}

function ctxFor(w: Awaited<ReturnType<typeof world>>, bundle: SimBundle, source: RangeSource, release?: ReleaseRef, policy: Partial<InstallContext['policy']> = {}): InstallContext {
  return {
    storage: w.m.storage,
    stateDir: w.m.paths.dataDir,
    source,
    release: release ?? bundle.release('http://127.0.0.1/x.uzb'),
    target: 'B',
    slotPath: w.m.paths.slotFile('B'),
    policy: { root: trust.root, board: 'qemu-virt', minCounter: 1, now: NOW, ...policy },
    bootctl: w.bootctl,
    signal: new AbortController().signal,
    syncEveryBytes: 32 * 1024,
  };
}

async function serve(b: SimBundle, fault?: ServeFault): Promise<{ srv: TestServer; src: RangeSource; release: ReleaseRef }> {
  const srv = await serveArtifact(b.bytes, fault);
  servers.push(srv);
  const release = b.release(srv.url);
  return { srv, src: httpSource(srv.url, { totalSize: release.size, idleTimeoutMs: 300 }), release };
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (isUzError(e)) return e.code;
    throw e;
  }
  return 'OK';
}

/** Nothing reached boot selection: B not armed, A still primary; B either untouched or marked bad. */
async function assertSelectionSafe(w: Awaited<ReturnType<typeof world>>) {
  const sel = await w.bootctl.read();
  expect(sel.tryPending).toBeNull();
  expect(sel.primary).toBe('A');
}

describe('install pipeline over HTTP', () => {
  it('downloads, verifies and writes; read-back matches the signed payload hash', async () => {
    const w = await world();
    const { src, release } = await serve(v2);
    const p = await downloadIntoSlot(ctxFor(w, v2, src, release));
    expect(p.slotSha256).toBe(v2.manifest.payload.sha256);
    expect((await w.bootctl.read()).bad).toContain('B'); // marked bad before writing, stays so until armed
    const rb = await readBackSlot(w.m.storage, w.m.paths.dataDir, release, 'B', w.m.paths.slotFile('B'), ctxFor(w, v2, src).policy);
    expect(rb).toMatchObject({ ok: true, version: '2.0.0', rollbackCounter: 2 });
    expect(w.crash.peek(w.m.paths.slotFile('B'))!.subarray(0, v2.slotContent.length).equals(v2.slotContent)).toBe(true);
  });

  it('resumes after dropped connections and fetches only what is missing (plus the header)', async () => {
    const w = await world();
    const { srv, src, release } = await serve(v2, { kind: 'drop', afterBytes: 120_000, times: 1 });
    expect(['NET', 'TRUNCATED']).toContain(await code(downloadIntoSlot(ctxFor(w, v2, src, release))));
    const prog = await new ProgressStore(w.m.storage, w.m.paths.dataDir).load();
    expect(prog!.chunksDone).toBeGreaterThan(0);
    const before = srv.sent();
    await downloadIntoSlot(ctxFor(w, v2, src, release));
    const headerLen = release.size - v2.manifest.payload.size;
    // Second run: header + chunks from chunksDone on, nothing before.
    expect(srv.sent() - before).toBe(headerLen + (v2.manifest.payload.size - prog!.chunksDone * 16384));
    expect(srv.ranges.at(-1)).toBe(`bytes=${headerLen + prog!.chunksDone * 16384}-${release.size - 1}`);
    expect((await readBackSlot(w.m.storage, w.m.paths.dataDir, release, 'B', w.m.paths.slotFile('B'), ctxFor(w, v2, src).policy)).ok).toBe(true);
  });

  it('resume survives a power cut: chunks counted in progress are on the medium', async () => {
    const w = await world();
    const { src, release } = await serve(v2);
    w.crash.armCut(30);
    await downloadIntoSlot(ctxFor(w, v2, src, release)).catch(() => {});
    w.crash.powerCut();
    const m2 = new SimMachine('uboot-bootcount', w.crash, '/m');
    await m2.boot({ A: true, B: false });
    const w2 = { ...w, m: m2, bootctl: m2.bootControl() };
    await downloadIntoSlot(ctxFor(w2, v2, src, release));
    expect((await readBackSlot(w.crash, m2.paths.dataDir, release, 'B', m2.paths.slotFile('B'), ctxFor(w2, v2, src).policy)).ok).toBe(true);
  });

  it('server lying about the total size → SIZE_MISMATCH, nothing written', async () => {
    const w = await world();
    const { src, release } = await serve(v2, { kind: 'lie-total', total: 999_999 });
    expect(await code(downloadIntoSlot(ctxFor(w, v2, src, release)))).toBe('SIZE_MISMATCH');
    await assertSelectionSafe(w);
    expect((await w.bootctl.read()).bad).not.toContain('B');
  });

  it('release announcing a size the signed header contradicts → SIZE_MISMATCH before any write', async () => {
    const w = await world();
    const srv = await serveArtifact(Buffer.concat([v2.bytes, Buffer.alloc(10)]));
    servers.push(srv);
    const release = { ...v2.release(srv.url), size: v2.bytes.length + 10 };
    expect(await code(downloadIntoSlot(ctxFor(w, v2, httpSource(srv.url, { totalSize: release.size }), release)))).toBe('SIZE_MISMATCH');
    expect((await w.bootctl.read()).bad).not.toContain('B');
  });

  it('server sending more bytes than asked → SIZE_MISMATCH', async () => {
    const w = await world();
    const { src, release } = await serve(v2, { kind: 'extra-bytes' });
    expect(await code(downloadIntoSlot(ctxFor(w, v2, src, release)))).toBe('SIZE_MISMATCH');
    await assertSelectionSafe(w);
  });

  it('a download that never ends → TIMEOUT (transient), not a hang', async () => {
    const w = await world();
    const { src, release } = await serve(v2, { kind: 'stall' });
    const t0 = Date.now();
    expect(await code(downloadIntoSlot(ctxFor(w, v2, src, release)))).toBe('TIMEOUT');
    expect(Date.now() - t0).toBeLessThan(5000);
    await assertSelectionSafe(w);
  });

  it('server ignoring Range on a resume → RANGE_UNSUPPORTED', async () => {
    const w = await world();
    const srv = await serveArtifact(v2.bytes, { kind: 'ignore-range' });
    servers.push(srv);
    const release = v2.release(srv.url);
    const src = httpSource(srv.url, { totalSize: release.size });
    // first run works (whole file), a resume needs a range
    const flaky = memorySource(v2.bytes, { beforePiece: (o) => { if (o > 150_000) throw Object.assign(new Error('reset'), { code: 'ECONNRESET' }); } });
    await downloadIntoSlot(ctxFor(w, v2, flaky, release)).catch(() => {});
    expect(await code(downloadIntoSlot(ctxFor(w, v2, src, release)))).toBe('RANGE_UNSUPPORTED');
  });
});

describe('verification happens before anything is written', () => {
  it('a bundle for another board → WRONG_BOARD; slot bytes and boot selection untouched', async () => {
    const w = await world();
    const other = simBundle({ payload: randomBytes(50_000), version: '2.0.0', rollbackCounter: 2, board: 'rpi4', keys: [trust.releaseKey], now: NOW });
    const before = w.crash.peek(w.m.paths.slotFile('B'));
    const release = { ...other.release('http://127.0.0.1/x'), board: 'qemu-virt' }; // the server claims our board
    expect(await code(downloadIntoSlot(ctxFor(w, other, memorySource(other.bytes), release)))).toBe('WRONG_BOARD');
    expect(w.crash.peek(w.m.paths.slotFile('B'))!.equals(before!)).toBe(true);
    expect(await w.bootctl.read()).toEqual({ primary: 'A', tryPending: null, bad: [] });
  });

  it('signed by a key the root does not trust → refused before writing', async () => {
    const w = await world();
    const forged = simBundle({ payload: randomBytes(50_000), version: '2.0.0', rollbackCounter: 2, keys: [trust.strangerKey], now: NOW });
    expect(['UNKNOWN_KEY', 'BAD_SIGNATURE', 'THRESHOLD']).toContain(await code(downloadIntoSlot(ctxFor(w, forged, memorySource(forged.bytes)))));
    expect(await w.bootctl.read()).toEqual({ primary: 'A', tryPending: null, bad: [] });
  });

  it('rollback counter below the committed floor → ROLLBACK; expired bundle → EXPIRED', async () => {
    const w = await world();
    expect(await code(downloadIntoSlot(ctxFor(w, v2, memorySource(v2.bytes), undefined, { minCounter: 3 })))).toBe('ROLLBACK');
    const old = simBundle({ payload: randomBytes(20_000), version: '2.0.0', rollbackCounter: 2, keys: [trust.releaseKey], now: new Date('2020-01-01T00:00:00Z'), expiresAt: new Date('2020-02-01T00:00:00Z') });
    expect(await code(downloadIntoSlot(ctxFor(w, old, memorySource(old.bytes))))).toBe('EXPIRED');
    expect(await w.bootctl.read()).toEqual({ primary: 'A', tryPending: null, bad: [] });
  });

  it('a corrupted chunk in transit → HASH_MISMATCH and the chunk never reaches the slot', async () => {
    const w = await world();
    const bad = Buffer.from(v2.bytes);
    const at = bad.length - v2.manifest.payload.size + 5 * 16384 + 100;
    bad[at]! ^= 0xff;
    expect(await code(downloadIntoSlot(ctxFor(w, v2, memorySource(bad))))).toBe('HASH_MISMATCH');
    const slot = w.crash.peek(w.m.paths.slotFile('B'))!;
    expect(slot.subarray(5 * 16384, 6 * 16384).equals(v2.slotContent.subarray(5 * 16384, 6 * 16384))).toBe(false);
    await assertSelectionSafe(w);
  });

  it('payload larger than the slot → SLOT_TOO_SMALL before writing', async () => {
    const w = await world();
    const big = simBundle({ payload: randomBytes(SLOT + 1), version: '2.0.0', rollbackCounter: 2, chunkSize: 65536, keys: [trust.releaseKey], now: NOW });
    expect(await code(downloadIntoSlot(ctxFor(w, big, memorySource(big.bytes))))).toBe('SLOT_TOO_SMALL');
    expect((await w.bootctl.read()).bad).not.toContain('B');
  });

  it('a full data partition → DATA_FULL, and nothing reaches boot selection', async () => {
    const { ioError } = await import('../../updater/io/storage.js');
    const w = await world((crash) => ({
      readFile: (p) => crash.readFile(p),
      remove: (p) => crash.remove(p),
      mkdirp: () => crash.mkdirp(),
      openBlock: (p) => crash.openBlock(p),
      writeFileDurable: async (p, d) => {
        if (p.startsWith('/m/data/')) throw ioError(Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' }), 'writing a state file', p);
        return crash.writeFileDurable(p, d);
      },
    }));
    expect(await code(downloadIntoSlot(ctxFor(w, v2, memorySource(v2.bytes))))).toBe('DATA_FULL');
    expect((await w.bootctl.read()).tryPending).toBeNull();
  });

  it('gzip payloads are verified, inflated into the slot and read back', async () => {
    const w = await world();
    const payload = Buffer.concat([simSlotImage('3.0.0', 50_000), Buffer.alloc(200_000)]);
    const gz = simBundle({ payload, version: '3.0.0', rollbackCounter: 3, compression: 'gzip', keys: [trust.releaseKey], now: NOW });
    const release = gz.release('http://127.0.0.1/gz');
    const p = await downloadIntoSlot(ctxFor(w, gz, memorySource(gz.bytes), release));
    expect(p.slotBytes).toBe(payload.length);
    expect((await readBackSlot(w.m.storage, w.m.paths.dataDir, release, 'B', w.m.paths.slotFile('B'), ctxFor(w, gz, memorySource(gz.bytes)).policy)).ok).toBe(true);
  });
});

/** Storage that logs slot writes/syncs (start and end) and progress records, around the world's CrashStorage. */
function logged(crash: CrashStorage) {
  type Ev =
    | { t: 'write'; pos: number; len: number; phase: 'start' | 'end' }
    | { t: 'sync'; phase: 'start' | 'end' }
    | { t: 'save'; chunksDone: number; complete: boolean }
    | { t: 'read'; len: number };
  const events: Ev[] = [];
  const storage: Storage = {
    readFile: (p) => crash.readFile(p),
    remove: (p) => crash.remove(p),
    mkdirp: () => crash.mkdirp(),
    writeFileDurable: async (p, d) => {
      await crash.writeFileDurable(p, d);
      if (p.endsWith('/progress.json')) {
        const r = JSON.parse(Buffer.from(d).toString('utf8'));
        events.push({ t: 'save', chunksDone: r.chunksDone, complete: r.slotSha256 !== null });
      }
    },
    openBlock: async (path) => {
      const f = await crash.openBlock(path);
      if (!path.endsWith('slot-B.img')) return f;
      return {
        ...f,
        read: async (buf, pos) => {
          const n = await f.read(buf, pos);
          events.push({ t: 'read', len: n });
          return n;
        },
        write: async (data, pos) => {
          events.push({ t: 'write', pos, len: data.length, phase: 'start' });
          await new Promise((r) => setTimeout(r, 1)); // a write that takes time: lets anything else queue up
          await f.write(data, pos);
          events.push({ t: 'write', pos, len: data.length, phase: 'end' });
        },
        sync: async () => {
          events.push({ t: 'sync', phase: 'start' });
          await f.sync();
          events.push({ t: 'sync', phase: 'end' });
        },
      };
    },
  };
  return { storage, events };
}

describe('write path: batched writes, checkpoints, durability, confirmation', () => {
  it('writes whole verified chunks in batches, one write at a time, in order; every record counts only synced chunks', async () => {
    let log!: ReturnType<typeof logged>;
    const w = await world((crash) => (log = logged(crash)).storage);
    const chunk = v2.manifest.payload.chunkSize;
    const size = v2.manifest.payload.size;
    await downloadIntoSlot({ ...ctxFor(w, v2, memorySource(v2.bytes)), syncEveryBytes: 4 * chunk });
    const ev = log.events;
    const starts = ev.filter((e) => e.t === 'write' && e.phase === 'start') as { pos: number; len: number }[];
    // 4 chunks per write (the checkpoint interval caps the batch), contiguous, chunk-aligned.
    expect(starts.length).toBe(Math.ceil(v2.manifest.payload.chunkSha256.length / 4));
    let next = 0;
    for (const s of starts) {
      expect(s.pos).toBe(next);
      expect(s.pos % chunk).toBe(0);
      next += s.len;
    }
    expect(next).toBe(size);
    // Never two writes in flight; a record counting k chunks follows a sync that STARTED after they were written.
    let inFlight = 0;
    let written = 0; // bytes whose write ended
    let syncStartedAt = -1; // bytes written when the running sync started
    let durable = 0; // bytes covered by the last completed sync
    const saves: number[] = [];
    for (const e of ev) {
      if (e.t === 'write' && e.phase === 'start') expect(++inFlight).toBe(1);
      if (e.t === 'write' && e.phase === 'end') {
        inFlight--;
        written = Math.max(written, e.pos + e.len);
      }
      if (e.t === 'sync' && e.phase === 'start') syncStartedAt = written;
      if (e.t === 'sync' && e.phase === 'end') durable = syncStartedAt;
      if (e.t === 'save') {
        expect(Math.min(size, e.chunksDone * chunk)).toBeLessThanOrEqual(durable);
        if (e.complete) expect(durable).toBe(size);
        saves.push(e.chunksDone);
      }
    }
    expect(saves.length).toBeGreaterThan(3); // checkpoints along the way, not only the final record
    expect(saves).toEqual([...saves].sort((a, b) => a - b));
  });

  it('the slot is durable when the download returns: a power cut right after loses nothing', async () => {
    const w = await world();
    const p = await downloadIntoSlot(ctxFor(w, v2, memorySource(v2.bytes)));
    expect(p.writeVerified).toBe(true);
    w.crash.powerCut();
    expect(w.crash.peek(w.m.paths.slotFile('B'))!.subarray(0, v2.slotContent.length).equals(v2.slotContent)).toBe(true);
    expect((await new ProgressStore(w.crash, w.m.paths.dataDir).load())!.slotSha256).toBe(v2.manifest.payload.sha256);
  });

  it('the first confirmation accepts the write-time verification without reading; later ones read the slot back and catch a damaged medium', async () => {
    let log!: ReturnType<typeof logged>;
    const w = await world((crash) => (log = logged(crash)).storage);
    const release = v2.release('http://127.0.0.1/x.uzb');
    await downloadIntoSlot(ctxFor(w, v2, memorySource(v2.bytes), release));
    const confirm = () => readBackSlot(w.m.storage, w.m.paths.dataDir, release, 'B', w.m.paths.slotFile('B'), ctxFor(w, v2, memorySource(v2.bytes)).policy);
    const reads = () => log.events.filter((e) => e.t === 'read').length;
    expect(await confirm()).toMatchObject({ ok: true, checked: 'write' });
    expect(reads()).toBe(0);
    // Used up durably: after a restart (or a lost trial boot) the slot is read back.
    expect((await new ProgressStore(w.crash, w.m.paths.dataDir).load())!.writeVerified).toBe(false);
    expect(await confirm()).toMatchObject({ ok: true, checked: 'read-back' });
    expect(reads()).toBeGreaterThan(0);
    // The medium lost a byte since: the next confirmation says so (the engine then writes the slot again).
    const f = await w.crash.openBlock(w.m.paths.slotFile('B'));
    const one = Buffer.alloc(1);
    await f.read(one, 1000);
    one[0]! ^= 0xff;
    await f.write(one, 1000);
    await f.sync();
    expect(await confirm()).toMatchObject({ ok: false, checked: 'read-back', reason: expect.stringMatching(/does not match/) });
  });

  it('a record without writeVerified (an older agent) is read back', async () => {
    const w = await world();
    const release = v2.release('http://127.0.0.1/x.uzb');
    await downloadIntoSlot(ctxFor(w, v2, memorySource(v2.bytes), release));
    const store = new ProgressStore(w.crash, w.m.paths.dataDir);
    const { writeVerified: _drop, ...old } = (await store.load())!;
    void _drop;
    await store.save(old);
    expect(await readBackSlot(w.m.storage, w.m.paths.dataDir, release, 'B', w.m.paths.slotFile('B'), ctxFor(w, v2, memorySource(v2.bytes)).policy)).toMatchObject({
      ok: true,
      checked: 'read-back',
    });
  });

  it('nothing touches the slot after a cancelled or failed download has settled', async () => {
    let log!: ReturnType<typeof logged>;
    const w = await world((crash) => (log = logged(crash)).storage);
    const ac = new AbortController();
    const src = memorySource(v2.bytes, { beforePiece: (o) => o > 200_000 && ac.abort() });
    const err = await downloadIntoSlot({ ...ctxFor(w, v2, src), signal: ac.signal }).catch((e: Error) => e);
    expect((err as Error).name).toBe('AbortError');
    const n = log.events.length;
    await new Promise((r) => setTimeout(r, 30));
    expect(log.events.length).toBe(n);
    const ev = log.events.filter((e) => e.t === 'write');
    expect(ev.filter((e) => e.phase === 'start').length).toBe(ev.filter((e) => e.phase === 'end').length);
  });

  it('gzip: inflated output is written in batches with periodic syncs, durable on return, and reads back', async () => {
    const w = await world();
    const payload = Buffer.concat([simSlotImage('4.0.0', 300_000), Buffer.alloc(150_000)]);
    const gz = simBundle({ payload, version: '4.0.0', rollbackCounter: 4, compression: 'gzip', keys: [trust.releaseKey], now: NOW });
    const release = gz.release('http://127.0.0.1/gz');
    const p = await downloadIntoSlot({ ...ctxFor(w, gz, memorySource(gz.bytes), release), syncEveryBytes: 32 * 1024 });
    expect(p).toMatchObject({ slotBytes: payload.length, writeVerified: true });
    w.crash.powerCut();
    expect(w.crash.peek(w.m.paths.slotFile('B'))!.subarray(0, payload.length).equals(payload)).toBe(true);
    const confirm = () => readBackSlot(w.crash, w.m.paths.dataDir, release, 'B', w.m.paths.slotFile('B'), ctxFor(w, gz, memorySource(gz.bytes)).policy);
    expect(await confirm()).toMatchObject({ ok: true, checked: 'write' });
    expect(await confirm()).toMatchObject({ ok: true, checked: 'read-back' });
  });

  it('gzip inflating past the end of the slot → SLOT_TOO_SMALL', async () => {
    const w = await world();
    for (const payload of [Buffer.alloc(SLOT + 4096), randomBytes(SLOT + 200_000)]) {
      const gz = simBundle({ payload, version: '4.0.0', rollbackCounter: 4, compression: 'gzip', keys: [trust.releaseKey], now: NOW });
      expect(await code(downloadIntoSlot(ctxFor(w, gz, memorySource(gz.bytes))))).toBe('SLOT_TOO_SMALL');
      await assertSelectionSafe(w);
    }
  });
});

describe('MQTT block source', () => {
  function requester(buf: Buffer, lie?: 'offset' | 'long' | 'short-eof'): BlockRequester & { asked: number[] } {
    const asked: number[] = [];
    return {
      asked,
      async requestBlock(_a, offset, length) {
        asked.push(offset);
        const data = buf.subarray(offset, offset + length);
        if (lie === 'offset') return { offset: offset + 1, data, eof: false };
        if (lie === 'long') return { offset, data: Buffer.concat([data, Buffer.alloc(1)]), eof: false };
        if (lie === 'short-eof' && offset > 100_000) return { offset, data: Buffer.alloc(0), eof: true };
        return { offset, data, eof: offset + data.length >= buf.length };
      },
    };
  }

  it('streams a bundle through the pipeline in blocks with several in flight', async () => {
    const w = await world();
    const r = requester(v2.bytes);
    const src = mqttBlockSource(r, v2.release('http://x/y').sha256, { blockBytes: 32 * 1024, window: 4 });
    await downloadIntoSlot(ctxFor(w, v2, src));
    expect(r.asked.length).toBeGreaterThan(5);
    expect(w.crash.peek(w.m.paths.slotFile('B'))!.subarray(0, v2.slotContent.length).equals(v2.slotContent)).toBe(true);
  });

  it('answers for the wrong offset or longer than asked → SIZE_MISMATCH; early eof → TRUNCATED', async () => {
    for (const [lie, want] of [['offset', 'SIZE_MISMATCH'], ['long', 'SIZE_MISMATCH'], ['short-eof', 'TRUNCATED']] as const) {
      const w = await world();
      const src = mqttBlockSource(requester(v2.bytes, lie), 'a'.repeat(64), { blockBytes: 32 * 1024 });
      expect(await code(downloadIntoSlot(ctxFor(w, v2, src)))).toBe(want);
      await assertSelectionSafe(w);
    }
  });
});

describe('slot devices', () => {
  it('derives p2/p3 from the boot partition init found', () => {
    expect(slotPathsFromBootPartition('/dev/vda1\n').pathOf('A')).toBe('/dev/vda2');
    expect(slotPathsFromBootPartition('/dev/vda1').pathOf('B')).toBe('/dev/vda3');
    expect(slotPathsFromBootPartition('/dev/mmcblk0p1').pathOf('B')).toBe('/dev/mmcblk0p3');
    expect(slotPathsFromBootPartition('/dev/sda1').pathOf('A')).toBe('/dev/sda2');
    expect(() => slotPathsFromBootPartition('/dev/vda2')).toThrow(expect.objectContaining({ code: 'SLOT_DEVICE_UNKNOWN' }));
  });
});
