/* HTTP/1.1 message-head parser and chunked decoder: zero-copy, stateless, RFC 9112 strict. */
#include <string.h>

#include "http1.h"

/* Defaults of the chunked decoder limits when the caller leaves them at 0. */
#define CHUNK_DEFAULT_MAX_LINE	  4096
#define CHUNK_DEFAULT_MAX_TRAILER 16384

/* A chunk size must stay below 2^62: shifting in one more hex digit is only
 * safe while the value is below 2^58. Sixteen digits are allowed at most
 * (leading zeros included) so that a flood of zeros is bounded too. */
#define CHUNK_SIZE_SHIFT_LIMIT (1ULL << 58)
#define CHUNK_MAX_DIGITS       16

/* Content-Length: 18 decimal digits always fit in a uint64_t. */
#define CL_MAX_DIGITS 18

/* Field-section verdicts besides 0 (done) and HTTP1_INCOMPLETE; the request
 * parser returns them as they are, the response parser maps them to -502. */
#define ERR_SYNTAX (-400)
#define ERR_COUNT  (-431)

/* tchar (RFC 9110 5.6.2): methods, field names, tokens. */
static const uint8_t tchar_tab[256] = {
	['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1,	    ['&'] = 1,	       ['\''] = 1,
	['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1,	    ['^'] = 1,	       ['_'] = 1,
	['`'] = 1, ['|'] = 1, ['~'] = 1, ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1,
};

/* request-target bytes: visible ASCII except '#' (a fragment is never sent). */
static const uint8_t target_tab[256] = {
	[0x21 ... 0x22] = 1,
	[0x24 ... 0x7E] = 1,
};

/* field-value bytes (RFC 9110 5.5): VCHAR, SP, HTAB, obs-text. */
static const uint8_t value_tab[256] = {
	['\t'] = 1,
	[0x20 ... 0x7E] = 1,
	[0x80 ... 0xFF] = 1,
};

/* reg-name bytes (RFC 3986): unreserved and sub-delims; '%' is checked apart
 * because it must introduce two hex digits. */
static const uint8_t regname_tab[256] = {
	['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1, ['-'] = 1, ['.'] = 1,	['_'] = 1,
	['~'] = 1,	   ['!'] = 1,	      ['$'] = 1,	 ['&'] = 1, ['\''] = 1, ['('] = 1,
	[')'] = 1,	   ['*'] = 1,	      ['+'] = 1,	 [','] = 1, [';'] = 1,	['='] = 1,
};

/* Eight bytes at a time: a word test tells whether a block holds any byte
 * that stops the fast path; the byte loop then finds which one. */
#define SWAR_ONES 0x0101010101010101ULL
#define SWAR_HIGH 0x8080808080808080ULL

static inline uint64_t load8(const char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

/* Nonzero iff some byte of v is below n (n <= 128). Exact: no byte borrows
 * unless a byte below it was itself below n, so there is no false alarm. */
static inline uint64_t swar_below(uint64_t v, uint8_t n)
{
	return (v - SWAR_ONES * n) & ~v & SWAR_HIGH;
}

/* Nonzero iff some byte of v equals b. */
static inline uint64_t swar_has(uint64_t v, uint8_t b)
{
	return swar_below(v ^ (SWAR_ONES * b), 1);
}

static inline int is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static inline int is_ows(unsigned char c)
{
	return c == ' ' || c == '\t';
}

/* Value of a hex digit, or -1. */
static inline int hex_val(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static inline unsigned char lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c;
}

/* True when a[0..alen) equals the NUL-terminated lit, ASCII letters compared
 * without case; never reads a past alen nor lit past its NUL. */
int http1_token_eq(const char *a, size_t alen, const char *lit)
{
	size_t i;

	for (i = 0; i < alen; i++) {
		if (lit[i] == '\0' || lower((unsigned char)a[i]) != lower((unsigned char)lit[i]))
			return 0;
	}
	return lit[alen] == '\0';
}

/* First of the n fields named `name` (any case), or NULL. */
const struct http_hdr *http1_find(const struct http_hdr *hdrs, unsigned int n, const char *name)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		if (http1_token_eq(hdrs[i].name, hdrs[i].name_len, name))
			return &hdrs[i];
	}
	return NULL;
}

/* Returns the first byte at or after p that is not a request-target byte, or
 * end. */
static const char *scan_target(const char *p, const char *end)
{
	while (end - p >= 8) {
		uint64_t v = load8(p);

		if (swar_below(v, 0x21) | (v & SWAR_HIGH) | swar_has(v, 0x7F) | swar_has(v, '#'))
			break;
		p += 8;
	}
	while (p < end && target_tab[(unsigned char)*p])
		p++;
	return p;
}

/* Returns the first byte at or after p that is not a field-value byte (so a
 * CR, LF or forbidden control), or end. HTAB stops the word test, so the
 * loop retries it byte by byte rather than giving up the fast path. */
static const char *scan_value(const char *p, const char *end)
{
	while (p < end) {
		if (end - p >= 8) {
			uint64_t v = load8(p);

			if (!(swar_below(v, 0x20) | swar_has(v, 0x7F))) {
				p += 8;
				continue;
			}
		}
		if (!value_tab[(unsigned char)*p])
			break;
		p++;
	}
	return p;
}

/* Checks "HTTP/" DIGIT "." DIGIT at p. Returns 0 and the digits, HTTP1_INCOMPLETE
 * when the bytes before end are a valid prefix, or ERR_SYNTAX. */
static int scan_version(const char *p, const char *end, int *major, int *minor)
{
	static const char pat[8] = "HTTP/0.0";
	int i;

	for (i = 0; i < 8; i++) {
		if (p + i == end)
			return HTTP1_INCOMPLETE;
		if (i == 5 || i == 7) {
			if (!is_digit((unsigned char)p[i]))
				return ERR_SYNTAX;
		} else if (p[i] != pat[i]) {
			return ERR_SYNTAX;
		}
	}
	*major = p[5] - '0';
	*minor = p[7] - '0';
	return 0;
}

/* Maps a method name onto enum http_method; names are case-sensitive. */
static int method_id(const char *m, size_t n)
{
	switch (n) {
	case 3:
		if (!memcmp(m, "GET", 3))
			return HTTP_M_GET;
		if (!memcmp(m, "PUT", 3))
			return HTTP_M_PUT;
		break;
	case 4:
		if (!memcmp(m, "HEAD", 4))
			return HTTP_M_HEAD;
		if (!memcmp(m, "POST", 4))
			return HTTP_M_POST;
		break;
	case 5:
		if (!memcmp(m, "TRACE", 5))
			return HTTP_M_TRACE;
		if (!memcmp(m, "PATCH", 5))
			return HTTP_M_PATCH;
		break;
	case 6:
		if (!memcmp(m, "DELETE", 6))
			return HTTP_M_DELETE;
		break;
	case 7:
		if (!memcmp(m, "OPTIONS", 7))
			return HTTP_M_OPTIONS;
		if (!memcmp(m, "CONNECT", 7))
			return HTTP_M_CONNECT;
		break;
	}
	return HTTP_M_OTHER;
}

/* dec-octet of RFC 3986: 0..255 without leading zeros. Advances *pp. */
static int scan_dec_octet(const char **pp, const char *end)
{
	const char *p = *pp;
	unsigned int v = 0;
	int n = 0;

	while (p < end && is_digit((unsigned char)*p) && n < 4) {
		v = v * 10 + (unsigned int)(*p - '0');
		p++;
		n++;
	}
	if (n == 0 || n > 3 || v > 255 || (n > 1 && **pp == '0'))
		return 0;
	*pp = p;
	return 1;
}

/* IPv4address of RFC 3986 spanning exactly [p, end). */
static int valid_ipv4(const char *p, const char *end)
{
	int i;

	for (i = 0; i < 4; i++) {
		if (i > 0) {
			if (p == end || *p != '.')
				return 0;
			p++;
		}
		if (!scan_dec_octet(&p, end))
			return 0;
	}
	return p == end;
}

/* IPv6address of RFC 3986 spanning exactly [p, end): up to eight 16-bit
 * groups, at most one "::", optionally an IPv4 tail worth two groups. */
static int valid_ipv6(const char *p, const char *end)
{
	int groups = 0, dcolon = 0;

	if (end - p >= 2 && p[0] == ':' && p[1] == ':') {
		dcolon = 1;
		p += 2;
		if (p == end)
			return 1;
	}
	for (;;) {
		const char *g = p;

		while (p < end && hex_val((unsigned char)*p) >= 0 && p - g < 5)
			p++;
		if (p < end && *p == '.') {
			/* the IPv4 tail ends the address */
			if (!valid_ipv4(g, end))
				return 0;
			groups += 2;
			break;
		}
		if (p == g || p - g > 4)
			return 0;
		groups++;
		if (p == end)
			break;
		if (*p != ':')
			return 0;
		p++;
		if (p < end && *p == ':') {
			if (dcolon)
				return 0;
			dcolon = 1;
			p++;
			if (p == end)
				break;
		} else if (p == end) {
			return 0;
		}
	}
	return dcolon ? groups <= 7 : groups == 8;
}

/* IPvFuture of RFC 3986 spanning exactly [p, end): "v" 1*HEXDIG "." 1*(...). */
static int valid_ipvfuture(const char *p, const char *end)
{
	const char *s;

	if (p == end || (*p | 0x20) != 'v')
		return 0;
	s = ++p;
	while (p < end && hex_val((unsigned char)*p) >= 0)
		p++;
	if (p == s || p == end || *p != '.')
		return 0;
	s = ++p;
	while (p < end && (regname_tab[(unsigned char)*p] || *p == ':'))
		p++;
	return p != s && p == end;
}

/* Validates uri-host [ ":" port ] over exactly s[0..n): reg-name (which
 * covers IPv4address), or an IP-literal in brackets; the port is 1 to 5
 * digits up to 65535. An empty host and userinfo ('@') are refused. With
 * need_port the port is mandatory (CONNECT's authority-form). */
static int valid_hostport(const char *s, size_t n, int need_port)
{
	const char *p = s, *end = s + n;
	unsigned int port = 0;
	int digits = 0;

	if (p == end)
		return 0;
	if (*p == '[') {
		const char *close = memchr(p, ']', n);

		if (!close)
			return 0;
		if (!valid_ipv6(p + 1, close) && !valid_ipvfuture(p + 1, close))
			return 0;
		p = close + 1;
	} else {
		while (p < end && *p != ':') {
			if (*p == '%') {
				if (end - p < 3 || hex_val((unsigned char)p[1]) < 0 ||
				    hex_val((unsigned char)p[2]) < 0)
					return 0;
				p += 3;
			} else if (regname_tab[(unsigned char)*p]) {
				p++;
			} else {
				return 0;
			}
		}
		if (p == s)
			return 0;
	}
	if (p == end)
		return !need_port;
	if (*p != ':')
		return 0;
	for (p++; p < end; p++) {
		if (!is_digit((unsigned char)*p) || ++digits > 5)
			return 0;
		port = port * 10 + (unsigned int)(*p - '0');
	}
	return digits > 0 && port <= 65535;
}

/* Classifies and validates the request-target for the method (RFC 9112
 * 3.2). Returns the enum http_target_form, or ERR_SYNTAX. */
static int target_form(const char *t, size_t n, int method)
{
	size_t skip;
	const char *a, *end = t + n;

	if (method == HTTP_M_CONNECT)
		return valid_hostport(t, n, 1) ? HTTP_TARGET_AUTHORITY : ERR_SYNTAX;
	if (t[0] == '/')
		return HTTP_TARGET_ORIGIN;
	if (n == 1 && t[0] == '*')
		return method == HTTP_M_OPTIONS ? HTTP_TARGET_ASTERISK : ERR_SYNTAX;
	if (n > 7 && http1_token_eq(t, 7, "http://"))
		skip = 7;
	else if (n > 8 && http1_token_eq(t, 8, "https://"))
		skip = 8;
	else
		return ERR_SYNTAX;
	/* the authority runs up to the path or the query */
	a = t + skip;
	t = a;
	while (t < end && *t != '/' && *t != '?')
		t++;
	return valid_hostport(a, (size_t)(t - a), 0) ? HTTP_TARGET_ABSOLUTE : ERR_SYNTAX;
}

/* Parses optional empty lines and the request-line in [buf, end); end is
 * already cut at the line limit by the caller. Returns 0 with *out past the
 * line's CRLF, HTTP1_INCOMPLETE, or a negated status (400, 505). */
static int parse_request_line(const char *buf, const char *end, struct http_req *req,
			      const char **out)
{
	const char *p = buf, *m, *t;
	int major, minor, r;

	/* RFC 9112 2.2: a server SHOULD ignore empty lines before the request */
	for (;;) {
		if (p == end)
			return HTTP1_INCOMPLETE;
		if (*p != '\r')
			break;
		if (end - p < 2)
			return HTTP1_INCOMPLETE;
		if (p[1] != '\n')
			return -400;
		p += 2;
	}

	m = p;
	while (p < end && tchar_tab[(unsigned char)*p])
		p++;
	if (p == end)
		return HTTP1_INCOMPLETE;
	if (p == m || *p != ' ')
		return -400;
	req->method_s = m;
	req->method_len = (uint32_t)(p - m);

	t = ++p;
	p = scan_target(p, end);
	if (p == end)
		return HTTP1_INCOMPLETE;
	if (p == t || *p != ' ')
		return -400;
	req->target = t;
	req->target_len = (uint32_t)(p - t);

	p++;
	r = scan_version(p, end, &major, &minor);
	if (r < 0)
		return r;
	p += 8;
	if (p == end)
		return HTTP1_INCOMPLETE;
	if (*p != '\r')
		return -400;
	if (p + 1 == end)
		return HTTP1_INCOMPLETE;
	if (p[1] != '\n')
		return -400;
	p += 2;

	/* a well-formed line with a version we do not speak */
	if (major != 1 || minor > 1)
		return -505;
	req->minor = minor;
	req->method = method_id(req->method_s, req->method_len);
	r = target_form(req->target, req->target_len, req->method);
	if (r < 0)
		return r;
	req->target_form = r;
	*out = p;
	return 0;
}

/* Parses header fields and the empty line from p up to end (cut at the head
 * limit by the caller). Stores at most max fields in hdrs. lf_ok accepts a
 * bare LF as line end (responses). Returns 0 with *n and *out (past the empty
 * line), HTTP1_INCOMPLETE, ERR_SYNTAX or ERR_COUNT. */
static int parse_fields(const char *p, const char *end, int lf_ok, unsigned int max,
			struct http_hdr *hdrs, unsigned int *n, const char **out)
{
	unsigned int cnt = 0;

	for (;;) {
		const char *name, *val, *vend;
		size_t eol;

		if (p == end)
			return HTTP1_INCOMPLETE;
		if (*p == '\r') {
			if (p + 1 == end)
				return HTTP1_INCOMPLETE;
			if (p[1] != '\n')
				return ERR_SYNTAX;
			p += 2;
			break;
		}
		if (*p == '\n') {
			if (!lf_ok)
				return ERR_SYNTAX;
			p++;
			break;
		}
		/* catches obs-fold (SP/HTAB), an empty name and any junk */
		if (!tchar_tab[(unsigned char)*p])
			return ERR_SYNTAX;
		if (cnt == max)
			return ERR_COUNT;

		name = p;
		while (p < end && tchar_tab[(unsigned char)*p])
			p++;
		if (p == end)
			return HTTP1_INCOMPLETE;
		if (*p != ':')
			return ERR_SYNTAX; /* whitespace before the colon, or junk */
		hdrs[cnt].name = name;
		hdrs[cnt].name_len = (uint32_t)(p - name);

		p++;
		while (p < end && is_ows((unsigned char)*p))
			p++;
		val = p;
		p = scan_value(p, end);
		if (p == end)
			return HTTP1_INCOMPLETE;
		if (*p == '\r') {
			if (p + 1 == end)
				return HTTP1_INCOMPLETE;
			if (p[1] != '\n')
				return ERR_SYNTAX;
			eol = 2;
		} else if (*p == '\n' && lf_ok) {
			eol = 1;
		} else {
			return ERR_SYNTAX;
		}
		vend = p;
		while (vend > val && is_ows((unsigned char)vend[-1]))
			vend--;
		hdrs[cnt].value = val;
		hdrs[cnt].value_len = (uint32_t)(vend - val);
		cnt++;
		p += eol;
	}
	*n = cnt;
	*out = p;
	return 0;
}

/* What the framing and connection headers of a message say, gathered in one
 * walk over the parsed fields before any verdict is taken. */
struct msg_info {
	unsigned int flags; /* HTTP_F_* except EXPECT_CONTINUE */
	unsigned int nhost;
	int host_idx;
	int has_cl;
	int cl_bad; /* malformed or conflicting Content-Length */
	uint64_t cl;
	int has_te;
	int te_empty;	     /* an empty list element */
	int te_chunked;	     /* occurrences of "chunked" */
	int te_last_chunked; /* the final coding is chunked */
	int te_other;	     /* a coding other than chunked */
	int has_expect;
	int expect_bad; /* an Expect other than 100-continue */
};

/* Returns the next comma-separated element of [*pp, end) with OWS trimmed, and
 * advances *pp past its comma (to end after the last element). An empty value
 * yields one empty element, so callers see every empty element. */
static const char *list_next(const char **pp, const char *end, size_t *elen)
{
	const char *s = *pp, *p = *pp, *e;

	while (p < end && *p != ',')
		p++;
	e = p;
	while (s < e && is_ows((unsigned char)*s))
		s++;
	while (e > s && is_ows((unsigned char)e[-1]))
		e--;
	*pp = p < end ? p + 1 : NULL;
	*elen = (size_t)(e - s);
	return s;
}

/* Content-Length: 1*DIGIT, or a list of equal values ("5, 5", RFC 9110
 * 8.6). Returns 0 with *out, or -1. */
static int parse_cl(const char *v, size_t n, uint64_t *out)
{
	const char *p = v, *end = v + n;
	int have = 0;
	uint64_t first = 0;

	while (p) {
		size_t len, i;
		const char *e = list_next(&p, end, &len);
		uint64_t x = 0;

		if (len == 0 || len > CL_MAX_DIGITS)
			return -1;
		for (i = 0; i < len; i++) {
			if (!is_digit((unsigned char)e[i]))
				return -1;
			x = x * 10 + (uint64_t)(e[i] - '0');
		}
		if (have && x != first)
			return -1;
		first = x;
		have = 1;
	}
	*out = first;
	return 0;
}

/* Folds one Transfer-Encoding field into mi; several fields form one list. */
static void note_te(const struct http_hdr *h, struct msg_info *mi)
{
	const char *p = h->value, *end = h->value + h->value_len;

	mi->has_te = 1;
	while (p) {
		size_t len;
		const char *e = list_next(&p, end, &len);

		if (len == 0) {
			mi->te_empty = 1;
		} else if (http1_token_eq(e, len, "chunked")) {
			mi->te_chunked++;
			mi->te_last_chunked = 1;
		} else {
			mi->te_other = 1;
			mi->te_last_chunked = 0;
		}
	}
}

/* Folds one Connection field's tokens into mi->flags. */
static void note_connection(const struct http_hdr *h, struct msg_info *mi)
{
	const char *p = h->value, *end = h->value + h->value_len;

	while (p) {
		size_t len;
		const char *e = list_next(&p, end, &len);

		if (http1_token_eq(e, len, "close"))
			mi->flags |= HTTP_F_CONN_CLOSE;
		else if (http1_token_eq(e, len, "keep-alive"))
			mi->flags |= HTTP_F_CONN_KEEPALIVE;
		else if (http1_token_eq(e, len, "upgrade"))
			mi->flags |= HTTP_F_CONN_UPGRADE;
	}
}

/* One pass over the fields; dispatches on the name length first so most
 * fields cost one compare of an integer. */
static void scan_fields(const struct http_hdr *hdrs, unsigned int n, struct msg_info *mi)
{
	unsigned int i;

	memset(mi, 0, sizeof(*mi));
	mi->host_idx = -1;
	for (i = 0; i < n; i++) {
		const struct http_hdr *h = &hdrs[i];
		uint64_t v = 0;

		switch (h->name_len) {
		case 4:
			if (http1_token_eq(h->name, 4, "host")) {
				if (mi->nhost++ == 0)
					mi->host_idx = (int)i;
			}
			break;
		case 6:
			if (http1_token_eq(h->name, 6, "expect")) {
				mi->has_expect = 1;
				if (!http1_token_eq(h->value, h->value_len, "100-continue"))
					mi->expect_bad = 1;
			}
			break;
		case 7:
			if (http1_token_eq(h->name, 7, "upgrade"))
				mi->flags |= HTTP_F_UPGRADE;
			break;
		case 10:
			if (http1_token_eq(h->name, 10, "connection"))
				note_connection(h, mi);
			break;
		case 14:
			if (http1_token_eq(h->name, 14, "content-length")) {
				if (parse_cl(h->value, h->value_len, &v) < 0 ||
				    (mi->has_cl && v != mi->cl))
					mi->cl_bad = 1;
				else
					mi->cl = v;
				mi->has_cl = 1;
			}
			break;
		case 17:
			if (http1_token_eq(h->name, 17, "transfer-encoding"))
				note_te(h, mi);
			break;
		}
	}
}

/* Applies the request rules on Host, framing and Expect (RFC 9112 3.2, 6,
 * RFC 9110 10.1.1). Returns 0 or a negated status. */
static int request_semantics(struct http_req *req)
{
	struct msg_info mi;

	scan_fields(req->hdrs, req->nhdrs, &mi);

	if (mi.nhost > 1 || (req->minor == 1 && mi.nhost == 0))
		return -400;
	if (mi.nhost == 1) {
		const struct http_hdr *h = &req->hdrs[mi.host_idx];

		if (!valid_hostport(h->value, h->value_len, 0))
			return -400;
	}
	req->host_idx = mi.host_idx;

	if (mi.cl_bad)
		return -400;
	if (mi.has_te) {
		/* any doubt about where the body ends is a smuggling vector */
		if (req->minor == 0 || mi.has_cl || mi.te_empty || mi.te_chunked > 1 ||
		    (mi.te_chunked == 1 && !mi.te_last_chunked))
			return -400;
		if (mi.te_other || !mi.te_chunked)
			return -501;
		req->body = HTTP_BODY_CHUNKED;
	} else if (mi.has_cl) {
		req->body = HTTP_BODY_LENGTH;
		req->content_length = mi.cl;
	}

	req->flags = mi.flags;
	/* HTTP/1.0 predates Expect: RFC 9110 10.1.1 says to ignore it there */
	if (req->minor == 1 && mi.has_expect) {
		if (mi.expect_bad)
			return -417;
		req->flags |= HTTP_F_EXPECT_CONTINUE;
	}
	return 0;
}

/* See http1.h. Stateless: the whole head is parsed again on every call, in
 * one pass over buf[0..len) that never reads past len nor past the limits.
 * req is reset first; its slices and hdrs point into buf. */
int http1_parse_request(const char *buf, size_t len, const struct http_limits *lim,
			struct http_req *req, struct http_hdr *hdrs)
{
	size_t max_line = lim->max_line, max_head = lim->max_head;
	const char *p = buf, *end;
	int r;

	memset(req, 0, sizeof(*req));
	req->hdrs = hdrs;
	req->host_idx = -1;

	/* Leading empty lines count towards both limits: the line limit is
	 * measured from buf. Running out of bytes where the limit cut the
	 * buffer means the line or the head cannot fit any more. */
	end = buf + (len < max_line ? len : max_line);
	r = parse_request_line(buf, end, req, &p);
	if (r == HTTP1_INCOMPLETE) {
		if (len >= max_line)
			return -414;
		return len >= max_head ? -431 : HTTP1_INCOMPLETE;
	}
	if (r < 0)
		return r;
	if ((size_t)(p - buf) > max_head)
		return -431;

	end = buf + (len < max_head ? len : max_head);
	r = parse_fields(p, end, 0, lim->max_headers, hdrs, &req->nhdrs, &p);
	if (r == HTTP1_INCOMPLETE)
		return len >= max_head ? -431 : HTTP1_INCOMPLETE;
	if (r < 0)
		return r;

	r = request_semantics(req);
	if (r < 0)
		return r;
	req->head_len = (uint32_t)(p - buf);
	return (int)req->head_len;
}

/* Parses "HTTP/1.x SP 3DIGIT [SP reason] CRLF" (or LF). Returns 0 with *out,
 * HTTP1_INCOMPLETE, or -502. */
static int parse_status_line(const char *p, const char *end, struct http_resp *resp,
			     const char **out)
{
	int major, minor, status = 0, i, r;

	r = scan_version(p, end, &major, &minor);
	if (r == HTTP1_INCOMPLETE)
		return r;
	if (r < 0 || major != 1)
		return -502;
	p += 8;
	if (p == end)
		return HTTP1_INCOMPLETE;
	if (*p++ != ' ')
		return -502;
	for (i = 0; i < 3; i++, p++) {
		if (p == end)
			return HTTP1_INCOMPLETE;
		if (!is_digit((unsigned char)*p))
			return -502;
		status = status * 10 + (*p - '0');
	}
	/* RFC 9110 15: every valid status code is in 100..599 */
	if (status < 100 || status > 599)
		return -502;
	if (p == end)
		return HTTP1_INCOMPLETE;
	if (*p == ' ')
		p++;
	resp->reason = p;
	p = scan_value(p, end);
	if (p == end)
		return HTTP1_INCOMPLETE;
	resp->reason_len = (uint32_t)(p - resp->reason);
	if (*p == '\r') {
		if (p + 1 == end)
			return HTTP1_INCOMPLETE;
		if (p[1] != '\n')
			return -502;
		p += 2;
	} else if (*p == '\n') {
		p++;
	} else {
		return -502;
	}
	/* "HTTP/1.1 200OK": the reason must be separated from the code */
	if (resp->reason_len && resp->reason[-1] != ' ')
		return -502;
	resp->status = status;
	resp->minor = minor;
	*out = p;
	return 0;
}

/* Decides the response framing (RFC 9112 6.3). Returns 0 or -502. */
static int response_semantics(struct http_resp *resp, int req_method)
{
	struct msg_info mi;
	int st = resp->status;

	scan_fields(resp->hdrs, resp->nhdrs, &mi);
	resp->flags = mi.flags;

	if (mi.cl_bad)
		return -502;
	if (mi.has_te) {
		/* RFC 9112 6.1: TE in an HTTP/1.0 message means faulty framing */
		if (resp->minor == 0 || mi.has_cl || mi.te_empty || mi.te_chunked > 1 ||
		    (mi.te_chunked == 1 && !mi.te_last_chunked))
			return -502;
	}
	if (mi.has_cl)
		resp->content_length = mi.cl;

	if (req_method == HTTP_M_HEAD || st < 200 || st == 204 || st == 304 ||
	    (req_method == HTTP_M_CONNECT && st < 300))
		resp->body = HTTP_BODY_NONE;
	else if (mi.has_te)
		resp->body = mi.te_last_chunked ? HTTP_BODY_CHUNKED : HTTP_BODY_UNTIL_EOF;
	else if (mi.has_cl)
		resp->body = HTTP_BODY_LENGTH;
	else
		resp->body = HTTP_BODY_UNTIL_EOF;
	return 0;
}

/* See http1.h. Same model as http1_parse_request; every refusal is -502
 * because the client is not at fault for what the backend sent. */
int http1_parse_response(const char *buf, size_t len, const struct http_limits *lim, int req_method,
			 struct http_resp *resp, struct http_hdr *hdrs)
{
	size_t max_head = lim->max_head;
	const char *p = buf, *end = buf + (len < max_head ? len : max_head);
	int r;

	memset(resp, 0, sizeof(*resp));
	resp->hdrs = hdrs;

	r = parse_status_line(buf, end, resp, &p);
	if (r == 0)
		r = parse_fields(p, end, 1, lim->max_headers, hdrs, &resp->nhdrs, &p);
	if (r == HTTP1_INCOMPLETE)
		return len >= max_head ? -502 : HTTP1_INCOMPLETE;
	if (r < 0)
		return -502;
	r = response_semantics(resp, req_method);
	if (r < 0)
		return r;
	resp->head_len = (uint32_t)(p - buf);
	return (int)resp->head_len;
}

/* Chunked decoder states; 0 is the start of a chunk-size line so that a
 * zeroed struct is ready to use. */
enum chunk_state {
	CS_SIZE = 0,	 /* hex digits of chunk-size (line_len counts them) */
	CS_EXT_SEMI,	 /* after BWS: more BWS or ';' */
	CS_EXT_PRE_NAME, /* after ';': BWS or the ext-name */
	CS_EXT_NAME,	 /* in ext-name */
	CS_EXT_NAME_WS,	 /* BWS after ext-name: '=' or ';' */
	CS_EXT_PRE_VAL,	 /* after '=': BWS, token or quoted-string */
	CS_EXT_TOKEN,	 /* in a token value */
	CS_EXT_QSTR,	 /* in a quoted-string */
	CS_EXT_QPAIR,	 /* after a backslash in a quoted-string */
	CS_EXT_QEND,	 /* after the closing quote */
	CS_SIZE_LF,	 /* CR seen at the end of the size line */
	CS_DATA,	 /* chunk-data, remaining bytes left */
	CS_DATA_CR,	 /* the CRLF after chunk-data */
	CS_DATA_LF,
	CS_TRL_START, /* start of a trailer line or of the final empty line */
	CS_TRL_NAME,
	CS_TRL_VAL,
	CS_TRL_LF,
	CS_END_LF, /* CR of the final empty line seen */
	CS_DONE,
	CS_ERROR,
};

/* Resets c to the start of a chunked body with the default limits. */
void http1_chunked_init(struct http_chunked *c, int strict)
{
	memset(c, 0, sizeof(*c));
	c->strict = strict;
	c->max_line = CHUNK_DEFAULT_MAX_LINE;
	c->max_trailer = CHUNK_DEFAULT_MAX_TRAILER;
}

/* End of the chunk-size line: data follows, or the trailer section after the
 * last chunk. */
static void chunk_line_done(struct http_chunked *c)
{
	c->line_len = 0;
	c->state = c->remaining ? CS_DATA : CS_TRL_START;
}

/* Handles CR or LF ending a size line in state-independent fashion. Returns 1
 * when ch ended (or began ending) the line, 0 when ch is something else, -1
 * for a bare LF in strict mode. */
static int chunk_line_end(struct http_chunked *c, unsigned char ch)
{
	if (ch == '\r') {
		c->state = CS_SIZE_LF;
		return 1;
	}
	if (ch == '\n') {
		if (c->strict)
			return -1;
		chunk_line_done(c);
		return 1;
	}
	return 0;
}

/* Feeds one framing byte to the size-line states. Returns 0, or -1 when the
 * byte cannot appear there. */
static int chunk_size_byte(struct http_chunked *c, unsigned char ch)
{
	int r, h;

	switch (c->state) {
	case CS_SIZE:
		h = hex_val(ch);
		if (h >= 0) {
			if (c->line_len > CHUNK_MAX_DIGITS ||
			    c->remaining >= CHUNK_SIZE_SHIFT_LIMIT)
				return -1;
			c->remaining = (c->remaining << 4) | (uint64_t)h;
			return 0;
		}
		if (c->line_len == 1)
			return -1; /* no digit: "-5", " 5", "x" */
		if (ch == ';') {
			c->state = CS_EXT_PRE_NAME;
			return 0;
		}
		if (is_ows(ch)) {
			c->state = CS_EXT_SEMI;
			return 0;
		}
		break;
	case CS_EXT_SEMI:
		if (is_ows(ch))
			return 0;
		if (ch == ';') {
			c->state = CS_EXT_PRE_NAME;
			return 0;
		}
		return -1;
	case CS_EXT_PRE_NAME:
		if (is_ows(ch))
			return 0;
		if (tchar_tab[ch]) {
			c->state = CS_EXT_NAME;
			return 0;
		}
		return -1;
	case CS_EXT_NAME:
		if (tchar_tab[ch])
			return 0;
		/* the name ended: the same bytes as after its BWS */
		/* fall through */
	case CS_EXT_NAME_WS:
		if (is_ows(ch)) {
			c->state = CS_EXT_NAME_WS;
			return 0;
		}
		if (ch == '=') {
			c->state = CS_EXT_PRE_VAL;
			return 0;
		}
		if (ch == ';') {
			c->state = CS_EXT_PRE_NAME;
			return 0;
		}
		if (c->state == CS_EXT_NAME_WS)
			return -1; /* BWS must lead to '=' or ';' */
		break;
	case CS_EXT_PRE_VAL:
		if (is_ows(ch))
			return 0;
		if (ch == '"') {
			c->state = CS_EXT_QSTR;
			return 0;
		}
		if (tchar_tab[ch]) {
			c->state = CS_EXT_TOKEN;
			return 0;
		}
		return -1;
	case CS_EXT_TOKEN:
		if (tchar_tab[ch])
			return 0;
		/* the value ended: the same bytes as after a quoted-string */
		/* fall through */
	case CS_EXT_QEND:
		if (is_ows(ch)) {
			c->state = CS_EXT_SEMI;
			return 0;
		}
		if (ch == ';') {
			c->state = CS_EXT_PRE_NAME;
			return 0;
		}
		break;
	case CS_EXT_QSTR:
		if (ch == '"')
			c->state = CS_EXT_QEND;
		else if (ch == '\\')
			c->state = CS_EXT_QPAIR;
		else if (ch != '\t' && (ch < 0x20 || ch == 0x7F))
			return -1; /* qdtext excludes controls, CR and LF */
		return 0;
	case CS_EXT_QPAIR:
		if (ch != '\t' && (ch < 0x20 || ch == 0x7F))
			return -1;
		c->state = CS_EXT_QSTR;
		return 0;
	case CS_SIZE_LF:
		if (ch != '\n')
			return -1;
		chunk_line_done(c);
		return 0;
	default:
		return -1;
	}
	/* CS_SIZE, CS_EXT_NAME, CS_EXT_TOKEN, CS_EXT_QEND may end the line */
	r = chunk_line_end(c, ch);
	return r == 1 ? 0 : -1;
}

/* Feeds one byte to the post-data and trailer states. Returns 0, or -1. */
static int chunk_tail_byte(struct http_chunked *c, unsigned char ch)
{
	switch (c->state) {
	case CS_DATA_CR:
		if (ch == '\r')
			c->state = CS_DATA_LF;
		else if (ch == '\n' && !c->strict)
			c->state = CS_SIZE;
		else
			return -1;
		return 0;
	case CS_DATA_LF:
		if (ch != '\n')
			return -1;
		c->state = CS_SIZE;
		return 0;
	case CS_TRL_START:
		if (ch == '\r')
			c->state = CS_END_LF;
		else if (ch == '\n' && !c->strict)
			c->state = CS_DONE;
		else if (tchar_tab[ch])
			c->state = CS_TRL_NAME; /* SP/HTAB here would be obs-fold */
		else
			return -1;
		return 0;
	case CS_TRL_NAME:
		if (ch == ':')
			c->state = CS_TRL_VAL;
		else if (!tchar_tab[ch])
			return -1;
		return 0;
	case CS_TRL_VAL:
		if (ch == '\r')
			c->state = CS_TRL_LF;
		else if (ch == '\n' && !c->strict)
			c->state = CS_TRL_START;
		else if (!value_tab[ch])
			return -1;
		return 0;
	case CS_TRL_LF:
		if (ch != '\n')
			return -1;
		c->state = CS_TRL_START;
		return 0;
	case CS_END_LF:
		if (ch != '\n')
			return -1;
		c->state = CS_DONE;
		return 0;
	default:
		return -1;
	}
}

/* See http1.h. Framing bytes go through the state machine one at a time;
 * chunk data is handed back in place. DONE and ERROR are sticky and consume
 * nothing more; on ERROR *consumed stops before the offending byte. */
int http1_chunked_step(struct http_chunked *c, const char *in, size_t len, size_t *consumed,
		       size_t *data_off, size_t *data_len)
{
	uint32_t max_line = c->max_line ? c->max_line : CHUNK_DEFAULT_MAX_LINE;
	uint32_t max_trailer = c->max_trailer ? c->max_trailer : CHUNK_DEFAULT_MAX_TRAILER;
	size_t i = 0;

	*consumed = 0;
	*data_off = 0;
	*data_len = 0;
	if (c->state == CS_DONE)
		return HTTP_CHUNK_DONE;
	if (c->state == CS_ERROR)
		return HTTP_CHUNK_ERROR;

	while (i < len) {
		unsigned char ch;
		int r;

		if (c->state == CS_DATA) {
			size_t n = len - i;

			if (n > c->remaining)
				n = (size_t)c->remaining;
			c->remaining -= n;
			if (!c->remaining)
				c->state = CS_DATA_CR;
			*data_off = i;
			*data_len = n;
			*consumed = i + n;
			return HTTP_CHUNK_DATA;
		}

		ch = (unsigned char)in[i];
		if (c->state <= CS_SIZE_LF) {
			if (++c->line_len > max_line)
				goto error;
			r = chunk_size_byte(c, ch);
		} else if (c->state >= CS_TRL_START) {
			if (++c->trailer_len > max_trailer)
				goto error;
			r = chunk_tail_byte(c, ch);
		} else {
			r = chunk_tail_byte(c, ch);
		}
		if (r < 0)
			goto error;
		i++;
		if (c->state == CS_DONE) {
			*consumed = i;
			return HTTP_CHUNK_DONE;
		}
	}
	*consumed = i;
	return HTTP_CHUNK_AGAIN;

error:
	c->state = CS_ERROR;
	*consumed = i;
	return HTTP_CHUNK_ERROR;
}

/* Static reason phrase of RFC 9110 for status, "Unknown" for the rest. */
const char *http1_reason(int status)
{
	static const char *const r1xx[] = {"Continue", "Switching Protocols"};
	static const char *const r2xx[] = {
		"OK",	      "Created",       "Accepted",	  "Non-Authoritative Information",
		"No Content", "Reset Content", "Partial Content",
	};
	static const char *const r3xx[] = {
		"Multiple Choices",   "Moved Permanently", "Found", "See Other",
		"Not Modified",	      "Use Proxy",	   NULL,    "Temporary Redirect",
		"Permanent Redirect",
	};
	static const char *const r4xx[] = {
		"Bad Request",
		"Unauthorized",
		"Payment Required",
		"Forbidden",
		"Not Found",
		"Method Not Allowed",
		"Not Acceptable",
		"Proxy Authentication Required",
		"Request Timeout",
		"Conflict",
		"Gone",
		"Length Required",
		"Precondition Failed",
		"Content Too Large",
		"URI Too Long",
		"Unsupported Media Type",
		"Range Not Satisfiable",
		"Expectation Failed",
		NULL,
		NULL,
		NULL,
		"Misdirected Request",
		"Unprocessable Content",
		"Locked",
		"Failed Dependency",
		"Too Early",
		"Upgrade Required",
		NULL,
		"Precondition Required",
		"Too Many Requests",
		NULL,
		"Request Header Fields Too Large",
	};
	static const char *const r5xx[] = {
		"Internal Server Error", "Not Implemented", "Bad Gateway",
		"Service Unavailable",	 "Gateway Timeout", "HTTP Version Not Supported",
	};
	const char *s = NULL;

#define PICK(tab, base)                                                                            \
	do {                                                                                       \
		if (status >= (base) && status < (base) + (int)(sizeof(tab) / sizeof((tab)[0])))   \
			s = (tab)[status - (base)];                                                \
	} while (0)
	PICK(r1xx, 100);
	PICK(r2xx, 200);
	PICK(r3xx, 300);
	PICK(r4xx, 400);
	PICK(r5xx, 500);
#undef PICK
	if (status == 451)
		s = "Unavailable For Legal Reasons";
	return s ? s : "Unknown";
}
