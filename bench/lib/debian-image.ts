/**
 * The Debian side of the boot benchmark: a minimal Debian 13 arm64 systemd system that runs the same demo
 * workload, booted by the same U-Boot, the same kernel and the same QEMU flags as our qemu-virt image.
 *
 * Disk: MBR, p1 FAT32 (Image, initrd.img, boot.scr: the way our image is booted), p2 ext4 root made with
 * `mke2fs -d` (no loop mounts). The root is `mmdebstrap --variant=minbase` of trixie plus systemd-sysv, udev,
 * kmod, e2fsprogs and nodejs, the locked kernel's modules (depmod'ed), systemd-networkd doing DHCP, and two
 * units: demo.service (`After=network-online.target`, the demo JSON-RPC node) and demo-ready.service, which
 * polls the demo's stats.syncInfo health check every 250 ms, as our agent does, and prints DEBIAN-READY on
 * the console when it answers.
 *
 * The kernel's virtio_blk and ext4 are modules, so a tiny busybox initramfs (the locked busybox-static)
 * loads them, mounts the root read-only by UUID and switch_roots to systemd, like initramfs-tools would.
 *
 * Building takes a few minutes (apt downloads + arm64 maintainer scripts under qemu-user), so the finished disk
 * image is cached under `<UZ_CACHE_DIR or ~/.cache/unikernel-z>/bench/`, keyed by everything that goes into it.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, lchown, mkdir, open, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import envPaths from 'env-paths';
import { readLock, fetchLocked } from '../../firmware/debian/lock.js';
import { extractDeb, type DebEntry } from '../../firmware/debian/deb.js';
import { resolveMirror } from '../../firmware/debian/mirror.js';
import { DEBIAN_KEYS_DIR } from '../../firmware/debian/keys.js';
import { kernelParts, resolveModules } from '../../firmware/kernel.js';
import { writeCpio, type CpioEntry } from '../../firmware/initramfs/cpio.js';
import { mkimageScript } from '../../firmware/boot/uboot-script.js';
import { buildFat32 } from '../../firmware/fs/fat32.js';
import { buildMbr, layoutDiskSizeLba, layoutPartitions, MBR_TYPE_FAT32_LBA, MBR_TYPE_LINUX, SECTOR_SIZE } from '../../firmware/fs/mbr.js';
import { getBoard } from '../../boards/index.js';
import { runQemu } from '../../firmware/qemu.js';
import { ensureRootfsTools, run, type Log } from './host-tools.js';

/** Bump when the recipe changes in a way the inputs below do not capture. */
const RECIPE_VERSION = 3;
const SUITE = 'trixie';
export const DEBIAN_PACKAGES = ['systemd-sysv', 'udev', 'kmod', 'e2fsprogs', 'nodejs'];
/** What the initramfs loads (dependencies added by resolveModules). */
const INITRAMFS_MODULES = ['virtio_pci', 'virtio_blk', 'crc32c_generic', 'ext4'];
const MiB = 1024 * 1024;
const BOOT_MIB = 128;
export const READY_LINE = /^DEBIAN-READY\b/;

const demoSource = fileURLToPath(new URL('../../firmware/apps/demo/demo-node.mjs', import.meta.url));
const demoApp = JSON.parse(readFileSync(fileURLToPath(new URL('../../firmware/apps/demo/app.json', import.meta.url)), 'utf8')) as {
  config: { template: Record<string, unknown> & { RPC: { HTTPHost: string; HTTPPort: number } } };
};

export function benchCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.UZ_CACHE_DIR?.trim() || envPaths('unikernel-z').cache, 'bench');
}

// ---------------------------------------------------------------------------------------------- initramfs

const INIT = `#!/bin/busybox sh
# Benchmark initramfs: load the disk and ext4 modules, mount the root read-only, hand over to systemd.
/bin/busybox mount -t proc -o nosuid,nodev,noexec proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o mode=0755 devtmpfs /dev
fail() { echo "DEBIAN-INITRAMFS-FAILED $*"; sleep 1; poweroff -f; }
while read -r m; do
  [ -n "$m" ] && { insmod "/lib/modules/$m" || echo "initramfs: insmod $m failed"; }
done < /etc/modules.list
root=""; flags=ro
for w in $(cat /proc/cmdline); do case "$w" in root=*) root="\${w#root=}";; rw) flags=rw;; esac; done
dev=""; i=0
while [ $i -lt 100 ]; do
  case "$root" in UUID=*|LABEL=*) dev=$(findfs "$root" 2>/dev/null);; *) [ -b "$root" ] && dev="$root";; esac
  [ -n "$dev" ] && break
  i=$((i + 1)); sleep 0.1
done
[ -n "$dev" ] || fail "root-not-found $root"
mount -t ext4 -o "$flags" "$dev" /newroot || fail "mount $dev"
mount --move /dev /newroot/dev
mount --move /sys /newroot/sys
mount --move /proc /newroot/proc
exec switch_root /newroot /sbin/init
`;

