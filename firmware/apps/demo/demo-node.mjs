// The demo workload: a stand-in for znnd with the same contract (config file, data directory on the data
// partition, JSON-RPC on 35997, stats.syncInfo as health). It persists a "height" that grows once per block
// interval, so a test can see that data survives reboots and updates.
import { createServer } from 'node:http';
import { readFileSync, writeFileSync, mkdirSync, renameSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { join } from 'node:path';

const configPath = process.argv[process.argv.indexOf('--config') + 1];
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const dataDir = config.DataPath;
mkdirSync(dataDir, { recursive: true });
const stateFile = join(dataDir, 'chain.json');

let height = 0;
try {
  height = JSON.parse(readFileSync(stateFile, 'utf8')).height;
} catch {
  height = 0;
}

function persist() {
  const tmp = `${stateFile}.tmp`;
  writeFileSync(tmp, JSON.stringify({ height }));
  const fd = openSync(tmp, 'r');
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, stateFile);
}

setInterval(() => {
  height += 1;
  if (height % 10 === 0) persist();
}, config.BlockIntervalMs ?? 1000).unref();

const server = createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    let id = null;
    try {
      const msg = JSON.parse(body || '{}');
      id = msg.id ?? null;
      if (config.FailHealth) throw Object.assign(new Error('demo configured to fail its health check'), { rpc: -32000 });
      let result;
      if (msg.method === 'stats.syncInfo') result = { state: 2, currentHeight: height, targetHeight: height };
      else if (msg.method === 'ledger.getFrontierMomentum') result = { height };
      else throw Object.assign(new Error(`method not found: ${msg.method}`), { rpc: -32601 });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ jsonrpc: '2.0', id, result }));
    } catch (e) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ jsonrpc: '2.0', id, error: { code: e.rpc ?? -32700, message: e.message } }));
    }
  });
});
server.listen(config.RPC.HTTPPort, config.RPC.HTTPHost, () => {
  console.log(`demo: JSON-RPC on ${config.RPC.HTTPHost}:${config.RPC.HTTPPort}, data in ${dataDir}, height ${height}`);
});
process.on('SIGTERM', () => {
  persist();
  process.exit(0);
});
