/**
 * `uz imager-json`: a Raspberry Pi Imager repository file (`os_list` format, what `rpi-imager --repo <url>`
 * and "Use custom repository" read) listing unikernel-z images, so people can flash with Imager.
 *
 * Fields follow Imager's os-list schema: name, description, icon, url, extract_size, extract_sha256,
 * image_download_size, image_download_sha256, release_date, plus `devices` (Imager's hardware filter tags)
 * and `init_format`. We write init_format "none": unikernel-z has no firstrun.sh/cloud-init hook for
 * Imager's OS customisation; per-device settings are written with `uz provision` (docs/provisioning.md).
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { open, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { PassThrough } from 'node:stream';
import { createGzip } from 'node:zlib';
import { z } from 'zod';
import { getBoard } from '../../boards/index.js';
import { UzError } from '../../lib/errors.js';
import { parseWith } from '../../lib/validate.js';
import { readFat32 } from '../fs/fat32.js';
import { SECTOR_SIZE, parseMbr } from '../fs/mbr.js';
import { SLOT_RELEASE_FILE } from '../image.js';

/** Imager's hardware tags for our boards (the Zero 2 W shares the Pi 3 tags in Imager's device list). */
export type ImagerDeviceTag = 'pi5-64bit' | 'pi4-64bit' | 'pi3-64bit';
export const IMAGER_DEVICE_TAGS: Record<string, ImagerDeviceTag[]> = {
  rpi3: ['pi3-64bit'],
  'rpi-zero-2w': ['pi3-64bit'],
  rpi4: ['pi4-64bit'],
  rpi5: ['pi5-64bit'],
};

const Sha256 = z.string().regex(/^[0-9a-f]{64}$/);
/** One OS entry as Imager reads it (the fields we write; Imager tolerates more). */
export const ImagerOsEntrySchema = z
  .object({
    name: z.string().min(1),
    description: z.string().min(1),
    icon: z.string().min(1),
    url: z.url(),
    extract_size: z.number().int().positive(),
    extract_sha256: Sha256,
    image_download_size: z.number().int().positive(),
    image_download_sha256: Sha256,
    release_date: z.string().regex(/^\d{4}-\d{2}-\d{2}$/),
    devices: z.array(z.enum(['pi5-64bit', 'pi4-64bit', 'pi3-64bit'])).min(1),
    init_format: z.literal('none'),
    website: z.url().optional(),
  })
  .strict();
export const ImagerOsListSchema = z.object({ os_list: z.array(ImagerOsEntrySchema).min(1) }).strict();
export type ImagerOsEntry = z.infer<typeof ImagerOsEntrySchema>;
export type ImagerOsList = z.infer<typeof ImagerOsListSchema>;

export interface ImageRelease {
  board: string;
  version: string;
  buildEpoch?: number;
  app?: { name?: string; version?: string };
}

/** Board/version of an image, from slot A's uz-release.json. */
export async function readImageRelease(image: string): Promise<ImageRelease> {
  const fh = await open(image, 'r').catch(() => {
    throw new UzError('IMAGER_IMAGE_NOT_FOUND', `cannot open image ${image}`, { image });
  });
  try {
    const mbrBuf = Buffer.alloc(SECTOR_SIZE);
    await fh.read(mbrBuf, 0, SECTOR_SIZE, 0);
    const p2 = parseMbr(mbrBuf).partitions.find((p) => p.index === 2);
    if (!p2) throw new UzError('IMAGER_NOT_UZ_IMAGE', `${image} has no slot partition (p2)`, { image });
    const vol = Buffer.alloc(p2.sizeLba * SECTOR_SIZE);
    await fh.read(vol, 0, vol.length, p2.startLba * SECTOR_SIZE);
    let rel: unknown;
    try {
      rel = JSON.parse(readFat32(vol).readFile(SLOT_RELEASE_FILE).toString('utf8'));
    } catch (e) {
      throw new UzError('IMAGER_NOT_UZ_IMAGE', `${image}: cannot read ${SLOT_RELEASE_FILE} from slot A: ${(e as Error).message}`, { image });
    }
    const r = rel as Partial<ImageRelease>;
    if (typeof r.board !== 'string' || typeof r.version !== 'string') {
      throw new UzError('IMAGER_NOT_UZ_IMAGE', `${image}: ${SLOT_RELEASE_FILE} lacks board/version`, { image });
    }
    return r as ImageRelease;
  } finally {
    await fh.close();
  }
}

/** SHA-256 and size of a file, streamed. */
export async function hashFile(path: string): Promise<{ sha256: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 1024 * 1024 })) {
    h.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: h.digest('hex'), size };
}