function buildInitramfs(busybox: DebEntry[], modules: Array<{ relPath: string; data: Buffer }>, release: string, mtime: number): Buffer {
  const bb = busybox.find((e) => e.path === 'usr/bin/busybox' && e.type === 'file');
  if (!bb?.data) throw new Error('busybox-static has no usr/bin/busybox');
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>(['bin', 'dev', 'etc', 'proc', 'sys', 'newroot', 'lib', 'lib/modules']);
  for (const m of modules) {
    const parts = `lib/modules/${release}/${m.relPath}`.split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
  }
  for (const d of [...dirs].sort()) entries.push({ path: d, type: 'dir' });
  entries.push({ path: 'dev/console', type: 'chardev', mode: 0o600, major: 5, minor: 1 });
  entries.push({ path: 'bin/busybox', type: 'file', mode: 0o755, data: bb.data });
  entries.push({ path: 'bin/sh', type: 'symlink', target: 'busybox' });
  entries.push({ path: 'init', type: 'file', mode: 0o755, data: Buffer.from(INIT) });
  entries.push({ path: 'etc/modules.list', type: 'file', data: Buffer.from(modules.map((m) => `${release}/${m.relPath}\n`).join('')) });
  for (const m of modules) entries.push({ path: `lib/modules/${release}/${m.relPath}`, type: 'file', data: m.data });
  return gzipSync(writeCpio(entries, mtime), { level: 6 });
}

// -------------------------------------------------------------------------------------------- the rootfs

const rpc = demoApp.config.template.RPC;
const DEMO_CONFIG = { ...demoApp.config.template, DataPath: '/var/lib/demo' };

const UNITS: Record<string, string> = {
  'etc/systemd/system/demo.service': `[Unit]
Description=demo JSON-RPC node (the unikernel-z demo workload)
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/node /opt/app/demo-node.mjs --config /etc/demo/config.json
Environment=NODE_ENV=production
Restart=on-failure

[Install]
WantedBy=multi-user.target
`,
  'etc/systemd/system/demo-ready.service': `[Unit]
Description=Report when the demo workload passes its health check
Requires=demo.service
After=demo.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/demo-ready
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
`,
  // Same probe as the agent's (JSON-RPC stats.syncInfo over HTTP), same 250 ms start-up cadence, no extra
  // process per probe: bash's /dev/tcp.
  'usr/local/sbin/demo-ready': `#!/bin/bash
body='{"jsonrpc":"2.0","id":1,"method":"stats.syncInfo","params":[]}'
for i in $(seq 1 1200); do
  if exec 3<>/dev/tcp/${rpc.HTTPHost}/${rpc.HTTPPort}; then
    printf 'POST / HTTP/1.0\\r\\nHost: localhost\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n%s' "\${#body}" "$body" >&3
    resp=$(cat <&3)
    exec 3<&-
    if [[ $resp == *'"result"'* ]]; then
      printf '\\nDEBIAN-READY uptime=%s\\n' "$(cut -d' ' -f1 /proc/uptime)" > /dev/console
      # The image builder's first boot ends here, cleanly (see settleBoot).
      if grep -qw bench.settle /proc/cmdline; then
        echo "DEBIAN-SETTLE network-online=$(systemctl is-active network-online.target) wait-online=$(systemctl is-active systemd-networkd-wait-online.service) demo=$(systemctl is-active demo.service)" > /dev/console
        t=""
        for u in systemd-journald systemd-udevd systemd-networkd systemd-networkd-wait-online demo; do
          us=$(systemctl show -P ActiveEnterTimestampMonotonic "$u.service")
          t="$t $u=$((us / 1000))ms"
        done
        echo "DEBIAN-UNITS active since kernel start:$t" > /dev/console
        systemctl --no-block poweroff
      fi
      exit 0
    fi
  fi 2>/dev/null
  sleep 0.25
done
echo "DEBIAN-NOT-READY" > /dev/console
exit 1
`,
  'etc/systemd/network/20-wired.network': `[Match]
Name=en* eth*

# IPv4 by DHCP only, as our image (udhcpc): network-online.target then waits for nothing IPv6.
[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
`,
  'etc/hostname': 'debian-bench\n',
  'etc/hosts': '127.0.0.1 localhost\n127.0.1.1 debian-bench\n::1 localhost ip6-localhost ip6-loopback\n',
  'etc/demo/config.json': `${JSON.stringify(DEMO_CONFIG, null, 2)}\n`,
};

