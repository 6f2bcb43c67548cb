/* GPT-2 byte-level BPE tokenizer, loaded from OpenAI's encoder.json and vocab.bpe.
 *
 * Encoding is meant to give exactly the ids of GPT-2's own encoder (and of the JavaScript
 * encoder of the npm package gpt-3-encoder, which tests/test_tokenizer_exact.sh compares
 * against): text is cut into pieces by GPT-2's split pattern, each piece is BPE-merged in rank
 * order. Any byte string can be encoded: bytes that are not valid UTF-8 form pieces of their
 * own, so decode(encode(x)) == x for every x. Special tokens are never produced from text: the
 * string "<|endoftext|>" in a text encodes as ordinary pieces; the caller inserts the id
 * tokenizer_eot() where documents meet.
 *
 * Threads: a tokenizer_t is read-only after loading and can be shared. Encoding state (merge
 * cache, regex match data, scratch) lives in a tok_encoder_t, one per thread; tok_pool_t holds
 * one per thread and splits large inputs between them. */
#ifndef DATA_TOKENIZER_H
#define DATA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer_t;

/* Loads the two GPT-2 files; any problem (missing, malformed, inconsistent) is
 * fatal(EXIT_USAGE) naming the file (and line for vocab.bpe). */
tokenizer_t *tokenizer_load(const char *encoder_json, const char *vocab_bpe);
void tokenizer_free(tokenizer_t *);

int tokenizer_vocab_size(const tokenizer_t *); /* number of ids: 50257 for GPT-2 */
int32_t tokenizer_eot(const tokenizer_t *);    /* id of <|endoftext|>: 50256 for GPT-2 */

/* The bytes of one token (not NUL-terminated); fatal for an id outside the vocabulary. */
const char *tokenizer_token_bytes(const tokenizer_t *, int32_t id, size_t *len);

/* Decodes n ids to bytes; returns a malloc'd buffer (NUL-terminated for convenience, the NUL
 * not counted in *out_len). An id outside the vocabulary is fatal(EXIT_USAGE). */
char *tokenizer_decode(const tokenizer_t *, const int32_t *ids, size_t n, size_t *out_len);

/* A growable array of token ids. */
typedef struct {
    int32_t *ids;
    size_t n, cap;
} tok_ids_t;
void tok_ids_push(tok_ids_t *, int32_t id);
void tok_ids_free(tok_ids_t *);

/* One thread's encoding state. Not thread-safe: use one per thread. */
typedef struct tok_encoder tok_encoder_t;
tok_encoder_t *tok_encoder_new(const tokenizer_t *);
void tok_encoder_free(tok_encoder_t *);
/* Appends the ids of `len` bytes of text to `out`. */
void tok_encode(tok_encoder_t *, const char *text, size_t len, tok_ids_t *out);

/* Convenience: single-threaded encoding with a temporary encoder; returns malloc'd ids. */
int32_t *tokenizer_encode(const tokenizer_t *, const char *text, size_t len, size_t *n_ids);

/* A set of encoders that encodes large inputs with several threads. The input is cut only at
 * points where GPT-2's split pattern cuts anyway (see pretok_find_cut), so the ids are exactly
 * those of single-threaded encoding. n_threads <= 0 means one per available core. */
typedef struct tok_pool tok_pool_t;
tok_pool_t *tok_pool_new(const tokenizer_t *, int n_threads);
void tok_pool_free(tok_pool_t *);
int tok_pool_threads(const tok_pool_t *);
/* Appends the ids of text to out. */
void tok_pool_encode(tok_pool_t *, const char *text, size_t len, tok_ids_t *out);
/* Encodes n independent texts (documents), each by one of the threads, appending the ids of
 * texts[i] to outs[i]. */
void tok_pool_encode_many(tok_pool_t *, const char *const *texts, const size_t *lens, size_t n, tok_ids_t *outs);

/* Smallest p in [from, len) such that GPT-2's split pattern puts a piece boundary at p no
 * matter what text surrounds text[p-1..p+1] (an ASCII space or newline between two printable
 * ASCII characters), or len if there is none. Encoding text[0:p] and text[p:] separately gives
 * the same ids as encoding text whole. Used to split work between threads, and by the
 * exactness test to feed the (quadratic) reference encoder in pieces. */
size_t pretok_find_cut(const char *text, size_t len, size_t from);

#endif
