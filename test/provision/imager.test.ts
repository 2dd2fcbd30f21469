/**
 * `uz imager-json`: the Raspberry Pi Imager repository document, checked against a zod schema of Imager's
 * os_list format (required fields per rpi-imager's doc/json-schema/os-list-schema.json, plus the
 * devices / image_download_sha256 / init_format fields newer Imagers read), with real hashes and sizes.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { writeImagerJson } from '../../firmware/provision/imager.js';
import { makeTestImage, tempDir, uz } from './helpers.js';

/** Imager's os_list format, written independently of the implementation's own schema. */
const OsEntry = z
  .object({
    name: z.string().min(1),
    description: z.string().min(1),
    icon: z.string().min(1),
    url: z.string().regex(/^https?:\/\/\S+$/),
    extract_size: z.number().int().positive(),
    extract_sha256: z.string().regex(/^[0-9a-f]{64}$/),
    image_download_size: z.number().int().positive(),
    image_download_sha256: z.string().regex(/^[0-9a-f]{64}$/),
    release_date: z.string().regex(/^\d{4}-\d{2}-\d{2}$/),
    devices: z.array(z.enum(['pi5-64bit', 'pi4-64bit', 'pi3-64bit', 'pi5-32bit', 'pi4-32bit', 'pi3-32bit', 'pi2-32bit', 'pi1-32bit'])).min(1),
    init_format: z.string(),
    website: z.string().optional(),
  })
  .passthrough();
const OsList = z.object({ imager: z.record(z.string(), z.unknown()).optional(), os_list: z.array(OsEntry).min(1) }).strict();

let tmp: { dir: string; cleanup: () => void };
let pi4: string;
let pi3: string;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

beforeAll(async () => {
  tmp = tempDir('imager');
  pi4 = join(tmp.dir, 'rpi4-1.2.3.img');
  pi3 = join(tmp.dir, 'rpi3-1.2.3.img');
  await makeTestImage(pi4, { board: 'rpi4' });
  await makeTestImage(pi3, { board: 'rpi3' });
});
afterAll(() => tmp.cleanup());

describe('imager-json', () => {
  it('lists raw images with their real sizes and hashes and the right device tags', async () => {
    const out = join(tmp.dir, 'os_list.json');
    await writeImagerJson({ images: [pi4, pi3], urlBase: 'https://dl.example.com/uz/', out });
    const doc = OsList.parse(JSON.parse(readFileSync(out, 'utf8')));
    const [a, b] = doc.os_list;
    const raw4 = readFileSync(pi4);
    expect(a).toMatchObject({
      url: 'https://dl.example.com/uz/rpi4-1.2.3.img',
      extract_size: raw4.length,
      extract_sha256: sha(raw4),
      image_download_size: raw4.length,
      image_download_sha256: sha(raw4),
      release_date: '2025-11-24',
      devices: ['pi4-64bit'],
      init_format: 'none',
      name: 'unikernel-z 1.2.3 (rpi4)',
    });
    expect(b!.devices).toEqual(['pi3-64bit']);
  });

  it('gz: writes <img>.gz next to the list; download hash/size are of the .gz, extract ones of the image', async () => {
    const out = join(tmp.dir, 'gz', 'os_list.json');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(join(tmp.dir, 'gz'));
    const r = await writeImagerJson({ images: [pi4], urlBase: 'https://dl.example.com/uz', out, compress: 'gz', website: 'https://example.com/uz' });
    expect(r.files).toEqual([join(tmp.dir, 'gz', 'rpi4-1.2.3.img.gz')]);
    const gz = readFileSync(r.files[0]!);
    const raw = readFileSync(pi4);
    expect(gunzipSync(gz).equals(raw)).toBe(true);
    const e = OsList.parse(JSON.parse(readFileSync(out, 'utf8'))).os_list[0]!;
    expect(e).toMatchObject({ url: 'https://dl.example.com/uz/rpi4-1.2.3.img.gz', image_download_size: gz.length, image_download_sha256: sha(gz), extract_size: raw.length, extract_sha256: sha(raw) });
    expect(gz.length).toBeLessThan(raw.length / 10);
  });

  it('refuses boards Imager cannot flash (qemu-virt) and a bad URL base; CLI works', async () => {
    const q = join(tmp.dir, 'qemu.img');
    await makeTestImage(q, { board: 'qemu-virt' });
    await expect(writeImagerJson({ images: [q], urlBase: 'https://x.example', out: join(tmp.dir, 'q.json') })).rejects.toMatchObject({ code: 'IMAGER_UNSUPPORTED_BOARD' });
    await expect(writeImagerJson({ images: [pi4], urlBase: 'ftp://x', out: join(tmp.dir, 'q.json') })).rejects.toMatchObject({ code: 'IMAGER_INVALID_OPTION' });
    const r = uz(tmp.dir, 'imager-json', '--image', pi4, '--url-base', 'https://dl.example.com', '--out', 'cli.json', '--json');
    expect(r.code, r.err).toBe(0);
    expect(OsList.parse(JSON.parse(r.out)).os_list).toHaveLength(1);
    expect(JSON.parse(readFileSync(join(tmp.dir, 'cli.json'), 'utf8'))).toEqual(JSON.parse(r.out));
  });
});
