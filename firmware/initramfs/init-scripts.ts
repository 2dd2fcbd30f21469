import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Board } from '../../boards/schema.js';
import { AGENT_SNAPSHOT } from '../../lib/node-snapshots.js';

const filesDir = fileURLToPath(new URL('./files/', import.meta.url));

/** The static scripts (rcS, agent wrapper, shutdown, DHCP hook) live as plain files in ./files/. */
export function initFile(name: 'rcS' | 'agent' | 'shutdown' | 'udhcpc.script' | 'growdata' | 'wifi'): string {
  return readFileSync(`${filesDir}${name}`, 'utf8');
}

/**
 * The generated text files of the root: busybox init's inittab, the one-shot system init (rcS) and the
 * DHCP hook. The init is deliberately small: everything with policy in it (update flow, workload
 * supervision, health) lives in the Node.js agent, which is testable on a host.
 *
 * Console protocol (docs/troubleshooting.md): every line a machine should read starts with `UZ-`.
 */
export interface InitParams {
  board: Board;
  version: string;
  buildEpoch: number;
  debug: boolean;
}

function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export function buildEnv(p: InitParams): string {
  return [
    `UZ_BOARD=${shQuote(p.board.id)}`,
    `UZ_VERSION=${shQuote(p.version)}`,
    `UZ_BUILD_EPOCH=${p.buildEpoch}`,
    `UZ_BOOT_CONTROL=${shQuote(p.board.bootControl)}`,
    `UZ_NET_IF=${shQuote(p.board.network.interface)}`,
    `UZ_WATCHDOG=${shQuote(p.board.watchdog?.device ?? '')}`,
    // Only boards with Wi-Fi hardware (their images also carry /etc/uz/wifi, which reads it).
    ...(p.board.wifi ? [`UZ_WIFI_IF=${shQuote(p.board.wifi.interface)}`] : []),
    `UZ_DEBUG=${p.debug ? 1 : 0}`,
    // The V8 flags /etc/uz/agent must pass with the agent's start-up snapshot (the ones it was built with).
    `UZ_AGENT_SNAPSHOT_FLAGS=${shQuote(AGENT_SNAPSHOT.flags.join(' '))}`,
    '',
  ].join('\n');
}

export function inittab(p: InitParams): string {
  const lines = [
    '# unikernel-z: no getty, no login. sysinit prepares the machine; the agent is respawned if it exits.',
    '::sysinit:/etc/uz/rcS',
    '::respawn:/etc/uz/agent',
    '::shutdown:/etc/uz/shutdown',
    '::ctrlaltdel:/usr/bin/busybox reboot',
  ];
  if (p.debug) lines.push('# --debug build: a shell on the serial console only (never on a network port)', '::askfirst:-/bin/sh');
  return `${lines.join('\n')}\n`;
}

export function staticEtc(): Record<string, string> {
  return {
    'etc/passwd': 'root:x:0:0:root:/run/uz:/bin/false\nuz-app:x:1000:1000:workload:/data:/bin/false\n',
    'etc/group': 'root:x:0:\nuz-app:x:1000:\n',
    'etc/hosts': '127.0.0.1 localhost\n::1 localhost\n',
    'etc/nsswitch.conf': 'passwd: files\ngroup: files\nhosts: files dns\n',
    'etc/hostname': 'uz-device\n',
  };
}
