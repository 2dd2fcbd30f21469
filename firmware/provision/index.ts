export * from './config.js';
export { addFat32File, type AddFileResult } from './fat-add.js';
export * from './image.js';
export * from './flash.js';
export * from './imager.js';
