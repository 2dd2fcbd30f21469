/**
 * The agent's entry in its V8 start-up snapshot (/opt/uz/agent.blob, built by firmware/node-snapshot.ts).
 *
 * Debian's Node.js is built without Node's own start-up snapshot and code cache, so every plain start parses
 * and compiles Node's bootstrap and then the agent from source: about 2 s of the emulated board's boot. This
 * script runs once, at image build time, under the image's own Node.js: it loads the whole agent (main.ts and
 * everything it imports) so that the snapshot holds Node's bootstrapped state and the agent's initialised
 * modules; the device then only deserialises the heap and calls the function below.
 *
 * Nothing here may depend on the build host: module initialisation must not read files, the clock or the
 * environment (the device's own values are read inside functions, at run time). Built-in modules that Node 20
 * cannot snapshot (http, tls, ...) are bound lazily by the bundle (firmware/agent-bundle.ts).
 */
import { startupSnapshot } from 'node:v8';
import * as main from './main.js';
import { startAgent } from './start.js';
import { warmUpSchemas, warmUpSpawn, warmUpStreams, type WarmUpSample } from './warm-up.js';

/** Set by the snapshot script's banner (firmware/agent-bundle.ts bundleAgentSnapshotScript). */
declare const __UZ_WARM_UP__: WarmUpSample | null;

// While the snapshot is built: run the boot's validation once, so the device starts with it compiled.
warmUpSchemas(__UZ_WARM_UP__ ?? {});
warmUpStreams();
warmUpSpawn();

startupSnapshot.setDeserializeMainFunction(() => {
  void startAgent(async () => main, 'snapshot');
});
