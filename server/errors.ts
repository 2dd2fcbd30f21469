/**
 * Registry of the server's coded errors (the fastify lib/errors.js idea): every code a client of the HTTP API
 * can see, with its HTTP status. docs/server.md lists each one; test/server/errors.test.ts keeps the two in step.
 * Errors are thrown as UzError (lib/errors.ts) and rendered by the error handler as
 *   { "error": { "code": "RELEASE_INVALID", "message": "…" } }
 */
import { UzError } from '../lib/errors.js';

export const SERVER_ERRORS = {
  BAD_REQUEST: { status: 400, doc: 'body, query or params failed validation' },
  BODY_TOO_LARGE: { status: 413, doc: 'request body is larger than the configured limit' },
  UNAUTHORIZED: { status: 401, doc: 'missing or unknown API token / device credential' },
  FORBIDDEN: { status: 403, doc: 'the token role is not allowed to do this' },
  NOT_FOUND: { status: 404, doc: 'no such device, release, rollout, channel or artifact' },
  RATE_LIMITED: { status: 429, doc: 'too many requests from this client; retry after the Retry-After header' },
  RELEASE_INVALID: { status: 422, doc: 'the uploaded bundle failed verification against the fleet root of trust' },
  RELEASE_EXISTS: { status: 409, doc: 'a different bundle with the same board and version is already published' },
  RELEASE_YANKED: { status: 409, doc: 'the release is yanked and cannot be rolled out' },
  NO_TRUST_ROOT: { status: 503, doc: 'the server has no readable root.json, so it cannot verify uploads' },
  ROLLOUT_STATE: { status: 409, doc: 'the rollout is not in a state that allows this action' },
  ROLLOUT_EMPTY: { status: 422, doc: 'the rollout target matches no device' },
  RANGE_NOT_SATISFIABLE: { status: 416, doc: 'the Range header does not fit the artifact' },
  DEVICE_EXISTS: { status: 409, doc: 'a device with that id is already registered' },
  ENROLLMENT_DISABLED: { status: 409, doc: 'certificate enrollment needs the server to run with a fleet CA (--ca)' },
  ENROLLMENT_STATE: { status: 409, doc: 'the device enrollment state does not allow this (e.g. reject a device that has a certificate)' },
  INTERNAL: { status: 500, doc: 'unexpected server error (logged with the request id)' },
} as const satisfies Record<string, { status: number; doc: string }>;

export type ServerErrorCode = keyof typeof SERVER_ERRORS;

export function httpError(code: ServerErrorCode, message: string, context: Record<string, unknown> = {}): UzError {
  return new UzError(code, message, { ...context, status: SERVER_ERRORS[code].status });
}

export function statusOf(code: string): number {
  return (SERVER_ERRORS as Record<string, { status: number }>)[code]?.status ?? 500;
}

/**
 * Errors raised by the server process itself (not over HTTP); printed by the CLI as `uz: CODE: message`.
 */
export const PROCESS_ERRORS = {
  CONFIG_INVALID: 'a config key, flag or UZ_SERVER_* variable is unknown or has a bad value',
  PORT_IN_USE: 'the HTTP or MQTT port is already taken by another process',
  DATA_DIR: 'the data directory cannot be created or written',
  SERVER_UNREACHABLE: 'the CLI could not reach the server URL',
  API_ERROR: 'the server answered a CLI request with an error (code and message are shown)',
  DATABASE_UNREACHABLE: 'the PostgreSQL database (--database-url) cannot be reached or migrated',
  MQTT_UNREACHABLE: 'the external MQTT broker (--mqtt-url) cannot be reached, refused the login, or refused the subscription',
} as const;
