/* Encoding: GPT-2's split pattern (PCRE2, JIT) cuts text into pieces, each piece is BPE-merged
 * (with a per-encoder cache, since most pieces are common words), and tok_pool_t spreads large
 * inputs over threads. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "data/tokenizer_internal.h"
#include "runtime/error.h"

/* ---- pre-tokenisation ---- */

/* GPT-2's pattern, as written in the reference encoders:
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * \s is spelled out as JavaScript defines it (the reference encoder is JavaScript): tab, LF,
 * VT, FF, CR, U+FEFF, the Zs space separators, U+2028 and U+2029. PCRE2's own \s differs from
 * that (it has no U+FEFF). The Unicode classes \p{L}, \p{N}, \p{Zs} come from PCRE2's tables.
 * PCRE2_MATCH_INVALID_UTF lets the pattern run over any bytes: a byte sequence that is not
 * UTF-8 matches nothing, so it lies between two matches and we make it a piece of its own. */
#define WS "\\t\\n\\x{0B}\\f\\r\\x{FEFF}\\p{Zs}\\x{2028}\\x{2029}"
static const char split_pattern_src[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";

static int split_pattern_jit; /* whether JIT compilation succeeded (then pcre2_jit_match is used) */

pcre2_code *tok_compile_split_pattern(void) {
    int err;
    PCRE2_SIZE err_off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)split_pattern_src, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &err, &err_off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof(msg));
        fatal(EXIT_RUNTIME, "PCRE2 rejects GPT-2's split pattern at offset %zu: %s", (size_t)err_off, (char *)msg);
    }
    int rc = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    split_pattern_jit = rc == 0;
    if (rc != 0)
        fprintf(stderr, "warning: PCRE2 JIT is not available (code %d); the tokenizer uses the slower interpreter\n", rc);
    return re;
}

static inline int is_ascii_graph(unsigned char c) { return c > ' ' && c < 0x7F; }

size_t pretok_find_cut(const char *text, size_t len, size_t from) {
    const unsigned char *u = (const unsigned char *)text;
    /* Why this is a cut of the pattern: the piece holding text[p-1] (a letter, digit, symbol or
     * contraction run) cannot extend over the whitespace text[p], and no piece looks back, so a
     * piece starts at p whatever came before; and no piece before p looks further ahead than
     * text[p] (only the whitespace rule looks ahead, one character), which is the same either way. */
    for (size_t p = from > 1 ? from : 1; p + 1 < len; p++)
        if ((u[p] == ' ' || u[p] == '\n') && is_ascii_graph(u[p - 1]) && is_ascii_graph(u[p + 1])) return p;
    return len;
}

/* ---- the per-encoder merge cache: piece bytes -> ids ---- */

typedef struct {
    uint64_t hash;
    uint32_t key_off, key_len; /* key_len == 0: empty slot (pieces are never empty) */
    uint32_t ids_off, n_ids;
} cache_slot_t;

#define CACHE_SLOTS (1u << 18)
#define CACHE_MAX_ENTRIES (CACHE_SLOTS / 2)
#define CACHE_MAX_PIECE 64 /* longer pieces are rare and not worth the memory */
#define CACHE_ARENA (1u << 21) /* bytes of keys, and ids, held at most */

/* A slot of the hot table: the piece's bytes zero-padded to 16, and its ids. */
#define HOT_SLOTS 8192 /* 256 KiB */
#define HOT_MAX_LEN 16
#define HOT_MAX_IDS 3
typedef struct {
    uint64_t key[2];
    uint8_t len, n_ids; /* len 0: empty */
    int32_t ids[HOT_MAX_IDS];
} hot_slot_t;

struct tok_encoder {
    const tokenizer_t *tok;
    hot_slot_t *hot;
    pcre2_match_data *match;
    cache_slot_t *slots;
    uint32_t n_entries;
    char *keys;          /* key bytes, CACHE_ARENA at most */
    uint32_t keys_used;
    int32_t *cached_ids; /* a piece has at most as many ids as bytes, so the same bound */
    uint32_t ids_used;
    /* BPE scratch, grown to the longest piece seen */
    size_t scratch_cap;
    int32_t *part_token, *part_next, *part_prev, *pending;
    uint64_t *heap;
};

