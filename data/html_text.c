#include "data/html_text.h"

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runtime/error.h"

typedef struct {
    char *out;
    size_t n;
    int pending_space;    /* whitespace seen since the last character written */
    int pending_newlines; /* line breaks wanted before the next character (0..2) */
    int pre_depth;        /* inside <pre>: whitespace is kept */
} text_out_t;

static void put_char(text_out_t *t, char c) { t->out[t->n++] = c; }

/* Emits pending whitespace before a visible character. */
static void flush_pending(text_out_t *t) {
    if (t->n == 0) {
        t->pending_space = t->pending_newlines = 0;
        return;
    }
    if (t->pending_newlines) {
        while (t->n > 0 && t->out[t->n - 1] == ' ') t->n--; /* no trailing spaces */
        int have = 0; /* newlines already at the end */
        while (have < 2 && t->n > (size_t)have && t->out[t->n - 1 - have] == '\n') have++;
        for (int i = have; i < t->pending_newlines; i++) put_char(t, '\n');
    } else if (t->pending_space && t->out[t->n - 1] != '\n' && t->out[t->n - 1] != ' ') {
        put_char(t, ' ');
    }
    t->pending_space = t->pending_newlines = 0;
}

static void want_newlines(text_out_t *t, int n) {
    if (n > t->pending_newlines) t->pending_newlines = n;
}

static void put_visible(text_out_t *t, const char *s, size_t n) {
    flush_pending(t);
    memcpy(t->out + t->n, s, n);
    t->n += n;
}

static size_t utf8_encode(uint32_t cp, char *out) {
    if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static const struct { const char *name; uint32_t cp; } named_entities[] = {
    {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"apos", '\''}, {"nbsp", ' '}, {"ensp", ' '},
    {"emsp", ' '}, {"thinsp", ' '}, {"copy", 0xA9}, {"reg", 0xAE}, {"trade", 0x2122}, {"mdash", 0x2014},
    {"ndash", 0x2013}, {"hellip", 0x2026}, {"lsquo", 0x2018}, {"rsquo", 0x2019}, {"ldquo", 0x201C},
    {"rdquo", 0x201D}, {"laquo", 0xAB}, {"raquo", 0xBB}, {"bull", 0x2022}, {"middot", 0xB7}, {"times", 0xD7},
    {"divide", 0xF7}, {"para", 0xB6}, {"sect", 0xA7}, {"deg", 0xB0}, {"plusmn", 0xB1}, {"euro", 0x20AC},
    {"pound", 0xA3}, {"cent", 0xA2}, {"yen", 0xA5}, {"larr", 0x2190}, {"rarr", 0x2192}, {"uarr", 0x2191},
    {"darr", 0x2193}, {"harr", 0x2194}, {"rArr", 0x21D2}, {"lArr", 0x21D0}, {"hArr", 0x21D4}, {"le", 0x2264},
    {"ge", 0x2265}, {"ne", 0x2260}, {"minus", 0x2212}, {"prime", 0x2032}, {"dagger", 0x2020}, {"frac12", 0xBD},
    {"sup2", 0xB2}, {"eacute", 0xE9}, {"egrave", 0xE8}, {"aacute", 0xE1}, {"uuml", 0xFC}, {"ouml", 0xF6},
    {"auml", 0xE4}, {"szlig", 0xDF}, {"ccedil", 0xE7}, {"infin", 0x221E}, {"sum", 0x2211}, {"alpha", 0x3B1},
    {"beta", 0x3B2}, {"lambda", 0x3BB}, {"mu", 0x3BC}, {"pi", 0x3C0}, {"sigma", 0x3C3},
};

/* Decodes a character reference at s[0] == '&'; returns the bytes consumed (0: not one). */
static size_t decode_entity(const char *s, size_t n, char *out, size_t *out_n) {
    size_t i = 1;
    uint32_t cp = 0;
    if (i < n && s[i] == '#') {
        int hex = i + 1 < n && (s[i + 1] == 'x' || s[i + 1] == 'X');
        i += 1 + hex;
        size_t digits = 0;
        while (i < n && digits < 8 && (hex ? isxdigit((unsigned char)s[i]) : isdigit((unsigned char)s[i]))) {
            cp = cp * (hex ? 16 : 10) + (uint32_t)(isdigit((unsigned char)s[i]) ? s[i] - '0' : (tolower((unsigned char)s[i]) - 'a' + 10));
            i++;
            digits++;
        }
        if (digits == 0) return 0;
        if (i < n && s[i] == ';') i++;
        if (cp == 0xA0) cp = ' ';
        *out_n = utf8_encode(cp, out);
        return i;
    }
    size_t start = i;
    while (i < n && i - start < 10 && isalnum((unsigned char)s[i])) i++;
    if (i == start || i >= n || s[i] != ';') return 0;
    for (size_t k = 0; k < sizeof named_entities / sizeof named_entities[0]; k++)
        if (strlen(named_entities[k].name) == i - start && memcmp(named_entities[k].name, s + start, i - start) == 0) {
            *out_n = utf8_encode(named_entities[k].cp, out);
            return i + 1;
        }
    if (i - start == 3 && memcmp(s + start, "shy", 3) == 0) { /* soft hyphen: invisible */
        *out_n = 0;
        return i + 1;
    }
    return 0;
}

static int name_is(const char *name, const char *const *list) {
    for (; *list; list++)
        if (strcasecmp(name, *list) == 0) return 1;
    return 0;
}

static const char *const skipped[] = {"head", "script", "style", "nav", "noscript", "svg", "template", "button",
                                      "select", "math", NULL};
static const char *const paragraph_breaks[] = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table",
                                               "ul", "ol", "dl", "hr", "figure", "section", "article", NULL};
