/* Strict JSON (RFC 8259) DOM parser: one arena per document, errors with line and column. */
#include <stdarg.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define ARENA_BLOCK_SIZE 16384
#define ARENA_ALIGN	 alignof(max_align_t)
/* Objects up to this many members are checked for duplicate keys as each key
 * is read (the error then points at the first duplicate in document order);
 * larger ones are checked once, sorted, when the object closes, so a hostile
 * document cannot make the check quadratic. */
#define DUP_LINEAR_MAX 32

struct json_arena_block {
	struct json_arena_block *next;
	size_t size; /* bytes usable in data */
	size_t used;
	max_align_t data[];
};

struct parser {
	const char *buf;
	size_t len;
	size_t pos;
	struct json_doc *doc;
	char *err;
	size_t errlen;
	int failed;
	/* line tracking: newlines only occur in whitespace (strings may not
	 * hold raw control characters), so skip_ws keeps these current */
	size_t line;
	size_t line_start;
	/* column cache: col_chars code points lie between line_start and
	 * col_pos; positions asked for only grow, so columns cost O(n) total */
	size_t col_pos;
	size_t col_chars;
};

/* Returns size bytes from the document's arena, aligned for any type, or NULL
 * when out of memory. The memory lives until json_free. */
static void *arena_alloc(struct json_doc *doc, size_t size)
{
	struct json_arena_block *b = doc->blocks;
	void *p;

	if (size > SIZE_MAX - ARENA_ALIGN)
		return NULL;
	size = (size + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
	if (b == NULL || b->size - b->used < size) {
		size_t bsize = size > ARENA_BLOCK_SIZE / 4 ? size : ARENA_BLOCK_SIZE;

		if (bsize > SIZE_MAX - sizeof(*b))
			return NULL;
		b = malloc(sizeof(*b) + bsize);
		if (b == NULL)
			return NULL;
		b->size = bsize;
		b->used = 0;
		if (bsize != ARENA_BLOCK_SIZE && doc->blocks != NULL) {
			/* a dedicated block for a large item: keep serving small
			 * items from the current head block */
			b->next = doc->blocks->next;
			doc->blocks->next = b;
		} else {
			b->next = doc->blocks;
			doc->blocks = b;
		}
	}
	p = (char *)b->data + b->used;
	b->used += size;
	return p;
}

void json_free(struct json_doc *doc)
{
	struct json_arena_block *b, *next;

	if (doc == NULL)
		return;
	for (b = doc->blocks; b != NULL; b = next) {
		next = b->next;
		free(b);
	}
	free(doc);
}

/* Counts code points (bytes that are not UTF-8 continuation bytes). */
static size_t count_chars(const char *s, size_t n)
{
	size_t i, c = 0;

	for (i = 0; i < n; i++)
		if (((unsigned char)s[i] & 0xC0) != 0x80)
			c++;
	return c;
}

/* Line and column (1-based) of pos, for positions at or after the last one
 * asked for on the current line (cheap, amortised). */
static void where_fast(struct parser *p, size_t pos, size_t *line, size_t *col)
{
	if (p->col_pos < p->line_start || p->col_pos > pos) {
		p->col_pos = p->line_start;
		p->col_chars = 0;
	}
	p->col_chars += count_chars(p->buf + p->col_pos, pos - p->col_pos);
	p->col_pos = pos;
	*line = p->line;
	*col = p->col_chars + 1;
}

/* Line and column of any pos, by scanning from the start (errors only). */
static void where_slow(const struct parser *p, size_t pos, size_t *line, size_t *col)
{
	size_t i, l = 1, start = 0;

	if (p->len >= 3 && memcmp(p->buf, "\xEF\xBB\xBF", 3) == 0)
		start = 3;
	for (i = start; i < pos && i < p->len; i++) {
		if (p->buf[i] == '\n') {
			l++;
			start = i + 1;
		}
	}
	*line = l;
	*col = count_chars(p->buf + start, pos - start) + 1;
}

/* Records the first error: "line L, column C: reason" for byte offset pos. */
__attribute__((format(printf, 3, 4))) static void fail(struct parser *p, size_t pos,
						       const char *fmt, ...)
{
	char reason[192];
	size_t line, col;
	va_list ap;

	if (p->failed)
		return;
	p->failed = 1;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	where_slow(p, pos, &line, &col);
	if (p->errlen > 0)
		snprintf(p->err, p->errlen, "line %zu, column %zu: %s", line, col, reason);
}

/* Describes the byte at pos for an error message ("'x'", "byte 0xNN", ...). */
static void fail_unexpected(struct parser *p, size_t pos, const char *expected)
{
	unsigned char c;

	if (pos >= p->len) {
		fail(p, pos, "unexpected end of input%s%s", expected ? ", expected " : "",
		     expected ? expected : "");
		return;
	}
	c = (unsigned char)p->buf[pos];
	if (c > 0x20 && c < 0x7F)
		fail(p, pos, "unexpected character '%c'%s%s", c, expected ? ", expected " : "",
		     expected ? expected : "");
	else
		fail(p, pos, "unexpected byte 0x%02X%s%s", c, expected ? ", expected " : "",
		     expected ? expected : "");
}

static void skip_ws(struct parser *p)
{
	while (p->pos < p->len) {
		char c = p->buf[p->pos];

		if (c == '\n') {
			p->line++;
			p->line_start = p->pos + 1;
		} else if (c != ' ' && c != '\t' && c != '\r') {
			break;
		}
		p->pos++;
	}
}

static struct json_value *new_value(struct parser *p, enum json_type type, size_t pos)
{
	struct json_value *v = arena_alloc(p->doc, sizeof(*v));
	size_t line, col;

	if (v == NULL) {
		fail(p, pos, "out of memory");
		return NULL;
	}
	memset(v, 0, sizeof(*v));
	v->type = type;
	where_fast(p, pos, &line, &col);
	v->line = line > UINT32_MAX ? UINT32_MAX : (uint32_t)line;
	v->col = col > UINT32_MAX ? UINT32_MAX : (uint32_t)col;
	return v;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Reads 4 hex digits at buf[i..end); returns the value or -1. */
static long hex4(const char *buf, size_t i, size_t end)
{
	long v = 0;
	int k, h;

	if (end - i < 4)
		return -1;
	for (k = 0; k < 4; k++) {
		h = hexval(buf[i + k]);
		if (h < 0)
			return -1;
		v = v * 16 + h;
	}
	return v;
}

/* Length of the well-formed UTF-8 sequence at s[0..n) (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xBF;
	size_t k, need;

	if (c >= 0xC2 && c <= 0xDF) {
		need = 2;
	} else if (c >= 0xE0 && c <= 0xEF) {
		need = 3;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		need = 4;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
	} else {
		return 0;
	}
	if (n < need)
		return 0;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (k = 2; k < need; k++)
		if (s[k] < 0x80 || s[k] > 0xBF)
			return 0;
	return need;
}

static size_t utf8_put(char *out, unsigned long cp)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | (cp >> 18));
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* Parses the string whose opening quote is at p->pos. On success stores the
 * decoded, NUL-terminated text (in the arena) in *out and *outlen and leaves
 * p->pos after the closing quote; returns -1 on error. */
static int parse_string(struct parser *p, const char **out, size_t *outlen)
{
	const char *buf = p->buf;
	size_t open = p->pos, i = open + 1, end, n = 0;
	char *s;

	/* first pass: find the closing quote, to size the output (decoding
	 * never makes a string longer) */
	while (i < p->len && buf[i] != '"')
		i += buf[i] == '\\' ? 2 : 1;
	if (i >= p->len) {
		fail(p, open, "unterminated string");
		return -1;
	}
	end = i;
	s = arena_alloc(p->doc, end - open);
	if (s == NULL) {
		fail(p, open, "out of memory");
		return -1;
	}
	for (i = open + 1; i < end;) {
		unsigned char c = (unsigned char)buf[i];
		long cp, lo;

		if (c < 0x20) {
			fail(p, i, "control character 0x%02X in string (must be escaped)", c);
			return -1;
		}
		if (c >= 0x80) {
			size_t k = utf8_seq((const unsigned char *)buf + i, end - i);

			if (k == 0) {
				fail(p, i, "invalid UTF-8 in string");
				return -1;
			}
			memcpy(s + n, buf + i, k);
			n += k;
			i += k;
			continue;
		}
		if (c != '\\') {
			s[n++] = (char)c;
			i++;
			continue;
		}
		switch (buf[i + 1]) {
		case '"':
		case '\\':
		case '/':
			s[n++] = buf[i + 1];
			i += 2;
			continue;
		case 'b':
			s[n++] = '\b';
			i += 2;
			continue;
		case 'f':
			s[n++] = '\f';
			i += 2;
			continue;
		case 'n':
			s[n++] = '\n';
			i += 2;
			continue;
		case 'r':
			s[n++] = '\r';
			i += 2;
			continue;
		case 't':
			s[n++] = '\t';
			i += 2;
			continue;
		case 'u':
			break;
		default:
			if ((unsigned char)buf[i + 1] > 0x20 && (unsigned char)buf[i + 1] < 0x7F)
				fail(p, i, "invalid escape '\\%c' in string", buf[i + 1]);
			else
				fail(p, i, "invalid escape in string");
			return -1;
		}
		cp = hex4(buf, i + 2, end);
		if (cp < 0) {
			fail(p, i, "invalid \\u escape (4 hex digits expected)");
			return -1;
		}
		if (cp == 0) {
			/* strings become C strings: a NUL would silently cut them */
			fail(p, i, "\\u0000 is not allowed in strings");
			return -1;
		}
		if (cp >= 0xDC00 && cp <= 0xDFFF) {
			fail(p, i, "unpaired surrogate \\u%04lX", cp);
			return -1;
		}
		if (cp >= 0xD800 && cp <= 0xDBFF) {
			lo = -1;
			if (end - i >= 12 && buf[i + 6] == '\\' && buf[i + 7] == 'u')
				lo = hex4(buf, i + 8, end);
			if (lo < 0xDC00 || lo > 0xDFFF) {
				fail(p, i, "unpaired surrogate \\u%04lX", cp);
				return -1;
			}
			cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
			i += 6;
		}
		n += utf8_put(s + n, (unsigned long)cp);
		i += 6;
	}
	s[n] = '\0';
	*out = s;
	*outlen = n;
	p->pos = end + 1;
	return 0;
}

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Parses a number at p->pos (which holds '-' or a digit). */
static struct json_value *parse_number(struct parser *p)
{
	const char *buf = p->buf;
	size_t start = p->pos, i = start;
	struct json_value *v;
	int integral = 1, neg = 0;
	char *text;

	if (buf[i] == '-') {
		neg = 1;
		i++;
	}
	if (i >= p->len || !is_digit(buf[i])) {
		fail(p, start, "invalid number");
		return NULL;
	}
	if (buf[i] == '0') {
		i++;
		if (i < p->len && is_digit(buf[i])) {
			fail(p, start, "leading zeros are not allowed in numbers");
			return NULL;
		}
	} else {
		while (i < p->len && is_digit(buf[i]))
			i++;
	}
	if (i < p->len && buf[i] == '.') {
		integral = 0;
		i++;
		if (i >= p->len || !is_digit(buf[i])) {
			fail(p, i, "digit expected after the decimal point");
			return NULL;
		}
		while (i < p->len && is_digit(buf[i]))
			i++;
	}
	if (i < p->len && (buf[i] == 'e' || buf[i] == 'E')) {
		integral = 0;
		i++;
		if (i < p->len && (buf[i] == '+' || buf[i] == '-'))
			i++;
		if (i >= p->len || !is_digit(buf[i])) {
			fail(p, i, "digit expected in the exponent");
			return NULL;
		}
		while (i < p->len && is_digit(buf[i]))
			i++;
	}
	v = new_value(p, JSON_NUMBER, start);
	text = v ? arena_alloc(p->doc, i - start + 1) : NULL;
	if (text == NULL) {
		fail(p, start, "out of memory");
		return NULL;
	}
	memcpy(text, buf + start, i - start);
	text[i - start] = '\0';
	v->u.num.text = text;
	if (integral) {
		/* accumulate the magnitude; INT64_MIN's is one more than INT64_MAX's */
		uint64_t mag = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
		size_t k;

		for (k = start + neg; k < i; k++) {
			unsigned int d = (unsigned int)(buf[k] - '0');

			if (mag > (lim - d) / 10) {
				integral = 0;
				break;
			}
			mag = mag * 10 + d;
		}
		if (integral) {
			v->u.num.is_int = 1;
			v->u.num.i =
				neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag)
				    : (int64_t)mag;
		}
	}
	p->pos = i;
	return v;
}

static struct json_value *parse_literal(struct parser *p)
{
	static const struct {
		const char *word;
		size_t len;
		enum json_type type;
	} lits[] = {
		{"true", 4, JSON_TRUE},
		{"false", 5, JSON_FALSE},
		{"null", 4, JSON_NULL},
	};
	size_t k, start = p->pos;

	for (k = 0; k < sizeof(lits) / sizeof(lits[0]); k++) {
		if (p->len - start >= lits[k].len &&
		    memcmp(p->buf + start, lits[k].word, lits[k].len) == 0) {
			p->pos += lits[k].len;
			return new_value(p, lits[k].type, start);
		}
	}
	fail(p, start, "invalid literal (true, false or null expected)");
	return NULL;
}

/* Grows a temporary (malloc'ed) vector so it holds at least n + 1 elements. */
static int vec_reserve(void **vec, size_t *cap, size_t n, size_t elem)
{
	size_t ncap;
	void *nv;

	if (n < *cap)
		return 0;
	ncap = *cap ? *cap * 2 : 8;
	if (ncap > SIZE_MAX / elem)
		return -1;
	nv = realloc(*vec, ncap * elem);
	if (nv == NULL)
		return -1;
	*vec = nv;
	*cap = ncap;
	return 0;
}

static struct json_value *parse_value(struct parser *p, unsigned int depth);

static struct json_value *parse_array(struct parser *p, unsigned int depth)
{
	size_t open = p->pos, n = 0, cap = 0;
	struct json_value **items = NULL, *v, *arr;

	if (depth > JSON_MAX_DEPTH) {
		fail(p, open, "nesting deeper than %d levels", JSON_MAX_DEPTH);
		return NULL;
	}
	arr = new_value(p, JSON_ARRAY, open);
	if (arr == NULL)
		return NULL;
	p->pos++;
	skip_ws(p);
	if (p->pos < p->len && p->buf[p->pos] == ']') {
		p->pos++;
		return arr;
	}
	for (;;) {
		v = parse_value(p, depth);
		if (v == NULL)
			goto fail;
		if (vec_reserve((void **)&items, &cap, n, sizeof(*items)) < 0) {
			fail(p, p->pos, "out of memory");
			goto fail;
		}
		items[n++] = v;
		skip_ws(p);
		if (p->pos < p->len && p->buf[p->pos] == ']') {
			p->pos++;
			break;
		}
		if (p->pos >= p->len || p->buf[p->pos] != ',') {
			fail_unexpected(p, p->pos, "',' or ']'");
			goto fail;
		}
		p->pos++;
		skip_ws(p);
		if (p->pos < p->len && p->buf[p->pos] == ']') {
			fail(p, p->pos, "trailing comma is not allowed");
			goto fail;
		}
	}
	arr->u.arr.items = arena_alloc(p->doc, n * sizeof(*items));
	if (arr->u.arr.items == NULL) {
		fail(p, open, "out of memory");
		goto fail;
	}
	memcpy(arr->u.arr.items, items, n * sizeof(*items));
	arr->u.arr.n = n;
	free(items);
	return arr;
fail:
	free(items);
	return NULL;
}

struct key_ref {
	const char *key;
	size_t len;
	size_t idx;
	size_t pos; /* byte offset of the key's opening quote */
};

static int key_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int r = memcmp(a, b, alen < blen ? alen : blen);

	if (r != 0)
		return r;
	return alen < blen ? -1 : alen > blen;
}

