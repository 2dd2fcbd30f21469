import { describe, expect, it } from 'vitest';
import { generateSigningKey } from '../../firmware/trust/keys.js';
import {
  REVOKED_FIELD,
  assertRootNotExpired,
  parseRootMetadata,
  releaseRoleKeys,
  rotateRootSigned,
  signRoot,
  updateTrustedRoot,
  updateTrustedRootChain,
  verifyRootSelfSigned,
  type RootMetadata,
} from '../../firmware/trust/root.js';
import { canonicalBytes } from '../../firmware/trust/canonical.js';
import { verifyThreshold } from '../../firmware/trust/signatures.js';
import { NOW, ceremony, expectCode } from '../bundle/helpers.js';

const later = (days: number) => new Date(NOW.getTime() + days * 86_400_000);
const json = (r: RootMetadata) => JSON.stringify(r);

describe('root metadata', () => {
  it('is TUF-shaped, self-signed by a threshold, and survives a JSON round trip', () => {
    const c = ceremony(2, 3, 2, 3);
    const s = c.root.signed;
    expect(s._type).toBe('root');
    expect(s.spec_version).toMatch(/^1\.0\.\d+$/);
    expect(Object.keys(s.roles).sort()).toEqual(['release', 'root', 'snapshot', 'targets', 'timestamp']);
    expect(s.roles.root).toEqual({ keyids: c.rootKeys.map((k) => k.keyid), threshold: 2 });
    for (const k of c.rootKeys) expect(s.keys[k.keyid]).toEqual({ keytype: 'ed25519', scheme: 'ed25519', keyval: { public: Buffer.from(k.publicKey).toString('hex') } });
    const back = parseRootMetadata(json(c.root));
    verifyRootSelfSigned(back);
    expect(back).toEqual(c.root);
  });

  it('rejects a root whose keyid does not match its key (one key cannot count twice)', async () => {
    const c = ceremony();
    const raw = JSON.parse(json(c.root));
    const id = Object.keys(raw.signed.keys)[0]!;
    raw.signed.keys['0'.repeat(64)] = raw.signed.keys[id];
    raw.signed.roles.root.keyids.push('0'.repeat(64));
    await expectCode(() => parseRootMetadata(raw), 'MALFORMED');
  });

  it('rejects roles with unlisted keys, duplicate keyids, or unreachable thresholds', async () => {
    const c = ceremony(1, 2);
    for (const mutate of [
      (r: any) => r.signed.roles.release.keyids.push('a'.repeat(64)),
      (r: any) => r.signed.roles.root.keyids.push(r.signed.roles.root.keyids[0]),
      (r: any) => (r.signed.roles.root.threshold = 3),
      (r: any) => (r.signed.roles.root.threshold = 0),
      (r: any) => delete r.signed.roles.release,
      (r: any) => (r.signed.expires = '2030-01-01T00:00:00.000Z'),
      (r: any) => (r.signed.version = 1.5),
    ]) {
      const raw = JSON.parse(json(c.root));
      mutate(raw);
      await expectCode(() => parseRootMetadata(raw), 'MALFORMED');
    }
  });

  it('counts each key once towards a threshold (duplicate signatures do not help)', async () => {
    const c = ceremony(2, 3);
    const one = signRoot(c.root.signed, [c.rootKeys[0]!]);
    const dup: RootMetadata = { signed: one.signed, signatures: [one.signatures[0]!, one.signatures[0]!] };
    await expectCode(() => verifyRootSelfSigned(dup), 'THRESHOLD');
  });

  it('checks expiry', async () => {
    const c = ceremony();
    assertRootNotExpired(c.root, NOW);
    await expectCode(() => assertRootNotExpired(c.root, later(400)), 'EXPIRED');
  });

  it('unknown fields are covered by the signature (tampering one breaks it)', async () => {
    const c = ceremony();
    const withExtra = signRoot({ ...c.root.signed, 'x-custom': 'a' }, c.rootKeys);
    verifyRootSelfSigned(parseRootMetadata(json(withExtra)));
    const raw = JSON.parse(json(withExtra));
    raw.signed['x-custom'] = 'b';
    await expectCode(() => verifyRootSelfSigned(parseRootMetadata(raw)), 'BAD_SIGNATURE');
  });
});

