/* libFuzzer harness: the chunked decoder http1_chunked_step, fed its input in
 * fuzzer-chosen slices and checked against the same input fed all at once.
 *
 * Input: byte 0 chooses strict mode and small limits, byte 1 seeds the slice
 * lengths; the rest is the chunked body. */
#include "fuzz.h"

/* What one decoding of a stream produced. */
struct run {
	int result;	 /* the last http1_chunked_step result */
	size_t consumed; /* bytes of the stream consumed in total */
	char *out;	 /* the decoded body: never longer than the stream */
	size_t out_len;
};

static void decoder_init(struct http_chunked *c, uint8_t mode)
{
	http1_chunked_init(c, mode & 1);
	if (mode & 2) {
		c->max_line = 16;
		c->max_trailer = 64;
	}
}

/* One call on in[0..len) with the invariants every call keeps. */
static int step(struct http_chunked *c, const char *in, size_t len, struct run *r)
{
	size_t consumed = (size_t)-1, off = (size_t)-1, dlen = (size_t)-1;
	int was = c->state, res;

	res = http1_chunked_step(c, in, len, &consumed, &off, &dlen);
	FUZZ_CHECK(consumed <= len);
	switch (res) {
	case HTTP_CHUNK_DATA:
		FUZZ_CHECK(dlen > 0 && off <= len && dlen <= len - off);
		FUZZ_CHECK(consumed == off + dlen); /* data ends the call */
		FUZZ_CHECK(r->out_len + dlen <= r->consumed + consumed);
		memcpy(r->out + r->out_len, in + off, dlen);
		r->out_len += dlen;
		break;
	case HTTP_CHUNK_AGAIN:
		FUZZ_CHECK(consumed == len && dlen == 0);
		break;
	case HTTP_CHUNK_DONE:
	case HTTP_CHUNK_ERROR:
		FUZZ_CHECK(dlen == 0);
		break;
	default:
		FUZZ_CHECK(!"unknown result");
	}
	r->consumed += consumed;
	if (r->result == HTTP_CHUNK_DONE || r->result == HTTP_CHUNK_ERROR) {
		/* sticky: nothing more is consumed, the answer stays */
		FUZZ_CHECK(res == r->result && consumed == 0 && c->state == was);
	}
	r->result = res;
	return res;
}

/* Feeds in[0..len) in slices whose lengths come from seed (0: all at once);
 * stops at DONE or ERROR, then checks they are sticky. */
static void decode(const char *in, size_t len, uint8_t mode, uint32_t seed, struct run *r)
{
	struct http_chunked c;
	size_t pos = 0;

	decoder_init(&c, mode);
	memset(r, 0, sizeof(*r));
	r->result = HTTP_CHUNK_AGAIN;
	r->out = malloc(len ? len : 1);
	FUZZ_CHECK(r->out != NULL);
	while (pos < len) {
		size_t n = len - pos, before = r->consumed;
		int res;

		if (seed) {
			seed = seed * 1103515245u + 12345u;
			n = 1 + (seed >> 16) % (n < 17 ? n : 17);
		}
		/* a slice is handed again from what the last call left over */
		while (n > 0) {
			res = step(&c, in + pos, n, r);
			if (res == HTTP_CHUNK_DONE || res == HTTP_CHUNK_ERROR)
				break;
			pos += r->consumed - before;
			n -= r->consumed - before;
			before = r->consumed;
		}
		if (r->result == HTTP_CHUNK_DONE || r->result == HTTP_CHUNK_ERROR)
			break;
	}
	if (r->result == HTTP_CHUNK_DONE || r->result == HTTP_CHUNK_ERROR) {
		step(&c, in, len, r); /* sticky (checked in step) */
		step(&c, in, 0, r);
	}
	FUZZ_CHECK(r->consumed <= len && r->out_len <= r->consumed);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct run whole, sliced;
	uint8_t mode;
	uint32_t seed;
	char *in;

	if (size < 2)
		return 0;
	mode = data[0];
	seed = data[1] | 0x100u; /* never 0: sliced for real */
	data += 2;
	size -= 2;
	in = fuzz_dup(data, size);
	decode(in, size, mode, 0, &whole);
	decode(in, size, mode, seed, &sliced);
	/* how the bytes arrive changes nothing: same end, same place, same body */
	FUZZ_CHECK(whole.result == sliced.result);
	FUZZ_CHECK(whole.consumed == sliced.consumed);
	FUZZ_CHECK(whole.out_len == sliced.out_len);
	FUZZ_CHECK(memcmp(whole.out, sliced.out, whole.out_len) == 0);
	free(whole.out);
	free(sliced.out);
	free(in);
	return 0;
}