static uint64_t hash_piece(const unsigned char *p, size_t n) {
    uint64_t h = n * 0x9e3779b97f4a7c15ULL, w;
    for (; n >= 8; n -= 8, p += 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    w = 0;
    memcpy(&w, p, n);
    return tok_hash64(h ^ w);
}

static void cache_clear(tok_encoder_t *e) {
    memset(e->slots, 0, CACHE_SLOTS * sizeof(cache_slot_t));
    e->n_entries = e->keys_used = e->ids_used = 0;
}

/* ---- BPE of one piece ---- */

static void heap_push(uint64_t *heap, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0 && heap[(i - 1) / 2] > v) {
        heap[i] = heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    heap[i] = v;
}

static uint64_t heap_pop(uint64_t *heap, size_t *n) {
    uint64_t top = heap[0], last = heap[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap[c + 1] < heap[c]) c++;
        if (heap[c] >= last) break;
        heap[i] = heap[c];
        i = c;
    }
    if (*n) heap[i] = last;
    return top;
}

static void ensure_scratch(tok_encoder_t *e, size_t n) {
    if (n <= e->scratch_cap) return;
    size_t cap = n > 2 * e->scratch_cap ? n : 2 * e->scratch_cap;
    free(e->part_token);
    free(e->part_next);
    free(e->part_prev);
    free(e->pending);
    free(e->heap);
    e->part_token = xmalloc(cap * sizeof(int32_t), "BPE parts");
    e->part_next = xmalloc(cap * sizeof(int32_t), "BPE parts");
    e->part_prev = xmalloc(cap * sizeof(int32_t), "BPE parts");
    e->pending = xmalloc(2 * cap * sizeof(int32_t), "BPE parts");
    e->heap = xmalloc(3 * cap * sizeof(uint64_t), "BPE heap");
    e->scratch_cap = cap;
}

static void push_pair_if_merges(const tokenizer_t *t, tok_encoder_t *e, size_t *heap_n, int32_t pos, int32_t n) {
    int32_t nx = e->part_next[pos];
    if (nx >= n) return;
    const merge_slot_t *m = tok_find_merge(t, e->part_token[pos], e->part_token[nx]);
    if (m) heap_push(e->heap, heap_n, ((uint64_t)(uint32_t)m->rank << 32) | (uint32_t)pos);
}

/* GPT-2's bpe(): repeatedly take the pair of lowest rank and merge all its occurrences, left to
 * right without overlap, until no pair merges. Here in O(n log n): the heap holds candidate pairs
 * keyed by (rank, position). All entries of the lowest rank are merged as one round in position
 * order, and the pairs that a round creates enter the heap only after it, which is exactly
 * GPT-2's one pass per rank. Stale entries are recognised by re-looking up the pair. Returns the
 * number of ids written to out (at most n). */
static size_t bpe_piece(tok_encoder_t *e, const unsigned char *bytes, int32_t n, int32_t *out) {
    const tokenizer_t *t = e->tok;
    if (n == 1) {
        out[0] = t->byte_token[bytes[0]];
        return 1;
    }
    ensure_scratch(e, (size_t)n);
    int32_t *tok = e->part_token, *next = e->part_next, *prev = e->part_prev;
    size_t heap_n = 0;
    for (int32_t i = 0; i < n; i++) {
        tok[i] = t->byte_token[bytes[i]];
        next[i] = i + 1;
        prev[i] = i - 1;
    }
    for (int32_t i = 0; i + 1 < n; i++) push_pair_if_merges(t, e, &heap_n, i, n);
    while (heap_n) {
        uint32_t rank = (uint32_t)(e->heap[0] >> 32);
        size_t n_pending = 0;
        while (heap_n && (uint32_t)(e->heap[0] >> 32) == rank) {
            int32_t pos = (int32_t)(heap_pop(e->heap, &heap_n) & 0xffffffffu);
            if (tok[pos] < 0 || next[pos] >= n) continue;
            int32_t nx = next[pos];
            const merge_slot_t *m = tok_find_merge(t, tok[pos], tok[nx]);
            if (!m || (uint32_t)m->rank != rank) continue;
            tok[pos] = m->merged;
            tok[nx] = -1;
            next[pos] = next[nx];
            if (next[nx] < n) prev[next[nx]] = pos;
            e->pending[n_pending++] = pos;
            if (prev[pos] >= 0) e->pending[n_pending++] = prev[pos];
        }
        for (size_t i = 0; i < n_pending; i++)
            if (tok[e->pending[i]] >= 0) push_pair_if_merges(t, e, &heap_n, e->pending[i], n);
    }
    size_t n_out = 0;
    for (int32_t i = 0; i < n; i = next[i]) out[n_out++] = tok[i];
    return n_out;
}

