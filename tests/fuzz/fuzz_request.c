/* libFuzzer harness: http1_parse_request on arbitrary bytes, with invariant checks. */
#include "fuzz.h"

#define MAX_HDRS 100

static const struct http_limits DEF_LIM = {8192, 16384, MAX_HDRS}; /* the daemon's defaults */
static const struct http_limits TIGHT_LIM = {64, 256, 4};	   /* 414 / 431 paths */

/* Parses buf[0..len) and checks what any result promises. Returns the result. */
static int parse(const char *buf, size_t len, const struct http_limits *lim)
{
	struct http_hdr hdrs[MAX_HDRS];
	struct http_req req;
	int rc;

	memset(&req, 0xA5, sizeof(req)); /* nothing may be read before it is set */
	rc = http1_parse_request(buf, len, lim, &req, hdrs);
	if (rc == HTTP1_INCOMPLETE)
		return rc;
	if (rc < 0) {
		FUZZ_CHECK(rc == -400 || rc == -414 || rc == -431 || rc == -501 || rc == -505 ||
			   rc == -417);
		return rc;
	}
	FUZZ_CHECK(rc > 0 && (size_t)rc <= len);
	FUZZ_CHECK(req.head_len == (uint32_t)rc);
	FUZZ_CHECK(req.head_len <= lim->max_head);
	FUZZ_CHECK(req.method >= HTTP_M_OTHER && req.method <= HTTP_M_PATCH);
	FUZZ_CHECK(req.method_len > 0 && fuzz_within(req.method_s, req.method_len, buf, rc));
	FUZZ_CHECK(req.target_len > 0 && fuzz_within(req.target, req.target_len, buf, rc));
	FUZZ_CHECK(req.target_form >= HTTP_TARGET_ORIGIN &&
		   req.target_form <= HTTP_TARGET_ASTERISK);
	FUZZ_CHECK(req.minor == 0 || req.minor == 1);
	FUZZ_CHECK(req.hdrs == hdrs && req.nhdrs <= lim->max_headers);
	FUZZ_CHECK(req.host_idx >= -1 && req.host_idx < (int)req.nhdrs);
	FUZZ_CHECK(req.body >= HTTP_BODY_NONE && req.body <= HTTP_BODY_CHUNKED);
	FUZZ_CHECK(req.body == HTTP_BODY_LENGTH || req.content_length == 0);
	/* what proxy.c takes for granted about the target and Host */
	switch (req.target_form) {
	case HTTP_TARGET_ORIGIN:
		FUZZ_CHECK(req.target[0] == '/');
		break;
	case HTTP_TARGET_ABSOLUTE:
		FUZZ_CHECK((req.target_len > 7 && http1_token_eq(req.target, 7, "http://")) ||
			   (req.target_len > 8 && http1_token_eq(req.target, 8, "https://")));
		break;
	case HTTP_TARGET_AUTHORITY:
		FUZZ_CHECK(req.method == HTTP_M_CONNECT);
		break;
	case HTTP_TARGET_ASTERISK:
		FUZZ_CHECK(req.method == HTTP_M_OPTIONS && req.target_len == 1);
		break;
	}
	FUZZ_CHECK(req.minor == 0 || req.host_idx >= 0);
	if (req.host_idx >= 0)
		FUZZ_CHECK(http1_token_eq(hdrs[req.host_idx].name, hdrs[req.host_idx].name_len,
					  "Host"));
	fuzz_check_hdrs(hdrs, req.nhdrs, buf, rc);
	return rc;
}

/* A head accepted from the whole input is accepted alike from exactly its own
 * bytes, and every proper prefix of it is only incomplete (the daemon parses
 * whatever part has arrived). */
static void check_prefixes(const uint8_t *data, int rc, const struct http_limits *lim)
{
	size_t cuts[3] = {(size_t)rc, (size_t)rc - 1, (size_t)rc / 2}, i;

	for (i = 0; i < 3; i++) {
		char *b = fuzz_dup(data, cuts[i]);
		int r = parse(b, cuts[i], lim);

		FUZZ_CHECK(i == 0 ? r == rc : r == HTTP1_INCOMPLETE);
		free(b);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int rc;

	rc = parse((const char *)data, size, &DEF_LIM);
	if (rc > 0)
		check_prefixes(data, rc, &DEF_LIM);
	rc = parse((const char *)data, size, &TIGHT_LIM);
	if (rc > 0)
		check_prefixes(data, rc, &TIGHT_LIM);
	return 0;
}
