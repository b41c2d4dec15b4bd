/* libFuzzer harness: http1_parse_response on arbitrary bytes, with invariant checks.
 * The first byte chooses the request method (GET, HEAD, CONNECT) and the limits. */
#include "fuzz.h"

#define MAX_HDRS 100

static const struct http_limits LIMS[2] = {
	{8192, 65536, MAX_HDRS}, /* the daemon's: maxResponseHeaderSize */
	{64, 1024, 4},		 /* tight: the 502 paths */
};

static int parse(const char *buf, size_t len, const struct http_limits *lim, int method)
{
	struct http_hdr hdrs[MAX_HDRS];
	struct http_resp resp;
	int rc;

	memset(&resp, 0xA5, sizeof(resp));
	rc = http1_parse_response(buf, len, lim, method, &resp, hdrs);
	if (rc == HTTP1_INCOMPLETE || rc == -502)
		return rc;
	FUZZ_CHECK(rc > 0 && (size_t)rc <= len);
	FUZZ_CHECK(resp.head_len == (uint32_t)rc && resp.head_len <= lim->max_head);
	FUZZ_CHECK(resp.status >= 100 && resp.status <= 999);
	FUZZ_CHECK(fuzz_within(resp.reason, resp.reason_len, buf, rc));
	FUZZ_CHECK(resp.minor >= 0 && resp.minor <= 9); /* HTTP/1.x, x > 1 is 1.1 (RFC 9110 2.5) */
	FUZZ_CHECK(resp.hdrs == hdrs && resp.nhdrs <= lim->max_headers);
	FUZZ_CHECK(resp.body >= HTTP_BODY_NONE && resp.body <= HTTP_BODY_UNTIL_EOF);
	/* RFC 9112 6.3: these never have a body */
	if (method == HTTP_M_HEAD || resp.status < 200 || resp.status == 204 || resp.status == 304)
		FUZZ_CHECK(resp.body == HTTP_BODY_NONE);
	fuzz_check_hdrs(hdrs, resp.nhdrs, buf, rc);
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const int methods[4] = {HTTP_M_GET, HTTP_M_HEAD, HTTP_M_CONNECT, HTTP_M_POST};
	const struct http_limits *lim;
	int method, rc;
	char *b;

	if (size < 1)
		return 0;
	method = methods[data[0] & 3];
	lim = &LIMS[(data[0] >> 2) & 1];
	data++;
	size--;
	b = fuzz_dup(data, size);
	rc = parse(b, size, lim, method);
	free(b);
	if (rc > 0) {
		/* the head alone gives the same; a proper prefix of it is incomplete */
		b = fuzz_dup(data, rc);
		FUZZ_CHECK(parse(b, rc, lim, method) == rc);
		FUZZ_CHECK(parse(b, rc - 1, lim, method) == HTTP1_INCOMPLETE);
		free(b);
	}
	return 0;
}
