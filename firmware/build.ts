import { join } from 'node:path';
import { rm, rename, open } from 'node:fs/promises';
import semver from 'semver';
import { getBoard, type Board } from '../boards/index.js';
import { UzError } from '../lib/errors.js';
import { resolveApp, type AppInputs } from './apps/index.js';
import { readLock, fetchLocked, type DebianLock } from './debian/lock.js';
import { extractDeb, type DebEntry } from './debian/deb.js';
import { kernelParts, resolveModules } from './kernel.js';
import { arm64ImageSize, QEMU_KERNEL_ROOM } from './boot/uboot-script.js';
import { composeRootfs, packInitramfs } from './initramfs/compose.js';
import { bundleAgent, bundleAgentSnapshotScript, bundleWifiHelper, warmUpSample } from './agent-bundle.js';
import { AGENT_SNAPSHOT, RUNTIME_SNAPSHOT, RUNTIME_SNAPSHOT_SCRIPT, buildNodeSnapshot } from './node-snapshot.js';
import { slotFiles, bootPartitionFiles, buildSlotVolume, writeDiskImage, writeSparse, type DiskLayout } from './image.js';
import type { ImageInfo } from '../updater/device/image-info.js';
import { readdir, readFile } from 'node:fs/promises';
import { loadPrivateKeys } from './trust/io.js';
import { parseRootMetadata } from './trust/root.js';
import { writeBundle } from './bundle/write.js';

/** Image path of the embedded trust root (the agent's anchor for verifying bundles). */
export const TRUST_ROOT_PATH = 'etc/uz/trust/root.json';

async function releaseKeys(keysDir: string) {
  const dir = join(keysDir, 'private');
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => n.startsWith('release') && n.endsWith('.key.json')).sort();
  } catch {
    throw new UzError('BUILD_KEYS_MISSING', `no private keys in ${dir} (create them with: uz keys init --out ${keysDir})`, { dir });
  }
  if (!names.length) throw new UzError('BUILD_KEYS_MISSING', `no release keys in ${dir}`, { dir });
  return loadPrivateKeys(names.map((n) => join(dir, n)));
}

export interface BuildOptions {
  /** A board id (boards/<id>.json), or a parsed board (tests build derived boards, e.g. an emulated one with Wi-Fi). */
  board: string | Board;
  app: string;
  version: string;
  outDir: string;
  appInputs?: AppInputs;
  debug?: boolean;
  /** Seconds since the epoch for every timestamp; SOURCE_DATE_EPOCH when set. */
  sourceDateEpoch?: number;
  lockPath?: string;
  /** The fleet's trust root (root.json) embedded in the image: the agent verifies updates against it. */
  trustRoot?: string;
  /** Also write a signed update bundle `<board>-<version>.uzb` carrying the slot (release keys from keysDir/private). */
  sign?: { keysDir: string; rollbackCounter: number };
  /**
   * Put V8 start-up snapshots in the image: the agent's, and Node.js's own for a workload that opts in
   * (nodeStartupSnapshot). Default true; needs a static qemu-aarch64 and user namespaces on the build host
   * (firmware/node-snapshot.ts). Without them the agent and such a workload start seconds slower on a slow core.
   */
  nodeSnapshots?: boolean;
  /** Things a person should know that do not stop the build (e.g. a snapshot that is not reproducible here). */
  onWarn?: (message: string) => void;
  /** Progress lines (one per step) for people; none when null. */
  onStep?: (step: string) => void;
}

export interface BuildResult {
  image: string;
  bundle?: string;
  slotImage: string;
  board: string;
  version: string;
  kernel: string;
  sizes: { imageBytes: number; slotBytes: number; slotUsedBytes: number; initrdBytes: number; kernelBytes: number };
  layout: DiskLayout;
}

export function defaultEpoch(env = process.env): number {
  const v = env.SOURCE_DATE_EPOCH;
  if (v === undefined) return Math.floor(Date.now() / 1000);
  if (!/^\d+$/.test(v)) throw new UzError('BUILD_BAD_EPOCH', `SOURCE_DATE_EPOCH must be an integer, got "${v}"`);
  return Number(v);
}

async function packageEntries(lock: DebianLock, component: string): Promise<Array<{ name: string; entries: DebEntry[] }>> {
  const debs = await fetchLocked(lock, component);
  const out: Array<{ name: string; entries: DebEntry[] }> = [];
  for (const d of debs) {
    const a = await extractDeb(d.path, { name: d.name, version: d.version });
    out.push({ name: d.name, entries: a.entries });
  }
  return out;
}

