/* prepare: text <-> token shards.
 *   prepare encode --in GLOB|- --out DIR [options]   text files -> train/val token shards
 *   prepare decode [SHARD ...]                        shards (or one on stdin) -> text
 *   prepare stats SHARD ...                           tokens and documents per shard
 *   prepare html2text FILE ...                        plain text of HTML pages (corpus building)
 * docs/DATA.md describes the options; docs/FORMATS.md the shard layout. */
#include <glob.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/html_text.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "runtime/error.h"
#include "runtime/rng.h"

static const char usage_text[] =
    "usage:\n"
    "  prepare encode --in GLOB|- [--in GLOB ...] --out DIR [--prefix NAME] [--doc-sep STR]\n"
    "                 [--val-fraction F] [--shard-tokens N] [--threads N] [--seed N]\n"
    "                 [--tokenizer DIR] [--force]\n"
    "      Each input file (or each piece between two --doc-sep strings) is one document; each\n"
    "      document is preceded by <|endoftext|>. Documents go to DIR/NAME_val_*.bin with\n"
    "      probability F (default 0.005, decided by a hash of (seed, document number)), else to\n"
    "      DIR/NAME_train_*.bin. Defaults: NAME=corpus, N=100000000 tokens per shard,\n"
    "      threads = cores, seed 1, tokenizer files in tokenizer/. --doc-sep understands\n"
    "      \\n \\t \\r \\f \\\\ \\xHH. --force replaces existing shards of the same NAME.\n"
    "  prepare decode [--tokenizer DIR] [SHARD ...]   (no SHARD: one shard on stdin) -> stdout\n"
    "  prepare stats [--eot ID] SHARD ...             tokens and documents per shard\n"
    "  prepare html2text FILE ...                     plain text of HTML pages -> stdout\n";

static void usage_error(const char *what) {
    fprintf(stderr, "%s", usage_text);
    fatal(EXIT_USAGE, "%s", what);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *read_stream(FILE *f, const char *name, size_t *len) {
    size_t cap = 1 << 20, n = 0;
    char *buf = xmalloc(cap, name);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            if (!buf) fatal(EXIT_RUNTIME, "out of memory reading %s", name);
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) fatal(EXIT_USAGE, "cannot read %s", name);
    *len = n;
    return buf;
}

static char *read_path(const char *path, size_t *len) {
    if (strcmp(path, "-") == 0) return read_stream(stdin, "standard input", len);
    FILE *f = fopen(path, "rb");
    if (!f) fatal(EXIT_USAGE, "cannot open %s", path);
    char *buf = read_stream(f, path, len);
    fclose(f);
    return buf;
}

static long long parse_int(const char *flag, const char *s, long long lo, long long hi) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*s == 0 || *end != 0 || v < lo || v > hi)
        fatal(EXIT_USAGE, "%s: expected an integer in [%lld, %lld], got \"%s\"", flag, lo, hi, s);
    return v;
}

/* --doc-sep with C-like escapes, so a separator such as "\f" or "\n\n\n" can be typed. */
static char *parse_escapes(const char *s, size_t *len) {
    char *out = xmalloc(strlen(s) + 1, "--doc-sep");
    size_t n = 0;
    for (; *s; s++) {
        if (*s != '\\') { out[n++] = *s; continue; }
        s++;
        switch (*s) {
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case 'r': out[n++] = '\r'; break;
        case 'f': out[n++] = '\f'; break;
        case '\\': out[n++] = '\\'; break;
        case 'x': {
            char hex[3] = {s[1], s[1] ? s[2] : 0, 0}, *end;
            long v = strtol(hex, &end, 16);
            if (end != hex + 2) fatal(EXIT_USAGE, "--doc-sep: \\x needs two hex digits");
            out[n++] = (char)v;
            s += 2;
            break;
        }
        default: fatal(EXIT_USAGE, "--doc-sep: unknown escape \\%c", *s ? *s : '0');
        }
    }
    if (n == 0) fatal(EXIT_USAGE, "--doc-sep must not be empty");
    *len = n;
    return out;
}

/* ---- encode ---- */

typedef struct {
    const char **inputs; /* file paths after glob expansion, "-" for stdin */
    int n_inputs;
    const char *out_dir, *prefix, *tokenizer_dir;
    char *doc_sep;
    size_t doc_sep_len;
    double val_fraction;
    size_t shard_tokens;
    int threads, force;
    uint64_t seed;
} encode_opts_t;