static void ids_reserve(tok_ids_t *v, size_t extra) {
    if (v->cap - v->n >= extra) return;
    size_t cap = v->cap ? 2 * v->cap : 1024;
    while (cap - v->n < extra) cap *= 2;
    v->ids = realloc(v->ids, cap * sizeof(int32_t));
    if (!v->ids) fatal(EXIT_RUNTIME, "out of memory growing a token array to %zu ids", cap);
    v->cap = cap;
}

static void ids_append(tok_ids_t *v, const int32_t *ids, size_t n) {
    if (n == 0) return;
    ids_reserve(v, n);
    memcpy(v->ids + v->n, ids, n * sizeof(int32_t));
    v->n += n;
}

/* The ids of one piece of at most CACHE_MAX_PIECE bytes, from the cache or computed into it. */
static const int32_t *cached_bpe(tok_encoder_t *e, const unsigned char *p, size_t n, size_t *n_ids) {
    uint64_t h = hash_piece(p, n);
    uint32_t i = (uint32_t)h & (CACHE_SLOTS - 1);
    for (;; i = (i + 1) & (CACHE_SLOTS - 1)) {
        cache_slot_t *s = &e->slots[i];
        if (s->key_len == 0) break;
        if (s->hash == h && s->key_len == n && memcmp(e->keys + s->key_off, p, n) == 0) {
            *n_ids = s->n_ids;
            return e->cached_ids + s->ids_off;
        }
    }
    if (e->n_entries == CACHE_MAX_ENTRIES || e->keys_used + n > CACHE_ARENA) {
        /* full: start over rather than evict one by one */
        cache_clear(e);
        i = (uint32_t)h & (CACHE_SLOTS - 1);
    }
    cache_slot_t *s = &e->slots[i];
    *n_ids = bpe_piece(e, p, (int32_t)n, e->cached_ids + e->ids_used);
    memcpy(e->keys + e->keys_used, p, n);
    *s = (cache_slot_t){h, e->keys_used, (uint32_t)n, e->ids_used, (uint32_t)*n_ids};
    e->keys_used += (uint32_t)n;
    e->ids_used += (uint32_t)*n_ids;
    e->n_entries++;
    return e->cached_ids + s->ids_off;
}

/* Encodes one piece. Short pieces with few ids (the common words and punctuation that make
 * up most text) are first looked up in the small direct-mapped hot table, which stays in the
 * CPU cache; the main cache (megabytes, a memory access per lookup) backs it. */
static void encode_piece(tok_encoder_t *e, const unsigned char *p, size_t n, tok_ids_t *out) {
    if (n > CACHE_MAX_PIECE) {
        ids_reserve(out, n);
        out->n += bpe_piece(e, p, (int32_t)n, out->ids + out->n);
        return;
    }
    hot_slot_t *hot = NULL;
    uint64_t key[2] = {0, 0};
    if (n <= HOT_MAX_LEN) {
        memcpy(key, p, n);
        hot = &e->hot[tok_hash64(key[0] ^ (key[1] * 0x9e3779b97f4a7c15ULL) ^ n) & (HOT_SLOTS - 1)];
        if (hot->len == n && hot->key[0] == key[0] && hot->key[1] == key[1]) {
            ids_append(out, hot->ids, hot->n_ids);
            return;
        }
    }
    size_t n_ids;
    const int32_t *ids = cached_bpe(e, p, n, &n_ids);
    if (hot && n_ids <= HOT_MAX_IDS) {
        hot->key[0] = key[0];
        hot->key[1] = key[1];
        hot->len = (uint8_t)n;
        hot->n_ids = (uint8_t)n_ids;
        memcpy(hot->ids, ids, n_ids * sizeof(int32_t));
    }
    ids_append(out, ids, n_ids);
}

