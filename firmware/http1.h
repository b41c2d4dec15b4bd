/* HTTP/1.1 message-head parser (RFC 9112) and chunked decoder: zero-copy, strict. */
#ifndef FG_HTTP1_H
#define FG_HTTP1_H

#include <stddef.h>
#include <stdint.h>

/* Parser results besides "bytes consumed" (> 0). An error result is the
 * negated HTTP status the client should get (-400, -414, -431, -501, -505,
 * -417); a response-parse error is always -502. */
#define HTTP1_INCOMPLETE (-1)

enum http_method {
	HTTP_M_OTHER = 0,
	HTTP_M_GET = 1,
	HTTP_M_HEAD = 2,
	HTTP_M_POST = 3,
	HTTP_M_PUT = 4,
	HTTP_M_DELETE = 5,
	HTTP_M_OPTIONS = 6,
	HTTP_M_TRACE = 7,
	HTTP_M_CONNECT = 8,
	HTTP_M_PATCH = 9,
};

enum http_body {
	HTTP_BODY_NONE = 0,	 /* no body at all */
	HTTP_BODY_LENGTH = 1,	 /* Content-Length bytes */
	HTTP_BODY_CHUNKED = 2,	 /* Transfer-Encoding: chunked */
	HTTP_BODY_UNTIL_EOF = 3, /* response only: read until close */
};

enum http_target_form {
	HTTP_TARGET_ORIGIN = 0,	   /* /path?query */
	HTTP_TARGET_ABSOLUTE = 1,  /* http://host/path */
	HTTP_TARGET_AUTHORITY = 2, /* host:port (CONNECT only) */
	HTTP_TARGET_ASTERISK = 3,  /* * (OPTIONS only) */
};

/* Message flags (bit values). */
#define HTTP_F_CONN_CLOSE      0x01 /* Connection: close */
#define HTTP_F_CONN_KEEPALIVE  0x02 /* Connection: keep-alive */
#define HTTP_F_CONN_UPGRADE    0x04 /* Connection: upgrade token present */
#define HTTP_F_UPGRADE	       0x08 /* Upgrade header present */
#define HTTP_F_EXPECT_CONTINUE 0x10 /* Expect: 100-continue */

/* One header field; both slices point into the caller's buffer. The value
 * has surrounding whitespace removed. */
struct http_hdr {
	const char *name;
	const char *value;
	uint32_t name_len;
	uint32_t value_len;
};

struct http_limits {
	uint32_t max_line;    /* request line (incl. CRLF) -> 414 */
	uint32_t max_head;    /* whole head (incl. final CRLF) -> 431 */
	uint32_t max_headers; /* header count -> 431 */
};

struct http_req {
	int method; /* enum http_method */
	const char *method_s;
	uint32_t method_len;
	const char *target;
	uint32_t target_len;
	int target_form;       /* enum http_target_form */
	int minor;	       /* HTTP/1.<minor>: 0 or 1 */
	struct http_hdr *hdrs; /* caller's array */
	unsigned int nhdrs;
	int host_idx; /* index of the Host header in hdrs, -1 when absent */
	int body;     /* enum http_body (never UNTIL_EOF for requests) */
	uint64_t content_length;
	unsigned int flags; /* HTTP_F_* */
	uint32_t head_len;  /* bytes of the head incl. the empty line */
};

struct http_resp {
	int status;
	const char *reason;
	uint32_t reason_len;
	int minor;
	struct http_hdr *hdrs;
	unsigned int nhdrs;
	int body; /* enum http_body */
	uint64_t content_length;
	unsigned int flags;
	uint32_t head_len;
};

/* Parses a request head from buf[0..len). hdrs has room for
 * lim->max_headers entries. Returns the head length (> 0) and fills req;
 * HTTP1_INCOMPLETE when more bytes are needed (and the limits still allow
 * them); or the negated status for a malformed or refused request. Nothing
 * is copied or allocated. */
int http1_parse_request(const char *buf, size_t len, const struct http_limits *lim,
			struct http_req *req, struct http_hdr *hdrs);

/* Parses a response head. req_method tells whether the request was HEAD or
 * CONNECT (no body). Bare LF line ends are tolerated from backends. Returns
 * the head length, HTTP1_INCOMPLETE, or -502 for an invalid or oversized
 * response (over lim->max_head, or over lim->max_headers fields). */
int http1_parse_response(const char *buf, size_t len, const struct http_limits *lim, int req_method,
			 struct http_resp *resp, struct http_hdr *hdrs);

/* Incremental chunked-body decoder. Zero it (or http1_chunked_init) before
 * the first call. */
struct http_chunked {
	int state;
	int strict;	      /* 1: requests (CRLF only); 0: responses (bare LF ok) */
	uint64_t remaining;   /* data bytes left in the current chunk */
	uint32_t line_len;    /* bytes of the current size/ext or trailer line */
	uint32_t trailer_len; /* total trailer bytes so far */
	uint32_t max_line;    /* limit for a chunk-size/ext line (default 4096) */
	uint32_t max_trailer; /* limit for all trailers (default 16384) */
};

enum http_chunk_result {
	HTTP_CHUNK_AGAIN = 0, /* all of in was consumed, need more */
	HTTP_CHUNK_DATA = 1,  /* data_off and data_len name body bytes in `in` */
	HTTP_CHUNK_DONE = 2,  /* last chunk and trailers consumed */
	HTTP_CHUNK_ERROR = -1,
};

void http1_chunked_init(struct http_chunked *c, int strict);

/* Consumes framing from in[0..len) until it reaches chunk data, the end of
 * the body, or the end of the input. *consumed is always set: the number of
 * bytes of `in` used (including the data bytes reported). On
 * HTTP_CHUNK_DATA, the body bytes are in[*data_off .. *data_off+*data_len). */
int http1_chunked_step(struct http_chunked *c, const char *in, size_t len, size_t *consumed,
		       size_t *data_off, size_t *data_len);

/* Helpers shared by the proxy and the rules engine. */
const char *http1_reason(int status); /* standard reason phrase or "Unknown" */
int http1_token_eq(const char *a, size_t alen, const char *lit); /* ASCII case-insensitive */
const struct http_hdr *http1_find(const struct http_hdr *hdrs, unsigned int n,
				  const char *name); /* case-insensitive; first match */

#endif