static const char *const line_breaks[] = {"br", "div", "li", "tr", "dt", "dd", "header", "footer", "main", "aside",
                                          "caption", "details", "summary", "form", "fieldset", "address", NULL};

/* Finds the end of the element named `name` that starts at text offset i (after its start tag),
 * counting nested elements of the same name. Returns the offset after its end tag, or n. */
static size_t skip_element(const char *s, size_t n, size_t i, const char *name) {
    size_t name_len = strlen(name);
    int raw = strcasecmp(name, "script") == 0 || strcasecmp(name, "style") == 0; /* no nested tags inside */
    int depth = 1;
    while (i < n) {
        const char *lt = memchr(s + i, '<', n - i);
        if (!lt) return n;
        i = (size_t)(lt - s) + 1;
        int closing = i < n && s[i] == '/';
        size_t j = i + closing;
        if (j + name_len <= n && strncasecmp(s + j, name, name_len) == 0 &&
            (j + name_len == n || !isalnum((unsigned char)s[j + name_len]))) {
            if (closing) depth--;
            else if (!raw) depth++;
            const char *gt = memchr(s + j, '>', n - j);
            i = gt ? (size_t)(gt - s) + 1 : n;
            if (depth == 0) return i;
        }
    }
    return n;
}

char *html_to_text(const char *s, size_t n, size_t *out_len) {
    /* The text is never longer than the HTML: entities shrink or keep their length, and each
     * added newline or "- " replaces a tag of at least three bytes. */
    text_out_t t = {.out = xmalloc(n + 16, "HTML text")};
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        if (c == '<') {
            if (i + 3 < n && memcmp(s + i, "<!--", 4) == 0) { /* comment */
                const char *end = memmem(s + i + 4, n - i - 4, "-->", 3);
                i = end ? (size_t)(end - s) + 3 : n;
                continue;
            }
            size_t j = i + 1;
            int closing = j < n && s[j] == '/';
            j += closing;
            char name[16];
            size_t name_len = 0;
            while (j < n && (isalnum((unsigned char)s[j])) && name_len < sizeof name - 1) name[name_len++] = s[j++];
            name[name_len] = 0;
            if (name_len == 0 && !(j < n && (s[j] == '!' || s[j] == '?'))) { /* a lone '<' is text */
                put_visible(&t, "<", 1);
                i++;
                continue;
            }
            /* Skip the attributes, honouring quotes (they may hold '>'). */
            char quote = 0;
            while (j < n && (quote || s[j] != '>')) {
                if (quote && s[j] == quote) quote = 0;
                else if (!quote && (s[j] == '"' || s[j] == '\'')) quote = s[j];
                j++;
            }
            int self_closing = j > 0 && j < n && s[j - 1] == '/';
            i = j < n ? j + 1 : n;
            if (name_len == 0) continue; /* <!DOCTYPE ...>, <?xml ...?> */
            if (!closing && !self_closing && name_is(name, skipped)) {
                i = skip_element(s, n, i, name);
                continue;
            }
            if (strcasecmp(name, "pre") == 0) t.pre_depth += closing ? (t.pre_depth > 0 ? -1 : 0) : 1;
            if (name_is(name, paragraph_breaks)) want_newlines(&t, 2);
            else if (name_is(name, line_breaks)) want_newlines(&t, 1);
            else if (strcasecmp(name, "td") == 0 || strcasecmp(name, "th") == 0) t.pending_space = 1;
            if (!closing && strcasecmp(name, "li") == 0) put_visible(&t, "- ", 2);
            continue;
        }
        if (c == '&') {
            char buf[4];
            size_t got = 0, used = decode_entity(s + i, n - i, buf, &got);
            if (used) {
                if (got == 1 && buf[0] == ' ' && !t.pre_depth) t.pending_space = 1;
                else if (got) put_visible(&t, buf, got);
                i += used;
                continue;
            }
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f') {
            if (t.pre_depth) {
                if (c != '\r') {
                    flush_pending(&t);
                    put_char(&t, c);
                }
            } else {
                t.pending_space = 1;
            }
            i++;
            continue;
        }
        put_visible(&t, &c, 1);
        i++;
    }
    while (t.n > 0 && (t.out[t.n - 1] == ' ' || t.out[t.n - 1] == '\n')) t.n--;
    if (t.n > 0) put_char(&t, '\n');
    t.out[t.n] = 0;
    *out_len = t.n;
    return t.out;
}