typedef struct {
    const char *text;
    size_t len;
    int is_val;
    tok_ids_t ids;
} doc_t;

typedef struct {
    double start, last_draw;
    size_t total_bytes, done_bytes; /* total 0: unknown (stdin) */
    uint64_t tokens;
    int tty;
} progress_t;

static void progress_draw(progress_t *p, int final) {
    double t = now_s();
    if (!final && t - p->last_draw < (p->tty ? 0.2 : 30.0)) return;
    p->last_draw = t;
    double el = t - p->start, mb = (double)p->done_bytes / 1e6, rate = el > 0 ? mb / el : 0;
    char bar[32] = "";
    double frac = p->total_bytes ? (double)p->done_bytes / (double)p->total_bytes : 0;
    if (p->total_bytes) {
        int fill = (int)(frac * 24);
        for (int i = 0; i < 24; i++) bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
        bar[24] = 0;
    }
    char eta[32] = "";
    if (p->total_bytes && rate > 0 && !final) {
        int s = (int)(((double)(p->total_bytes - p->done_bytes) / 1e6) / rate);
        snprintf(eta, sizeof eta, "  ETA %d:%02d", s / 60, s % 60);
    }
    if (p->total_bytes)
        fprintf(stderr, "%s[%s] %5.1f%%  %.1f/%.1f MB  %.1f MB/s  %.2f M tokens%s%s", p->tty ? "\r" : "", bar,
                100 * frac, mb, (double)p->total_bytes / 1e6, rate, (double)p->tokens / 1e6, eta,
                p->tty && !final ? "" : "\n");
    else
        fprintf(stderr, "%s%.1f MB  %.1f MB/s  %.2f M tokens%s", p->tty ? "\r" : "", mb, rate, (double)p->tokens / 1e6,
                p->tty && !final ? "" : "\n");
    fflush(stderr);
}

/* Encodes a batch of documents: big ones one at a time with all threads, the rest spread over
 * the threads one document each; then appends them, in order, to their split's shards. */
static void encode_batch(tok_pool_t *pool, int32_t eot, doc_t *docs, size_t n_docs, shard_writer_t *train,
                         shard_writer_t *val, progress_t *prog) {
    const size_t big = 1 << 20;
    const char **texts = xmalloc((n_docs + 1) * sizeof(char *), "documents");
    size_t *lens = xmalloc((n_docs + 1) * sizeof(size_t), "documents");
    tok_ids_t *outs = xcalloc(n_docs + 1, sizeof(tok_ids_t), "documents");
    size_t n_small = 0;
    for (size_t d = 0; d < n_docs; d++) {
        if (docs[d].len >= big) {
            tok_pool_encode(pool, docs[d].text, docs[d].len, &docs[d].ids);
        } else {
            texts[n_small] = docs[d].text;
            lens[n_small++] = docs[d].len;
        }
    }
    tok_pool_encode_many(pool, texts, lens, n_small, outs);
    for (size_t d = 0, k = 0; d < n_docs; d++)
        if (docs[d].len < big) docs[d].ids = outs[k++];
    free(texts);
    free(lens);
    free(outs);
    for (size_t d = 0; d < n_docs; d++) {
        shard_writer_t *w = docs[d].is_val ? val : train;
        shard_writer_add(w, &eot, 1);
        shard_writer_add(w, docs[d].ids.ids, docs[d].ids.n);
        prog->tokens += docs[d].ids.n + 1;
        tok_ids_free(&docs[d].ids);
    }
}

static void remove_old_shards(const encode_opts_t *o) {
    const char *splits[2] = {"train", "val"};
    for (int s = 0; s < 2; s++) {
        char pattern[4200];
        snprintf(pattern, sizeof pattern, "%s/%s_%s_*.bin", o->out_dir, o->prefix, splits[s]);
        glob_t g;
        if (glob(pattern, 0, NULL, &g) == 0) {
            if (!o->force)
                fatal(EXIT_USAGE, "%s already exists (%zu shards match %s): remove them, pick another --prefix, or "
                      "pass --force to replace them", g.gl_pathv[0], g.gl_pathc, pattern);
            for (size_t i = 0; i < g.gl_pathc; i++)
                if (unlink(g.gl_pathv[i]) != 0) fatal(EXIT_USAGE, "cannot remove old shard %s", g.gl_pathv[i]);
        }
        globfree(&g);
    }
}

