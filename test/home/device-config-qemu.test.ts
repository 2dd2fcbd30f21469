// ONE boot of the emulated board with a malformed uz-device.json (written raw into p1, as a person editing the
// card on a laptop could leave it): the agent prints `UZ-ERROR code=DEVICE_CONFIG_INVALID field=wifi.psk`,
// never a value from the file, and the workload still comes up: `UZ-READY` (no brick).
// The fallbacks (last good provisioning, baked agent.json, lastError at the server) are tested on the host in
// device-config.test.ts.
import { afterAll, describe, expect, it } from 'vitest';
import { addFat32File } from '../../firmware/fs/fat32.js';
import { requireQemu } from '../../firmware/qemu.js';
import { copyImage, ensureImage, readPartition, writeAt } from '../helpers/images.js';
import { QemuSession } from '../helpers/qemu-session.js';

const PSK = 'short';
const TOKEN = 'uze_0badc0de_qemuSecretPartOfTheEnrollToken_0123456789';
const BOOT_MS = 5 * 60_000;

describe('emulated board: malformed uz-device.json', () => {
  let board: QemuSession | undefined;
  afterAll(async () => {
    await board?.stop();
  });

  it('prints DEVICE_CONFIG_INVALID with the field (no values) and still becomes READY', async () => {
    requireQemu(); // fails with the apt-get hint when QEMU is missing
    const { image } = await ensureImage('qemu-virt');
    const disk = await copyImage(image, 'home-badcfg');
    const text = JSON.stringify({
      formatVersion: 1,
      deviceName: 'qemu-badcfg-01',
      server: { httpUrl: 'http://10.0.2.100:8080', mqttUrl: 'mqtt://10.0.2.100:1883' },
      wifi: { ssid: 'home', psk: PSK },
      enrollToken: TOKEN,
    });
    const p1 = await readPartition(disk, 1);
    addFat32File(p1.buf, 'uz-device.json', Buffer.from(text));
    await writeAt(disk, p1.offset, p1.buf);

    const started = Date.now();
    board = new QemuSession(disk, []);
    await board.waitFor(/^UZ-ERROR code=DEVICE_CONFIG_INVALID field=wifi\.psk$/, BOOT_MS);
    await board.waitFor(/^UZ-READY slot=A version=1\.0\.0$/, BOOT_MS);
    process.stderr.write(`    [timing] malformed-config boot to UZ-READY: ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
    const all = board.lines.join('\n');
    expect(all).not.toContain(TOKEN);
    expect(all).not.toContain('qemuSecretPart');
    expect(board.lines.filter((l) => l.includes(`"${PSK}"`) || l.includes(`psk=${PSK}`))).toEqual([]);
    // the agent kept running: no crash line, no respawn
    expect(board.uzLines().filter((l) => l.startsWith('UZ-ERROR code=AGENT_CRASH'))).toEqual([]);
    expect(board.uzLines().filter((l) => l.startsWith('UZ-AGENT start')).length).toBe(1);
  }, BOOT_MS + 120_000);
});
