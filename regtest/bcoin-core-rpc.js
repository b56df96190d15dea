#!/usr/bin/env node
// bcoin's full node (as its bin/node starts it), answering the few RPC
// calls where its JSON differs from Bitcoin Core's in Core's shape, for
// Lightning implementations whose block source expects Core exactly (the
// independent peer of the end-to-end tests). lnpd's own block source copes
// with bcoin's shape; the rest of the suite runs against plain bin/node.
//
// - getblockheader (verbose): `bits` as 8 hex digits, `nonce`, no null
//   `previousblockhash` (genesis) or `nextblockhash` (tip);
// - estimatesmartfee: takes Core's optional mode argument; answers
//   `feerate` (BTC/kvB) or `errors` when there is no estimate;
// - getmempoolentry, getrawtransaction: "not found" with Core's code -5.

'use strict';

process.title = 'bcoin';

const FullNode = require('bcoin/lib/node/fullnode');
const {RPCError} = require('bweb');

const RPC_INVALID_ADDRESS_OR_KEY = -5;

const node = new FullNode({
  config: true,
  argv: true,
  env: true,
  logFile: true,
  logConsole: true,
  logLevel: 'debug',
  memory: false,
  workers: true,
  listen: true,
  loader: require
});

const calls = node.rpc.calls;

function wrap(name, f) {
  const original = calls[name];
  if (typeof original !== 'function')
    throw new Error(`bcoin has no RPC call ${name}`);
  calls[name] = async function(args, help) {
    return f.call(this, original.bind(this), args || [], help);
  };
}

wrap('getblockheader', async function(original, args, help) {
  const verbose = args.length < 2 || args[1] === true || args[1] === 1;
  const json = await original(args, help);
  if (!verbose || typeof json !== 'object' || json === null)
    return json;
  const raw = await original([args[0], false], help);
  const header = Buffer.from(raw, 'hex');
  json.bits = header.readUInt32LE(72).toString(16).padStart(8, '0');
  json.nonce = header.readUInt32LE(76);
  for (const field of ['previousblockhash', 'nextblockhash']) {
    if (json[field] === null)
      delete json[field];
  }
  return json;
});

wrap('estimatesmartfee', async function(original, args, help) {
  const json = await original(args.slice(0, 1), help);
  if (typeof json.fee === 'number' && json.fee > 0)
    return {feerate: json.fee, blocks: json.blocks};
  return {errors: ['Insufficient data or no feerate found'], blocks: json.blocks};
});

function notFound(name) {
  wrap(name, async function(original, args, help) {
    try {
      return await original(args, help);
    } catch (e) {
      if (e && e.type === 'RPCError' && /not (found|in mempool)/i.test(e.message))
        throw new RPCError(RPC_INVALID_ADDRESS_OR_KEY, e.message);
      throw e;
    }
  });
}

notFound('getmempoolentry');
notFound('getrawtransaction');

if (!node.config.bool('no-wallet') && !node.has('walletdb')) {
  const plugin = require('bcoin/lib/wallet/plugin');
  node.use(plugin);
}

process.on('unhandledRejection', (err) => {
  throw err;
});

(async () => {
  await node.ensure();
  await node.open();
  await node.connect();
  node.startSync();
})().catch((err) => {
  console.error(err.stack);
  process.exit(1);
});
