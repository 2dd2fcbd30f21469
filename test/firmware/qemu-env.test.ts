import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { ubootDefaultEnv, ubootEnvBlock, UBOOT_QEMU_ENV_SIZE } from '../../firmware/qemu.js';

// The emulated board's U-Boot environment flash (U-Boot itself accepting it is checked by the boot tests).
const bin = (env: string[]) => Buffer.concat([Buffer.from('\0\0some code and strings\0bootcmd=not the env', 'latin1'), Buffer.from(`\0${env.join('\0')}\0\0more`, 'latin1')]);

describe('U-Boot environment for the emulated board', () => {
  it('finds the built-in default environment (bootcmd= followed by bootdelay=) in a binary', () => {
    const env = ['bootcmd=bootflow scan -lb', 'bootdelay=2', 'baudrate=115200', 'arch=arm'];
    expect(ubootDefaultEnv(bin(env))).toEqual(env);
  });

  it('refuses a binary without one', () => {
    expect(() => ubootDefaultEnv(Buffer.from('\0bootcmd=x\0arch=arm\0\0', 'latin1'))).toThrow(/no default environment/);
  });

  it('writes CRC32 + NUL-separated variables + double NUL, zero-padded to the environment size', () => {
    const block = ubootEnvBlock(['bootdelay=0', 'bootcmd=boot']);
    expect(block.length).toBe(UBOOT_QEMU_ENV_SIZE);
    const data = block.subarray(4);
    expect(block.readUInt32LE(0)).toBe(crc32(data) >>> 0);
    expect(data.subarray(0, 26).toString('latin1')).toBe('bootdelay=0\0bootcmd=boot\0\0');
    expect(data.subarray(26).every((b) => b === 0)).toBe(true);
    expect(() => ubootEnvBlock(['x='.padEnd(UBOOT_QEMU_ENV_SIZE, 'y')])).toThrow(/does not fit/);
  });
});