/* ---- public encoding API ---- */

tok_encoder_t *tok_encoder_new(const tokenizer_t *t) {
    tok_encoder_t *e = xcalloc(1, sizeof(*e), "token encoder");
    e->tok = t;
    e->match = pcre2_match_data_create(1, NULL);
    if (!e->match) fatal(EXIT_RUNTIME, "out of memory creating PCRE2 match data");
    e->slots = xcalloc(CACHE_SLOTS, sizeof(cache_slot_t), "merge cache");
    e->hot = xcalloc(HOT_SLOTS, sizeof(hot_slot_t), "hot merge cache");
    e->keys = xmalloc(CACHE_ARENA, "merge cache keys");
    e->cached_ids = xmalloc((size_t)CACHE_ARENA * sizeof(int32_t), "merge cache ids");
    return e;
}

void tok_encoder_free(tok_encoder_t *e) {
    if (!e) return;
    pcre2_match_data_free(e->match);
    free(e->slots);
    free(e->hot);
    free(e->keys);
    free(e->cached_ids);
    free(e->part_token);
    free(e->part_next);
    free(e->part_prev);
    free(e->pending);
    free(e->heap);
    free(e);
}

void tok_encode(tok_encoder_t *e, const char *text, size_t len, tok_ids_t *out) {
    const pcre2_code *re = e->tok->split_pattern;
    const unsigned char *u = (const unsigned char *)text;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->match);
    size_t pos = 0;
    while (pos < len) {
        int rc = split_pattern_jit ? pcre2_jit_match(re, u, len, pos, 0, e->match, NULL)
                                   : pcre2_match(re, u, len, pos, 0, e->match, NULL);
        size_t start = len, end = len;
        if (rc > 0) {
            start = ov[0];
            end = ov[1];
        } else if (rc != PCRE2_ERROR_NOMATCH) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            fatal(EXIT_RUNTIME, "PCRE2 failed while splitting text at byte %zu: %s", pos, (char *)msg);
        }
        if (start > pos) encode_piece(e, u + pos, start - pos, out); /* bytes that are not UTF-8 */
        if (end > start) encode_piece(e, u + start, end - start, out);
        pos = end;
    }
}

int32_t *tokenizer_encode(const tokenizer_t *t, const char *text, size_t len, size_t *n_ids) {
    tok_encoder_t *e = tok_encoder_new(t);
    tok_ids_t ids = {0};
    tok_encode(e, text, len, &ids);
    tok_encoder_free(e);
    *n_ids = ids.n;
    if (!ids.ids) ids.ids = xmalloc(sizeof(int32_t), "token ids");
    return ids.ids;
}

struct tok_pool {
    int n_threads;
    tok_encoder_t **encoders;
};

tok_pool_t *tok_pool_new(const tokenizer_t *t, int n_threads) {
    tok_pool_t *p = xcalloc(1, sizeof(*p), "tokenizer pool");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    p->n_threads = n_threads > 0 ? n_threads : (cores > 0 ? (int)cores : 1);
    p->encoders = xcalloc((size_t)p->n_threads, sizeof(tok_encoder_t *), "tokenizer pool");
    for (int i = 0; i < p->n_threads; i++) p->encoders[i] = tok_encoder_new(t);
    return p;
}

void tok_pool_free(tok_pool_t *p) {
    if (!p) return;
    for (int i = 0; i < p->n_threads; i++) tok_encoder_free(p->encoders[i]);
    free(p->encoders);
    free(p);
}

