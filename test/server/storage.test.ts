import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStorage } from '../../server/storage/sqlite.js';
import { storageContract } from './storage-contract.js';

storageContract('sqlite in memory', async () => new SqliteStorage(':memory:'));
storageContract('sqlite on disk (WAL, synchronous=FULL)', async () => new SqliteStorage(join(mkdtempSync(join(tmpdir(), 'uz-st-')), 'uz.db')));