static void run_encode(encode_opts_t *o) {
    char enc_path[4200], vocab_path[4200];
    snprintf(enc_path, sizeof enc_path, "%s/encoder.json", o->tokenizer_dir);
    snprintf(vocab_path, sizeof vocab_path, "%s/vocab.bpe", o->tokenizer_dir);
    tokenizer_t *tok = tokenizer_load(enc_path, vocab_path);
    if (tokenizer_vocab_size(tok) > SHARD_MAX_VOCAB)
        fatal(EXIT_USAGE, "%s: %d tokens do not fit uint16 shards", enc_path, tokenizer_vocab_size(tok));
    if (mkdir(o->out_dir, 0755) != 0 && access(o->out_dir, W_OK) != 0)
        fatal(EXIT_USAGE, "cannot create or write the output directory %s", o->out_dir);
    remove_old_shards(o);

    progress_t prog = {.start = now_s(), .tty = isatty(STDERR_FILENO)};
    prog.last_draw = prog.start;
    for (int i = 0; i < o->n_inputs; i++) {
        struct stat st;
        if (strcmp(o->inputs[i], "-") == 0) { prog.total_bytes = 0; break; }
        if (stat(o->inputs[i], &st) != 0 || !S_ISREG(st.st_mode)) fatal(EXIT_USAGE, "%s is not a readable file", o->inputs[i]);
        prog.total_bytes += (size_t)st.st_size;
    }
    tok_pool_t *pool = tok_pool_new(tok, o->threads);
    shard_writer_t train, val;
    shard_writer_init(&train, o->out_dir, o->prefix, "train", o->shard_tokens);
    shard_writer_init(&val, o->out_dir, o->prefix, "val", o->shard_tokens);
    uint64_t split_key = rng_key(o->seed, RNG_DOMAIN_DATA, UINT64_MAX, UINT64_MAX, 0); /* not an epoch key */
    double threshold = o->val_fraction * 18446744073709551616.0;
    uint64_t n_docs[2] = {0, 0}, doc_index = 0;
    int32_t eot = tokenizer_eot(tok);

    /* A batch holds whole files (documents point into them) until it is big enough. */
    const size_t batch_bytes = (size_t)64 << 20;
    size_t cap_docs = 1024, n_batch_docs = 0, batch_len = 0, n_bufs = 0;
    doc_t *docs = xmalloc(cap_docs * sizeof(doc_t), "documents");
    char **bufs = xmalloc((size_t)o->n_inputs * sizeof(char *), "input buffers");
    for (int i = 0; i < o->n_inputs; i++) {
        size_t len;
        char *text = read_path(o->inputs[i], &len);
        bufs[n_bufs++] = text;
        for (size_t pos = 0; pos < len;) {
            const char *sep = o->doc_sep ? memmem(text + pos, len - pos, o->doc_sep, o->doc_sep_len) : NULL;
            size_t end = sep ? (size_t)(sep - text) : len;
            if (end > pos) { /* empty documents (adjacent separators) are skipped */
                if (n_batch_docs == cap_docs) {
                    cap_docs *= 2;
                    docs = realloc(docs, cap_docs * sizeof(doc_t));
                    if (!docs) fatal(EXIT_RUNTIME, "out of memory listing documents");
                }
                int is_val = (double)rng_u64(split_key, doc_index++) < threshold;
                docs[n_batch_docs++] = (doc_t){text + pos, end - pos, is_val, {0}};
                n_docs[is_val]++;
            }
            pos = sep ? end + o->doc_sep_len : len;
        }
        batch_len += len;
        if (batch_len >= batch_bytes || i == o->n_inputs - 1) {
            encode_batch(pool, eot, docs, n_batch_docs, &train, &val, &prog);
            for (size_t b = 0; b < n_bufs; b++) free(bufs[b]);
            prog.done_bytes += batch_len;
            n_batch_docs = n_bufs = batch_len = 0;
            progress_draw(&prog, 0);
        }
    }
    if (o->val_fraction > 0 && n_docs[1] == 0)
        fatal(EXIT_USAGE, "no document fell into the validation split (%llu documents, --val-fraction %g): give "
              "more documents, a larger --val-fraction, or --val-fraction 0", (unsigned long long)n_docs[0],
              o->val_fraction);
    shard_writer_finish(&train);
    shard_writer_finish(&val);
    progress_draw(&prog, 1);
    printf("train: %llu documents, %llu tokens, %d shards (%s/%s_train_*.bin)\n", (unsigned long long)n_docs[0],
           (unsigned long long)train.n_tokens, train.n_shards, o->out_dir, o->prefix);
    printf("val:   %llu documents, %llu tokens, %d shards (%s/%s_val_*.bin)\n", (unsigned long long)n_docs[1],
           (unsigned long long)val.n_tokens, val.n_shards, o->out_dir, o->prefix);
    free(docs);
    free(bufs);
    tok_pool_free(pool);
    tokenizer_free(tok);
}