/** gzip `src` to `dst` (via a temporary file); returns the hash and size of the raw and compressed bytes. */
async function gzipFile(src: string, dst: string): Promise<{ raw: { sha256: string; size: number }; gz: { sha256: string; size: number } }> {
  const rawHash = createHash('sha256');
  let rawSize = 0;
  const gzHash = createHash('sha256');
  let gzSize = 0;
  const tmp = `${dst}.partial-${process.pid}`;
  const tapRaw = new PassThrough();
  tapRaw.on('data', (c: Buffer) => {
    rawHash.update(c);
    rawSize += c.length;
  });
  const tapGz = new PassThrough();
  tapGz.on('data', (c: Buffer) => {
    gzHash.update(c);
    gzSize += c.length;
  });
  try {
    await pipeline(createReadStream(src, { highWaterMark: 4 * 1024 * 1024 }), tapRaw, createGzip({ level: 6 }), tapGz, createWriteStream(tmp));
    await rename(tmp, dst);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  return { raw: { sha256: rawHash.digest('hex'), size: rawSize }, gz: { sha256: gzHash.digest('hex'), size: gzSize } };
}

export interface ImagerJsonOptions {
  images: string[];
  /** Where the image files will be served from (https://…/images). */
  urlBase: string;
  out: string;
  /** gz: write <image>.gz next to `out` and list that (Imager decompresses while writing). */
  compress?: 'none' | 'gz';
  icon?: string;
  website?: string;
  /** Overrides for every entry. */
  name?: string;
  description?: string;
}

function joinUrl(base: string, file: string): string {
  return `${base.replace(/\/+$/, '')}/${encodeURIComponent(file)}`;
}

/** Builds the os_list document (and the .gz files with compress: 'gz') and writes it to `out`. */
export async function writeImagerJson(o: ImagerJsonOptions): Promise<{ out: string; list: ImagerOsList; files: string[] }> {
  if (!o.images.length) throw new UzError('IMAGER_INVALID_OPTION', 'give at least one --image', {});
  try {
    const u = new URL(o.urlBase);
    if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new Error('protocol');
  } catch {
    throw new UzError('IMAGER_INVALID_OPTION', `--url-base must be an http(s) URL, got "${o.urlBase}"`, { urlBase: o.urlBase });
  }
  const entries: ImagerOsEntry[] = [];
  const files: string[] = [];
  for (const image of o.images) {
    const rel = await readImageRelease(image);
    const devices = IMAGER_DEVICE_TAGS[rel.board];
    if (!devices) {
      throw new UzError('IMAGER_UNSUPPORTED_BOARD', `${image} is for board "${rel.board}", which Raspberry Pi Imager does not flash (Pi boards only: ${Object.keys(IMAGER_DEVICE_TAGS).join(', ')})`, {
        image,
        board: rel.board,
      });
    }
    const board = getBoard(rel.board);
    let raw: { sha256: string; size: number };
    let dl: { sha256: string; size: number };
    let file: string;
    if (o.compress === 'gz') {
      file = `${basename(image)}.gz`;
      const dst = join(dirname(o.out), file);
      const r = await gzipFile(image, dst);
      raw = r.raw;
      dl = r.gz;
      files.push(dst);
    } else {
      file = basename(image);
      raw = await hashFile(image);
      dl = raw;
    }
    const when = rel.buildEpoch !== undefined ? new Date(rel.buildEpoch * 1000) : (await stat(image)).mtime;
    const app = rel.app?.name ? `, workload ${rel.app.name}${rel.app.version ? ` ${rel.app.version}` : ''}` : '';
    entries.push({
      name: o.name ?? `unikernel-z ${rel.version} (${rel.board})`,
      description: o.description ?? `Signed A/B firmware for ${board.name}${app}. Provision per-device settings with uz provision.`,
      icon: o.icon ?? joinUrl(o.urlBase, 'unikernel-z.png'),
      url: joinUrl(o.urlBase, file),
      extract_size: raw.size,
      extract_sha256: raw.sha256,
      image_download_size: dl.size,
      image_download_sha256: dl.sha256,
      release_date: when.toISOString().slice(0, 10),
      devices,
      init_format: 'none',
      ...(o.website ? { website: o.website } : {}),
    });
  }
  const list = parseWith(ImagerOsListSchema, { os_list: entries }, 'IMAGER_INVALID_OPTION', 'os_list');
  const tmp = `${o.out}.partial-${process.pid}`;
  await writeFile(tmp, `${JSON.stringify(list, null, 2)}\n`);
  await rename(tmp, o.out);
  return { out: o.out, list, files };
}
