/**
 * The agent's entry in the plain ESM bundle (/opt/uz/agent.mjs plus chunks): used when the image has no
 * start-up snapshot, or when this board's CPU rejects it (see /etc/uz/agent and firmware/node-snapshot.ts).
 * main.ts is imported only after the workload was started; the bundler emits it as its own chunk.
 */
import { startAgent } from './start.js';

void startAgent(() => import('./main.js'), 'bundle');
