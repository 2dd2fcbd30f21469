import type { z } from 'zod';
import { UzError } from './errors.js';

/** One line per problem: `path.to.field: message`. */
export function formatZodError(err: z.ZodError): string {
  return err.issues
    .slice(0, 5)
    .map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`)
    .join('; ');
}

/** Validate data at an edge; throws a coded error naming the source and the first problems. */
export function parseWith<T extends z.ZodTypeAny>(schema: T, data: unknown, code: string, source: string): z.infer<T> {
  const r = schema.safeParse(data);
  if (!r.success) throw new UzError(code, `${source}: ${formatZodError(r.error)}`, { source });
  return r.data;
}
