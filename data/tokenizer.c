/* Loading GPT-2's tokenizer files and decoding. Encoding is in data/tok_encode.c.
 *
 * encoder.json maps token strings to ids and vocab.bpe lists the merges in rank order. Both
 * spell bytes in GPT-2's "byte to unicode" alphabet (printable Latin-1 characters stand for
 * themselves, the other 68 bytes for U+0100..U+0143) so that the files are readable text. We
 * translate every token back to raw bytes once, at load time, so encoding and decoding work on
 * bytes only. */
#include "data/tokenizer_internal.h"

#include <cjson/cJSON.h>
#include <string.h>

#include "runtime/error.h"

/* ---- GPT-2's byte <-> code point alphabet ---- */

#define ALPHABET_MAX_CP 324 /* code points used: 0..323 */

/* byte_of_cp[cp] = the byte that code point cp stands for, or -1. */
static void build_byte_alphabet(int byte_of_cp[ALPHABET_MAX_CP]) {
    for (int cp = 0; cp < ALPHABET_MAX_CP; cp++) byte_of_cp[cp] = -1;
    int next_extra = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_of_cp[printable ? b : next_extra++] = b;
    }
}

/* Translates a UTF-8 token string in GPT-2's alphabet to raw bytes (out needs strlen(s) bytes;
 * every character becomes one byte). Returns the byte count, or -1 if a character is not in the
 * alphabet or the UTF-8 is malformed. */
static long alphabet_to_bytes(const char *s, size_t n, const int byte_of_cp[ALPHABET_MAX_CP], char *out) {
    const unsigned char *u = (const unsigned char *)s;
    long len = 0;
    for (size_t i = 0; i < n;) {
        int cp;
        if (u[i] < 0x80) {
            cp = u[i];
            i += 1;
        } else if ((u[i] & 0xE0) == 0xC0 && i + 1 < n && (u[i + 1] & 0xC0) == 0x80) {
            cp = ((u[i] & 0x1F) << 6) | (u[i + 1] & 0x3F);
            i += 2;
        } else {
            return -1; /* the alphabet only uses code points below U+0800 */
        }
        if (cp >= ALPHABET_MAX_CP || byte_of_cp[cp] < 0) return -1;
        out[len++] = (char)byte_of_cp[cp];
    }
    return len;
}

/* ---- a temporary map from token bytes to id, used while loading ---- */

typedef struct {
    const tokenizer_t *tok;
    int32_t *slots; /* token ids, -1 = empty */
    uint64_t mask;
} bytes_map_t;

static uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 0x100000001b3ULL;
    return tok_hash64(h);
}

static int32_t *bytes_map_slot(bytes_map_t *m, const char *p, size_t n) {
    for (uint64_t i = hash_bytes(p, n) & m->mask;; i = (i + 1) & m->mask) {
        int32_t id = m->slots[i];
        if (id < 0) return &m->slots[i];
        if (m->tok->token_len[id] == n && memcmp(m->tok->token_arena + m->tok->token_off[id], p, n) == 0)
            return &m->slots[i];
    }
}

static int32_t bytes_map_get(bytes_map_t *m, const char *p, size_t n) { return *bytes_map_slot(m, p, n); }

/* ---- loading ---- */

static char *read_whole_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) fatal(EXIT_USAGE, "cannot open tokenizer file %s (run scripts/get_tokenizer.sh)", path);
    if (fseek(f, 0, SEEK_END) != 0) fatal(EXIT_USAGE, "cannot read %s", path);
    long size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) fatal(EXIT_USAGE, "cannot read %s", path);
    char *buf = xmalloc((size_t)size + 1, path);
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) fatal(EXIT_USAGE, "cannot read %s", path);
    fclose(f);
    buf[size] = 0;
    *len = (size_t)size;
    return buf;
}

