/* Unit tests for the HTTP/1.1 head parser and the chunked decoder (firmware/http1.c). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "http1.h"

#define MAX_HDRS   128
#define GUARD_ROOM (128 * 1024) /* readable bytes before the PROT_NONE page */

/* A string literal and its length, NUL bytes included. */
#define S(lit) lit, sizeof(lit) - 1

/* Reports which table case failed; cmocka alone names only the line. */
#define EXPECT_EQ(name, got, want)                                                                 \
	do {                                                                                       \
		long long g_ = (long long)(got), w_ = (long long)(want);                           \
		if (g_ != w_)                                                                      \
			fail_msg("%s: %s = %lld, want %lld", (name), #got, g_, w_);                \
	} while (0)

static const struct http_limits DEF_LIM = {8192, 16384, 100};

/* Readable memory directly followed by an inaccessible page: an input copied
 * to its very end faults on any read past its length. */
struct guard {
	char *map;
	char *limit; /* first byte of the PROT_NONE page */
	size_t page;
};

static int guard_setup(void **state)
{
	struct guard *g = calloc(1, sizeof(*g));

	if (!g)
		return -1;
	g->page = (size_t)sysconf(_SC_PAGESIZE);
	g->map = mmap(NULL, GUARD_ROOM + g->page, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (g->map == MAP_FAILED)
		goto err_free;
	g->limit = g->map + GUARD_ROOM;
	if (mprotect(g->limit, g->page, PROT_NONE) == -1)
		goto err_unmap;
	*state = g;
	return 0;

err_unmap:
	munmap(g->map, GUARD_ROOM + g->page);
err_free:
	free(g);
	return -1;
}

static int guard_teardown(void **state)
{
	struct guard *g = *state;

	munmap(g->map, GUARD_ROOM + g->page);
	free(g);
	return 0;
}

/* Copies s[0..n) so that it ends right at the guard page; returns the copy. */
static const char *guard_put(struct guard *g, const char *s, size_t n)
{
	char *d = g->limit - n;

	assert_true(n <= GUARD_ROOM);
	memcpy(d, s, n);
	return d;
}

/* ---- request helpers ---------------------------------------------------- */

static long long off(const char *p, const char *base)
{
	return p ? (long long)(p - base) : -1;
}

/* Two parses of the same bytes at different addresses must agree exactly. */
static void same_req(const char *name, const struct http_req *a, const char *abuf,
		     const struct http_req *b, const char *bbuf)
{
	unsigned int i;

	EXPECT_EQ(name, a->method, b->method);
	EXPECT_EQ(name, off(a->method_s, abuf), off(b->method_s, bbuf));
	EXPECT_EQ(name, a->method_len, b->method_len);
	EXPECT_EQ(name, off(a->target, abuf), off(b->target, bbuf));
	EXPECT_EQ(name, a->target_len, b->target_len);
	EXPECT_EQ(name, a->target_form, b->target_form);
	EXPECT_EQ(name, a->minor, b->minor);
	EXPECT_EQ(name, a->nhdrs, b->nhdrs);
	EXPECT_EQ(name, a->host_idx, b->host_idx);
	EXPECT_EQ(name, a->body, b->body);
	EXPECT_EQ(name, a->content_length, b->content_length);
	EXPECT_EQ(name, a->flags, b->flags);
	EXPECT_EQ(name, a->head_len, b->head_len);
	for (i = 0; i < a->nhdrs; i++) {
		EXPECT_EQ(name, off(a->hdrs[i].name, abuf), off(b->hdrs[i].name, bbuf));
		EXPECT_EQ(name, a->hdrs[i].name_len, b->hdrs[i].name_len);
		EXPECT_EQ(name, off(a->hdrs[i].value, abuf), off(b->hdrs[i].value, bbuf));
		EXPECT_EQ(name, a->hdrs[i].value_len, b->hdrs[i].value_len);
	}
}

/* Parses in[0..len) whole, then every prefix placed at the end of the guard
 * page. A prefix shorter than the head must be INCOMPLETE, a longer one must
 * give the very same result. Returns the whole-buffer result in *req. */
static int parse_req_everywhere(struct guard *g, const char *name, const char *in, size_t len,
				const struct http_limits *lim, struct http_req *req,
				struct http_hdr *hdrs)
{
	struct http_req r2;
	struct http_hdr h2[MAX_HDRS];
	size_t k;
	int ret = http1_parse_request(in, len, lim, req, hdrs);

	for (k = 0; k <= len; k++) {
		const char *cp = guard_put(g, in, k);
		int r = http1_parse_request(cp, k, lim, &r2, h2);

		if (ret > 0 && k < (size_t)ret) {
			if (r != HTTP1_INCOMPLETE)
				fail_msg("%s: prefix %zu gave %d, want INCOMPLETE", name, k, r);
		} else if (ret > 0) {
			EXPECT_EQ(name, r, ret);
			same_req(name, req, in, &r2, cp);
		} else if (r != HTTP1_INCOMPLETE && r != ret) {
			/* an error verdict must not depend on where the input was cut */
			fail_msg("%s: prefix %zu gave %d, whole input %d", name, k, r, ret);
		}
	}
	return ret;
}

struct req_case {
	const char *name;
	const char *in;
	size_t len;
	int head; /* expected head length; 0: all of in */
	int method;
	int form;
	int minor;
	int body;
	uint64_t cl;
	unsigned int flags;
	unsigned int nhdrs;
	const char *target;
	const char *host; /* expected Host value; NULL: none */
};

static const struct req_case valid_reqs[] = {
	{"get with headers",
	 S("GET /index.html?q=1&r=%20 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1.0\r\n"
	   "Accept: */*\r\n\r\n"),
	 0, HTTP_M_GET, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 3, "/index.html?q=1&r=%20",
	 "example.com"},
	{"post with content-length",
	 S("POST /submit HTTP/1.1\r\nHost: a.example:8080\r\nContent-Length: 11\r\n\r\nhello "
	   "world"),
	 67, HTTP_M_POST, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_LENGTH, 11, 0, 2, "/submit",
	 "a.example:8080"},
	{"content-length zero", S("PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"), 0,
	 HTTP_M_PUT, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_LENGTH, 0, 0, 2, "/x", "h"},
	{"content-length list of equal values",
	 S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\ncontent-length:5\r\n\r\n"), 0,
	 HTTP_M_POST, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_LENGTH, 5, 0, 3, "/", "h"},
	{"content-length leading zeros and 18 digits",
	 S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 999999999999999999\r\n\r\n"), 0,
	 HTTP_M_POST, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_LENGTH, 999999999999999999ULL, 0, 2, "/",
	 "h"},
	{"chunked", S("PUT /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"), 0,
	 HTTP_M_PUT, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_CHUNKED, 0, 0, 2, "/up", "x"},
	{"chunked any case with OWS",
	 S("POST / HTTP/1.1\r\nTransfer-Encoding: \t CHUNKED \t\r\nHost: x\r\n\r\n"), 0,
	 HTTP_M_POST, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_CHUNKED, 0, 0, 2, "/", "x"},
	{"http/1.0 without host", S("GET / HTTP/1.0\r\n\r\n"), 0, HTTP_M_GET, HTTP_TARGET_ORIGIN, 0,
	 HTTP_BODY_NONE, 0, 0, 0, "/", NULL},
	{"http/1.0 ignores expect",
	 S("POST /f HTTP/1.0\r\nExpect: something\r\nContent-Length: 3\r\n\r\n"), 0, HTTP_M_POST,
	 HTTP_TARGET_ORIGIN, 0, HTTP_BODY_LENGTH, 3, 0, 2, "/f", NULL},
	{"absolute-form", S("GET http://example.com/a?b HTTP/1.1\r\nHost: example.com\r\n\r\n"), 0,
	 HTTP_M_GET, HTTP_TARGET_ABSOLUTE, 1, HTTP_BODY_NONE, 0, 0, 1, "http://example.com/a?b",
	 "example.com"},
	{"absolute-form https upper-case no path",
	 S("GET HTTPS://Example.COM:443 HTTP/1.1\r\nHost: example.com\r\n\r\n"), 0, HTTP_M_GET,
	 HTTP_TARGET_ABSOLUTE, 1, HTTP_BODY_NONE, 0, 0, 1, "HTTPS://Example.COM:443",
	 "example.com"},
	{"absolute-form ipv6 and query",
	 S("DELETE http://[2001:db8::7]:81?x=1 HTTP/1.1\r\nHost: [2001:db8::7]:81\r\n\r\n"), 0,
	 HTTP_M_DELETE, HTTP_TARGET_ABSOLUTE, 1, HTTP_BODY_NONE, 0, 0, 1,
	 "http://[2001:db8::7]:81?x=1", "[2001:db8::7]:81"},
	{"options asterisk", S("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"), 0, HTTP_M_OPTIONS,
	 HTTP_TARGET_ASTERISK, 1, HTTP_BODY_NONE, 0, 0, 1, "*", "h"},
	{"options origin-form", S("OPTIONS /o HTTP/1.1\r\nHost: h\r\n\r\n"), 0, HTTP_M_OPTIONS,
	 HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 1, "/o", "h"},
	{"connect authority-form",
	 S("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"), 0, HTTP_M_CONNECT,
	 HTTP_TARGET_AUTHORITY, 1, HTTP_BODY_NONE, 0, 0, 1, "example.com:443", "example.com:443"},
	{"connect ipv6", S("CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n"), 0,
	 HTTP_M_CONNECT, HTTP_TARGET_AUTHORITY, 1, HTTP_BODY_NONE, 0, 0, 1, "[::1]:8443",
	 "[::1]:8443"},
	{"pipelined: first head only",
	 S("GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n"), 28, HTTP_M_GET,
	 HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 1, "/a", "a"},
	{"leading empty lines", S("\r\n\r\nHEAD /h HTTP/1.1\r\nHost: h\r\n\r\n"), 0, HTTP_M_HEAD,
	 HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 1, "/h", "h"},
	{"connection keep-alive upgrade",
	 S("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
	   "Upgrade: websocket\r\n\r\n"),
	 0, HTTP_M_GET, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0,
	 HTTP_F_CONN_KEEPALIVE | HTTP_F_CONN_UPGRADE | HTTP_F_UPGRADE, 3, "/ws", "h"},
	{"connection close among tokens",
	 S("GET / HTTP/1.1\r\nHost: h\r\nConnection: ,foo, CLOSE ,\r\n\r\n"), 0, HTTP_M_GET,
	 HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, HTTP_F_CONN_CLOSE, 2, "/", "h"},
	{"expect 100-continue",
	 S("PUT /p HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n"), 0,
	 HTTP_M_PUT, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_LENGTH, 1, HTTP_F_EXPECT_CONTINUE, 3, "/p",
	 "h"},
	{"unknown and lower-case methods", S("PURGE /c HTTP/1.1\r\nHost: h\r\n\r\n"), 0,
	 HTTP_M_OTHER, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 1, "/c", "h"},
	{"lower-case get is another method", S("get / HTTP/1.1\r\nHost: h\r\n\r\n"), 0,
	 HTTP_M_OTHER, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 1, "/", "h"},
	{"trace", S("TRACE / HTTP/1.1\r\nHost: h\r\n\r\n"), 0, HTTP_M_TRACE, HTTP_TARGET_ORIGIN, 1,
	 HTTP_BODY_NONE, 0, 0, 1, "/", "h"},
	{"patch", S("PATCH / HTTP/1.1\r\nHost: h\r\n\r\n"), 0, HTTP_M_PATCH, HTTP_TARGET_ORIGIN, 1,
	 HTTP_BODY_NONE, 0, 0, 1, "/", "h"},
	{"host ipv4 with port", S("GET / HTTP/1.1\r\nHost: 192.0.2.1:65535\r\n\r\n"), 0, HTTP_M_GET,
	 HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 1, "/", "192.0.2.1:65535"},
	{"host ipv6 with ipv4 tail", S("GET / HTTP/1.1\r\nHost: [::ffff:192.0.2.1]\r\n\r\n"), 0,
	 HTTP_M_GET, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 1, "/", "[::ffff:192.0.2.1]"},
	{"host ipv6 full with port",
	 S("GET / HTTP/1.1\r\nHost: [1:2:3:4:5:6:7:8]:1\r\nX: 1\r\n\r\n"), 0, HTTP_M_GET,
	 HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 2, "/", "[1:2:3:4:5:6:7:8]:1"},
	{"host ipvfuture", S("GET / HTTP/1.1\r\nHost: [v1.fe80::a+en1]\r\n\r\n"), 0, HTTP_M_GET,
	 HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 1, "/", "[v1.fe80::a+en1]"},
	{"host ipv6 compressed forms", S("GET / HTTP/1.1\r\nHost: [1:2:3:4:5:6:7::]\r\n\r\n"), 0,
	 HTTP_M_GET, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 1, "/", "[1:2:3:4:5:6:7::]"},
	{"host percent-encoded reg-name", S("GET / HTTP/1.1\r\nHost: a%2Db.example\r\n\r\n"), 0,
	 HTTP_M_GET, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 1, "/", "a%2Db.example"},
	{"obs-text, empty and tabbed values",
	 S("GET / HTTP/1.1\r\nX-Utf8: caf\xc3\xa9\r\nX-Empty:\r\nX-Blank:  \t \r\n"
	   "X-Tab:\tv 1\t\r\nHost: h\r\n\r\n"),
	 0, HTTP_M_GET, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 5, "/", "h"},
	{"long values take the word-at-a-time path",
	 S("GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: h\r\n"
	   "Cookie: aaaaaaaaaaaaaaaa=bbbbbbbbbbbbbbbbbbbbbbbbbbbbb; "
	   "cccccccccccccccccc=dddd\r\n\r\n"),
	 0, HTTP_M_GET, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 2,
	 "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "h"},
	{"long value with tab and obs-text inside",
	 S("GET /~!$&'()*+,;=:@%-._abcdefghijklmnopqrstuvwxyz HTTP/1.1\r\nHost: h\r\n"
	   "X-A: abcdefghijk\tlmnopq\x80\xffrstuvwxyz~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}\r\n\r\n"),
	 0, HTTP_M_GET, HTTP_TARGET_ORIGIN, 1, HTTP_BODY_NONE, 0, 0, 2,
	 "/~!$&'()*+,;=:@%-._abcdefghijklmnopqrstuvwxyz", "h"},
};

static void test_request_valid_table(void **state)
{
	struct guard *g = *state;
	size_t i;

	for (i = 0; i < sizeof(valid_reqs) / sizeof(valid_reqs[0]); i++) {
		const struct req_case *c = &valid_reqs[i];
		struct http_req req;
		struct http_hdr hdrs[MAX_HDRS];
		int want = c->head ? c->head : (int)c->len;
		int r = parse_req_everywhere(g, c->name, c->in, c->len, &DEF_LIM, &req, hdrs);

		EXPECT_EQ(c->name, r, want);
		EXPECT_EQ(c->name, req.head_len, want);
		EXPECT_EQ(c->name, req.method, c->method);
		EXPECT_EQ(c->name, req.target_form, c->form);
		EXPECT_EQ(c->name, req.minor, c->minor);
		EXPECT_EQ(c->name, req.body, c->body);
		EXPECT_EQ(c->name, req.content_length, c->cl);
		EXPECT_EQ(c->name, req.flags, c->flags);
		EXPECT_EQ(c->name, req.nhdrs, c->nhdrs);
		EXPECT_EQ(c->name, req.hdrs == hdrs, 1);
		EXPECT_EQ(c->name, req.target_len, strlen(c->target));
		if (memcmp(req.target, c->target, req.target_len))
			fail_msg("%s: target %.*s", c->name, (int)req.target_len, req.target);
		if (!c->host) {
			EXPECT_EQ(c->name, req.host_idx, -1);
		} else {
			const struct http_hdr *h;

			assert_true(req.host_idx >= 0 && (unsigned int)req.host_idx < req.nhdrs);
			h = &req.hdrs[req.host_idx];
			EXPECT_EQ(c->name, h->value_len, strlen(c->host));
			if (memcmp(h->value, c->host, h->value_len))
				fail_msg("%s: host %.*s", c->name, (int)h->value_len, h->value);
			assert_true(http1_token_eq(h->name, h->name_len, "host"));
		}
	}
}

/* The slices point into the input, values are trimmed, names keep their case. */
static void test_request_slices(void **state)
{
	static const char in[] = "POST /p HTTP/1.1\r\nhOsT:  example.org \r\nX-Empty:\r\n"
				 "X-Tab:\tv 1\t\r\nX-Utf8: caf\xc3\xa9\r\n\r\n";
	struct http_req req;
	struct http_hdr hdrs[MAX_HDRS];
	const struct http_hdr *h;
	int r;

	(void)state;
	r = http1_parse_request(in, sizeof(in) - 1, &DEF_LIM, &req, hdrs);
	assert_int_equal(r, sizeof(in) - 1);
	assert_ptr_equal(req.method_s, in);
	assert_int_equal(req.method_len, 4);
	assert_ptr_equal(req.target, in + 5);
	assert_int_equal(req.nhdrs, 4);
	assert_int_equal(req.host_idx, 0);
	assert_ptr_equal(hdrs[0].name, in + 18);
	assert_int_equal(hdrs[0].name_len, 4);
	assert_ptr_equal(hdrs[0].value, in + 25);
	assert_int_equal(hdrs[0].value_len, 11);
	assert_int_equal(hdrs[1].value_len, 0);
	h = http1_find(hdrs, req.nhdrs, "x-tab");
	assert_non_null(h);
	assert_int_equal(h->value_len, 3);
	assert_memory_equal(h->value, "v 1", 3);
	h = http1_find(hdrs, req.nhdrs, "X-UTF8");
	assert_non_null(h);
	assert_int_equal(h->value_len, 5);
	assert_memory_equal(h->value, "caf\xc3\xa9", 5);
}

struct bad_case {
	const char *name;
	const char *in;
	size_t len;
	int status;		/* expected (negated) result */
	struct http_limits lim; /* zero: DEF_LIM */
};

#define SMALL_LINE                                                                                 \
	{                                                                                          \
		32, 16384, 100                                                                     \
	}
#define SMALL_HEAD                                                                                 \
	{                                                                                          \
		8192, 64, 100                                                                      \
	}
#define FEW_HDRS                                                                                   \
	{                                                                                          \
		8192, 16384, 3                                                                     \
	}

static const struct bad_case bad_reqs[] = {
	/* framing: the smuggling classics */
	{"cl and te",
	 S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
	 -400},
	{"te and cl",
	 S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
	   "Content-Length: 0\r\n\r\n"),
	 -400},
	{"differing cl headers",
	 S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"), -400},
	{"differing cl list", S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n"),
	 -400},
	{"cl with plus", S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n"), -400},
	{"cl negative", S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"), -400},
	{"cl space inside", S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length:  5 6\r\n\r\n"), -400},
	{"cl hex", S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\n"), -400},
	{"cl empty", S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n"), -400},
	{"cl empty list element", S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5,,5\r\n\r\n"),
	 -400},
	{"cl 19 digits",
	 S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000000000000000\r\n\r\n"), -400},
	{"cl overflow",
	 S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551621\r\n\r\n"), -400},
	{"te chunked twice",
	 S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"), -400},
	{"te chunked in two fields",
	 S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
	   "Transfer-Encoding: chunked\r\n\r\n"),
	 -400},
	{"te chunked not last",
	 S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), -400},
	{"te empty element", S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n\r\n"),
	 -400},
	{"te empty value", S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n"), -400},
	{"te in http/1.0", S("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), -400},
	{"te gzip", S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"), -501},
	{"te gzip then chunked",
	 S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), -501},
	{"te identity", S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n"),
	 -501},
	{"te chunked with parameter",
	 S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;x\r\n\r\n"), -501},
	{"te xchunked", S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n"),
	 -501},
	/* field syntax */
	{"obs-fold", S("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n"), -400},
	{"obs-fold with tab", S("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n\tb\r\n\r\n"), -400},
	{"whitespace before first field", S("GET / HTTP/1.1\r\n Host: h\r\n\r\n"), -400},
	{"space before colon", S("GET / HTTP/1.1\r\nHost : h\r\n\r\n"), -400},
	{"tab before colon", S("GET / HTTP/1.1\r\nHost\t: h\r\n\r\n"), -400},
	{"empty field name", S("GET / HTTP/1.1\r\nHost: h\r\n: x\r\n\r\n"), -400},
	{"no colon", S("GET / HTTP/1.1\r\nHost: h\r\nX-A\r\n\r\n"), -400},
	{"separator in name", S("GET / HTTP/1.1\r\nHost: h\r\nX(A): 1\r\n\r\n"), -400},
	{"nul in value", S("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n"), -400},
	{"del in value", S("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x7f\r\n\r\n"), -400},
	{"escape in value", S("GET / HTTP/1.1\r\nHost: h\r\nX-A: \x1b[0m\r\n\r\n"), -400},
	{"bare lf after request line", S("GET / HTTP/1.1\nHost: h\r\n\r\n"), -400},
	{"bare lf after field", S("GET / HTTP/1.1\r\nHost: h\nX: 1\r\n\r\n"), -400},
	{"bare lf as empty line", S("GET / HTTP/1.1\r\nHost: h\r\n\n"), -400},
	{"bare lf only", S("GET / HTTP/1.1\nHost: h\n\n"), -400},
	{"bare cr in value", S("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n"), -400},
	{"bare cr as empty line", S("GET / HTTP/1.1\r\nHost: h\r\n\rX\r\n\r\n"), -400},
	{"bare cr after version", S("GET / HTTP/1.1\rHost: h\r\n\r\n"), -400},
	{"bare cr before request line", S("\rGET / HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"bare lf before request line", S("\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	/* request-line */
	{"control in target", S("GET /a\x01z HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"tab in target", S("GET /a\tz HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"space in target", S("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"hash in target", S("GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"high byte in target", S("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"del in target", S("GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	/* the same inside long targets and values, where 8 bytes are checked at once */
	{"hash deep in target", S("GET /abcdefghijklm#nopqrstuvwxyz HTTP/1.1\r\nHost: h\r\n\r\n"),
	 -400},
	{"del deep in target", S("GET /abcdefghijklm\x7fnopqrstuvwxyz HTTP/1.1\r\nHost: h\r\n\r\n"),
	 -400},
	{"high byte deep in target",
	 S("GET /abcdefghijklm\xffnopqrstuvwxyz HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"control deep in target",
	 S("GET /abcdefghijklm\x1fnopqrstuvwxyz HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"nul deep in value",
	 S("GET / HTTP/1.1\r\nHost: h\r\nX-A: abcdefghijk\0lmnopqrstuvw\r\n\r\n"), -400},
	{"del deep in value",
	 S("GET / HTTP/1.1\r\nHost: h\r\nX-A: abcdefghijk\x7flmnopqrstuvw\r\n\r\n"), -400},
	{"bare cr deep in value",
	 S("GET / HTTP/1.1\r\nHost: h\r\nX-A: abcdefghijk\rlmnopqrstuvw\r\n\r\n"), -400},
	{"bare lf deep in value",
	 S("GET / HTTP/1.1\r\nHost: h\r\nX-A: abcdefghijk\nlmnopqrstuvw\r\n\r\n"), -400},
	{"two spaces after method", S("GET  / HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"two spaces before version", S("GET /  HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"tab as separator", S("GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"empty method", S(" / HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"non-tchar method", S("GE(T / HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"http/0.9 request", S("GET /\r\n\r\n"), -400},
	{"trailing space after version", S("GET / HTTP/1.1 \r\nHost: h\r\n\r\n"), -400},
	{"lower-case version", S("GET / http/1.1\r\nHost: h\r\n\r\n"), -400},
	{"garbage version", S("GET / HTTP/1.x\r\nHost: h\r\n\r\n"), -400},
	{"two-digit version", S("GET / HTTP/11.1\r\nHost: h\r\n\r\n"), -400},
	{"long minor", S("GET / HTTP/1.10\r\nHost: h\r\n\r\n"), -400},
	{"version http/1.2", S("GET / HTTP/1.2\r\nHost: h\r\n\r\n"), -505},
	{"version http/2.0", S("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), -505},
	{"version http/0.9", S("GET / HTTP/0.9\r\n\r\n"), -505},
	{"h2 preface", S("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), -505},
	/* target forms */
	{"asterisk with get", S("GET * HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"authority-form with get", S("GET example.com:80 HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"connect with origin-form", S("CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"connect without port", S("CONNECT example.com HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"connect bad port", S("CONNECT example.com:x HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"other scheme", S("GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"absolute-form empty authority", S("GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"absolute-form scheme only", S("GET http:// HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"absolute-form userinfo", S("GET http://u:p@h/x HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	{"relative target", S("GET a/b HTTP/1.1\r\nHost: h\r\n\r\n"), -400},
	/* Host */
	{"missing host", S("GET / HTTP/1.1\r\nX-Host: h\r\n\r\n"), -400},
	{"two hosts", S("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), -400},
	{"two hosts in http/1.0", S("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n"), -400},
	{"empty host", S("GET / HTTP/1.1\r\nHost:\r\n\r\n"), -400},
	{"host with space", S("GET / HTTP/1.1\r\nHost: exa mple.com\r\n\r\n"), -400},
	{"host with userinfo", S("GET / HTTP/1.1\r\nHost: u@h\r\n\r\n"), -400},
	{"host with path", S("GET / HTTP/1.1\r\nHost: h/x\r\n\r\n"), -400},
	{"host bad port", S("GET / HTTP/1.1\r\nHost: h:8o\r\n\r\n"), -400},
	{"host port too big", S("GET / HTTP/1.1\r\nHost: h:65536\r\n\r\n"), -400},
	{"host empty port", S("GET / HTTP/1.1\r\nHost: h:\r\n\r\n"), -400},
	{"host two ports", S("GET / HTTP/1.1\r\nHost: h:1:2\r\n\r\n"), -400},
	{"host unclosed ipv6", S("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"), -400},
	{"host bad ipv6", S("GET / HTTP/1.1\r\nHost: [1::2::3]\r\n\r\n"), -400},
	{"host ipv4 tail octet 256", S("GET / HTTP/1.1\r\nHost: [::ffff:192.0.2.256]\r\n\r\n"),
	 -400},
	{"host ipv4 tail leading zero", S("GET / HTTP/1.1\r\nHost: [::ffff:192.0.02.1]\r\n\r\n"),
	 -400},
	{"host ipv4 tail three octets", S("GET / HTTP/1.1\r\nHost: [::ffff:192.0.2]\r\n\r\n"),
	 -400},
	{"host ipv6 seven groups", S("GET / HTTP/1.1\r\nHost: [1:2:3:4:5:6:7]\r\n\r\n"), -400},
	{"host ipv6 nine groups", S("GET / HTTP/1.1\r\nHost: [1:2:3:4:5:6:7:8:9]\r\n\r\n"), -400},
	{"host ipv6 long group", S("GET / HTTP/1.1\r\nHost: [12345::1]\r\n\r\n"), -400},
	{"host ipv6 trailing colon", S("GET / HTTP/1.1\r\nHost: [1::2:]\r\n\r\n"), -400},
	{"host ipv6 junk after bracket", S("GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n"), -400},
	{"host bad percent", S("GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n"), -400},
	{"host in http/1.0 checked too", S("GET / HTTP/1.0\r\nHost: a b\r\n\r\n"), -400},
	/* Expect */
	{"expect foo", S("GET / HTTP/1.1\r\nHost: h\r\nExpect: foo\r\n\r\n"), -417},
	{"expect with extra", S("GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue, x\r\n\r\n"),
	 -417},
	/* limits */
	{"line over max_line complete", S("GET /0123456789012345678 HTTP/1.1\r\nHost: h\r\n\r\n"),
	 -414, SMALL_LINE},
	{"line over max_line incomplete", S("GET /01234567890123456789012345678901234"), -414,
	 SMALL_LINE},
	{"line one byte over max_line", S("GET /012345678901234567 HTTP/1.1\r\nHost: h\r\n\r\n"),
	 -414, SMALL_LINE},
	{"empty lines count towards max_line",
	 S("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), -414,
	 SMALL_LINE},
	{"head over max_head complete",
	 S("GET / HTTP/1.1\r\nHost: h\r\nX-Long: 01234567890123456789012345678901\r\n\r\n"), -431,
	 SMALL_HEAD},
	{"head over max_head incomplete",
	 S("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\nX-E: 5\r\n"), -431,
	 SMALL_HEAD},
	{"head one byte over max_head",
	 S("GET / HTTP/1.1\r\nHost: h\r\nX-Long: 0123456789012345678901234567\r\n\r\n"), -431,
	 SMALL_HEAD},
	{"too many fields", S("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"), -431,
	 FEW_HDRS},
	{"too many fields incomplete", S("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC"), -431,
	 FEW_HDRS},
};

static void test_request_malformed_table(void **state)
{
	struct guard *g = *state;
	size_t i;

	for (i = 0; i < sizeof(bad_reqs) / sizeof(bad_reqs[0]); i++) {
		const struct bad_case *c = &bad_reqs[i];
		const struct http_limits *lim = c->lim.max_line ? &c->lim : &DEF_LIM;
		struct http_req req;
		struct http_hdr hdrs[MAX_HDRS];
		int r = parse_req_everywhere(g, c->name, c->in, c->len, lim, &req, hdrs);

		EXPECT_EQ(c->name, r, c->status);
	}
}

/* The limits are inclusive: a line or head of exactly the limit passes. */
static void test_request_limits_boundary(void **state)
{
	static const char line[] = "GET /01234567890123456 HTTP/1.1\r\nHost: h\r\n\r\n"; /* 33+11 */
	static const char head[] = "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\n\r\n";
	struct guard *g = *state;
	struct http_limits lim = {33, 16384, 100};
	struct http_req req;
	struct http_hdr hdrs[MAX_HDRS];

	assert_int_equal(
		parse_req_everywhere(g, "line at limit", line, sizeof(line) - 1, &lim, &req, hdrs),
		sizeof(line) - 1);
	lim.max_line = 32;
	assert_int_equal(http1_parse_request(line, sizeof(line) - 1, &lim, &req, hdrs), -414);
	/* exactly max_line bytes and no line end yet: it can no longer fit */
	assert_int_equal(http1_parse_request(line, 31, &lim, &req, hdrs), HTTP1_INCOMPLETE);
	assert_int_equal(http1_parse_request(line, 32, &lim, &req, hdrs), -414);

	lim = (struct http_limits){8192, sizeof(head) - 1, 2};
	assert_int_equal(
		parse_req_everywhere(g, "head at limit", head, sizeof(head) - 1, &lim, &req, hdrs),
		sizeof(head) - 1);
	assert_int_equal(req.nhdrs, 2);
	lim.max_head--;
	assert_int_equal(http1_parse_request(head, sizeof(head) - 1, &lim, &req, hdrs), -431);
	assert_int_equal(http1_parse_request(head, lim.max_head - 1, &lim, &req, hdrs),
			 HTTP1_INCOMPLETE);
	assert_int_equal(http1_parse_request(head, lim.max_head, &lim, &req, hdrs), -431);
	lim.max_head++;
	lim.max_headers = 1;
	assert_int_equal(http1_parse_request(head, sizeof(head) - 1, &lim, &req, hdrs), -431);
	/* a request line that fits max_line but not max_head is a 431 */
	lim = (struct http_limits){8192, 20, 100};
	assert_int_equal(http1_parse_request(line, sizeof(line) - 1, &lim, &req, hdrs), -431);
	assert_int_equal(http1_parse_request(line, 10, &lim, &req, hdrs), HTTP1_INCOMPLETE);
	assert_int_equal(http1_parse_request(line, 20, &lim, &req, hdrs), -431);
	/* empty lines count towards the head as well (31 bytes here) */
	lim = (struct http_limits){8192, 31, 100};
	assert_int_equal(http1_parse_request(S("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), &lim,
					     &req, hdrs),
			 31);
	lim.max_head = 30;
	assert_int_equal(http1_parse_request(S("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), &lim,
					     &req, hdrs),
			 -431);
}

/* Nothing, or only empty lines, is simply not enough yet. */
static void test_request_incomplete(void **state)
{
	struct http_req req;
	struct http_hdr hdrs[MAX_HDRS];

	(void)state;
	assert_int_equal(http1_parse_request("", 0, &DEF_LIM, &req, hdrs), HTTP1_INCOMPLETE);
	assert_int_equal(http1_parse_request(S("\r\n\r\n"), &DEF_LIM, &req, hdrs),
			 HTTP1_INCOMPLETE);
	assert_int_equal(
		http1_parse_request(S("GET / HTTP/1.1\r\nHost: h\r\n"), &DEF_LIM, &req, hdrs),
		HTTP1_INCOMPLETE);
	assert_int_equal(
		http1_parse_request(S("GET / HTTP/1.1\r\nHost: h\r\n\r"), &DEF_LIM, &req, hdrs),
		HTTP1_INCOMPLETE);
}

/* Mutated valid requests at the guard page: the parser never reads past the
 * buffer, never claims more than it got, and what it accepts is clean. */
static void test_request_mutations(void **state)
{
	static const char *const seeds[] = {
		"POST http://[::1]:8/a?b HTTP/1.1\r\nHost: h:1\r\nContent-Length: 12\r\n"
		"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET /aaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.0\r\nX-Aaaaaaaaaaaaaaaaaaaaa: "
		"bbbbbbbbbbbbbbbbbbb"
		"bbbbbbbbbb\r\nExpect: 100-continue\r\n\r\n",
	};
	static const char bytes[] = {'\r', '\n', ' ', '\t', ':', ',', '\0', '\x7f', '\x80', '#',
				     '0',  'a',	 '/', '[',  ']', '@', ';',  '"',    'Z'};
	struct guard *g = *state;
	struct http_limits lim = {80, 150, 8};
	uint32_t rnd = 12345;
	unsigned int n, s;

	for (s = 0; s < sizeof(seeds) / sizeof(seeds[0]); s++) {
		size_t len = strlen(seeds[s]);

		for (n = 0; n < 4000; n++) {
			char buf[256];
			struct http_req req;
			struct http_hdr hdrs[8];
			const char *cp;
			unsigned int k, i;
			size_t cut;
			int r;

			memcpy(buf, seeds[s], len);
			for (k = 0; k < 3; k++) {
				rnd = rnd * 1103515245 + 12345;
				buf[(rnd >> 8) % len] = bytes[(rnd >> 20) % sizeof(bytes)];
			}
			rnd = rnd * 1103515245 + 12345;
			cut = len - (rnd >> 16) % 8;
			cp = guard_put(g, buf, cut);
			r = http1_parse_request(cp, cut, &lim, &req, hdrs);
			if (r == HTTP1_INCOMPLETE)
				continue;
			if (r < 0) {
				assert_true(r == -400 || r == -414 || r == -431 || r == -501 ||
					    r == -505 || r == -417);
				continue;
			}
			assert_true((size_t)r <= cut && r == (int)req.head_len);
			assert_true(req.nhdrs <= lim.max_headers);
			for (i = 0; i < req.target_len; i++)
				assert_true(req.target[i] > 0x20 && req.target[i] < 0x7f);
			for (i = 0; i < req.nhdrs; i++) {
				const unsigned char *v = (const unsigned char *)hdrs[i].value;
				unsigned int j;

				assert_true(hdrs[i].name_len > 0);
				for (j = 0; j < hdrs[i].value_len; j++)
					assert_true(v[j] == '\t' || (v[j] >= 0x20 && v[j] != 0x7f));
			}
			assert_true(!(req.body == HTTP_BODY_CHUNKED && req.minor == 0));
		}
	}
}

/* ---- responses ------------------------------------------------------------ */

struct resp_case {
	const char *name;
	const char *in;
	size_t len;
	int req_method;
	int head; /* expected result; 0: all of in */
	int status;
	int minor;
	int body;
	uint64_t cl;
	unsigned int flags;
	unsigned int nhdrs;
	const char *reason;
};

static const struct resp_case valid_resps[] = {
	{"200 with length", S("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), HTTP_M_GET, 38,
	 200, 1, HTTP_BODY_LENGTH, 5, 0, 1, "OK"},
	{"head response keeps cl but has no body",
	 S("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), HTTP_M_HEAD, 0, 200, 1, HTTP_BODY_NONE,
	 5, 0, 1, "OK"},
	{"head response with chunked", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
	 HTTP_M_HEAD, 0, 200, 1, HTTP_BODY_NONE, 0, 0, 1, "OK"},
	{"204", S("HTTP/1.1 204 No Content\r\n\r\n"), HTTP_M_DELETE, 0, 204, 1, HTTP_BODY_NONE, 0,
	 0, 0, "No Content"},
	{"304 with cl", S("HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n"), HTTP_M_GET,
	 0, 304, 1, HTTP_BODY_NONE, 100, 0, 1, "Not Modified"},
	{"100 continue", S("HTTP/1.1 100 Continue\r\n\r\n"), HTTP_M_POST, 0, 100, 1, HTTP_BODY_NONE,
	 0, 0, 0, "Continue"},
	{"101 upgrade",
	 S("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
	 HTTP_M_GET, 0, 101, 1, HTTP_BODY_NONE, 0, HTTP_F_CONN_UPGRADE | HTTP_F_UPGRADE, 2,
	 "Switching Protocols"},
	{"chunked", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), HTTP_M_GET, 0, 200,
	 1, HTTP_BODY_CHUNKED, 0, 0, 1, "OK"},
	{"gzip then chunked",
	 S("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n\r\n"),
	 HTTP_M_GET, 0, 200, 1, HTTP_BODY_CHUNKED, 0, 0, 2, "OK"},
	{"gzip only reads until eof", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
	 HTTP_M_GET, 0, 200, 1, HTTP_BODY_UNTIL_EOF, 0, 0, 1, "OK"},
	{"no framing reads until eof", S("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"),
	 HTTP_M_GET, 0, 200, 1, HTTP_BODY_UNTIL_EOF, 0, HTTP_F_CONN_CLOSE, 1, "OK"},
	{"connect 200", S("HTTP/1.1 200 Connection Established\r\n\r\n"), HTTP_M_CONNECT, 0, 200, 1,
	 HTTP_BODY_NONE, 0, 0, 0, "Connection Established"},
	{"connect 407 has a body",
	 S("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 3\r\n\r\n"),
	 HTTP_M_CONNECT, 0, 407, 1, HTTP_BODY_LENGTH, 3, 0, 1, "Proxy Authentication Required"},
	{"http/1.0 plain", S("HTTP/1.0 200 OK\r\n\r\n"), HTTP_M_GET, 0, 200, 0, HTTP_BODY_UNTIL_EOF,
	 0, 0, 0, "OK"},
	{"http/1.0 keep-alive",
	 S("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"), HTTP_M_GET, 0,
	 200, 0, HTTP_BODY_LENGTH, 0, HTTP_F_CONN_KEEPALIVE, 2, "OK"},
	{"bare lf line ends", S("HTTP/1.1 200 OK\nContent-Length: 2\nX: y\r\n\n"), HTTP_M_GET, 0,
	 200, 1, HTTP_BODY_LENGTH, 2, 0, 2, "OK"},
	{"no reason no space", S("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"), HTTP_M_GET, 0, 200,
	 1, HTTP_BODY_LENGTH, 0, 0, 1, ""},
	{"empty reason", S("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n"), HTTP_M_GET, 0, 404, 1,
	 HTTP_BODY_LENGTH, 0, 0, 1, ""},
	{"reason with obs-text and tab", S("HTTP/1.1 500 Erreur\tinterne \xe9\r\n\r\n"), HTTP_M_GET,
	 0, 500, 1, HTTP_BODY_UNTIL_EOF, 0, 0, 0, "Erreur\tinterne \xe9"},
	{"cl list", S("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n"), HTTP_M_GET, 0, 200, 1,
	 HTTP_BODY_LENGTH, 7, 0, 1, "OK"},
	{"status 599", S("HTTP/1.1 599 Odd\r\n\r\n"), HTTP_M_GET, 0, 599, 1, HTTP_BODY_UNTIL_EOF, 0,
	 0, 0, "Odd"},
	{"http/1.1 response to head with two heads",
	 S("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"), HTTP_M_HEAD, 38,
	 200, 1, HTTP_BODY_NONE, 9, 0, 1, "OK"},
};

static void same_resp(const char *name, const struct http_resp *a, const char *abuf,
		      const struct http_resp *b, const char *bbuf)
{
	unsigned int i;

	EXPECT_EQ(name, a->status, b->status);
	EXPECT_EQ(name, off(a->reason, abuf), off(b->reason, bbuf));
	EXPECT_EQ(name, a->reason_len, b->reason_len);
	EXPECT_EQ(name, a->minor, b->minor);
	EXPECT_EQ(name, a->nhdrs, b->nhdrs);
	EXPECT_EQ(name, a->body, b->body);
	EXPECT_EQ(name, a->content_length, b->content_length);
	EXPECT_EQ(name, a->flags, b->flags);
	EXPECT_EQ(name, a->head_len, b->head_len);
	for (i = 0; i < a->nhdrs; i++) {
		EXPECT_EQ(name, off(a->hdrs[i].name, abuf), off(b->hdrs[i].name, bbuf));
		EXPECT_EQ(name, off(a->hdrs[i].value, abuf), off(b->hdrs[i].value, bbuf));
		EXPECT_EQ(name, a->hdrs[i].value_len, b->hdrs[i].value_len);
	}
}

/* As parse_req_everywhere, for responses. */
static int parse_resp_everywhere(struct guard *g, const char *name, const char *in, size_t len,
				 const struct http_limits *lim, int method, struct http_resp *resp,
				 struct http_hdr *hdrs)
{
	struct http_resp r2;
	struct http_hdr h2[MAX_HDRS];
	size_t k;
	int ret = http1_parse_response(in, len, lim, method, resp, hdrs);

	for (k = 0; k <= len; k++) {
		const char *cp = guard_put(g, in, k);
		int r = http1_parse_response(cp, k, lim, method, &r2, h2);

		if (ret > 0 && k < (size_t)ret) {
			if (r != HTTP1_INCOMPLETE)
				fail_msg("%s: prefix %zu gave %d, want INCOMPLETE", name, k, r);
		} else if (ret > 0) {
			EXPECT_EQ(name, r, ret);
			same_resp(name, resp, in, &r2, cp);
		} else if (r != HTTP1_INCOMPLETE && r != ret) {
			fail_msg("%s: prefix %zu gave %d, whole input %d", name, k, r, ret);
		}
	}
	return ret;
}

static void test_response_valid_table(void **state)
{
	struct guard *g = *state;
	size_t i;

	for (i = 0; i < sizeof(valid_resps) / sizeof(valid_resps[0]); i++) {
		const struct resp_case *c = &valid_resps[i];
		struct http_resp resp;
		struct http_hdr hdrs[MAX_HDRS];
		int want = c->head ? c->head : (int)c->len;
		int r = parse_resp_everywhere(g, c->name, c->in, c->len, &DEF_LIM, c->req_method,
					      &resp, hdrs);

		EXPECT_EQ(c->name, r, want);
		EXPECT_EQ(c->name, resp.head_len, want);
		EXPECT_EQ(c->name, resp.status, c->status);
		EXPECT_EQ(c->name, resp.minor, c->minor);
		EXPECT_EQ(c->name, resp.body, c->body);
		EXPECT_EQ(c->name, resp.content_length, c->cl);
		EXPECT_EQ(c->name, resp.flags, c->flags);
		EXPECT_EQ(c->name, resp.nhdrs, c->nhdrs);
		EXPECT_EQ(c->name, resp.reason_len, strlen(c->reason));
		if (memcmp(resp.reason, c->reason, resp.reason_len))
			fail_msg("%s: reason %.*s", c->name, (int)resp.reason_len, resp.reason);
	}
}

static const struct bad_case bad_resps[] = {
	{"te and cl",
	 S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"), -502},
	{"te and cl on 204",
	 S("HTTP/1.1 204 OK\r\nContent-Length: 0\r\nTransfer-Encoding: chunked"
	   "\r\n\r\n"),
	 -502},
	{"differing cl", S("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
	 -502},
	{"bad cl", S("HTTP/1.1 200 OK\r\nContent-Length: 3a\r\n\r\n"), -502},
	{"bad cl on head", S("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), -502},
	{"chunked twice", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
	 -502},
	{"chunked not last", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
	 -502},
	{"te empty element", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: ,chunked\r\n\r\n"), -502},
	{"te in http/1.0", S("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), -502},
	{"obs-fold", S("HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\n\r\n"), -502},
	{"space before colon", S("HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n"), -502},
	{"nul in value", S("HTTP/1.1 200 OK\r\nX-A: a\0b\r\n\r\n"), -502},
	{"bare cr", S("HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n"), -502},
	{"control in reason", S("HTTP/1.1 200 O\x01K\r\n\r\n"), -502},
	{"status 099", S("HTTP/1.1 099 Low\r\n\r\n"), -502},
	{"status with letter", S("HTTP/1.1 2x0 OK\r\n\r\n"), -502},
	{"status two digits", S("HTTP/1.1 20 OK\r\n\r\n"), -502},
	{"status four digits", S("HTTP/1.1 2000 OK\r\n\r\n"), -502},
	{"reason glued to status", S("HTTP/1.1 200OK\r\n\r\n"), -502},
	{"two spaces before status", S("HTTP/1.1  200 OK\r\n\r\n"), -502},
	{"http/2 status line", S("HTTP/2 200 OK\r\n\r\n"), -502},
	{"http/2.0 status line", S("HTTP/2.0 200 OK\r\n\r\n"), -502},
	{"not http", S("ICY 200 OK\r\n\r\n"), -502},
	{"head over max_head complete",
	 S("HTTP/1.1 200 OK\r\nX-Long: 0123456789012345678901234567890123456789\r\n\r\n"), -502,
	 SMALL_HEAD},
	{"head over max_head incomplete",
	 S("HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\nX-E: 5\r\nX-F: 6\r\n"), -502,
	 SMALL_HEAD},
	{"too many fields", S("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"), -502,
	 FEW_HDRS},
};

static void test_response_malformed_table(void **state)
{
	struct guard *g = *state;
	size_t i;

	for (i = 0; i < sizeof(bad_resps) / sizeof(bad_resps[0]); i++) {
		const struct bad_case *c = &bad_resps[i];
		const struct http_limits *lim = c->lim.max_line ? &c->lim : &DEF_LIM;
		struct http_resp resp;
		struct http_hdr hdrs[MAX_HDRS];
		int r = parse_resp_everywhere(g, c->name, c->in, c->len, lim, HTTP_M_GET, &resp,
					      hdrs);

		EXPECT_EQ(c->name, r, c->status);
	}
}

/* RFC 9110 15: status codes live in 100..599; 600 and above are not
 * responses a client could interpret, so the proxy answers 502. */
static void test_response_status_range(void **state)
{
	static const struct {
		const char *in;
		size_t len;
		int status;
	} cases[] = {
		{S("HTTP/1.1 100 Continue\r\n\r\n"), 100},
		{S("HTTP/1.1 599 Custom\r\nContent-Length: 0\r\n\r\n"), 599},
		{S("HTTP/1.1 600 High\r\nContent-Length: 0\r\n\r\n"), -502},
		{S("HTTP/1.1 700 High\r\n\r\n"), -502},
		{S("HTTP/1.1 999 High\r\n\r\n"), -502},
	};
	struct guard *g = *state;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct http_resp resp;
		struct http_hdr hdrs[MAX_HDRS];
		int r = parse_resp_everywhere(g, cases[i].in, cases[i].in, cases[i].len, &DEF_LIM,
					      HTTP_M_GET, &resp, hdrs);

		if (cases[i].status < 0) {
			EXPECT_EQ(cases[i].in, r, cases[i].status);
		} else {
			EXPECT_EQ(cases[i].in, r, (int)cases[i].len);
			EXPECT_EQ(cases[i].in, resp.status, cases[i].status);
		}
	}
}

/* The framing verdict for one head over every status class and method. */
static void test_response_framing_matrix(void **state)
{
	static const struct {
		int status, method, body;
	} rows[] = {
		{100, HTTP_M_GET, HTTP_BODY_NONE},	 {199, HTTP_M_GET, HTTP_BODY_NONE},
		{200, HTTP_M_GET, HTTP_BODY_LENGTH},	 {200, HTTP_M_HEAD, HTTP_BODY_NONE},
		{200, HTTP_M_CONNECT, HTTP_BODY_NONE},	 {204, HTTP_M_GET, HTTP_BODY_NONE},
		{205, HTTP_M_GET, HTTP_BODY_LENGTH},	 {299, HTTP_M_CONNECT, HTTP_BODY_NONE},
		{301, HTTP_M_CONNECT, HTTP_BODY_LENGTH}, {304, HTTP_M_GET, HTTP_BODY_NONE},
		{404, HTTP_M_HEAD, HTTP_BODY_NONE},	 {500, HTTP_M_POST, HTTP_BODY_LENGTH},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		char buf[64];
		struct http_resp resp;
		struct http_hdr hdrs[4];
		int n = snprintf(buf, sizeof(buf), "HTTP/1.1 %d X\r\nContent-Length: 4\r\n\r\n",
				 rows[i].status);
		int r = http1_parse_response(buf, (size_t)n, &DEF_LIM, rows[i].method, &resp, hdrs);

		EXPECT_EQ(buf, r, n);
		EXPECT_EQ(buf, resp.body, rows[i].body);
		EXPECT_EQ(buf, resp.content_length, 4);
	}
}

/* ---- chunked decoder ------------------------------------------------------ */

struct dechunk {
	int result;	 /* last step result */
	size_t consumed; /* bytes of the input used */
	size_t out_len;
	char out[4096];
};

/* Feeds in[0..len) in pieces of at most `piece` bytes (0: all at once), each
 * piece copied to the end of the guard page, collecting the data. Stops at
 * DONE or ERROR. */
static void dechunk(struct guard *g, struct http_chunked *c, const char *in, size_t len,
		    size_t piece, struct dechunk *d)
{
	size_t pos = 0;

	memset(d, 0, sizeof(*d));
	d->result = HTTP_CHUNK_AGAIN;
	while (pos < len) {
		size_t n = piece && len - pos > piece ? piece : len - pos;
		const char *cp = guard_put(g, in + pos, n);
		size_t at = 0;

		while (at < n) {
			size_t used, doff, dlen;
			int r = http1_chunked_step(c, cp + at, n - at, &used, &doff, &dlen);

			assert_true(used <= n - at);
			d->result = r;
			if (r == HTTP_CHUNK_DATA) {
				assert_true(dlen > 0 && doff + dlen == used);
				assert_true(d->out_len + dlen <= sizeof(d->out));
				memcpy(d->out + d->out_len, cp + at + doff, dlen);
				d->out_len += dlen;
			} else if (r == HTTP_CHUNK_AGAIN) {
				assert_int_equal(used, n - at);
			} else {
				d->consumed = pos + at + used;
				return;
			}
			at += used;
		}
		pos += n;
	}
	d->consumed = pos;
}

struct chunk_case {
	const char *name;
	const char *in;
	size_t len;
	int strict;
	int result;	  /* final result */
	size_t consumed;  /* 0: all of in */
	const char *data; /* decoded body when DONE, NULL for errors */
	size_t data_len;
};

static const struct chunk_case chunk_cases[] = {
	{"two chunks", S("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), 1, HTTP_CHUNK_DONE, 0,
	 S("hello world")},
	{"hex sizes and leading zeros",
	 S("000a\r\n0123456789\r\nF\r\nabcdefghijklmno\r\n00\r\n\r\n"), 1, HTTP_CHUNK_DONE, 0,
	 S("0123456789abcdefghijklmno")},
	{"sixteen digits", S("0000000000000003\r\nabc\r\n0\r\n\r\n"), 1, HTTP_CHUNK_DONE, 0,
	 S("abc")},
	{"extensions",
	 S("5;a=b\r\nhello\r\n1 ; x = \"q \\\"t\\\" \" ;y;z=1\r\n!\r\n0;last\r\n\r\n"), 1,
	 HTTP_CHUNK_DONE, 0, S("hello!")},
	{"trailers", S("3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-Empty:\r\nX-T:\tv v\r\n\r\n"), 1,
	 HTTP_CHUNK_DONE, 0, S("abc")},
	{"stops after the body", S("1\r\nx\r\n0\r\n\r\nGET / HTTP/1.1\r\n"), 1, HTTP_CHUNK_DONE, 11,
	 S("x")},
	{"binary data with crlf inside", S("4\r\n\r\n\0\n\r\n0\r\n\r\n"), 1, HTTP_CHUNK_DONE, 0,
	 S("\r\n\0\n")},
	{"lenient bare lf", S("5\nhello\n0\nX: 1\n\n"), 0, HTTP_CHUNK_DONE, 0, S("hello")},
	{"lenient mixed", S("2;e\nhi\r\n0\r\n\n"), 0, HTTP_CHUNK_DONE, 0, S("hi")},
	/* errors: consumed is where the offending byte sits */
	{"bad hex", S("5g\r\nhello\r\n0\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 1, NULL, 0},
	{"no size", S("\r\nhello\r\n"), 1, HTTP_CHUNK_ERROR, 0, NULL, 0},
	{"hex prefix", S("0x5\r\nhello\r\n0\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 1, NULL, 0},
	{"negative", S("-5\r\nhello\r\n0\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 0, NULL, 0},
	{"space before size", S(" 5\r\nhello\r\n0\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 0, NULL, 0},
	{"plus sign", S("+5\r\nhello\r\n"), 1, HTTP_CHUNK_ERROR, 0, NULL, 0},
	{"seventeen digits", S("00000000000000005\r\nhello\r\n"), 1, HTTP_CHUNK_ERROR, 16, NULL, 0},
	{"overflow 2^62", S("4000000000000000\r\n"), 1, HTTP_CHUNK_ERROR, 15, NULL, 0},
	{"overflow 2^64", S("ffffffffffffffff\r\n"), 1, HTTP_CHUNK_ERROR, 15, NULL, 0},
	{"missing crlf after data", S("5\r\nhelloX\r\n0\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 8, NULL, 0},
	{"lf only after data strict", S("5\r\nhello\n0\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 8, NULL, 0},
	{"cr without lf after data", S("5\r\nhello\r0\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 9, NULL, 0},
	{"bare lf after size strict", S("5\nhello\r\n0\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 1, NULL, 0},
	{"bare lf in trailer strict", S("0\r\nX: 1\n\r\n"), 1, HTTP_CHUNK_ERROR, 7, NULL, 0},
	{"bare lf final strict", S("0\r\n\n"), 1, HTTP_CHUNK_ERROR, 3, NULL, 0},
	{"bare cr after size lenient", S("5\rhello\r\n"), 0, HTTP_CHUNK_ERROR, 2, NULL, 0},
	{"trailing space without ext", S("5 \r\nhello\r\n0\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 2, NULL,
	 0},
	{"ext without name", S("5;\r\nhello\r\n0\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 2, NULL, 0},
	{"ext name then bws then cr", S("5;a \r\nhello\r\n0\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 4,
	 NULL},
	{"ext empty value", S("5;a=\r\nhello\r\n0\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 4, NULL, 0},
	{"ext bad name", S("5;a@b\r\nhello\r\n"), 1, HTTP_CHUNK_ERROR, 3, NULL, 0},
	{"ext unterminated quote", S("5;a=\"x\r\nhello\r\n"), 1, HTTP_CHUNK_ERROR, 6, NULL, 0},
	{"ext junk after quote", S("5;a=\"x\"y\r\nhello\r\n"), 1, HTTP_CHUNK_ERROR, 7, NULL, 0},
	{"trailer obs-fold", S("0\r\nX: 1\r\n 2\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 9, NULL, 0},
	{"trailer space before colon", S("0\r\nX : 1\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 4, NULL, 0},
	{"trailer empty name", S("0\r\n: 1\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 3, NULL, 0},
	{"trailer nul", S("0\r\nX: \0\r\n\r\n"), 1, HTTP_CHUNK_ERROR, 6, NULL, 0},
	{"final cr without lf", S("0\r\n\rX"), 1, HTTP_CHUNK_ERROR, 4, NULL, 0},
};

static void test_chunked_table(void **state)
{
	struct guard *g = *state;
	size_t i, piece;

	for (i = 0; i < sizeof(chunk_cases) / sizeof(chunk_cases[0]); i++) {
		const struct chunk_case *c = &chunk_cases[i];
		size_t want = c->consumed ? c->consumed : c->len;

		if (c->result == HTTP_CHUNK_ERROR && !c->consumed)
			want = 0;
		/* whole, byte at a time, and a few odd piece sizes */
		for (piece = 0; piece <= 7; piece++) {
			struct http_chunked ch;
			struct dechunk d;

			http1_chunked_init(&ch, c->strict);
			dechunk(g, &ch, c->in, c->len, piece, &d);
			EXPECT_EQ(c->name, d.result, c->result);
			EXPECT_EQ(c->name, d.consumed, want);
			if (c->data) {
				EXPECT_EQ(c->name, d.out_len, c->data_len);
				if (memcmp(d.out, c->data, d.out_len))
					fail_msg("%s: data %.*s", c->name, (int)d.out_len, d.out);
			}
		}
	}
}

/* Two pieces split at every position give the same body as one. */
static void test_chunked_every_split(void **state)
{
	static const char in[] = "4;ext=\"a;b\"\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks."
				 "\r\n0\r\nExpires: never\r\n\r\n";
	struct guard *g = *state;
	size_t split, len = sizeof(in) - 1;

	for (split = 0; split <= len; split++) {
		struct http_chunked c;
		struct dechunk d;
		char out[64];
		size_t out_len = 0, parts[2] = {split, len - split}, base = 0;
		int p, result = HTTP_CHUNK_AGAIN;

		http1_chunked_init(&c, 1);
		for (p = 0; p < 2; p++) {
			dechunk(g, &c, in + base, parts[p], 0, &d);
			memcpy(out + out_len, d.out, d.out_len);
			out_len += d.out_len;
			if (parts[p])
				result = d.result;
			base += parts[p];
		}
		assert_int_equal(result, HTTP_CHUNK_DONE);
		assert_int_equal(out_len, 23);
		assert_memory_equal(out, "Wikipedia in\r\n\r\nchunks.", 23);
	}
}

/* After DONE (or ERROR) the decoder stays there and takes nothing more. */
static void test_chunked_sticky_end(void **state)
{
	struct http_chunked c;
	size_t used, doff, dlen;

	(void)state;
	http1_chunked_init(&c, 1);
	assert_int_equal(http1_chunked_step(&c, S("0\r\n\r\nmore"), &used, &doff, &dlen),
			 HTTP_CHUNK_DONE);
	assert_int_equal(used, 5);
	assert_int_equal(http1_chunked_step(&c, S("0\r\n\r\n"), &used, &doff, &dlen),
			 HTTP_CHUNK_DONE);
	assert_int_equal(used, 0);

	http1_chunked_init(&c, 1);
	assert_int_equal(http1_chunked_step(&c, S("z"), &used, &doff, &dlen), HTTP_CHUNK_ERROR);
	assert_int_equal(http1_chunked_step(&c, S("0\r\n\r\n"), &used, &doff, &dlen),
			 HTTP_CHUNK_ERROR);
	assert_int_equal(used, 0);

	/* an empty feed is not an error */
	http1_chunked_init(&c, 1);
	assert_int_equal(http1_chunked_step(&c, "", 0, &used, &doff, &dlen), HTTP_CHUNK_AGAIN);
	assert_int_equal(used, 0);
}

/* Data is reported in place, bounded by the chunk and by the input. */
static void test_chunked_zero_copy(void **state)
{
	static const char in[] = "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
	struct http_chunked c;
	size_t used, doff, dlen;

	(void)state;
	http1_chunked_init(&c, 1);
	assert_int_equal(http1_chunked_step(&c, in, sizeof(in) - 1, &used, &doff, &dlen),
			 HTTP_CHUNK_DATA);
	assert_int_equal(doff, 3);
	assert_int_equal(dlen, 3);
	assert_int_equal(used, 6);
	assert_int_equal(http1_chunked_step(&c, in + 6, sizeof(in) - 7, &used, &doff, &dlen),
			 HTTP_CHUNK_DATA);
	assert_ptr_equal(in + 6 + doff, in + 11);
	assert_int_equal(dlen, 2);
	/* a chunk larger than the input: the data so far, then the rest */
	http1_chunked_init(&c, 1);
	assert_int_equal(http1_chunked_step(&c, S("a\r\n0123"), &used, &doff, &dlen),
			 HTTP_CHUNK_DATA);
	assert_int_equal(dlen, 4);
	assert_int_equal(c.remaining, 6);
	/* a zeroed struct works too, with the default limits */
	memset(&c, 0, sizeof(c));
	assert_int_equal(http1_chunked_step(&c, S("1\r\nx\r\n0\r\n\r\n"), &used, &doff, &dlen),
			 HTTP_CHUNK_DATA);
}

/* The size/ext line and the trailer section are bounded. */
static void test_chunked_limits(void **state)
{
	struct guard *g = *state;
	char buf[20000];
	struct http_chunked c;
	struct dechunk d;
	size_t n;

	/* an extension line of 5000 bytes against the 4096 default */
	n = (size_t)snprintf(buf, sizeof(buf), "5;");
	memset(buf + n, 'a', 5000);
	n += 5000;
	memcpy(buf + n, "\r\nhello\r\n0\r\n\r\n", 14);
	n += 14;
	http1_chunked_init(&c, 1);
	dechunk(g, &c, buf, n, 0, &d);
	assert_int_equal(d.result, HTTP_CHUNK_ERROR);
	assert_int_equal(d.consumed, 4096);
	memset(&c, 0, sizeof(c)); /* zero limits mean the defaults */
	c.strict = 1;
	dechunk(g, &c, buf, n, 1, &d);
	assert_int_equal(d.result, HTTP_CHUNK_ERROR);

	/* a custom line limit counts the CRLF: "5;ab\r\n" is 6 bytes */
	http1_chunked_init(&c, 1);
	c.max_line = 6;
	dechunk(g, &c, S("5;ab\r\nhello\r\n0\r\n\r\n"), 1, &d);
	assert_int_equal(d.result, HTTP_CHUNK_DONE);
	http1_chunked_init(&c, 1);
	c.max_line = 5;
	dechunk(g, &c, S("5;ab\r\nhello\r\n0\r\n\r\n"), 1, &d);
	assert_int_equal(d.result, HTTP_CHUNK_ERROR);

	/* the limit is per line: many short chunks are fine */
	http1_chunked_init(&c, 1);
	c.max_line = 3;
	dechunk(g, &c, S("1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n"), 0, &d);
	assert_int_equal(d.result, HTTP_CHUNK_DONE);
	assert_int_equal(d.out_len, 3);

	/* trailers: 17000 bytes against the 16384 default, then a custom one */
	n = (size_t)snprintf(buf, sizeof(buf), "0\r\n");
	while (n < 17000) {
		memcpy(buf + n, "X-Filler: 0123456789\r\n", 22);
		n += 22;
	}
	memcpy(buf + n, "\r\n", 2);
	n += 2;
	http1_chunked_init(&c, 1);
	dechunk(g, &c, buf, n, 0, &d);
	assert_int_equal(d.result, HTTP_CHUNK_ERROR);
	assert_int_equal(d.consumed, 3 + 16384);
	http1_chunked_init(&c, 1);
	c.max_trailer = 20000;
	dechunk(g, &c, buf, n, 0, &d);
	assert_int_equal(d.result, HTTP_CHUNK_DONE);
	http1_chunked_init(&c, 1);
	c.max_trailer = 10; /* "X-A: 1\r\n" + "\r\n" */
	dechunk(g, &c, S("0\r\nX-A: 1\r\n\r\n"), 0, &d);
	assert_int_equal(d.result, HTTP_CHUNK_DONE);
	http1_chunked_init(&c, 1);
	c.max_trailer = 9;
	dechunk(g, &c, S("0\r\nX-A: 1\r\n\r\n"), 0, &d);
	assert_int_equal(d.result, HTTP_CHUNK_ERROR);
}

/* A large chunk size just below 2^62 is accepted and counted down. */
static void test_chunked_big_size(void **state)
{
	struct http_chunked c;
	size_t used, doff, dlen;

	(void)state;
	http1_chunked_init(&c, 1);
	assert_int_equal(http1_chunked_step(&c, S("3fffffffffffffff\r\nab"), &used, &doff, &dlen),
			 HTTP_CHUNK_DATA);
	assert_int_equal(dlen, 2);
	assert_true(c.remaining == 0x3fffffffffffffffULL - 2);
}

/* Mutated chunked bodies fed in random pieces at the guard page: no read past
 * a piece, and the invariants of dechunk() hold whatever the bytes. */
static void test_chunked_mutations(void **state)
{
	static const char seed[] =
		"a;n=\"v\\\"\"\r\n0123456789\r\n3 ; e\r\nabc\r\n0\r\nT: x\r\n\r\n";
	static const char bytes[] = {'\r', '\n', ' ', ';', '=', '"',
				     '\\', '0',	 'f', 'g', ':', '\0'};
	struct guard *g = *state;
	uint32_t rnd = 777;
	size_t len = sizeof(seed) - 1;
	unsigned int n, done = 0;

	for (n = 0; n < 20000; n++) {
		char buf[sizeof(seed)];
		struct http_chunked c;
		struct dechunk d;
		unsigned int k;

		memcpy(buf, seed, len);
		for (k = 0; k < 2; k++) {
			rnd = rnd * 1103515245 + 12345;
			buf[(rnd >> 8) % len] = bytes[(rnd >> 20) % sizeof(bytes)];
		}
		rnd = rnd * 1103515245 + 12345;
		http1_chunked_init(&c, (int)(rnd >> 30) & 1);
		dechunk(g, &c, buf, len, (rnd >> 8) % 9, &d);
		assert_true(d.consumed <= len && d.out_len <= len);
		if (d.result == HTTP_CHUNK_DONE)
			done++;
	}
	/* the seed survives some mutations (inside data): the test saw both sides */
	assert_true(done > 0 && done < n);
}

/* ---- helpers -------------------------------------------------------------- */

static void test_reason(void **state)
{
	static const struct {
		int status;
		const char *reason;
	} rows[] = {
		{100, "Continue"},
		{101, "Switching Protocols"},
		{200, "OK"},
		{203, "Non-Authoritative Information"},
		{206, "Partial Content"},
		{301, "Moved Permanently"},
		{304, "Not Modified"},
		{308, "Permanent Redirect"},
		{400, "Bad Request"},
		{404, "Not Found"},
		{413, "Content Too Large"},
		{414, "URI Too Long"},
		{417, "Expectation Failed"},
		{429, "Too Many Requests"},
		{431, "Request Header Fields Too Large"},
		{451, "Unavailable For Legal Reasons"},
		{500, "Internal Server Error"},
		{501, "Not Implemented"},
		{502, "Bad Gateway"},
		{505, "HTTP Version Not Supported"},
		{102, "Unknown"},
		{207, "Unknown"},
		{306, "Unknown"},
		{432, "Unknown"},
		{506, "Unknown"},
		{0, "Unknown"},
		{-1, "Unknown"},
		{999, "Unknown"},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
		assert_string_equal(http1_reason(rows[i].status), rows[i].reason);
}

static void test_token_eq_and_find(void **state)
{
	static const char name[] = "Content-LENGTH";
	struct http_hdr hdrs[3] = {
		{"Host", "a", 4, 1},
		{"X-A", "1", 3, 1},
		{"x-a", "2", 3, 1},
	};
	const struct http_hdr *h;

	(void)state;
	assert_true(http1_token_eq(name, 14, "content-length"));
	assert_true(http1_token_eq(name, 14, "CONTENT-length"));
	assert_false(http1_token_eq(name, 13, "content-length"));
	assert_false(http1_token_eq(name, 14, "content-lengt"));
	assert_false(http1_token_eq(name, 14, "content-lengthx"));
	assert_true(http1_token_eq(name, 0, ""));
	assert_false(http1_token_eq("[", 1, "{")); /* not a letter: no case folding */
	assert_false(http1_token_eq("\r", 1, "-"));

	h = http1_find(hdrs, 3, "x-A");
	assert_ptr_equal(h, &hdrs[1]);
	assert_ptr_equal(http1_find(hdrs, 3, "HOST"), &hdrs[0]);
	assert_null(http1_find(hdrs, 3, "x-b"));
	assert_null(http1_find(hdrs, 0, "host"));
	assert_null(http1_find(hdrs, 3, "hos"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_request_valid_table),
		cmocka_unit_test(test_request_slices),
		cmocka_unit_test(test_request_malformed_table),
		cmocka_unit_test(test_request_limits_boundary),
		cmocka_unit_test(test_request_incomplete),
		cmocka_unit_test(test_request_mutations),
		cmocka_unit_test(test_response_valid_table),
		cmocka_unit_test(test_response_malformed_table),
		cmocka_unit_test(test_response_status_range),
		cmocka_unit_test(test_response_framing_matrix),
		cmocka_unit_test(test_chunked_table),
		cmocka_unit_test(test_chunked_every_split),
		cmocka_unit_test(test_chunked_sticky_end),
		cmocka_unit_test(test_chunked_zero_copy),
		cmocka_unit_test(test_chunked_limits),
		cmocka_unit_test(test_chunked_big_size),
		cmocka_unit_test(test_chunked_mutations),
		cmocka_unit_test(test_reason),
		cmocka_unit_test(test_token_eq_and_find),
	};

	return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
