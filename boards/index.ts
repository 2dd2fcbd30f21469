import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { BoardSchema, type Board } from './schema.js';
import { UzError } from '../lib/errors.js';
import { formatZodError } from '../lib/validate.js';

const here = dirname(fileURLToPath(import.meta.url));

/** Parses a board definition; a bad file gets one clear line naming the field. */
export function parseBoard(json: unknown, source: string): Board {
  const r = BoardSchema.safeParse(json);
  if (!r.success) throw new UzError('BOARD_INVALID', `${source}: ${formatZodError(r.error)}`, { source });
  return r.data;
}

export function listBoards(dir = here): Board[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => parseBoard(JSON.parse(readFileSync(join(dir, f), 'utf8')), f));
}

export function getBoard(id: string, dir = here): Board {
  const board = listBoards(dir).find((b) => b.id === id);
  if (!board) {
    const known = listBoards(dir).map((b) => b.id).join(', ');
    throw new UzError('BOARD_UNKNOWN', `unknown board "${id}" (known: ${known})`, { id });
  }
  return board;
}

export { partitionDevice, type Board } from './schema.js';