static int cmd_encode(int argc, char **argv) {
    encode_opts_t o = {.prefix = "corpus", .tokenizer_dir = "tokenizer", .val_fraction = 0.005,
                       .shard_tokens = 100000000, .threads = 0, .seed = 1};
    glob_t g = {0};
    int globbed = 0, have_stdin = 0;
    const char **inputs = xmalloc((size_t)argc * sizeof(char *), "inputs");
    int n_patterns = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--force") == 0) { o.force = 1; continue; }
        if (i + 1 >= argc) usage_error("missing value after the last option");
        const char *v = argv[++i];
        if (strcmp(a, "--in") == 0) inputs[n_patterns++] = v;
        else if (strcmp(a, "--out") == 0) o.out_dir = v;
        else if (strcmp(a, "--prefix") == 0) o.prefix = v;
        else if (strcmp(a, "--tokenizer") == 0) o.tokenizer_dir = v;
        else if (strcmp(a, "--doc-sep") == 0) o.doc_sep = parse_escapes(v, &o.doc_sep_len);
        else if (strcmp(a, "--shard-tokens") == 0) o.shard_tokens = (size_t)parse_int(a, v, 1, INT32_MAX / 2);
        else if (strcmp(a, "--threads") == 0) o.threads = (int)parse_int(a, v, 1, 1024);
        else if (strcmp(a, "--seed") == 0) o.seed = (uint64_t)parse_int(a, v, 0, INT64_MAX);
        else if (strcmp(a, "--val-fraction") == 0) {
            char *end;
            o.val_fraction = strtod(v, &end);
            if (*end || !(o.val_fraction >= 0 && o.val_fraction < 1))
                fatal(EXIT_USAGE, "--val-fraction: expected a number in [0, 1), got \"%s\"", v);
        } else {
            char msg[256];
            snprintf(msg, sizeof msg, "unknown option %s for encode", a);
            usage_error(msg);
        }
    }
    if (n_patterns == 0 || !o.out_dir) usage_error("encode needs --in and --out");
    for (int p = 0; p < n_patterns; p++) {
        if (strcmp(inputs[p], "-") == 0) { have_stdin = 1; continue; }
        size_t before = globbed ? g.gl_pathc : 0;
        int rc = glob(inputs[p], globbed ? GLOB_APPEND : 0, NULL, &g);
        if (rc == GLOB_NOMATCH || (rc == 0 && g.gl_pathc == before)) fatal(EXIT_USAGE, "no file matches --in %s", inputs[p]);
        if (rc != 0) fatal(EXIT_USAGE, "cannot expand --in %s", inputs[p]);
        globbed = 1;
    }
    if (have_stdin && globbed) fatal(EXIT_USAGE, "--in - (standard input) cannot be combined with files");
    if (have_stdin) {
        static const char *dash[1] = {"-"};
        o.inputs = dash;
        o.n_inputs = 1;
    } else {
        o.inputs = (const char **)g.gl_pathv;
        o.n_inputs = (int)g.gl_pathc;
    }
    run_encode(&o);
    if (globbed) globfree(&g);
    free(inputs);
    free(o.doc_sep);
    return 0;
}

/* ---- decode, stats, html2text ---- */