async function writeEntries(root: string, entries: DebEntry[], prefix: string): Promise<number> {
  let n = 0;
  for (const e of entries) {
    if (!e.path.startsWith(prefix)) continue;
    const dst = join(root, e.path);
    if (e.type === 'dir') {
      await mkdir(dst, { recursive: true, mode: e.mode });
    } else if (e.type === 'file' && e.data) {
      await mkdir(dirname(dst), { recursive: true });
      await writeFile(dst, e.data, { mode: e.mode });
      await chmod(dst, e.mode);
      n++;
    } else if (e.type === 'symlink' && e.linkname) {
      await mkdir(dirname(dst), { recursive: true });
      await rm(dst, { force: true });
      await symlink(e.linkname, dst);
      await lchown(dst, 0, 0);
    }
  }
  return n;
}

async function customizeRootfs(root: string, kernelEntries: DebEntry[], release: string, uuid: string, log: Log): Promise<void> {
  for (const [path, text] of Object.entries(UNITS)) {
    const dst = join(root, path);
    await mkdir(dirname(dst), { recursive: true });
    await writeFile(dst, text, { mode: path.startsWith('usr/local/sbin/') ? 0o755 : 0o644 });
  }
  await mkdir(join(root, 'opt/app'), { recursive: true });
  await writeFile(join(root, 'opt/app/demo-node.mjs'), await readFile(demoSource));
  // As a Debian installer leaves it: fsck'd root mounted by UUID, remounted read-write by systemd.
  await writeFile(join(root, 'etc/fstab'), `UUID=${uuid} / ext4 errors=remount-ro 0 1\n`);
  const mods = await writeEntries(root, kernelEntries, `usr/lib/modules/${release}/`);
  log(`  ${mods} kernel modules of ${release} copied into the root`);
  // arm64 tools run through binfmt: depmod, systemctl (offline), a machine-id as after installation.
  run('chroot', [root, 'depmod', '-a', release]);
  run('chroot', [root, 'systemctl', 'enable', 'systemd-networkd.service', 'demo.service', 'demo-ready.service']);
  run('chroot', [root, 'systemd-machine-id-setup']);
}

// ------------------------------------------------------------------------------------------- disk image

export interface DebianImage {
  image: string;
  manifest: DebianManifest;
}

export interface DebianManifest {
  key: string;
  builtAt: string;
  suite: string;
  kernel: string;
  packages: string[];
  versions: Record<string, string>;
  rootfsMiB: number;
  cmdline: string;
  /** The build's own first boot (first-boot work done, then a clean poweroff). */
  settleBootSeconds: number;
  buildSeconds: number;
}

function bootScript(cmdline: string): string {
  // The same load + booti sequence our boot.scr uses (kernel and initrd from FAT, U-Boot's own device tree).
  return `# Debian boot-time benchmark
setenv bootargs "${cmdline}"
if load virtio 0:1 \${kernel_addr_r} Image; then
  if load virtio 0:1 \${ramdisk_addr_r} initrd.img; then
    booti \${kernel_addr_r} \${ramdisk_addr_r}:\${filesize} \${fdtcontroladdr}
  fi
fi
echo "DEBIAN-UBOOT boot-failed"
poweroff
`;
}

