import { z } from 'zod';
import { AppManifestSchema } from '../../firmware/apps/schema.js';
import { BootControlScheme } from '../../boards/schema.js';

/** /etc/uz/image.json: what the builder tells the agent about the image it runs in. */
export const ImageInfoSchema = z
  .object({
    formatVersion: z.literal(1),
    board: z.string(),
    hardwareIds: z.array(z.string()),
    version: z.string(),
    buildEpoch: z.number().int(),
    bootControl: BootControlScheme,
    app: AppManifestSchema,
    /** Anti-rollback counter the image was signed with (optional: images built before it carry none → 0). */
    rollbackCounter: z.number().int().nonnegative().optional(),
  })
  .strict();
export type ImageInfo = z.infer<typeof ImageInfoSchema>;
