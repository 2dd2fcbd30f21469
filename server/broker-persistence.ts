/**
 * Aedes in-memory persistence with an indexed retained-message store.
 *
 * The stock `aedes-persistence` answers every SUBSCRIBE by testing EVERY retained message against the filter.
 * Each device keeps two retained messages (presence, status) plus its desired state, so with n devices a
 * connect storm costs O(n²): 10,000 devices subscribing two filters each made 600 million topic tests, and the
 * connect phase of the 10,000-device benchmark took minutes. Here retained messages are kept per "bucket" —
 * the first BUCKET_LEVELS topic levels (`uz/v1/dev/<id>`) — so a filter without wildcards is one map lookup,
 * a filter whose first BUCKET_LEVELS levels are literal (`uz/v1/dev/<id>/#`, `uz/v1/dev/<id>/+`) scans only
 * that device's few messages, and any other filter falls back to the full scan (same matcher as before).
 * Everything else (subscriptions, QoS queues, wills) is the stock implementation.
 */
import { createRequire } from 'node:module';
import { Readable } from 'node:stream';

const BUCKET_LEVELS = 4;

// aedes-persistence and qlobber are aedes' own dependencies: resolve them the way aedes does.
const aedesRequire = createRequire(import.meta.resolve('aedes'));
const persistenceRequire = createRequire(aedesRequire.resolve('aedes-persistence'));
interface Packet {
  topic: string;
  payload: Buffer | string;
  [k: string]: unknown;
}
interface AsyncPersistenceLike {
  setup(broker: unknown): Promise<void>;
  storeRetained(packet: Packet): Promise<void>;
  createRetainedStream(pattern: string): Readable;
  createRetainedStreamCombi(patterns: string[]): Readable;
}
/** The stock in-memory persistence (exported for tests comparing the two). */
export const MemoryPersistence = persistenceRequire('./asyncPersistence.js') as new (opts?: object) => AsyncPersistenceLike;
const { QlobberTrue } = persistenceRequire('qlobber') as { QlobberTrue: new (o: object) => { add(topic: string): void; test(topic: string): boolean } };
const QLOBBER_OPTIONS = { wildcard_one: '+', wildcard_some: '#', separator: '/' };

function bucketOf(topic: string): string {
  let at = -1;
  for (let i = 0; i < BUCKET_LEVELS; i++) {
    at = topic.indexOf('/', at + 1);
    if (at < 0) return topic;
  }
  return topic.slice(0, at);
}

export class IndexedRetainedPersistence extends MemoryPersistence {
  /** bucket → (topic → retained packet) */
  private readonly buckets = new Map<string, Map<string, Packet>>();
  private count = 0;

  /** Retained messages held. */
  get retainedCount(): number {
    return this.count;
  }

  override async storeRetained(pkt: Packet): Promise<void> {
    const key = bucketOf(pkt.topic);
    let b = this.buckets.get(key);
    if (pkt.payload.length === 0) {
      if (b?.delete(pkt.topic)) {
        this.count--;
        if (b.size === 0) this.buckets.delete(key);
      }
      return;
    }
    if (!b) this.buckets.set(key, (b = new Map()));
    if (!b.has(pkt.topic)) this.count++;
    b.set(pkt.topic, { ...pkt });
  }

  override createRetainedStream(pattern: string): Readable {
    return Readable.from(this.matching(pattern));
  }

  override createRetainedStreamCombi(patterns: string[]): Readable {
    const self = this;
    return Readable.from(
      (function* () {
        for (const p of patterns) yield* self.matching(p);
      })(),
    );
  }

  /** Retained packets whose topic matches the MQTT filter `pattern`. */
  *matching(pattern: string): Generator<Packet> {
    if (!pattern.includes('+') && !pattern.includes('#')) {
      const hit = this.buckets.get(bucketOf(pattern))?.get(pattern);
      if (hit) yield hit;
      return;
    }
    const q = new QlobberTrue(QLOBBER_OPTIONS);
    q.add(pattern);
    const levels = pattern.split('/');
    const literal = levels.length > BUCKET_LEVELS && levels.slice(0, BUCKET_LEVELS).every((l) => l !== '+' && l !== '#');
    // `a/b/c/d/#` also matches `a/b/c/d` itself, which is in the same bucket
    const scan = literal ? [this.buckets.get(levels.slice(0, BUCKET_LEVELS).join('/'))] : this.buckets.values();
    for (const b of scan) {
      if (!b) continue;
      for (const [topic, packet] of b) if (q.test(topic)) yield packet;
    }
  }
}
