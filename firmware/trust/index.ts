export * from './canonical.js';
export * from './ed25519.js';
export * from './keys.js';
export * from './signatures.js';
export * from './root.js';
export * from './io.js';
export * from './tuf.js';
