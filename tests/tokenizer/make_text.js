// Builds the text set of tests/test_tokenizer_exact.sh (about 1.4 MB, valid UTF-8):
//   English prose      licence texts and package copyright files of this system, npm's manual
//   source code        C headers from /usr/include, npm's own JavaScript
//   other scripts      generated words in Greek, Cyrillic, Hebrew, Arabic, Devanagari, Thai,
//                      CJK, kana, Hangul, with marks, emoji (ZWJ sequences, skin tones, flags)
//   awkward cases      long and mixed whitespace runs (tabs, NBSP, U+3000, U+2028, U+FEFF, ...),
//                      digit runs in several scripts, contractions in odd cases and places
// Generated parts use a fixed-seed generator, so the text depends only on the system's files.
// Only characters assigned before Unicode 14 are generated: PCRE2 10.42 (Debian 12) knows
// Unicode 14, Node knows a newer one, and a character added since would classify differently.
// Usage: node make_text.js OUT_FILE
'use strict';
const fs = require('fs');
const path = require('path');

let seed = 20240520;
function rand() { // mulberry32
  seed = (seed + 0x6D2B79F5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (arr) => arr[Math.floor(rand() * arr.length)];
const between = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
const cp = (lo, hi) => String.fromCodePoint(between(lo, hi));

function filesUnder(dir, test, out = []) {
  let entries;
  try { entries = fs.readdirSync(dir, { withFileTypes: true }); } catch (e) { return out; }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) filesUnder(p, test, out);
    else if (e.isFile() && test(p)) out.push(p);
  }
  return out;
}

// Takes whole files (valid UTF-8 only) until `budget` characters.
function takeFiles(files, budget) {
  const parts = [];
  let size = 0;
  for (const f of files) {
    if (size >= budget) break;
    const buf = fs.readFileSync(f);
    const s = buf.toString('utf8');
    if (Buffer.byteLength(s) !== buf.length || s.includes('\ufffd')) continue;
    parts.push(s);
    size += s.length;
  }
  return parts.join('\n');
}

// Letters of several scripts, each with its own word shape.
const scripts = [
  () => cp(0x3B1, 0x3C9) + (rand() < 0.2 ? '\u0301' : ''),                  // Greek (+ combining acute)
  () => cp(0x410, 0x44F),                                                   // Cyrillic
  () => cp(0x5D0, 0x5EA),                                                   // Hebrew
  () => cp(0x621, 0x63A) + (rand() < 0.2 ? cp(0x64B, 0x652) : ''),           // Arabic (+ harakat marks)
  () => cp(0x905, 0x939) + (rand() < 0.5 ? cp(0x93E, 0x94C) : ''),           // Devanagari (+ vowel signs, Mc/Mn)
  () => cp(0xE01, 0xE2E) + (rand() < 0.3 ? cp(0xE31, 0xE3A) : ''),           // Thai
  () => cp(0x4E00, 0x9FA5),                                                 // CJK ideographs
  () => cp(0x3041, 0x3096),                                                 // Hiragana
  () => cp(0x30A1, 0x30FA),                                                 // Katakana
  () => cp(0xAC00, 0xD7A3),                                                 // Hangul syllables
  () => pick(['é', 'ß', 'ø', 'Å', 'ñ', 'ç', 'ĳ', 'ǅ', 'ﬁ', 'ʼ', 'ˆ']),      // Latin odds (Lt, Lm, ligature)
];
const emoji = [
  () => cp(0x1F600, 0x1F64F),
  () => cp(0x1F300, 0x1F5FF) + '\uFE0F',
  () => cp(0x1F466, 0x1F469) + cp(0x1F3FB, 0x1F3FF),                         // skin tone
  () => '\u{1F468}\u200D\u{1F469}\u200D\u{1F467}\u200D\u{1F466}',            // ZWJ family
  () => cp(0x1F1E6, 0x1F1FF) + cp(0x1F1E6, 0x1F1FF),                         // flag
  () => pick(['❤️', '✔', '☃', '★', '♻️', '⌘', '∑', '≠', '→', '€', '£', '¥', '©', '®', '™']),
];
const digits = [
  () => cp(0x30, 0x39), () => cp(0x660, 0x669), () => cp(0x966, 0x96F), () => cp(0xFF10, 0xFF19),
  () => pick(['²', '³', '½', '¾', 'Ⅻ', 'ⅷ', '①', '⑳', '〇']),
];
const spaces = [' ', '  ', '\t', '\n', '\n\n', '\r\n', '\u00A0', '\u2003', '\u3000', '\u2028', '\u2029',
  '\uFEFF', '\u000B', '\u000C', '\u0085', '\u180E', '\u200B', ' \n ', '\t \t'];