static void load_encoder_json(tokenizer_t *t, const char *path, const int byte_of_cp[ALPHABET_MAX_CP],
                              bytes_map_t *map) {
    size_t len;
    char *text = read_whole_file(path, &len);
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) fatal(EXIT_USAGE, "%s: not a JSON object", path);
    int n = cJSON_GetArraySize(root);
    if (n < 257) fatal(EXIT_USAGE, "%s: only %d tokens; a byte-level BPE vocabulary has at least 257", path, n);
    t->n_vocab = n;
    t->token_off = xcalloc((size_t)n, sizeof(size_t), "token offsets");
    t->token_len = xcalloc((size_t)n, sizeof(uint32_t), "token lengths");
    char *seen = xcalloc((size_t)n, 1, "token ids seen");
    /* Every character of a key becomes one byte, so the keys' UTF-8 length bounds the arena. */
    size_t arena_cap = 0;
    for (cJSON *e = root->child; e; e = e->next) arena_cap += strlen(e->string);
    t->token_arena = xmalloc(arena_cap, "token bytes");
    size_t used = 0;
    for (cJSON *e = root->child; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble != (double)(int)e->valuedouble || e->valueint < 0 ||
            e->valueint >= n)
            fatal(EXIT_USAGE, "%s: token \"%s\" has id that is not an integer in [0, %d)", path, e->string, n);
        int id = e->valueint;
        if (seen[id]) fatal(EXIT_USAGE, "%s: id %d is used by two tokens", path, id);
        seen[id] = 1;
        long nb = alphabet_to_bytes(e->string, strlen(e->string), byte_of_cp, t->token_arena + used);
        if (nb <= 0) fatal(EXIT_USAGE, "%s: token \"%s\" is empty or not in GPT-2's byte alphabet", path, e->string);
        t->token_off[id] = used;
        t->token_len[id] = (uint32_t)nb;
        used += (size_t)nb;
    }
    cJSON_Delete(root);
    free(text);
    free(seen);

    map->tok = t;
    map->mask = 1;
    while (map->mask < 2 * (uint64_t)n) map->mask <<= 1;
    map->slots = xmalloc((map->mask) * sizeof(int32_t), "token map");
    memset(map->slots, 0xff, map->mask * sizeof(int32_t));
    map->mask -= 1;
    for (int id = 0; id < n; id++) {
        int32_t *slot = bytes_map_slot(map, t->token_arena + t->token_off[id], t->token_len[id]);
        if (*slot >= 0) fatal(EXIT_USAGE, "%s: tokens %d and %d are the same bytes", path, *slot, id);
        *slot = id;
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_token[b] = bytes_map_get(map, &c, 1);
        if (t->byte_token[b] < 0) fatal(EXIT_USAGE, "%s: no token for the single byte 0x%02x", path, b);
    }
    t->eot = bytes_map_get(map, "<|endoftext|>", 13);
    if (t->eot < 0) fatal(EXIT_USAGE, "%s: no <|endoftext|> token", path);
}

static void insert_merge(tokenizer_t *t, int32_t left, int32_t right, int32_t rank, int32_t merged) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    for (uint64_t i = tok_hash64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        merge_slot_t *s = &t->merges[i];
        /* A repeated pair keeps its last rank, as GPT-2's dict(zip(merges, range(...))) does. */
        if (s->key == key || s->key == MERGE_EMPTY) {
            s->key = key;
            s->rank = rank;
            s->merged = merged;
            return;
        }
    }
}

/* GPT-2 reads vocab.bpe as bpe_data.split("\n")[1:-1]: the first line (the version comment) and
 * whatever follows the last newline are not merges. We read it the same way. */
