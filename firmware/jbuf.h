/* A growable text buffer for JSON answers, with a JSON string escaper. Allocation
 * failures are sticky (oom) rather than fatal: the caller answers "out of memory". */
#ifndef FG_JBUF_H
#define FG_JBUF_H

#include <stddef.h>

struct jbuf {
	char *p; /* NUL-terminated once anything was put */
	size_t len, cap;
	int oom;
};

void jb_put(struct jbuf *b, const char *s, size_t n);
void jb_lit(struct jbuf *b, const char *s);
void jb_fmt(struct jbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* s as a quoted JSON string: '"' and '\' escaped, control bytes and DEL as \u00XX. */
void jb_str(struct jbuf *b, const char *s);
void jb_free(struct jbuf *b);

#endif