function filesUnder(pkgs: Array<{ entries: DebEntry[] }>, prefix: string): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  for (const p of pkgs) for (const e of p.entries) if (e.type === 'file' && e.data && e.path.startsWith(prefix)) m.set(e.path.slice(prefix.length), e.data);
  return m;
}

/** `uz build`: a flashable image (and the slot volume an update bundle carries). */
export async function buildImage(o: BuildOptions): Promise<BuildResult> {
  const step = o.onStep ?? (() => {});
  const board: Board = typeof o.board === 'string' ? getBoard(o.board) : o.board;
  if (!semver.valid(o.version)) throw new UzError('BUILD_BAD_VERSION', `version must be semver (e.g. 1.2.3), got "${o.version}"`);
  const epoch = o.sourceDateEpoch ?? defaultEpoch();
  const app = resolveApp(o.app, o.appInputs);
  const lock = await readLock(o.lockPath);
  const trustRootPath = o.trustRoot ?? (o.sign ? join(o.sign.keysDir, 'root.json') : undefined);
  let trustRoot: Buffer | undefined;
  if (trustRootPath) {
    try {
      trustRoot = await readFile(trustRootPath);
    } catch {
      throw new UzError('BUILD_TRUST_ROOT_MISSING', `trust root not found: ${trustRootPath}`, { path: trustRootPath });
    }
    parseRootMetadata(trustRoot); // a malformed root would leave the device unable to verify any update
  }
  const signingKeys = o.sign ? await releaseKeys(o.sign.keysDir) : undefined;
  const identity = `${board.id}\0${o.version}\0${epoch}`;

  step('fetching Debian packages (verified against the lock)');
  const [kernelPkg] = await packageEntries(lock, 'kernel');
  const busybox = await packageEntries(lock, 'busybox');
  const nodejs = await packageEntries(lock, 'nodejs');
  const e2fs = await packageEntries(lock, 'e2fsprogs');
  const piFirmware = board.boot.kind === 'qemu-uboot' ? [] : await packageEntries(lock, 'raspi-firmware');
  const wifiPkgs = board.wifi ? await packageEntries(lock, 'wifi') : [];
  const wifiFirmware = board.wifi?.firmware.length ? await packageEntries(lock, 'wifi-firmware') : [];
  const uboot = board.boot.kind === 'rpi-firmware-uboot' ? await packageEntries(lock, 'u-boot-rpi') : [];

  step('reading the kernel and resolving modules');
  const kp = kernelParts(kernelPkg!.entries);
  const modules = resolveModules(kp, board.modules, board.optionalModules);
  const lateModules = resolveModules(kp, board.lateModules).filter((m) => !modules.some((e) => e.name === m.name));
  if (board.boot.kind === 'qemu-uboot' && arm64ImageSize(kp.image) > QEMU_KERNEL_ROOM) {
    throw new UzError('BUILD_KERNEL_TOO_LARGE', `kernel ${kp.release} needs ${arm64ImageSize(kp.image)} bytes, more than the ${QEMU_KERNEL_ROOM} below the initramfs on ${board.id}`, { release: kp.release });
  }

  step('bundling the agent');
  const agentBundle = await bundleAgent();
  const wifiHelper = board.wifi ? await bundleWifiHelper() : undefined;

  step('composing the RAM root');
  const imageInfo: ImageInfo = {
    formatVersion: 1,
    board: board.id,
    hardwareIds: board.hardwareIds,
    version: o.version,
    buildEpoch: epoch,
    bootControl: board.bootControl,
    app: app.manifest,
  };
  const tree = composeRootfs({
    board,
    version: o.version,
    buildEpoch: epoch,
    debug: !!o.debug,
    kernelRelease: kp.release,
    packages: [...busybox, ...nodejs, ...e2fs],
    modules,
    lateModules,
    agentBundle,
    app,
    imageInfo,
    ...(board.wifi && wifiHelper ? { wifi: { packages: wifiPkgs, firmware: wifiFirmware, helper: wifiHelper } } : {}),
  });
  if (trustRoot) tree.file(TRUST_ROOT_PATH, trustRoot);
  const withSnapshots = o.nodeSnapshots ?? true;
  if (withSnapshots) {
    step(`building Node.js start-up snapshots for ${board.cpu} (qemu-user)`);
    const script = await bundleAgentSnapshotScript(warmUpSample(imageInfo));
    const onWarn = o.onWarn ?? (() => {});
    tree.file(AGENT_SNAPSHOT.blob, await buildNodeSnapshot({ tree, script, cpu: board.cpu, spec: AGENT_SNAPSHOT, onWarn }));
    if (app.manifest.nodeStartupSnapshot) {
      tree.file(RUNTIME_SNAPSHOT.blob, await buildNodeSnapshot({ tree, script: RUNTIME_SNAPSHOT_SCRIPT, cpu: board.cpu, spec: RUNTIME_SNAPSHOT, onWarn }));
    }
  }
  const initrd = packInitramfs(tree, epoch, board.kernel.initramfsCompression);

  step('writing the slot and the disk image');
  const firmware = filesUnder(piFirmware, 'usr/lib/raspi-firmware/');
  const ubootBinary =
    board.boot.kind === 'rpi-firmware-uboot' ? filesUnder(uboot, `usr/lib/u-boot/${board.boot.ubootBuild}/`).get('u-boot.bin') : undefined;
  const snapshots = withSnapshots ? { cpu: board.cpu, agent: true, workload: app.manifest.nodeStartupSnapshot } : null;
  const release = { formatVersion: 1, board: board.id, version: o.version, app: { name: app.manifest.name, version: app.manifest.version }, kernel: kp.release, buildEpoch: epoch, debug: !!o.debug, startupSnapshots: snapshots };
  const sFiles = slotFiles({ board, kernelImage: kp.image, initrd, dtbs: kp.dtbs, firmware, release });
  const slotUsed = sFiles.reduce((n, f) => n + f.data.length, 0);
  let slotVolume: Buffer;
  try {
    slotVolume = buildSlotVolume(board, sFiles, epoch, identity);
  } catch (e) {
    if (e instanceof UzError && e.code === 'FAT_FULL') {
      throw new UzError('BUILD_SLOT_TOO_SMALL', `slot content (${Math.ceil(slotUsed / 1048576)} MiB) does not fit the ${board.partitions.slotMiB} MiB slot of ${board.id}`, { slotUsed });
    }
    throw e;
  }
  const bFiles = bootPartitionFiles({ board, buildEpoch: epoch, firmware, ubootBinary, dtbs: kp.dtbs });
  const base = `${board.id}-${o.version}`;
  const imagePath = join(o.outDir, `${base}.img`);
  const slotPath = join(o.outDir, `${base}.slot`);
  const layout = await writeDiskImage({ board, bootFiles: bFiles, slotFiles: sFiles, buildEpoch: epoch, identity }, slotVolume, imagePath);
  try {
    const sf = await open(`${slotPath}.partial`, 'w');
    try {
      await sf.truncate(slotVolume.length);
      await writeSparse(sf, slotVolume, 0);
    } finally {
      await sf.close();
    }
    await rename(`${slotPath}.partial`, slotPath);
  } catch (e) {
    await rm(imagePath, { force: true });
    await rm(`${slotPath}.partial`, { force: true });
    throw e;
  }
  let bundle: string | undefined;
  if (o.sign && signingKeys) {
    step('signing the update bundle');
    bundle = join(o.outDir, `${base}.uzb`);
    try {
      await writeBundle({
        payload: slotPath,
        out: bundle,
        keys: signingKeys,
        manifest: {
          board: { id: board.id, hardwareIds: board.hardwareIds },
          version: o.version,
          rollbackCounter: o.sign.rollbackCounter,
          workload: { name: app.manifest.name, version: app.manifest.version },
          compression: 'gzip',
          createdAt: new Date(epoch * 1000),
        },
      });
    } catch (e) {
      await rm(imagePath, { force: true });
      await rm(slotPath, { force: true });
      throw e;
    }
  }
  return {
    image: imagePath,
    ...(bundle ? { bundle } : {}),
    slotImage: slotPath,
    board: board.id,
    version: o.version,
    kernel: kp.release,
    sizes: { imageBytes: layout.sizeBytes, slotBytes: slotVolume.length, slotUsedBytes: slotUsed, initrdBytes: initrd.length, kernelBytes: kp.image.length },
    layout,
  };
}
