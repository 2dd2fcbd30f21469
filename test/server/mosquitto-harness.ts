// Real Mosquitto for the server tests: see server/mosquitto-process.ts (shared with bench/rollout.ts).
export * from '../../server/mosquitto-process.js';
