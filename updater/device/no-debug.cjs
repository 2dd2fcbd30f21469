'use strict';
/**
 * Stand-in for the `debug` package in the agent's start-up snapshot (firmware/node-snapshot.ts). `debug`
 * reads the environment and probes the terminal when a module creates its logger, which would freeze the
 * build host's answers into the snapshot; the device never sets DEBUG, so its loggers are always off.
 */
function createDebug(namespace) {
  const log = () => {};
  log.enabled = false;
  log.namespace = namespace;
  log.extend = (ns) => createDebug(`${namespace}:${ns}`);
  return log;
}
createDebug.enable = () => {};
createDebug.disable = () => '';
createDebug.enabled = () => false;
module.exports = createDebug;
module.exports.default = createDebug;
