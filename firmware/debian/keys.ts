/**
 * Debian's archive signing keys, committed in `firmware/debian/keys/` (binary OpenPGP keyrings copied from the
 * `debian-archive-keyring` package). They are the root of trust for `uz lock update`.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as openpgp from 'openpgp';

export const DEBIAN_KEYS_DIR = fileURLToPath(new URL('./keys/', import.meta.url));

/** Reads every `*.gpg` keyring in `dir` (default: the committed Debian keys). */
export async function loadDebianKeys(dir: string = DEBIAN_KEYS_DIR): Promise<openpgp.PublicKey[]> {
  const keys: openpgp.PublicKey[] = [];
  for (const name of readdirSync(dir).sort()) {
    if (!name.endsWith('.gpg')) continue;
    const binaryKeys = new Uint8Array(readFileSync(join(dir, name)));
    const read = await openpgp.readKeys({ binaryKeys });
    for (const k of read) keys.push(k.isPrivate() ? k.toPublic() : (k as openpgp.PublicKey));
  }
  return keys;
}
