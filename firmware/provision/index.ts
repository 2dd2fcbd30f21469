export * from './config.js';
export { addFat32File, type AddFileResult } from '../fs/fat32.js';
export * from './image.js';
export * from './flash.js';
export * from './imager.js';
