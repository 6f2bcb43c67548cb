/* Plain text from HTML pages, for building the text corpus from Debian's HTML manuals
 * (`prepare html2text`). A single fast pass (hundreds of MB/s), no rendering: tags are
 * dropped, the content of head, script, style, nav, noscript, svg, template, button and select
 * elements is dropped (navigation and code, not prose), block elements become line breaks,
 * paragraphs become blank lines, list items start with "- ", table cells are separated by
 * spaces, whitespace is collapsed except inside <pre>, and character references (&amp;,
 * &#8212;, &#x2014;, and the common named ones) are decoded to UTF-8. */
#ifndef DATA_HTML_TEXT_H
#define DATA_HTML_TEXT_H

#include <stddef.h>

/* Returns a malloc'd, NUL-terminated text; *out_len excludes the NUL. */
char *html_to_text(const char *html, size_t len, size_t *out_len);

#endif