describe('root rotation (TUF 5.3)', () => {
  // v1: root keys A,B,C (2-of-3). v2: replace C by D (2-of-3). v3: replace A,B by E,F (threshold 2 of D,E,F).
  function chain() {
    const c = ceremony(2, 3, 1, 2);
    const [A, B, C] = c.rootKeys as [any, any, any];
    const D = generateSigningKey();
    const E = generateSigningKey();
    const F = generateSigningKey();
    const v2s = rotateRootSigned(c.root.signed, { expires: later(365), remove: { root: [C.keyid] }, add: { root: [D] } });
    const v2 = signRoot(v2s, [A, B, D]);
    const v3s = rotateRootSigned(v2s, { expires: later(365), remove: { root: [A.keyid, B.keyid] }, add: { root: [E, F] } });
    const v3 = signRoot(v3s, [A, B, D, E]); // 2 of v2's (A,B,D) and 2 of v3's (D,E)
    return { c, A, B, C, D, E, F, v2s, v2, v3s, v3 };
  }

  it('accepts v1 → v2 → v3 in order', () => {
    const { c, v2, v3, D, E, F } = chain();
    const t2 = updateTrustedRoot(c.root, json(v2));
    expect(t2.signed.version).toBe(2);
    const t3 = updateTrustedRoot(t2, json(v3));
    expect(t3.signed.version).toBe(3);
    expect(t3.signed.roles.root.keyids.sort()).toEqual([D.keyid, E.keyid, F.keyid].sort());
    expect(updateTrustedRootChain(c.root, [json(v2), json(v3)], NOW).signed.version).toBe(3);
  });

  it('rejects skipping a version (v1 → v3), even when v3 carries enough v1 signatures', async () => {
    const { c, v3 } = chain();
    await expectCode(() => updateTrustedRoot(c.root, json(v3)), 'VERSION_GAP');
  });

  it('rejects replaying an old or the same version (ROLLBACK)', async () => {
    const { c, v2 } = chain();
    const t2 = updateTrustedRoot(c.root, json(v2));
    await expectCode(() => updateTrustedRoot(t2, json(c.root)), 'ROLLBACK');
    await expectCode(() => updateTrustedRoot(t2, json(v2)), 'ROLLBACK');
  });

  it('skipping-signature attack: new root signed only by its own new keys is rejected', async () => {
    const { c, v2s, D } = chain();
    const attacker = generateSigningKey();
    // attacker-controlled v2 lists only attacker keys and self-signs: no v1 root key signed it
    const evil = rotateRootSigned(c.root.signed, { expires: later(365), remove: { root: c.rootKeys.map((k) => k.keyid) }, add: { root: [attacker] }, thresholds: { root: 1 } });
    await expectCode(() => updateTrustedRoot(c.root, json(signRoot(evil, [attacker]))), 'THRESHOLD');
    // legit v2 content but signed by only one old key (+ the new one): below the trusted threshold
    await expectCode(() => updateTrustedRoot(c.root, json(signRoot(v2s, [c.rootKeys[0]!, D]))), 'THRESHOLD');
  });

  it('rejects a new root not signed by a threshold of its OWN root keys', async () => {
    const { c, v2s, A, B } = chain();
    const D2 = generateSigningKey();
    const v2Strict = rotateRootSigned(c.root.signed, { expires: later(365), add: { root: [D2] }, thresholds: { root: 4 } });
    await expectCode(() => updateTrustedRoot(c.root, json(signRoot(v2Strict, [A, B]))), 'THRESHOLD');
    // old signatures alone on v2s suffice for v1's role, and A,B are also 2 of v2's 3 → fine
    expect(updateTrustedRoot(c.root, json(signRoot(v2s, [A, B]))).signed.version).toBe(2);
  });

  it('rejects a tampered new root (signature no longer matches)', async () => {
    const { c, v2 } = chain();
    const raw = JSON.parse(json(v2));
    raw.signed.expires = '2099-01-01T00:00:00Z';
    await expectCode(() => updateTrustedRoot(c.root, raw), 'BAD_SIGNATURE');
  });

  it('the final root of a chain must not be expired', async () => {
    const { c, v2 } = chain();
    await expectCode(() => updateTrustedRootChain(c.root, [json(v2)], later(800)), 'EXPIRED');
  });

  it('revoking a release key = a new root without it; the keyid is recorded as revoked', async () => {
    const c = ceremony(1, 1, 1, 2);
    const [r1, r2] = c.releaseKeys as [any, any];
    const v2 = signRoot(rotateRootSigned(c.root.signed, { expires: later(365), remove: { release: [r1.keyid] } }), c.rootKeys);
    const t2 = updateTrustedRoot(c.root, json(v2));
    expect(t2.signed.roles.release.keyids).toEqual([r2.keyid]);
    expect(t2.signed[REVOKED_FIELD]).toEqual([r1.keyid]);
    expect(t2.signed.keys[r1.keyid]).toBeUndefined();
    const msg = canonicalBytes({ hello: 1 });
    const sigBy = (k: any) => signRoot({ hello: 1 } as any, [k]).signatures;
    verifyThreshold(msg, sigBy(r1), releaseRoleKeys(c.root), true);
    await expectCode(() => verifyThreshold(msg, sigBy(r1), releaseRoleKeys(t2), true), 'REVOKED_KEY');
    verifyThreshold(msg, sigBy(r2), releaseRoleKeys(t2), true);
  });
});
