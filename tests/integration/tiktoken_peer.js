// Writes cl100k_base as a tiktoken rank file and the npm tiktoken package's ids for each line of
// a text file, one JSON array per line: the peer weir's tokenizer is checked against.
//   node tiktoken_peer.js NODE_MODULES TEXT_FILE RANKS_OUT IDS_OUT
const [modules, textFile, ranksOut, idsOut] = process.argv.slice(2);
const fs = require('fs');
const { get_encoding } = require(modules + '/tiktoken');
const enc = get_encoding('cl100k_base');
const lines = [];
for (let rank = 0; rank < 100256; rank++) {
  lines.push(Buffer.from(enc.decode_single_token_bytes(rank)).toString('base64') + ' ' + rank);
}
fs.writeFileSync(ranksOut, lines.join('\n') + '\n');
const ids = fs.readFileSync(textFile, 'utf8').split('\n').filter((l) => l.length > 0)
  .map((l) => JSON.stringify(Array.from(enc.encode_ordinary(JSON.parse(l).text))));
fs.writeFileSync(idsOut, ids.join('\n') + '\n');
enc.free();