static void load_vocab_bpe(tokenizer_t *t, const char *path, const int byte_of_cp[ALPHABET_MAX_CP],
                           bytes_map_t *map) {
    size_t len;
    char *text = read_whole_file(path, &len);
    char *line = memchr(text, '\n', len);
    if (!line) fatal(EXIT_USAGE, "%s: no merges (expected a version line, then one merge per line)", path);
    line++;
    int n_lines = 0;
    for (char *p = line; p < text + len; p++) n_lines += *p == '\n';
    t->merge_mask = 1;
    while (t->merge_mask < 4 * (uint64_t)(n_lines + 1)) t->merge_mask <<= 1;
    t->merges = xmalloc(t->merge_mask * sizeof(merge_slot_t), "merge table");
    for (uint64_t i = 0; i < t->merge_mask; i++) t->merges[i].key = MERGE_EMPTY;
    t->merge_mask -= 1;

    char *scratch = xmalloc(2 * len + 2, "merge scratch");
    int rank = 0;
    for (int line_no = 2;; line_no++) {
        char *end = memchr(line, '\n', (size_t)(text + len - line));
        if (!end) break;
        /* Split on whitespace into exactly two parts. */
        char *parts[3] = {0};
        size_t part_len[3] = {0};
        int n_parts = 0;
        for (char *p = line; p < end;) {
            while (p < end && (*p == ' ' || *p == '\t' || *p == '\r')) p++;
            if (p == end) break;
            char *s = p;
            while (p < end && !(*p == ' ' || *p == '\t' || *p == '\r')) p++;
            if (n_parts < 3) {
                parts[n_parts] = s;
                part_len[n_parts] = (size_t)(p - s);
            }
            n_parts++;
        }
        if (n_parts != 2) fatal(EXIT_USAGE, "%s:%d: expected two tokens separated by a space", path, line_no);
        long la = alphabet_to_bytes(parts[0], part_len[0], byte_of_cp, scratch);
        long lb = la < 0 ? -1 : alphabet_to_bytes(parts[1], part_len[1], byte_of_cp, scratch + la);
        if (la <= 0 || lb <= 0) fatal(EXIT_USAGE, "%s:%d: token not in GPT-2's byte alphabet", path, line_no);
        int32_t left = bytes_map_get(map, scratch, (size_t)la);
        int32_t right = bytes_map_get(map, scratch + la, (size_t)lb);
        int32_t merged = bytes_map_get(map, scratch, (size_t)(la + lb));
        if (left < 0 || right < 0 || merged < 0)
            fatal(EXIT_USAGE, "%s:%d: merge \"%.*s %.*s\" uses a token missing from encoder.json", path, line_no,
                  (int)part_len[0], parts[0], (int)part_len[1], parts[1]);
        insert_merge(t, left, right, rank++, merged);
        line = end + 1;
    }
    t->n_merges = rank;
    free(scratch);
    free(text);
}

tokenizer_t *tokenizer_load(const char *encoder_json, const char *vocab_bpe) {
    tokenizer_t *t = xcalloc(1, sizeof(*t), "tokenizer");
    int byte_of_cp[ALPHABET_MAX_CP];
    build_byte_alphabet(byte_of_cp);
    bytes_map_t map;
    load_encoder_json(t, encoder_json, byte_of_cp, &map);
    load_vocab_bpe(t, vocab_bpe, byte_of_cp, &map);
    free(map.slots);
    t->split_pattern = tok_compile_split_pattern();
    return t;
}

void tokenizer_free(tokenizer_t *t) {
    if (!t) return;
    pcre2_code_free(t->split_pattern);
    free(t->token_arena);
    free(t->token_off);
    free(t->token_len);
    free(t->merges);
    free(t);
}

int tokenizer_vocab_size(const tokenizer_t *t) { return t->n_vocab; }
int32_t tokenizer_eot(const tokenizer_t *t) { return t->eot; }

const char *tokenizer_token_bytes(const tokenizer_t *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) fatal(EXIT_USAGE, "token id %d is outside the vocabulary [0, %d)", id, t->n_vocab);
    *len = t->token_len[id];
    return t->token_arena + t->token_off[id];
}

char *tokenizer_decode(const tokenizer_t *t, const int32_t *ids, size_t n, size_t *out_len) {
    size_t total = 0, len;
    for (size_t i = 0; i < n; i++) {
        tokenizer_token_bytes(t, ids[i], &len);
        total += len;
    }
    char *out = xmalloc(total + 1, "decoded text");
    char *p = out;
    for (size_t i = 0; i < n; i++) {
        const char *s = tokenizer_token_bytes(t, ids[i], &len);
        memcpy(p, s, len);
        p += len;
    }
    *p = 0;
    *out_len = total;
    return out;
}

void tok_ids_push(tok_ids_t *v, int32_t id) {
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 1024;
        v->ids = realloc(v->ids, v->cap * sizeof(int32_t));
        if (!v->ids) fatal(EXIT_RUNTIME, "out of memory growing a token array to %zu ids", v->cap);
    }
    v->ids[v->n++] = id;
}

void tok_ids_free(tok_ids_t *v) {
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}
