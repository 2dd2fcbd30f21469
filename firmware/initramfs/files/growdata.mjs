// First boot only (the data partition is blank): extend partition 4 to the end of the card, so a 64 GB
// card gives the workload ~64 GB instead of the few hundred MiB in the image. Rewrites the one MBR entry
// in a single 512-byte write, then asks the kernel to re-read the table (nothing on the disk is mounted yet).
// Usage: node growdata.mjs /dev/vda
import { openSync, readSync, writeSync, fsyncSync, closeSync, readFileSync } from 'node:fs';
import { basename } from 'node:path';

const disk = process.argv[2];
const ALIGN = 8192; // 4 MiB in sectors, like the image builder
const sectors = Number(readFileSync(`/sys/block/${basename(disk)}/size`, 'utf8').trim());
const fd = openSync(disk, 'r+');
const mbr = Buffer.alloc(512);
readSync(fd, mbr, 0, 512, 0);
if (mbr[510] !== 0x55 || mbr[511] !== 0xaa) throw new Error('no MBR signature');
const e = 446 + 3 * 16;
const type = mbr[e + 4];
const start = mbr.readUInt32LE(e + 8);
const size = mbr.readUInt32LE(e + 12);
const end = Math.min(Math.floor(sectors / ALIGN) * ALIGN, 0xffffffff);
if (type !== 0x83 || start === 0) throw new Error(`partition 4 is not the data partition (type ${type})`);
if (end - start <= size) {
  console.log(`UZ-DATA grow skipped size_mib=${Math.floor((size * 512) / 1048576)}`);
  process.exit(0);
}
// CHS fields: "too big" markers, as the builder writes them for large offsets.
mbr.writeUInt32LE(end - start, e + 12);
mbr[e + 5] = 0xfe; mbr[e + 6] = 0xff; mbr[e + 7] = 0xff;
writeSync(fd, mbr, 0, 512, 0);
fsyncSync(fd);
closeSync(fd);
console.log(`UZ-DATA grown size_mib=${Math.floor(((end - start) * 512) / 1048576)}`);
