/**
 * Every failure a user can see carries a stable reason code plus context, so scripts can branch on the code
 * and people get one clear line. Codes are documented in docs/errors.md (a test keeps the two in step).
 */
export class UzError extends Error {
  readonly code: string;
  readonly context: Record<string, unknown>;

  constructor(code: string, message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UzError';
    this.code = code;
    this.context = context;
  }

  /** One line for a terminal: `CODE: message`. */
  toLine(): string {
    return `${this.code}: ${this.message}`;
  }
}

export function isUzError(e: unknown, code?: string): e is UzError {
  return e instanceof UzError && (code === undefined || e.code === code);
}
