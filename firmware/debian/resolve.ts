/**
 * Dependency closure over parsed Packages indexes. Deliberately simpler than apt: versions and architecture
 * qualifiers are ignored (one suite holds one version of each package), alternatives take the first that can be
 * met, virtual packages go to a provider. Pure: no I/O.
 */
import { UzError } from '../../lib/errors.js';
import { parseRelations } from './deb822.js';
import type { DebPackage } from './packages.js';

export interface PackageIndex {
  byName: Map<string, DebPackage>;
  /** Virtual name → packages whose `Provides` names it. */
  providers: Map<string, DebPackage[]>;
}

/**
 * Builds lookup maps. When a name appears twice (e.g. in both `binary-arm64` and `binary-all`), the entry for
 * `arch` wins over `all`, else the first one seen.
 */
export function buildIndex(packages: Iterable<DebPackage>, arch = 'arm64'): PackageIndex {
  const byName = new Map<string, DebPackage>();
  for (const p of packages) {
    const prev = byName.get(p.name);
    if (!prev || (prev.architecture !== arch && p.architecture === arch)) byName.set(p.name, p);
  }
  const providers = new Map<string, DebPackage[]>();
  for (const p of byName.values()) {
    for (const group of parseRelations(p.provides)) {
      for (const v of group) {
        const list = providers.get(v) ?? [];
        list.push(p);
        providers.set(v, list);
      }
    }
  }
  return { byName, providers };
}

export interface ResolveOptions {
  /**
   * Names (real or virtual) not to ship. A dependency on one counts as met without adding anything, and nothing
   * past it is followed.
   */
  exclude?: Iterable<string>;
  /** Virtual name → provider to pick when several provide it. */
  prefer?: Record<string, string>;
}

type Lookup = DebPackage | 'excluded' | undefined;

function lookup(index: PackageIndex, name: string, exclude: Set<string>, prefer: Record<string, string>, selected: Map<string, DebPackage>): Lookup {
  if (exclude.has(name)) return 'excluded';
  const real = index.byName.get(name);
  if (real) return real;
  const all = index.providers.get(name) ?? [];
  if (all.length === 0) return undefined;
  const usable = all.filter((p) => !exclude.has(p.name));
  if (usable.length === 0) return 'excluded';
  const preferred = prefer[name];
  if (preferred) {
    const p = usable.find((x) => x.name === preferred);
    if (p) return p;
  }
  const already = usable.find((p) => selected.has(p.name));
  if (already) return already;
  return [...usable].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))[0];
}

function byNameOrder(a: DebPackage, b: DebPackage): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/** Picks the package meeting one dependency group, `'excluded'` when it counts as met, or throws `DEB_NOT_FOUND`. */
function pickAlternative(
  index: PackageIndex,
  group: string[],
  exclude: Set<string>,
  prefer: Record<string, string>,
  selected: Map<string, DebPackage>,
  from: string,
): DebPackage | 'excluded' {
  for (const alt of group) {
    const r = lookup(index, alt, exclude, prefer, selected);
    if (r) return r;
  }
  throw new UzError('DEB_NOT_FOUND', `${from} depends on ${group.join(' | ')}, which no package provides`, {
    package: from,
    dependency: group.join(' | '),
  });
}

/**
 * Returns `roots` plus everything reachable through Depends and Pre-Depends, sorted by name. Throws `DEB_NOT_FOUND`
 * for a root or a dependency that nothing provides. Cycles are fine.
 */
export function resolveClosure(index: PackageIndex, roots: readonly string[], options: ResolveOptions = {}): DebPackage[] {
  const exclude = new Set(options.exclude ?? []);
  const prefer = options.prefer ?? {};
  const selected = new Map<string, DebPackage>();
  const queue: DebPackage[] = [];
  const add = (p: DebPackage) => {
    if (selected.has(p.name)) return;
    selected.set(p.name, p);
    queue.push(p);
  };
  for (const root of roots) {
    const r = lookup(index, root, exclude, prefer, selected);
    if (r === undefined) throw new UzError('DEB_NOT_FOUND', `No package ${root} in the index`, { package: root });
    if (r !== 'excluded') add(r);
  }
  while (queue.length) {
    const p = queue.shift()!;
    for (const group of [...parseRelations(p.preDepends), ...parseRelations(p.depends)]) {
      const r = pickAlternative(index, group, exclude, prefer, selected, p.name);
      if (r !== 'excluded') add(r);
    }
  }
  return [...selected.values()].sort(byNameOrder);
}

/**
 * For metapackages such as `linux-image-arm64`: returns the packages each root directly depends on (first
 * alternative that can be met), not the roots themselves and nothing deeper. Sorted by name.
 */
export function resolveMetapackages(index: PackageIndex, roots: readonly string[], options: ResolveOptions = {}): DebPackage[] {
  const exclude = new Set(options.exclude ?? []);
  const prefer = options.prefer ?? {};
  const selected = new Map<string, DebPackage>();
  for (const root of roots) {
    const meta = index.byName.get(root);
    if (!meta) throw new UzError('DEB_NOT_FOUND', `No package ${root} in the index`, { package: root });
    const groups = [...parseRelations(meta.preDepends), ...parseRelations(meta.depends)];
    if (groups.length === 0) {
      throw new UzError('DEB_NOT_FOUND', `${root} is not a metapackage: it depends on nothing`, { package: root });
    }
    for (const group of groups) {
      const r = pickAlternative(index, group, exclude, prefer, selected, root);
      if (r !== 'excluded') selected.set(r.name, r);
    }
  }
  return [...selected.values()].sort(byNameOrder);
}

/** Looks the roots up by name only (real packages, or a virtual name's provider). Sorted by name. */
export function resolveRoots(index: PackageIndex, roots: readonly string[], options: ResolveOptions = {}): DebPackage[] {
  const exclude = new Set(options.exclude ?? []);
  const selected = new Map<string, DebPackage>();
  for (const root of roots) {
    const r = lookup(index, root, exclude, options.prefer ?? {}, selected);
    if (r === undefined) throw new UzError('DEB_NOT_FOUND', `No package ${root} in the index`, { package: root });
    if (r !== 'excluded') selected.set(r.name, r);
  }
  return [...selected.values()].sort(byNameOrder);
}
