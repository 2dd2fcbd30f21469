import { existsSync, mkdirSync, rmdirSync } from 'node:fs';
import { copyImageSparse } from '../../firmware/image.js';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { buildImage, type BuildResult } from '../../firmware/build.js';
import { parseMbr, SECTOR_SIZE } from '../../firmware/fs/mbr.js';

/** Fixed build time for test images, so reproducibility can be checked against them. */
export const TEST_EPOCH = 1764000000;

export function runDir(): string {
  const d = process.env.UZ_TEST_RUN_DIR ?? join(tmpdir(), 'uz-test-run');
  mkdirSync(d, { recursive: true });
  return d;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Builds (once per test run, shared between test files and workers) the image for a board/app/version.
 * A mkdir lock makes the second caller wait for the first instead of building twice.
 */
export async function ensureImage(board: string, version = '1.0.0', app = 'demo'): Promise<Pick<BuildResult, 'image' | 'slotImage'>> {
  const out = join(runDir(), `${board}-${app}`);
  const image = join(out, `${board}-${version}.img`);
  const slotImage = join(out, `${board}-${version}.slot`);
  const lock = join(runDir(), `${board}-${app}-${version}.lock`);
  for (;;) {
    if (existsSync(image) && existsSync(slotImage) && !existsSync(lock)) return { image, slotImage };
    try {
      mkdirSync(lock);
    } catch {
      await sleep(500);
      continue;
    }
    try {
      if (!existsSync(image)) await buildImage({ board, app, version, outDir: out, sourceDateEpoch: TEST_EPOCH });
    } finally {
      rmdirSync(lock);
    }
  }
}

/** A private, sparse copy of an image (boots write to their disk; holes stay holes). */
export async function copyImage(src: string, name: string): Promise<string> {
  const dst = join(runDir(), `${name}-${process.pid}-${Date.now()}.img`);
  await copyImageSparse(src, dst);
  return dst;
}

export async function readPartition(image: string, index: number): Promise<{ buf: Buffer; offset: number }> {
  const fh = await open(image, 'r');
  try {
    const mbr = Buffer.alloc(SECTOR_SIZE);
    await fh.read(mbr, 0, SECTOR_SIZE, 0);
    const p = parseMbr(mbr).partitions.find((x) => x.index === index);
    if (!p) throw new Error(`no partition ${index}`);
    const buf = Buffer.alloc(p.sizeLba * SECTOR_SIZE);
    await fh.read(buf, 0, buf.length, p.startLba * SECTOR_SIZE);
    return { buf, offset: p.startLba * SECTOR_SIZE };
  } finally {
    await fh.close();
  }
}

export async function writeAt(image: string, offset: number, buf: Buffer): Promise<void> {
  const fh = await open(image, 'r+');
  try {
    await fh.write(buf, 0, buf.length, offset);
  } finally {
    await fh.close();
  }
}
