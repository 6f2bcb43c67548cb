// Encodes a text file with the reference JavaScript encoder (npm gpt-3-encoder) and writes the
// ids as little-endian int32. That encoder is quadratic in its input's length (it grows its
// output with Array.concat), so the text is fed in pieces of about CHUNK characters, cut only
// where GPT-2's split pattern cuts anyway: at a space or newline between two printable ASCII
// characters (the same rule as pretok_find_cut in data/tok_encode.c). Before that, the rule is
// itself checked against the reference: slices of the text encoded whole and encoded in small
// pieces must give the same ids.
// Usage: node ref_encode.js ENCODER_MODULE_DIR TEXT OUT_IDS [CHUNK]
'use strict';
const fs = require('fs');
const [moduleDir, textFile, outFile, chunkArg] = process.argv.slice(2);
if (!outFile) { console.error('usage: node ref_encode.js MODULE_DIR TEXT OUT_IDS [CHUNK]'); process.exit(2); }
const { encode } = require(moduleDir);
const chunk = Number(chunkArg || 2000);

const graph = (c) => c > 0x20 && c < 0x7f;
function findCut(s, from) {
  for (let p = Math.max(from, 1); p + 1 < s.length; p++) {
    const c = s.charCodeAt(p);
    if ((c === 0x20 || c === 0x0a) && graph(s.charCodeAt(p - 1)) && graph(s.charCodeAt(p + 1))) return p;
  }
  return s.length;
}

function encodeInPieces(s, size) {
  const ids = [];
  for (let start = 0; start < s.length;) {
    const end = start + size >= s.length ? s.length : findCut(s, start + size);
    for (const id of encode(s.slice(start, end))) ids.push(id);
    start = end;
  }
  return ids;
}

const text = fs.readFileSync(textFile, 'utf8');
// Check the cut rule on 12 slices of 6000 characters spread over the text, cut every ~40.
let cutsChecked = 0;
for (let k = 0; k < 12; k++) {
  const from = Math.floor((text.length - 6000) * k / 11);
  const slice = text.slice(from, from + 6000);
  const whole = encode(slice), pieces = encodeInPieces(slice, 40);
  if (whole.length !== pieces.length || whole.some((v, i) => v !== pieces[i])) {
    console.error(`ref_encode.js: cutting at the pretok_find_cut rule changes the reference ids in the slice at character ${from}`);
    process.exit(1);
  }
  for (let p = findCut(slice, 40); p < slice.length; p = findCut(slice, p + 40)) cutsChecked++;
}
const t0 = process.hrtime.bigint();
const ids = encodeInPieces(text, chunk);
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
fs.writeFileSync(outFile, Buffer.from(Int32Array.from(ids).buffer));
const mb = Buffer.byteLength(text) / 1e6;
console.log(`reference: ${mb.toFixed(2)} MB -> ${ids.length} ids in ${seconds.toFixed(2)} s ` +
  `(${(mb / seconds).toFixed(2)} MB/s); cut rule verified at ${cutsChecked} cuts`);