const punct = ['.', ',', '!', '?', ';', ':', '…', '—', '–', '"', '«', '»', '„', '“', '”', '‘', '’', '(', ')',
  '[', ']', '{', '}', '...', '?!', '。', '、', '！', '؟', '،', '।', '॥'];

function genWord(letter) {
  let w = '';
  const n = between(1, 9);
  for (let i = 0; i < n; i++) w += letter();
  return w;
}

function multilingual(budget) {
  let s = '';
  while (s.length < budget) {
    const letter = pick(scripts);
    let sentence = '';
    const words = between(3, 25);
    for (let i = 0; i < words; i++) {
      const r = rand();
      if (r < 0.75) sentence += genWord(rand() < 0.9 ? letter : pick(scripts));
      else if (r < 0.85) sentence += pick(emoji)();
      else if (r < 0.95) { const d = pick(digits); for (let k = between(1, 6); k > 0; k--) sentence += d(); }
      else sentence += pick(punct);
      sentence += rand() < 0.85 ? ' ' : pick(spaces);
    }
    s += sentence + pick(punct) + (rand() < 0.7 ? ' ' : pick(spaces));
  }
  return s;
}

const contractionWords = ["don't", "DON'T", "Don'T", "it's", "IT'S", "It'S", "we're", "WE'RE", "I've", "I'VE",
  "I'm", "I'M", "you'll", "YOU'LL", "he'd", "HE'D", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "''s", "'''ll",
  "'s's", "rock'n'roll", "o'clock", "y'all'd've", "’s", "it’s", "'S", "'Re", "'LL", "'123", "' s", "'\ns", "'ş",
  "'sa", "'tis", "'twas", "dogs'", "'quoted'", "'", "''"];

function awkward(budget) {
  let s = '';
  while (s.length < budget) {
    const r = rand();
    if (r < 0.25) { // whitespace runs, sometimes long, of mixed kinds, between varied neighbours
      let run = '';
      const n = rand() < 0.1 ? between(50, 600) : between(1, 12);
      for (let i = 0; i < n; i++) run += rand() < 0.7 ? ' ' : pick(spaces);
      s += pick(['word', '42', '!', '’', 'слово', '字', '', '\n', 'x']) + run;
    } else if (r < 0.45) { // digit runs, sometimes long, sometimes mixed scripts
      const d = pick(digits);
      const n = rand() < 0.1 ? between(40, 400) : between(1, 20);
      let run = '';
      for (let i = 0; i < n; i++) run += rand() < 0.95 ? d() : pick(['.', ',', '_', ' ']);
      s += pick([' ', '', '$', 'v', '-', '\n']) + run;
    } else if (r < 0.75) { // contractions in odd cases and places
      s += pick(['', ' ', '  ', '\n', 'x', '"', '(']) + pick(contractionWords);
    } else if (r < 0.9) { // symbol runs
      const n = rand() < 0.1 ? between(30, 300) : between(1, 8);
      let run = '';
      const sym = pick(['=', '-', '*', '#', '~', '.', '_', '/', '\\', '!?', '<>', '|', '`', '^', 'ǃ', '·']);
      for (let i = 0; i < n; i++) run += sym;
      s += pick([' ', '', '\n', '\t']) + run;
    } else { // emoji and symbols
      s += pick([' ', '']) + pick(emoji)() + pick(emoji)();
    }
  }
  return s;
}

const out = process.argv[2];
if (!out) { console.error('usage: node make_text.js OUT_FILE'); process.exit(2); }
const prose = takeFiles(filesUnder('/usr/share/common-licenses', () => true), 200000) + '\n' +
  takeFiles(filesUnder('/usr/share/doc', (p) => p.endsWith('/copyright')), 150000) + '\n' +
  takeFiles(filesUnder('/usr/lib/node_modules/npm/docs/content', (p) => p.endsWith('.md')), 150000);
const code = takeFiles(filesUnder('/usr/include', (p) => p.endsWith('.h')), 200000) + '\n' +
  takeFiles(filesUnder('/usr/lib/node_modules/npm/lib', (p) => p.endsWith('.js')), 100000);
const text = [prose, code, multilingual(170000), awkward(100000)].join('\n\n');
if (Buffer.byteLength(text) < 1 << 20) {
  console.error(`make_text.js: only ${Buffer.byteLength(text)} bytes of text; the test needs at least 1 MiB`);
  process.exit(1);
}
fs.writeFileSync(out, text);