static int key_ref_cmp(const void *a, const void *b)
{
	const struct key_ref *x = a, *y = b;
	int r = key_cmp(x->key, x->len, y->key, y->len);

	if (r != 0)
		return r;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Reports a duplicate key (shown sanitised and shortened). */
static void fail_dup(struct parser *p, size_t pos, const char *key, size_t len)
{
	char shown[64];
	size_t i, n = 0;

	for (i = 0; i < len && n < sizeof(shown) - 4; i++)
		shown[n++] = (unsigned char)key[i] < 0x20 ? '?' : key[i];
	if (i < len) {
		/* cut at a character boundary, then mark the cut */
		while (n > 0 && ((unsigned char)shown[n] & 0xC0) == 0x80)
			n--;
		memcpy(shown + n, "...", 3);
		n += 3;
	}
	shown[n] = '\0';
	fail(p, pos, "duplicate key \"%s\"", shown);
}

/* Sorts a copy of the n keys (kpos: their byte offsets) and reports the
 * duplicate that comes first in the document. Returns 0 or -1. */
static int check_dups_sorted(struct parser *p, const struct json_member *m, const size_t *kpos,
			     size_t n)
{
	struct key_ref *refs = malloc(n * sizeof(*refs));
	size_t i, best = SIZE_MAX;

	if (refs == NULL) {
		fail(p, p->pos, "out of memory");
		return -1;
	}
	for (i = 0; i < n; i++) {
		refs[i].key = m[i].key;
		refs[i].len = m[i].key_len;
		refs[i].idx = i;
		refs[i].pos = kpos[i];
	}
	qsort(refs, n, sizeof(*refs), key_ref_cmp);
	for (i = 1; i < n; i++)
		if (key_cmp(refs[i].key, refs[i].len, refs[i - 1].key, refs[i - 1].len) == 0 &&
		    refs[i].idx < best)
			best = refs[i].idx;
	free(refs);
	if (best == SIZE_MAX)
		return 0;
	fail_dup(p, kpos[best], m[best].key, m[best].key_len);
	return -1;
}

static struct json_value *parse_object(struct parser *p, unsigned int depth)
{
	size_t open = p->pos, n = 0, cap = 0, pcap = 0, k;
	struct json_member *mem = NULL;
	size_t *kpos = NULL;
	struct json_value *obj, *v;

	if (depth > JSON_MAX_DEPTH) {
		fail(p, open, "nesting deeper than %d levels", JSON_MAX_DEPTH);
		return NULL;
	}
	obj = new_value(p, JSON_OBJECT, open);
	if (obj == NULL)
		return NULL;
	p->pos++;
	skip_ws(p);
	if (p->pos < p->len && p->buf[p->pos] == '}') {
		p->pos++;
		return obj;
	}
	for (;;) {
		const char *key;
		size_t klen, at = p->pos;

		if (at >= p->len || p->buf[at] != '"') {
			fail_unexpected(p, at, "a string key");
			goto fail;
		}
		if (parse_string(p, &key, &klen) < 0)
			goto fail;
		if (n < DUP_LINEAR_MAX) {
			for (k = 0; k < n; k++) {
				if (key_cmp(mem[k].key, mem[k].key_len, key, klen) == 0) {
					fail_dup(p, at, key, klen);
					goto fail;
				}
			}
		}
		if (vec_reserve((void **)&mem, &cap, n, sizeof(*mem)) < 0 ||
		    vec_reserve((void **)&kpos, &pcap, n, sizeof(*kpos)) < 0) {
			fail(p, at, "out of memory");
			goto fail;
		}
		mem[n].key = key;
		mem[n].key_len = klen;
		mem[n].value = NULL;
		kpos[n] = at;
		skip_ws(p);
		if (p->pos >= p->len || p->buf[p->pos] != ':') {
			fail_unexpected(p, p->pos, "':' after the key");
			goto fail;
		}
		p->pos++;
		v = parse_value(p, depth);
		if (v == NULL)
			goto fail;
		mem[n++].value = v;
		skip_ws(p);
		if (p->pos < p->len && p->buf[p->pos] == '}') {
			p->pos++;
			break;
		}
		if (p->pos >= p->len || p->buf[p->pos] != ',') {
			fail_unexpected(p, p->pos, "',' or '}'");
			goto fail;
		}
		p->pos++;
		skip_ws(p);
		if (p->pos < p->len && p->buf[p->pos] == '}') {
			fail(p, p->pos, "trailing comma is not allowed");
			goto fail;
		}
	}
	if (n > DUP_LINEAR_MAX && check_dups_sorted(p, mem, kpos, n) < 0)
		goto fail;
	obj->u.obj.members = arena_alloc(p->doc, n * sizeof(*mem));
	if (obj->u.obj.members == NULL) {
		fail(p, open, "out of memory");
		goto fail;
	}
	memcpy(obj->u.obj.members, mem, n * sizeof(*mem));
	obj->u.obj.n = n;
	free(mem);
	free(kpos);
	return obj;
fail:
	free(mem);
	free(kpos);
	return NULL;
}

/* Parses any value at or after p->pos. depth counts the containers around
 * it; containers recurse with depth + 1, bounded by JSON_MAX_DEPTH. */
static struct json_value *parse_value(struct parser *p, unsigned int depth)
{
	struct json_value *v;
	size_t start;

	skip_ws(p);
	if (p->pos >= p->len) {
		fail_unexpected(p, p->pos, "a value");
		return NULL;
	}
	switch (p->buf[p->pos]) {
	case '{':
		return parse_object(p, depth + 1);
	case '[':
		return parse_array(p, depth + 1);
	case '"':
		start = p->pos;
		v = new_value(p, JSON_STRING, start);
		if (v == NULL || parse_string(p, &v->u.str.s, &v->u.str.len) < 0)
			return NULL;
		return v;
	case '-':
	case '0' ... '9':
		return parse_number(p);
	case 't':
	case 'f':
	case 'n':
		return parse_literal(p);
	default:
		fail_unexpected(p, p->pos, "a value");
		return NULL;
	}
}

struct json_doc *json_parse(const char *buf, size_t len, char *err, size_t errlen)
{
	struct parser p = {
		.buf = buf,
		.len = len,
		.err = err,
		.errlen = errlen,
		.line = 1,
	};

	if (errlen > 0)
		err[0] = '\0';
	p.doc = calloc(1, sizeof(*p.doc));
	if (p.doc == NULL) {
		if (errlen > 0)
			snprintf(err, errlen, "line 1, column 1: out of memory");
		return NULL;
	}
	/* RFC 8259 section 8.1: a parser may ignore a leading byte order mark */
	if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) {
		p.pos = 3;
		p.line_start = 3;
	}
	p.doc->root = parse_value(&p, 0);
	if (p.doc->root != NULL) {
		skip_ws(&p);
		if (p.pos < p.len)
			fail_unexpected(&p, p.pos, "end of input after the value");
	}
	if (p.failed || p.doc->root == NULL) {
		json_free(p.doc);
		return NULL;
	}
	return p.doc;
}

