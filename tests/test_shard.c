/* Shard tests: exact write/read round trip with llm.c's header, atomic write leaves no temporary
 * file, the shard writer's sizes (all full except a last one of half to one and a half shards)
 * and exact concatenation, plain text from HTML. Bad shards are in test_loader.c; the prepare
 * tool is tests/test_shard_prepare.sh. */
#include <glob.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/html_text.h"
#include "data/shard.h"
#include "runtime/error.h"
#include "runtime/rng.h"
#include "tests/test.h"

static char dir[] = "/tmp/test_shard_XXXXXX";

static void test_write_read(void) {
    const size_t counts[3] = {1, 777, 100003};
    for (int c = 0; c < 3; c++) {
        size_t n = counts[c];
        uint16_t *tokens = xmalloc(n * sizeof(uint16_t), "tokens");
        uint64_t key = rng_key(3, 100, (uint64_t)c, 0, 0);
        for (size_t i = 0; i < n; i++) tokens[i] = (uint16_t)(rng_u64(key, i) % 50257);
        char path[600];
        snprintf(path, sizeof path, "%s/rw_%d.bin", dir, c);
        shard_write(path, tokens, n);
        FILE *f = fopen(path, "rb");
        int32_t header[SHARD_HEADER_INTS];
        size_t got = fread(header, sizeof(int32_t), SHARD_HEADER_INTS, f);
        fclose(f);
        int rest_zero = 1;
        for (int i = 3; i < SHARD_HEADER_INTS; i++) rest_zero &= header[i] == 0;
        CHECK(got == SHARD_HEADER_INTS && header[0] == 20240520 && header[1] == 1 && header[2] == (int32_t)n && rest_zero,
              "header of a %zu-token shard", n);
        shard_t s;
        shard_open(&s, path, 50257);
        CHECK(s.n_tokens == n && memcmp(s.tokens, tokens, n * sizeof(uint16_t)) == 0, "tokens of a %zu-token shard", n);
        shard_close(&s);
        unlink(path);
        free(tokens);
    }
    glob_t g;
    char pattern[600];
    snprintf(pattern, sizeof pattern, "%s/*.tmp.*", dir);
    CHECK(glob(pattern, 0, NULL, &g) == GLOB_NOMATCH, "temporary files left behind");
}

static void test_writer(void) {
    const size_t shard_tokens = 1000;
    const size_t totals[3] = {300, 2499, 7777}; /* shorter than a shard; 2.499 shards; many */
    for (int c = 0; c < 3; c++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "w%d", c);
        shard_writer_t w;
        shard_writer_init(&w, dir, prefix, "train", shard_tokens);
        int32_t *ids = xmalloc(totals[c] * sizeof(int32_t), "ids");
        uint64_t key = rng_key(4, 100, (uint64_t)c, 0, 0);
        for (size_t i = 0; i < totals[c]; i++) ids[i] = (int32_t)(rng_u64(key, i) % 50257);
        for (size_t pos = 0; pos < totals[c];) { /* pieces of awkward sizes, like documents */
            size_t n = 1 + rng_u64(key, 1000000 + pos) % 333;
            if (n > totals[c] - pos) n = totals[c] - pos;
            shard_writer_add(&w, ids + pos, n);
            pos += n;
        }
        shard_writer_finish(&w);
        size_t pos = 0;
        int sizes_ok = 1, content_ok = 1;
        for (int s = 0; s < w.n_shards; s++) {
            char path[700];
            snprintf(path, sizeof path, "%s/%s_train_%06d.bin", dir, prefix, s);
            shard_t sh;
            shard_open(&sh, path, 50257);
            int last = s == w.n_shards - 1;
            if (!last) sizes_ok &= sh.n_tokens == shard_tokens;
            else if (w.n_shards > 1) sizes_ok &= sh.n_tokens >= shard_tokens / 2 && sh.n_tokens < shard_tokens * 3 / 2;
            for (size_t i = 0; i < sh.n_tokens; i++) content_ok &= pos + i < totals[c] && sh.tokens[i] == ids[pos + i];
            pos += sh.n_tokens;
            shard_close(&sh);
            unlink(path);
        }
        size_t expect_shards = totals[c] < shard_tokens * 3 / 2 ? 1 : (totals[c] - shard_tokens / 2) / shard_tokens + 1;
        CHECK(sizes_ok && w.n_shards == (int)expect_shards, "%zu tokens: %d shards of wrong sizes", totals[c], w.n_shards);
        CHECK(content_ok && pos == totals[c], "%zu tokens: shards do not concatenate to the input", totals[c]);
        free(ids);
    }
}

static void test_html_text(void) {
    const char *html =
        "<!DOCTYPE html><html><head><title>T</title><style>p{x:1}</style></head><body>"
        "<nav><ul><li>Home</li><li><nav>x</nav>Next</li></ul></nav>"
        "<h1>Title &amp; more</h1><p>One   two\nthree&nbsp;&lt;four&gt; &#8212; &#x41;&eacute;&shy;.</p>"
        "<script>if (a<b) document.write('<p>no</p>');</script><!-- hidden <p> -->"
        "<ul><li>first</li><li>second <b>bold</b></li></ul><pre>  keep\n    this</pre>"
        "<table><tr><td>a</td><td>b</td></tr></table>x < y</body></html>";
    size_t len;
    char *text = html_to_text(html, strlen(html), &len);
    const char *expect = "Title & more\n\nOne two three <four> \xe2\x80\x94 A\xc3\xa9.\n\n- first\n- second bold\n\n"
                         "  keep\n    this\n\na b\n\nx < y\n";
    CHECK(len == strlen(expect) && strcmp(text, expect) == 0, "html_to_text gave:\n%s", text);
    free(text);
}

int main(void) {
    if (!mkdtemp(dir)) fatal(EXIT_RUNTIME, "mkdtemp failed");
    test_write_read();
    test_writer();
    test_html_text();
    rmdir(dir);
    return test_summary();
}
