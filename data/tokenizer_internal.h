/* Shared between data/tokenizer.c (loading, decoding) and data/tok_encode.c (encoding). */
#ifndef DATA_TOKENIZER_INTERNAL_H
#define DATA_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "data/tokenizer.h"

/* Merge table: open addressing on the pair (left id, right id). */
typedef struct {
    uint64_t key;   /* (left << 32) | right, or MERGE_EMPTY */
    int32_t rank;   /* line number of the merge in vocab.bpe (0 = first merge) */
    int32_t merged; /* id of left + right */
} merge_slot_t;
#define MERGE_EMPTY UINT64_MAX

struct tokenizer {
    int n_vocab;
    int32_t eot;
    char *token_arena;  /* bytes of all tokens, back to back */
    size_t *token_off;  /* [n_vocab] offset of each token in token_arena */
    uint32_t *token_len; /* [n_vocab] */
    int32_t byte_token[256]; /* id of the token that is exactly this one byte */
    merge_slot_t *merges;
    uint64_t merge_mask; /* table size - 1 (a power of two) */
    int n_merges;
    pcre2_code *split_pattern; /* GPT-2's pre-tokenisation pattern, JIT-compiled */
};

static inline uint64_t tok_hash64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The merge of (left, right), or NULL if the pair never merges. */
static inline const merge_slot_t *tok_find_merge(const tokenizer_t *t, int32_t left, int32_t right) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    for (uint64_t i = tok_hash64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const merge_slot_t *s = &t->merges[i];
        if (s->key == key) return s;
        if (s->key == MERGE_EMPTY) return NULL;
    }
}

/* Compiles GPT-2's split pattern (data/tok_encode.c); fatal if PCRE2 rejects it. */
pcre2_code *tok_compile_split_pattern(void);

#endif