function uuidFrom(key: string): string {
  const h = createHash('sha256').update(`rootfs\0${key}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

async function writeAt(path: string, offset: number, data: Buffer): Promise<void> {
  const w = await open(path, 'r+');
  try {
    await w.write(data, 0, data.length, offset);
    await w.sync();
  } finally {
    await w.close();
  }
}

/**
 * Boots the new image once, as an installed Debian has been booted before it is measured: first-boot work
 * (ConditionNeedsUpdate units such as ldconfig and the journal catalog, random seed, persistent journal,
 * the demo's data directory) happens here, then demo-ready powers the machine off cleanly.
 */
async function settleBoot(image: string, log: Log): Promise<number> {
  log('first boot of the Debian image (then a clean poweroff)');
  const r = await runQemu({ image, timeoutMs: 600_000, failOnPanic: true });
  const ready = r.lines.some((l) => READY_LINE.test(l));
  if (!ready || r.reason !== 'exited') {
    throw new Error(`first boot of the Debian image failed (${r.reason}, ready=${ready}); last lines:\n${r.lines.slice(-30).join('\n')}`);
  }
  for (const l of r.lines) if (/^DEBIAN-(SETTLE|UNITS)/.test(l)) log(`  ${l}`);
  const settled = r.lines.find((l) => l.startsWith('DEBIAN-SETTLE'));
  if (!settled?.includes('wait-online=active') || !settled.includes('demo=active')) {
    throw new Error(`first boot of the Debian image: network or demo not up (${settled ?? 'no DEBIAN-SETTLE line'})`);
  }
  log(`  first boot done in ${r.seconds.toFixed(1)} s`);
  return Math.round(r.seconds * 10) / 10;
}

/** Work folders (`tmp-<pid>` of builds, `run-<pid>` of bench runs) whose process is gone, e.g. after Ctrl-C. */
export async function removeStaleWorkDirs(dir: string): Promise<void> {
  for (const name of await readdir(dir)) {
    const m = /^(?:tmp|run)-(\d+)$/.exec(name);
    if (!m) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch {
      await rm(join(dir, name), { recursive: true, force: true });
    }
  }
}

/** Returns the cached Debian disk image, building it first when missing. */
export async function ensureDebianImage(log: Log, opts: { rebuild?: boolean } = {}): Promise<DebianImage> {
  const lock = await readLock();
  const [kernelDeb] = await fetchLocked(lock, 'kernel');
  const [busyboxDeb] = await fetchLocked(lock, 'busybox');
  if (!kernelDeb || !busyboxDeb) throw new Error('the Debian lock has no kernel or busybox');
  const board = getBoard('qemu-virt');
  const key = createHash('sha256')
    .update(
      JSON.stringify({
        RECIPE_VERSION,
        SUITE,
        DEBIAN_PACKAGES,
        INITRAMFS_MODULES,
        kernel: kernelDeb.sha256,
        busybox: busyboxDeb.sha256,
        INIT,
        UNITS,
        demo: createHash('sha256').update(readFileSync(demoSource)).digest('hex'),
        console: board.console,
      }),
    )
    .digest('hex')
    .slice(0, 16);
  const dir = benchCacheDir();
  const image = join(dir, `debian-${SUITE}-${key}.img`);
  const manifestPath = `${image}.json`;
  if (!opts.rebuild && existsSync(image) && existsSync(manifestPath)) {
    log(`Debian image: cached ${image}`);
    return { image, manifest: JSON.parse(await readFile(manifestPath, 'utf8')) as DebianManifest };
  }

  const t0 = Date.now();
  log('Debian image: not cached, building it (a few minutes; once)');
  const emulation = ensureRootfsTools(log);
  const kernel = await extractDeb(kernelDeb.path, { name: kernelDeb.name, version: kernelDeb.version });
  const busybox = await extractDeb(busyboxDeb.path, { name: busyboxDeb.name, version: busyboxDeb.version });
  const kp = kernelParts(kernel.entries);
  const modules = resolveModules(kp, INITRAMFS_MODULES);
  const epoch = Math.floor(Date.now() / 1000);
  const initrd = buildInitramfs(busybox.entries, modules, kp.release, epoch);
  const uuid = uuidFrom(key);
  // Identical to our image's cmdline (console, panic, loglevel) plus what a Debian root needs.
  const cmdline = [`console=${board.console}`, 'panic=5', 'loglevel=5', `root=UUID=${uuid}`, 'ro'].join(' ');

  await mkdir(dir, { recursive: true });
  await removeStaleWorkDirs(dir);
  const work = join(dir, `tmp-${process.pid}`);
  const root = join(work, 'root');
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  try {
    const mirror = resolveMirror();
    log(`mmdebstrap ${SUITE} arm64 minbase + ${DEBIAN_PACKAGES.join(',')} (arm64 via ${emulation})`);
    run('mmdebstrap', [
      '--arch=arm64',
      '--variant=minbase',
      '--mode=root',
      '--format=directory',
      `--keyring=${DEBIAN_KEYS_DIR}`,
      `--include=${DEBIAN_PACKAGES.join(',')}`,
      '--quiet',
      SUITE,
      root,
      mirror,
    ]);
    log('customizing the root (units, modules, networkd, machine-id)');
    await customizeRootfs(root, kernel.entries, kp.release, uuid, log);
    const versions = Object.fromEntries(
      run('chroot', [root, 'dpkg-query', '-W', '-f', '${Package}\\t${Version}\\n'])
        .trim()
        .split('\n')
        .map((l) => l.split('\t') as [string, string]),
    );
    const usedKiB = Number(run('du', ['-sk', '--apparent-size', root]).split(/\s/)[0]);
    const rootfsMiB = Math.ceil((usedKiB * 1.3) / 1024 / 64) * 64 + 256;

    log(`writing the disk image (FAT ${BOOT_MIB} MiB + ext4 ${rootfsMiB} MiB, root ${Math.round(usedKiB / 1024)} MiB)`);
    const layout = layoutPartitions([BOOT_MIB * MiB, rootfsMiB * MiB]);
    const [p1, p2] = layout as [{ startLba: number; sizeLba: number }, { startLba: number; sizeLba: number }];
    const sizeBytes = layoutDiskSizeLba(layout) * SECTOR_SIZE;
    const tmpImage = join(work, 'disk.img');
    const fh = await open(tmpImage, 'w');
    try {
      await fh.truncate(sizeBytes);
    } finally {
      await fh.close();
    }
    run('mke2fs', [
      '-q', '-F', '-t', 'ext4', '-L', 'debian-root', '-U', uuid,
      '-E', `offset=${p2.startLba * SECTOR_SIZE}`,
      '-d', root,
      tmpImage,
      `${(p2.sizeLba * SECTOR_SIZE) / 1024}k`,
    ]);
    const bootVolume = (cmd: string) =>
      buildFat32({
        sizeBytes: p1.sizeLba * SECTOR_SIZE,
        volumeLabel: 'DEBBOOT',
        volumeId: parseInt(key.slice(0, 8), 16),
        mtime: new Date(epoch * 1000),
        hiddenSectors: p1.startLba,
        files: [
          { path: 'Image', data: kp.image },
          { path: 'initrd.img', data: initrd },
          { path: 'boot.scr', data: mkimageScript(bootScript(cmd), 'debian benchmark', epoch) },
        ],
      });
    const mbr = buildMbr({
      diskSignature: parseInt(key.slice(8, 16), 16),
      partitions: [
        { startLba: p1.startLba, sizeLba: p1.sizeLba, type: MBR_TYPE_FAT32_LBA, bootable: true },
        { startLba: p2.startLba, sizeLba: p2.sizeLba, type: MBR_TYPE_LINUX },
      ],
    });
    await writeAt(tmpImage, 0, mbr);
    await writeAt(tmpImage, p1.startLba * SECTOR_SIZE, bootVolume(`${cmdline} bench.settle`));
    const settle = await settleBoot(tmpImage, log);
    await writeAt(tmpImage, p1.startLba * SECTOR_SIZE, bootVolume(cmdline));
    const manifest: DebianManifest = {
      key,
      builtAt: new Date().toISOString(),
      suite: SUITE,
      kernel: `${kernelDeb.name} ${kernelDeb.version}`,
      packages: DEBIAN_PACKAGES,
      versions,
      rootfsMiB: Math.round(usedKiB / 1024),
      cmdline,
      settleBootSeconds: settle,
      buildSeconds: Math.round((Date.now() - t0) / 1000),
    };
    await rename(tmpImage, image);
    await writeFile(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
    // Images of older recipes or locks are never used again.
    for (const name of await readdir(dir)) {
      if (/^debian-.*\.img(\.json)?$/.test(name) && !image.endsWith(`/${name}`) && !manifestPath.endsWith(`/${name}`)) {
        await rm(join(dir, name), { force: true });
      }
    }
    log(`Debian image built in ${manifest.buildSeconds} s: ${image}`);
    return { image, manifest };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
