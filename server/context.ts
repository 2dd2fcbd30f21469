/** What every plugin gets: the services of one server instance (passed as plugin options, no globals). */
import type { FastifyInstance } from 'fastify';
import type {} from '@fastify/swagger'; // adds tags/summary to route schemas
import type { ZodType, z } from 'zod';
import type { ArtifactStore } from './artifacts.js';
import type { DeviceAuth, UrlSigner } from './auth.js';
import type { ServerBroker } from './broker.js';
import type { ServerConfig } from './config.js';
import type { DeviceService } from './devices.js';
import type { EnrollmentService } from './enrollment.js';
import { httpError } from './errors.js';
import type { Metrics } from './metrics.js';
import type { RolloutService } from './rollouts.js';
import type { Storage } from './storage/types.js';

export interface Log {
  info(o: object, m?: string): void;
  warn(o: object, m?: string): void;
  error(o: object, m?: string): void;
  debug(o: object, m?: string): void;
}

export interface ServerContext {
  config: Readonly<ServerConfig>;
  storage: Storage;
  artifacts: ArtifactStore;
  metrics: Metrics;
  signer: UrlSigner;
  deviceAuth: DeviceAuth;
  devices: DeviceService;
  rollouts: RolloutService;
  broker: ServerBroker | null;
  enrollment: EnrollmentService;
  trustRootPath: string;
  now(): number;
  publicUrl(): string;
  log: Log;
}

export type UzPlugin = (app: FastifyInstance, opts: { ctx: ServerContext }) => Promise<void>;

/** Validates request data with a zod schema; BAD_REQUEST with the first problems. */
export function parse<T extends ZodType>(schema: T, data: unknown, what: string): z.infer<T> {
  const r = schema.safeParse(data);
  if (!r.success) {
    throw httpError('BAD_REQUEST', `${what}: ${r.error.issues.slice(0, 3).map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`).join('; ')}`);
  }
  return r.data;
}
