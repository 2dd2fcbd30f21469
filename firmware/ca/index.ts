export * from './ca.js';
export * from './crl.js';
export * from './device.js';
export * from './store.js';
export { normalizeSerial } from './der.js';
