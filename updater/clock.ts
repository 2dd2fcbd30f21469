import { createSocket } from 'node:dgram';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFile } from 'node:fs/promises';
import { writeFileDurable } from './fsutil.js';

/**
 * Keeping a sane clock on a board without an RTC (every Pi): TLS certificates, bundle expiry and the
 * freeze check all depend on it. Three rules:
 *  1. never earlier than the image's build time (done by the init before anything starts);
 *  2. never earlier than the last time this board saw (saved on the data partition every few minutes);
 *  3. then SNTP (RFC 4330) against the configured servers, outbound UDP only, like everything else.
 */
const NTP_EPOCH_OFFSET = 2208988800; // seconds between 1900-01-01 and 1970-01-01

export interface SntpResult {
  /** Server time at the moment the reply arrived, corrected by half the round trip (ms since 1970). */
  serverTimeMs: number;
  /** Local clock minus server time, ms (positive: we are ahead). */
  offsetMs: number;
  roundTripMs: number;
  stratum: number;
}

/** One SNTP query. Rejects on timeout, on a kiss-of-death / unsynchronised server, or a malformed reply. */
export function sntpQuery(host: string, port = 123, timeoutMs = 3000, now: () => number = Date.now): Promise<SntpResult> {
  return new Promise((resolve, reject) => {
    const sock = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    const req = Buffer.alloc(48);
    req[0] = (0 << 6) | (4 << 3) | 3; // LI 0, version 4, mode 3 (client)
    const t1 = now();
    // Transmit timestamp = our time; the server echoes it as "originate", which ties the reply to this request.
    const sec = Math.floor(t1 / 1000) + NTP_EPOCH_OFFSET;
    const frac = Math.floor(((t1 % 1000) / 1000) * 2 ** 32);
    req.writeUInt32BE(sec >>> 0, 40);
    req.writeUInt32BE(frac >>> 0, 44);
    const timer = setTimeout(() => {
      sock.close();
      reject(new Error(`SNTP timeout from ${host}:${port}`));
    }, timeoutMs);
    sock.on('error', (e) => {
      clearTimeout(timer);
      sock.close();
      reject(e);
    });
    sock.on('message', (msg) => {
      const t4 = now();
      clearTimeout(timer);
      sock.close();
      if (msg.length < 48) return reject(new Error('SNTP reply too short'));
      const mode = msg[0]! & 7;
      const stratum = msg[1]!;
      if (mode !== 4 && mode !== 5) return reject(new Error(`SNTP reply has mode ${mode}`));
      if (stratum === 0 || stratum > 15) return reject(new Error(`SNTP server unsynchronised (stratum ${stratum})`));
      if (msg.readUInt32BE(24) !== (sec >>> 0) || msg.readUInt32BE(28) !== (frac >>> 0)) return reject(new Error('SNTP reply does not answer our request'));
      const ts = (o: number) => (msg.readUInt32BE(o) - NTP_EPOCH_OFFSET) * 1000 + (msg.readUInt32BE(o + 4) / 2 ** 32) * 1000;
      const t2 = ts(32); // receive
      const t3 = ts(40); // transmit
      const roundTripMs = t4 - t1 - (t3 - t2);
      const offsetMs = (t1 - t2 + (t4 - t3)) / 2;
      resolve({ serverTimeMs: t4 - offsetMs, offsetMs, roundTripMs, stratum });
    });
    sock.send(req, port, host);
  });
}

export interface ClockOptions {
  servers: Array<{ host: string; port?: number }>;
  /** Where the last seen time is kept (on the data partition). */
  stateFile: string;
  /** Sets the system clock (ms since 1970); on the device `date -s @<s>`. */
  setClock?: (ms: number) => Promise<void>;
  now?: () => number;
  log?: (line: string) => void;
}

// Made per call rather than at module load: nothing runs while the start-up snapshot is built.
const run = (file: string, args: string[] = []) => promisify(execFile)(file, args);
export const setClockWithDate = async (ms: number): Promise<void> => {
  await run('date', ['-s', `@${Math.round(ms / 1000)}`]);
};

export class ClockKeeper {
  private readonly now: () => number;
  private readonly setClock: (ms: number) => Promise<void>;
  constructor(private readonly o: ClockOptions) {
    this.now = o.now ?? Date.now;
    this.setClock = o.setClock ?? setClockWithDate;
  }

  /** Rule 2: move the clock forward to the last time this board saw, if it is behind. */
  async restoreLastSeen(): Promise<boolean> {
    let saved: number;
    try {
      saved = Number(JSON.parse(await readFile(this.o.stateFile, 'utf8')).lastSeenMs);
    } catch {
      return false;
    }
    if (Number.isFinite(saved) && saved > this.now()) {
      await this.setClock(saved);
      this.o.log?.(`UZ-CLOCK restored-last-seen ms=${saved}`);
      return true;
    }
    return false;
  }

  async saveLastSeen(): Promise<void> {
    await writeFileDurable(this.o.stateFile, JSON.stringify({ lastSeenMs: this.now() }));
  }

  /** Rule 3: ask the servers in order; step the clock when it is off by more than a second. */
  async sync(): Promise<SntpResult | null> {
    for (const s of this.o.servers) {
      try {
        const r = await sntpQuery(s.host, s.port ?? 123, 3000, this.now);
        if (Math.abs(r.offsetMs) > 1000) {
          await this.setClock(r.serverTimeMs);
          this.o.log?.(`UZ-CLOCK stepped offset_ms=${Math.round(-r.offsetMs)} server=${s.host}`);
        }
        return r;
      } catch (e) {
        this.o.log?.(`UZ-WARN clock server=${s.host} detail=${JSON.stringify((e as Error).message)}`);
      }
    }
    return null;
  }
}