static void check_shard_buffer(const char *name, const char *buf, size_t len, const uint16_t **tokens, size_t *n) {
    const int32_t *h = (const int32_t *)buf;
    if (len < SHARD_HEADER_BYTES || h[0] != SHARD_MAGIC || h[1] != SHARD_VERSION || h[2] < 0 ||
        (size_t)h[2] * 2 + SHARD_HEADER_BYTES != len)
        fatal(EXIT_USAGE, "%s is not a complete version-%d token shard (magic %d)", name, SHARD_VERSION, SHARD_MAGIC);
    *tokens = (const uint16_t *)(buf + SHARD_HEADER_BYTES);
    *n = (size_t)h[2];
}

static void decode_tokens(const tokenizer_t *tok, const uint16_t *tokens, size_t n) {
    int32_t block[65536];
    for (size_t i = 0; i < n; i += 65536) {
        size_t m = n - i < 65536 ? n - i : 65536, len;
        for (size_t k = 0; k < m; k++) block[k] = tokens[i + k];
        char *text = tokenizer_decode(tok, block, m, &len);
        if (fwrite(text, 1, len, stdout) != len) fatal(EXIT_RUNTIME, "cannot write to standard output");
        free(text);
    }
}

static int cmd_decode(int argc, char **argv) {
    const char *dir = "tokenizer";
    int first = 0;
    if (argc >= 2 && strcmp(argv[0], "--tokenizer") == 0) { dir = argv[1]; first = 2; }
    char enc_path[4200], vocab_path[4200];
    snprintf(enc_path, sizeof enc_path, "%s/encoder.json", dir);
    snprintf(vocab_path, sizeof vocab_path, "%s/vocab.bpe", dir);
    tokenizer_t *tok = tokenizer_load(enc_path, vocab_path);
    if (first == argc) {
        size_t len, n;
        const uint16_t *tokens;
        char *buf = read_stream(stdin, "standard input", &len);
        check_shard_buffer("standard input", buf, len, &tokens, &n);
        decode_tokens(tok, tokens, n);
        free(buf);
    }
    for (int i = first; i < argc; i++) {
        shard_t s;
        shard_open(&s, argv[i], tokenizer_vocab_size(tok));
        decode_tokens(tok, s.tokens, s.n_tokens);
        shard_close(&s);
    }
    tokenizer_free(tok);
    return 0;
}

static int cmd_stats(int argc, char **argv) {
    long long eot = 50256;
    int first = 0;
    if (argc >= 2 && strcmp(argv[0], "--eot") == 0) { eot = parse_int("--eot", argv[1], 0, 65535); first = 2; }
    if (first == argc) usage_error("stats needs shard files");
    unsigned long long total_tokens = 0, total_docs = 0;
    for (int i = first; i < argc; i++) {
        shard_t s;
        shard_open(&s, argv[i], 0);
        unsigned long long docs = 0;
        for (size_t k = 0; k < s.n_tokens; k++) docs += s.tokens[k] == eot;
        printf("%s: %zu tokens, %llu documents\n", argv[i], s.n_tokens, docs);
        total_tokens += s.n_tokens;
        total_docs += docs;
        shard_close(&s);
    }
    printf("total: %llu tokens, %llu documents in %d shards\n", total_tokens, total_docs, argc - first);
    return 0;
}

static int cmd_html2text(int argc, char **argv) {
    if (argc == 0) usage_error("html2text needs HTML files");
    for (int i = 0; i < argc; i++) {
        size_t len, text_len;
        char *html = read_path(argv[i], &len);
        char *text = html_to_text(html, len, &text_len);
        if (text_len && (fwrite(text, 1, text_len, stdout) != text_len || fputc('\n', stdout) == EOF))
            fatal(EXIT_RUNTIME, "cannot write to standard output");
        free(text);
        free(html);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) usage_error("no command given");
    const char *cmd = argv[1];
    if (strcmp(cmd, "encode") == 0) return cmd_encode(argc - 2, argv + 2);
    if (strcmp(cmd, "decode") == 0) return cmd_decode(argc - 2, argv + 2);
    if (strcmp(cmd, "stats") == 0) return cmd_stats(argc - 2, argv + 2);
    if (strcmp(cmd, "html2text") == 0) return cmd_html2text(argc - 2, argv + 2);
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        printf("%s", usage_text);
        return 0;
    }
    char msg[256];
    snprintf(msg, sizeof msg, "unknown command %s", cmd);
    usage_error(msg);
    return EXIT_USAGE;
}