int tok_pool_threads(const tok_pool_t *p) { return p->n_threads; }


/* ---- running work items on the pool's threads ----
 * Plain pthreads and an atomic item counter: a thread that runs out of items exits instead of
 * spinning (OpenMP's idle threads spin, which on a loaded machine took the CPU time the
 * working thread needed and made two threads slower than one). */

typedef struct {
    tok_pool_t *pool;
    size_t n_items;
    atomic_size_t next_item;
    const char *const *texts;
    const size_t *lens;
    tok_ids_t *outs;
} pool_job_t;

typedef struct {
    pool_job_t *job;
    int worker;
} pool_worker_t;

static void *pool_worker_main(void *arg) {
    pool_worker_t *w = arg;
    pool_job_t *job = w->job;
    tok_encoder_t *enc = job->pool->encoders[w->worker];
    for (;;) {
        size_t i = atomic_fetch_add(&job->next_item, 1);
        if (i >= job->n_items) break;
        tok_encode(enc, job->texts[i], job->lens[i], &job->outs[i]);
    }
    return NULL;
}

/* Encodes n independent texts, each by one thread, into outs[i] (appending). */
void tok_pool_encode_many(tok_pool_t *p, const char *const *texts, const size_t *lens, size_t n, tok_ids_t *outs) {
    pool_job_t job = {.pool = p, .n_items = n, .texts = texts, .lens = lens, .outs = outs};
    atomic_init(&job.next_item, 0);
    int n_workers = p->n_threads < (int)n ? p->n_threads : (int)n;
    if (n_workers < 1) return;
    pool_worker_t workers[n_workers];
    pthread_t threads[n_workers];
    for (int i = 0; i < n_workers; i++) workers[i] = (pool_worker_t){&job, i};
    for (int i = 1; i < n_workers; i++)
        if (pthread_create(&threads[i], NULL, pool_worker_main, &workers[i]) != 0)
            fatal(EXIT_RUNTIME, "cannot start tokenizer thread %d", i);
    pool_worker_main(&workers[0]); /* the calling thread works too */
    for (int i = 1; i < n_workers; i++) pthread_join(threads[i], NULL);
}

#define POOL_MIN_CHUNK (64u << 10)
#define POOL_MAX_CHUNK (1u << 20)

void tok_pool_encode(tok_pool_t *p, const char *text, size_t len, tok_ids_t *out) {
    if (p->n_threads == 1 || len < 2 * POOL_MIN_CHUNK) {
        tok_encode(p->encoders[0], text, len, out);
        return;
    }
    /* Several chunks per thread so that uneven chunks still balance. */
    size_t target = len / ((size_t)p->n_threads * 4);
    if (target < POOL_MIN_CHUNK) target = POOL_MIN_CHUNK;
    if (target > POOL_MAX_CHUNK) target = POOL_MAX_CHUNK;
    size_t n_chunks = 0, cap = len / target + 2;
    const char **starts = xmalloc(cap * sizeof(char *), "chunk starts");
    size_t *lens = xmalloc(cap * sizeof(size_t), "chunk lengths");
    for (size_t pos = 0; pos < len;) {
        size_t next = pos + target >= len ? len : pretok_find_cut(text, len, pos + target);
        if (n_chunks == cap) {
            cap *= 2;
            starts = realloc(starts, cap * sizeof(char *));
            lens = realloc(lens, cap * sizeof(size_t));
            if (!starts || !lens) fatal(EXIT_RUNTIME, "out of memory splitting text into chunks");
        }
        starts[n_chunks] = text + pos;
        lens[n_chunks++] = next - pos;
        pos = next;
    }
    tok_ids_t *parts = xcalloc(n_chunks, sizeof(tok_ids_t), "chunk ids");
    tok_pool_encode_many(p, starts, lens, n_chunks, parts);
    for (size_t c = 0; c < n_chunks; c++) {
        ids_append(out, parts[c].ids, parts[c].n);
        tok_ids_free(&parts[c]);
    }
    free(parts);
    free(starts);
    free(lens);
}
