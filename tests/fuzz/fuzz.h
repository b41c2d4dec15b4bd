/* Helpers shared by the libFuzzer harnesses: invariant checks and input slicing. */
#ifndef FG_FUZZ_H
#define FG_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http1.h"

/* A broken invariant is a crash libFuzzer records like any sanitizer report. */
#define FUZZ_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__,       \
				#cond);                                                            \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* True when p[0..n) lies inside base[0..len). */
static inline int fuzz_within(const void *p, size_t n, const void *base, size_t len)
{
	const char *c = p, *b = base;

	return n == 0 || (c >= b && c <= b + len && n <= (size_t)(b + len - c));
}

/* An exact-size heap copy of data[0..len), so ASan sees any read past len.
 * The caller frees it. */
static inline char *fuzz_dup(const uint8_t *data, size_t len)
{
	char *p = malloc(len ? len : 1);

	FUZZ_CHECK(p != NULL);
	if (len)
		memcpy(p, data, len);
	return p;
}

/* Splits off the next field of *data up to the separator byte sep (or the
 * end); advances past the separator. */
static inline void fuzz_field(const uint8_t **data, size_t *len, uint8_t sep, const char **f,
			      size_t *flen)
{
	const uint8_t *e = memchr(*data, sep, *len);
	size_t n = e ? (size_t)(e - *data) : *len;

	*f = (const char *)*data;
	*flen = n;
	*data += e ? n + 1 : n;
	*len -= e ? n + 1 : n;
}

/* Every header slice of a parsed head lies inside its head buf[0..len). */
static inline void fuzz_check_hdrs(const struct http_hdr *hdrs, unsigned int n, const char *buf,
				   size_t len)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		FUZZ_CHECK(hdrs[i].name_len > 0);
		FUZZ_CHECK(fuzz_within(hdrs[i].name, hdrs[i].name_len, buf, len));
		FUZZ_CHECK(fuzz_within(hdrs[i].value, hdrs[i].value_len, buf, len));
	}
}

#endif
