export * from './format.js';
export * from './manifest.js';
export * from './stream.js';
export * from './verify.js';
export * from './write.js';
