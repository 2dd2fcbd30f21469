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
 * Runs `build` once per test run for `image`, shared between test files and workers: a mkdir lock (named by
 * `key`) makes a second caller wait for the first instead of building twice.
 */
export async function buildOnce(key: string, outputs: string[], build: () => Promise<unknown>): Promise<void> {
  const lock = join(runDir(), `${key}.lock`);
  for (;;) {
    if (outputs.every((f) => existsSync(f)) && !existsSync(lock)) return;
    try {
      mkdirSync(lock);
    } catch {
      await sleep(500);
      continue;
    }
    try {
      if (!outputs.every((f) => existsSync(f))) await build();
    } finally {
      rmdirSync(lock);
    }
  }
}

/** Builds (once per test run) the image for a board/app/version. */
export async function ensureImage(board: string, version = '1.0.0', app = 'demo'): Promise<Pick<BuildResult, 'image' | 'slotImage'>> {
  const out = join(runDir(), `${board}-${app}`);
  const image = join(out, `${board}-${version}.img`);
  const slotImage = join(out, `${board}-${version}.slot`);
  await buildOnce(`${board}-${app}-${version}`, [image, slotImage], () => buildImage({ board, app, version, outDir: out, sourceDateEpoch: TEST_EPOCH }));
  return { image, slotImage };
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