const struct json_value *json_get(const struct json_value *v, const char *key)
{
	size_t i, klen;

	if (v == NULL || v->type != JSON_OBJECT)
		return NULL;
	klen = strlen(key);
	for (i = 0; i < v->u.obj.n; i++)
		if (key_cmp(v->u.obj.members[i].key, v->u.obj.members[i].key_len, key, klen) == 0)
			return v->u.obj.members[i].value;
	return NULL;
}

const struct json_value *json_at(const struct json_value *v, size_t i)
{
	if (v == NULL || v->type != JSON_ARRAY || i >= v->u.arr.n)
		return NULL;
	return v->u.arr.items[i];
}

size_t json_len(const struct json_value *v)
{
	if (v == NULL)
		return 0;
	if (v->type == JSON_ARRAY)
		return v->u.arr.n;
	if (v->type == JSON_OBJECT)
		return v->u.obj.n;
	return 0;
}

const char *json_type_name(enum json_type t)
{
	switch (t) {
	case JSON_NULL:
		return "null";
	case JSON_FALSE:
	case JSON_TRUE:
		return "boolean";
	case JSON_NUMBER:
		return "number";
	case JSON_STRING:
		return "string";
	case JSON_ARRAY:
		return "array";
	case JSON_OBJECT:
		return "object";
	}
	return "unknown";
}
