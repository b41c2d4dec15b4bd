/* Unit tests of lb.c: the five algorithms, affinity, accounting and reload-proof state. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lb.h"

#define MAXS 8
#define T0   1000000ULL /* a plausible CLOCK_MONOTONIC reading in ms */

static const enum lb_algo all_algos[] = {
	LB_WEIGHTED_ROUND_ROBIN,   LB_LEAST_REQUESTS, LB_LEAST_RESPONSE_TIME,
	LB_WEIGHTED_TOTAL_TRAFFIC, LB_REQUEST_HASH,
};
#define NALGOS (sizeof(all_algos) / sizeof(all_algos[0]))

/* One configuration generation with one farm, built in place (it points
 * into itself, so it is never copied). */
struct tfarm {
	struct config cfg;
	struct farm farm;
	struct server srv[MAXS];
	char addr[MAXS][32];
	char name[32];
};

/* Fills t as the loader would (ARR defaults) with n servers 10.0.0.1.. of
 * the given weights; not attached yet. */
static void tf_build(struct tfarm *t, const char *name, enum lb_algo algo, unsigned int n,
		     const uint32_t *w)
{
	unsigned int i;

	memset(t, 0, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->farm.name = t->name;
	t->farm.enabled = 1;
	t->farm.lb.algorithm = algo;
	t->farm.lb.least_response_time_period_ms = 5000;
	t->farm.servers = t->srv;
	t->farm.nservers = n;
	for (i = 0; i < n; i++) {
		snprintf(t->addr[i], sizeof(t->addr[i]), "10.0.0.%u", i + 1);
		t->srv[i].address = t->addr[i];
		t->srv[i].http_port = 80;
		t->srv[i].https_port = 443;
		t->srv[i].enabled = 1;
		t->srv[i].weight = w[i];
		t->srv[i].farm = &t->farm;
		t->srv[i].idx = i;
	}
	t->cfg.refcnt = 1;
	t->cfg.farms = &t->farm;
	t->cfg.nfarms = 1;
}

/* tf_build, then lb_attach as the proxy does before using a generation. */
static void tf_init(struct tfarm *t, const char *name, enum lb_algo algo, unsigned int n,
		    const uint32_t *w)
{
	tf_build(t, name, algo, n, w);
	assert_int_equal(lb_attach(&t->cfg), 0);
}

static void tf_fini(struct tfarm *t)
{
	lb_detach(&t->cfg);
}

/* Index of the picked server, or -1 for NULL. */
static int idx_of(const struct tfarm *t, const struct server *s)
{
	if (!s)
		return -1;
	assert_true(s >= t->srv && s < t->srv + t->farm.nservers);
	return (int)(s - t->srv);
}

static int pick_idx(struct tfarm *t, const struct lb_input *in)
{
	return idx_of(t, lb_pick(&t->farm, in));
}

/* One request through the farm as the proxy would drive it: a distinct URL
 * per request (for RequestHash), start and end accounting (for the
 * dynamic algorithms). Returns the picked index or -1. */
static int drive(struct tfarm *t, const struct lb_input *base, unsigned int i)
{
	struct lb_input in = *base;
	struct rule_ctx ctx;
	struct server *s;
	char url[32];

	memset(&ctx, 0, sizeof(ctx));
	snprintf(url, sizeof(url), "/item/%u", i);
	ctx.url = url;
	ctx.url_len = strlen(url);
	ctx.query = "";
	ctx.remote_addr = "192.0.2.7";
	in.vars = &ctx;
	in.now_ms = T0 + i * 10;
	s = lb_pick(&t->farm, &in);
	if (s) {
		lb_request_start(s);
		lb_request_end(s, 0, 5 + i % 7, 100, 200, in.now_ms);
	}
	return idx_of(t, s);
}

/* ---- WeightedRoundRobin ---------------------------------------------- */

static void test_wrr_equal_weights_alternate(void **state)
{
	static const uint32_t w[] = {100, 100};
	struct lb_input in = {0};
	struct tfarm t;
	int cnt[2] = {0, 0}, prev = -1, i;

	(void)state;
	tf_init(&t, "wrr-eq", LB_WEIGHTED_ROUND_ROBIN, 2, w);
	for (i = 0; i < 200; i++) {
		int k = pick_idx(&t, &in);

		assert_in_range(k, 0, 1);
		assert_int_not_equal(k, prev);
		cnt[k]++;
		prev = k;
	}
	assert_int_equal(cnt[0], 100);
	assert_int_equal(cnt[1], 100);
	tf_fini(&t);
}

static void test_wrr_exact_300_100_100(void **state)
{
	static const uint32_t w[] = {300, 100, 100};
	struct lb_input in = {0};
	struct tfarm t;
	int round, i;

	(void)state;
	tf_init(&t, "wrr-311", LB_WEIGHTED_ROUND_ROBIN, 3, w);
	/* every window of sum(weights) = 500 picks is exact, not just the first */
	for (round = 0; round < 3; round++) {
		int cnt[3] = {0, 0, 0}, prev = -1, run = 0;

		for (i = 0; i < 500; i++) {
			int k = pick_idx(&t, &in);

			assert_in_range(k, 0, 2);
			cnt[k]++;
			run = k == prev ? run + 1 : 1;
			prev = k;
			/* smooth: a at most twice in a row, b and c never twice */
			assert_true(run <= (k == 0 ? 2 : 1));
		}
		assert_int_equal(cnt[0], 300);
		assert_int_equal(cnt[1], 100);
		assert_int_equal(cnt[2], 100);
	}
	tf_fini(&t);
}

static void test_wrr_smooth_sequence_5_1_1(void **state)
{
	static const uint32_t w[] = {5, 1, 1};
	struct lb_input in = {0};
	struct tfarm t;
	char seq[15];
	int i;

	(void)state;
	tf_init(&t, "wrr-511", LB_WEIGHTED_ROUND_ROBIN, 3, w);
	for (i = 0; i < 14; i++)
		seq[i] = (char)('a' + pick_idx(&t, &in));
	seq[14] = '\0';
	assert_string_equal(seq, "aabacaaaabacaa");
	tf_fini(&t);
}

/* A retry that excludes one server must not throw the others off: after
 * it, each window of sum(weights) picks is again within one pick. */
static void test_wrr_exclude_keeps_proportions(void **state)
{
	static const uint32_t w[] = {200, 100, 100};
	struct lb_input in = {0}, ex = {0};
	struct tfarm t;
	int cnt[3] = {0, 0, 0}, i;

	(void)state;
	tf_init(&t, "wrr-ex", LB_WEIGHTED_ROUND_ROBIN, 3, w);
	for (i = 0; i < 7; i++)
		pick_idx(&t, &in);
	ex.exclude = &t.srv[0];
	assert_int_not_equal(pick_idx(&t, &ex), 0);
	for (i = 0; i < 400; i++)
		cnt[pick_idx(&t, &in)]++;
	assert_in_range(cnt[0], 199, 201);
	assert_in_range(cnt[1], 99, 101);
	assert_in_range(cnt[2], 99, 101);
	tf_fini(&t);
}

/* ---- eligibility, shared by every algorithm --------------------------- */

static void test_disabled_and_zero_weight_never_picked(void **state)
{
	static const uint32_t w[] = {100, 0, 100, 100};
	struct lb_input in = {0};
	unsigned int a;

	(void)state;
	for (a = 0; a < NALGOS; a++) {
		struct tfarm t;
		int cnt[4] = {0, 0, 0, 0}, i;

		tf_init(&t, "elig", all_algos[a], 4, w);
		t.srv[2].enabled = 0;
		for (i = 0; i < 400; i++) {
			int k = drive(&t, &in, (unsigned int)i);

			assert_in_range(k, 0, 3);
			cnt[k]++;
		}
		assert_int_equal(cnt[1], 0);
		assert_int_equal(cnt[2], 0);
		assert_true(cnt[0] > 0);
		assert_true(cnt[3] > 0);
		tf_fini(&t);
	}
}

static void test_exclude_honoured(void **state)
{
	static const uint32_t w[] = {100, 100, 100};
	unsigned int a;

	(void)state;
	for (a = 0; a < NALGOS; a++) {
		struct lb_input in = {0};
		struct tfarm t;
		int cnt[3] = {0, 0, 0}, i;

		tf_init(&t, "excl", all_algos[a], 3, w);
		in.exclude = &t.srv[1];
		for (i = 0; i < 300; i++)
			cnt[drive(&t, &in, (unsigned int)i)]++;
		assert_int_equal(cnt[1], 0);
		assert_true(cnt[0] > 0);
		assert_true(cnt[2] > 0);
		tf_fini(&t);
	}
}

static void test_nothing_available_is_null(void **state)
{
	static const uint32_t w1[] = {100};
	static const uint32_t w2[] = {100, 100};
	static const uint32_t wz[] = {0, 0};
	unsigned int a;

	(void)state;
	for (a = 0; a < NALGOS; a++) {
		struct lb_input in = {0};
		struct tfarm t;

		/* the only server already tried */
		tf_init(&t, "none1", all_algos[a], 1, w1);
		in.exclude = &t.srv[0];
		assert_int_equal(drive(&t, &in, 1), -1);
		tf_fini(&t);

		/* one disabled, the other tried */
		tf_init(&t, "none2", all_algos[a], 2, w2);
		t.srv[0].enabled = 0;
		in.exclude = &t.srv[1];
		assert_int_equal(drive(&t, &in, 2), -1);
		tf_fini(&t);

		/* all weights 0 */
		in.exclude = NULL;
		tf_init(&t, "none3", all_algos[a], 2, wz);
		assert_int_equal(drive(&t, &in, 3), -1);
		tf_fini(&t);

		/* no servers at all */
		tf_init(&t, "none4", all_algos[a], 0, wz);
		assert_int_equal(drive(&t, &in, 4), -1);
		tf_fini(&t);
	}
}

static void test_farm_disabled_is_null(void **state)
{
	static const uint32_t w[] = {100, 100};
	unsigned int a;

	(void)state;
	for (a = 0; a < NALGOS; a++) {
		struct lb_input in = {0};
		struct tfarm t;

		tf_init(&t, "off", all_algos[a], 2, w);
		t.farm.enabled = 0;
		t.farm.affinity.use_cookie = 1;
		in.affinity_id = t.srv[0].affinity_id; /* not even affinity */
		assert_int_equal(drive(&t, &in, 1), -1);
		t.farm.enabled = 1;
		assert_int_equal(drive(&t, &in, 1), 0);
		tf_fini(&t);
	}
}

/* ---- LeastRequests ----------------------------------------------------- */

static void test_lr_picks_least_loaded(void **state)
{
	static const uint32_t w3[] = {100, 100, 100};
	static const uint32_t w2[] = {100, 300};
	struct lb_input in = {0};
	struct tfarm t;
	int cnt[2] = {0, 0}, i;

	(void)state;
	tf_init(&t, "lr", LB_LEAST_REQUESTS, 3, w3);
	for (i = 0; i < 3; i++)
		lb_request_start(&t.srv[0]);
	lb_request_start(&t.srv[1]);
	lb_request_start(&t.srv[2]);
	lb_request_start(&t.srv[2]);
	assert_int_equal(pick_idx(&t, &in), 1);
	lb_request_end(&t.srv[0], 0, 1, 0, 0, T0);
	lb_request_end(&t.srv[0], 0, 1, 0, 0, T0);
	assert_int_equal(t.srv[0].rt->current_requests, 1);
	/* s0 and s1 now tie at 1: s2 (2) must never be chosen */
	for (i = 0; i < 10; i++)
		assert_int_not_equal(pick_idx(&t, &in), 2);
	tf_fini(&t);

	/* relative to weight: open requests settle at 1:3 */
	tf_init(&t, "lr-w", LB_LEAST_REQUESTS, 2, w2);
	for (i = 0; i < 8; i++) {
		struct server *s = lb_pick(&t.farm, &in);

		assert_non_null(s);
		lb_request_start(s);
		cnt[idx_of(&t, s)]++;
	}
	assert_int_equal(cnt[0], 2);
	assert_int_equal(cnt[1], 6);
	/* 2/100 > 5/300: the next one goes to the heavier server */
	lb_request_end(&t.srv[1], 0, 1, 0, 0, T0);
	assert_int_equal(pick_idx(&t, &in), 1);
	tf_fini(&t);
}

static void test_lr_ties_alternate(void **state)
{
	static const uint32_t w[] = {100, 100, 100};
	struct lb_input in = {0};
	struct tfarm t;
	int cnt[3] = {0, 0, 0}, prev = -1, i;

	(void)state;
	tf_init(&t, "lr-tie", LB_LEAST_REQUESTS, 3, w);
	for (i = 0; i < 300; i++) {
		struct server *s = lb_pick(&t.farm, &in);
		int k = idx_of(&t, s);

		/* each request finishes before the next: always a 3-way tie */
		assert_int_not_equal(k, prev);
		lb_request_start(s);
		lb_request_end(s, 0, 1, 0, 0, T0);
		cnt[k]++;
		prev = k;
	}
	assert_int_equal(cnt[0], 100);
	assert_int_equal(cnt[1], 100);
	assert_int_equal(cnt[2], 100);
	tf_fini(&t);
}

/* ---- LeastResponseTime ------------------------------------------------- */

static void end_one(struct server *s, uint32_t ms, uint64_t now)
{
	lb_request_start(s);
	lb_request_end(s, 0, ms, 0, 0, now);
}

static void test_lrt_windows(void **state)
{
	static const uint32_t w[] = {100, 100};
	struct lb_input in = {0};
	struct tfarm t;
	int i;

	(void)state;
	tf_init(&t, "lrt", LB_LEAST_RESPONSE_TIME, 2, w);
	t.farm.lb.least_response_time_period_ms = 1000;

	/* window 1 (T0 .. T0+1000): the first measurement counts at once */
	end_one(&t.srv[0], 100, T0);
	end_one(&t.srv[1], 10, T0);
	assert_int_equal(t.srv[0].rt->avg_response_ms, 100);
	assert_int_equal(t.srv[1].rt->avg_response_ms, 10);
	in.now_ms = T0 + 100;
	assert_int_equal(pick_idx(&t, &in), 1);

	/* s1 slows down inside the window: the published average only
	 * changes when the window closes */
	for (i = 0; i < 3; i++)
		end_one(&t.srv[1], 300, T0 + 500);
	assert_int_equal(t.srv[1].rt->avg_response_ms, 10);
	in.now_ms = T0 + 999;
	assert_int_equal(pick_idx(&t, &in), 1);

	/* window 1 is over: s1 averaged (10 + 900) / 4 = 227 */
	in.now_ms = T0 + 1000;
	assert_int_equal(pick_idx(&t, &in), 0);
	assert_int_equal(t.srv[0].rt->avg_response_ms, 100);
	assert_int_equal(t.srv[1].rt->avg_response_ms, 227);

	/* window 2: s0 answers in 50 ms, s1 gets nothing */
	end_one(&t.srv[0], 40, T0 + 1500);
	end_one(&t.srv[0], 60, T0 + 1600);
	assert_int_equal(t.srv[0].rt->avg_response_ms, 100);
	lb_request_end(&t.srv[0], 0, 7, 0, 0, T0 + 2100); /* closes window 2 */
	assert_int_equal(t.srv[0].rt->avg_response_ms, 50);
	in.now_ms = T0 + 2200;
	assert_int_equal(pick_idx(&t, &in), 0);
	/* a window without requests keeps the previous average */
	assert_int_equal(t.srv[1].rt->avg_response_ms, 227);
	in.now_ms = T0 + 9000;
	assert_int_equal(pick_idx(&t, &in), 0);
	assert_int_equal(t.srv[1].rt->avg_response_ms, 227);
	assert_int_equal(t.srv[0].rt->avg_response_ms, 7);
	tf_fini(&t);
}

static void test_lrt_unmeasured_tried_first_and_ties(void **state)
{
	static const uint32_t w[] = {100, 100, 100};
	struct lb_input in = {0};
	struct tfarm t;
	int cnt[3] = {0, 0, 0}, i;

	(void)state;
	tf_init(&t, "lrt-new", LB_LEAST_RESPONSE_TIME, 3, w);
	end_one(&t.srv[0], 50, T0);
	in.now_ms = T0 + 1;
	/* s1 and s2 have no measurement (0): they share until measured */
	for (i = 0; i < 10; i++)
		cnt[pick_idx(&t, &in)]++;
	assert_int_equal(cnt[0], 0);
	assert_int_equal(cnt[1], 5);
	assert_int_equal(cnt[2], 5);
	end_one(&t.srv[1], 20, T0 + 2);
	end_one(&t.srv[2], 20, T0 + 2);
	/* 20 / 20 / 50: s1 and s2 alternate, s0 waits */
	for (i = 0; i < 4; i++) {
		int a = pick_idx(&t, &in), b = pick_idx(&t, &in);

		assert_true(a != 0 && b != 0 && a != b);
	}
	tf_fini(&t);
}

/* ---- WeightedTotalTraffic ---------------------------------------------- */

static void test_wtt(void **state)
{
	static const uint32_t w[] = {100, 200};
	static const uint32_t wbig[] = {100000, 50000};
	static const uint32_t w13[] = {100, 300};
	struct lb_input in = {0};
	struct tfarm t;
	int cnt[2] = {0, 0}, i;

	(void)state;
	tf_init(&t, "wtt", LB_WEIGHTED_TOTAL_TRAFFIC, 2, w);
	t.srv[0].rt->bytes_sent = 1000;	    /* 10 per unit of weight */
	t.srv[1].rt->bytes_received = 2500; /* 12.5 */
	assert_int_equal(pick_idx(&t, &in), 0);
	t.srv[0].rt->bytes_received = 600; /* 16 */
	assert_int_equal(pick_idx(&t, &in), 1);
	t.srv[1].rt->bytes_sent = 700; /* 16: tie, alternate */
	i = pick_idx(&t, &in);
	assert_int_not_equal(pick_idx(&t, &in), i);
	tf_fini(&t);

	/* exact ratios near 2^64 (naive cross-multiplication overflows) */
	tf_init(&t, "wtt-big", LB_WEIGHTED_TOTAL_TRAFFIC, 2, wbig);
	t.srv[0].rt->bytes_sent = 0xffffffff00000000ULL;
	t.srv[1].rt->bytes_sent = 0x7fffffff80000000ULL; /* same per weight */
	i = pick_idx(&t, &in);
	assert_int_not_equal(pick_idx(&t, &in), i);
	t.srv[1].rt->bytes_received = 1;
	assert_int_equal(pick_idx(&t, &in), 0);
	t.srv[0].rt->bytes_received = 3;
	assert_int_equal(pick_idx(&t, &in), 1);
	tf_fini(&t);

	/* equal-sized requests: the traffic follows the weights */
	tf_init(&t, "wtt-sim", LB_WEIGHTED_TOTAL_TRAFFIC, 2, w13);
	for (i = 0; i < 400; i++) {
		struct server *s = lb_pick(&t.farm, &in);

		lb_request_start(s);
		lb_request_end(s, 0, 1, 300, 700, T0);
		cnt[idx_of(&t, s)]++;
	}
	assert_in_range(cnt[0], 99, 101);
	assert_in_range(cnt[1], 299, 301);
	tf_fini(&t);
}

/* ---- RequestHash -------------------------------------------------------- */

static void ctx_addr(struct rule_ctx *ctx, char *buf, size_t len, unsigned int i)
{
	memset(ctx, 0, sizeof(*ctx));
	snprintf(buf, len, "10.%u.%u.%u", (i >> 16) & 255, (i >> 8) & 255, i & 255);
	ctx->remote_addr = buf;
	ctx->url = "/same/path";
	ctx->url_len = strlen(ctx->url);
	ctx->query = "";
}

static void test_hash_same_addr_same_server(void **state)
{
	static const uint32_t w[] = {100, 100, 100, 100};
	struct lb_input in = {0};
	struct rule_ctx ctx;
	struct tfarm t;
	int seen[4] = {0, 0, 0, 0}, first[100];
	char buf[32];
	unsigned int i, r;

	(void)state;
	tf_init(&t, "hash-addr", LB_REQUEST_HASH, 4, w);
	t.farm.lb.hash_server_variable = "REMOTE_ADDR";
	in.vars = &ctx;
	for (r = 0; r < 3; r++) {
		for (i = 0; i < 100; i++) {
			int k;

			ctx_addr(&ctx, buf, sizeof(buf), i * 7919);
			k = pick_idx(&t, &in);
			assert_in_range(k, 0, 3);
			if (r == 0)
				first[i] = k;
			else
				assert_int_equal(k, first[i]);
			seen[k] = 1;
			/* load on a server does not move a hashed client */
			lb_request_start(&t.srv[k]);
		}
	}
	for (i = 0; i < 4; i++)
		assert_true(seen[i]);
	tf_fini(&t);
}

static void test_hash_distribution_follows_weights(void **state)
{
	static const uint32_t w[] = {100, 200, 300, 400};
	struct lb_input in = {0};
	struct rule_ctx ctx;
	struct tfarm t;
	int cnt[4] = {0, 0, 0, 0};
	char buf[32];
	unsigned int i;

	(void)state;
	tf_init(&t, "hash-dist", LB_REQUEST_HASH, 4, w);
	t.farm.lb.hash_server_variable = "REMOTE_ADDR";
	in.vars = &ctx;
	for (i = 0; i < 10000; i++) {
		ctx_addr(&ctx, buf, sizeof(buf), i);
		cnt[pick_idx(&t, &in)]++;
	}
	for (i = 0; i < 4; i++) {
		int expect = 1000 * (int)(i + 1);

		assert_in_range(cnt[i], expect - expect / 10, expect + expect / 10);
	}
	tf_fini(&t);
}

static void test_hash_stability(void **state)
{
	static const uint32_t w[] = {100, 100, 100, 100};
	static unsigned char before[10000];
	struct lb_input in = {0};
	struct rule_ctx ctx;
	struct tfarm t;
	char buf[32];
	unsigned int i, moved = 0, on2 = 0;

	(void)state;
	tf_init(&t, "hash-stab", LB_REQUEST_HASH, 4, w);
	t.farm.lb.hash_server_variable = "REMOTE_ADDR";
	in.vars = &ctx;
	for (i = 0; i < 10000; i++) {
		ctx_addr(&ctx, buf, sizeof(buf), i);
		before[i] = (unsigned char)pick_idx(&t, &in);
	}
	t.srv[2].enabled = 0;
	for (i = 0; i < 10000; i++) {
		int k;

		ctx_addr(&ctx, buf, sizeof(buf), i);
		k = pick_idx(&t, &in);
		assert_in_range(k, 0, 3);
		assert_int_not_equal(k, 2);
		if (before[i] == 2) {
			on2++;
			moved += k != 2;
		} else {
			assert_int_equal(k, before[i]);
		}
	}
	assert_true(on2 > 2000 && on2 < 3000);
	assert_int_equal(moved, on2);
	/* back in service: exactly the old mapping */
	t.srv[2].enabled = 1;
	for (i = 0; i < 10000; i++) {
		ctx_addr(&ctx, buf, sizeof(buf), i);
		assert_int_equal(pick_idx(&t, &in), before[i]);
	}
	tf_fini(&t);
}

static void test_hash_query_string_names(void **state)
{
	static const uint32_t w[] = {100, 100, 100, 100};
	static char *names[] = {"user", "tenant"};
	struct lb_input in = {0};
	struct rule_ctx ctx;
	struct tfarm t;
	int seen[4] = {0, 0, 0, 0};
	unsigned int i;

	(void)state;
	tf_init(&t, "hash-qs", LB_REQUEST_HASH, 4, w);
	t.farm.lb.query_string_names = names;
	t.farm.lb.nquery_string_names = 2;
	memset(&ctx, 0, sizeof(ctx));
	in.vars = &ctx;
	for (i = 0; i < 200; i++) {
		char q1[96], q2[96], q3[96];
		int k1, k2, k3;

		/* same values, other path, other order, other parameters, and
		 * a longer name that only starts with "user" */
		snprintf(q1, sizeof(q1), "user=u%u&tenant=t%u", i, i % 3);
		snprintf(q2, sizeof(q2), "x=1&tenant=t%u&username=zz&user=u%u&y", i % 3, i);
		snprintf(q3, sizeof(q3), "usernam=q&tenant=t%u&user=u%u&user=other", i % 3, i);
		ctx.url = "/a";
		ctx.url_len = 2;
		ctx.query = q1;
		ctx.query_len = strlen(q1);
		k1 = pick_idx(&t, &in);
		ctx.url = "/somewhere/else";
		ctx.url_len = strlen(ctx.url);
		ctx.query = q2;
		ctx.query_len = strlen(q2);
		k2 = pick_idx(&t, &in);
		ctx.query = q3;
		ctx.query_len = strlen(q3);
		k3 = pick_idx(&t, &in);
		assert_in_range(k1, 0, 3);
		assert_int_equal(k1, k2);
		assert_int_equal(k1, k3);
		seen[k1] = 1;
	}
	for (i = 0; i < 4; i++)
		assert_true(seen[i]);
	tf_fini(&t);
}

static void test_hash_url_by_default(void **state)
{
	static const uint32_t w[] = {100, 100, 100, 100};
	struct lb_input in = {0};
	struct rule_ctx ctx;
	struct tfarm t;
	int seen[4] = {0, 0, 0, 0};
	unsigned int i;

	(void)state;
	tf_init(&t, "hash-url", LB_REQUEST_HASH, 4, w);
	memset(&ctx, 0, sizeof(ctx));
	in.vars = &ctx;
	for (i = 0; i < 200; i++) {
		char url[32];
		int k1, k2;

		snprintf(url, sizeof(url), "/page/%u", i);
		ctx.url = url;
		ctx.url_len = strlen(url);
		ctx.query = "a=1";
		ctx.query_len = 3;
		ctx.remote_addr = "192.0.2.1";
		k1 = pick_idx(&t, &in);
		/* the query string and the client do not matter */
		ctx.query = "b=2&c=3";
		ctx.query_len = 7;
		ctx.remote_addr = "198.51.100.9";
		k2 = pick_idx(&t, &in);
		assert_in_range(k1, 0, 3);
		assert_int_equal(k1, k2);
		seen[k1] = 1;
	}
	for (i = 0; i < 4; i++)
		assert_true(seen[i]);
	tf_fini(&t);
}

/* ---- affinity ----------------------------------------------------------- */

static void test_affinity_overrides_algorithm(void **state)
{
	static const uint32_t w[] = {100, 100, 100};
	unsigned int a;

	(void)state;
	for (a = 0; a < NALGOS; a++) {
		struct lb_input in = {0};
		struct tfarm t;
		int cnt[3] = {0, 0, 0}, i;

		tf_init(&t, "aff", all_algos[a], 3, w);
		t.farm.affinity.use_cookie = 1;
		in.affinity_id = t.srv[2].affinity_id;
		/* even while s2 is the most loaded server */
		for (i = 0; i < 50; i++) {
			lb_request_start(&t.srv[2]);
			assert_int_equal(drive(&t, &in, (unsigned int)i), 2);
		}
		/* a cookie naming no server: the algorithm decides */
		in.affinity_id = 0x1234;
		for (i = 0; i < 60; i++)
			cnt[drive(&t, &in, (unsigned int)i)]++;
		assert_true(cnt[0] > 0 || cnt[1] > 0);
		tf_fini(&t);
	}
}

static void test_affinity_ignored_or_falls_back(void **state)
{
	static const uint32_t w[] = {100, 100, 100};
	struct lb_input in = {0};
	struct tfarm t;
	int cnt[3] = {0, 0, 0}, i;

	(void)state;
	tf_init(&t, "aff-fb", LB_WEIGHTED_ROUND_ROBIN, 3, w);
	in.affinity_id = t.srv[2].affinity_id;
	/* useCookie false: the cookie is not honoured */
	for (i = 0; i < 30; i++)
		cnt[pick_idx(&t, &in)]++;
	assert_int_equal(cnt[0], 10);
	assert_int_equal(cnt[1], 10);
	assert_int_equal(cnt[2], 10);

	t.farm.affinity.use_cookie = 1;
	assert_int_equal(pick_idx(&t, &in), 2);
	/* the affinity server is disabled: another one, not NULL */
	t.srv[2].enabled = 0;
	for (i = 0; i < 10; i++) {
		int k = pick_idx(&t, &in);

		assert_true(k == 0 || k == 1);
	}
	/* or it failed and is being excluded on retry */
	t.srv[2].enabled = 1;
	in.exclude = &t.srv[2];
	for (i = 0; i < 10; i++) {
		int k = pick_idx(&t, &in);

		assert_true(k == 0 || k == 1);
	}
	tf_fini(&t);
}

/* ARR's runtime states: DisallowNewConnections keeps affinitised clients,
 * the Unavailable states keep everyone away; unhealthy servers are out. */
static void test_server_states(void **state)
{
	static const uint32_t w[] = {100, 100, 100};
	struct lb_input in = {0};
	struct tfarm t;
	int i;

	(void)state;
	tf_init(&t, "states", LB_WEIGHTED_ROUND_ROBIN, 3, w);
	t.farm.affinity.use_cookie = 1;
	t.srv[2].rt->admin = SRV_DRAIN;
	for (i = 0; i < 20; i++)
		assert_int_not_equal(pick_idx(&t, &in), 2);
	in.affinity_id = t.srv[2].affinity_id;
	assert_int_equal(pick_idx(&t, &in), 2); /* drain: its own clients still */
	t.srv[2].rt->admin = SRV_UNAVAILABLE_GRACEFULLY;
	assert_int_not_equal(pick_idx(&t, &in), 2);
	t.srv[2].rt->admin = SRV_UNAVAILABLE_IMMEDIATELY;
	assert_int_not_equal(pick_idx(&t, &in), 2);
	t.srv[2].rt->admin = SRV_AVAILABLE;
	assert_int_equal(pick_idx(&t, &in), 2);
	/* unhealthy: out, affinity or not */
	lb_set_healthy(t.srv[2].rt, 0, "test", T0);
	assert_int_not_equal(pick_idx(&t, &in), 2);
	lb_set_healthy(t.srv[0].rt, 0, "test", T0);
	in.affinity_id = 0;
	for (i = 0; i < 10; i++)
		assert_int_equal(pick_idx(&t, &in), 1);
	lb_set_healthy(t.srv[1].rt, 0, "test", T0);
	assert_int_equal(pick_idx(&t, &in), -1);
	/* minServers keeps that many in rotation, in configuration order */
	t.farm.health.min_servers = 2;
	for (i = 0; i < 20; i++) {
		int k = pick_idx(&t, &in);

		assert_true(k == 0 || k == 1);
	}
	lb_set_healthy(t.srv[1].rt, 1, "test", T0);
	for (i = 0; i < 20; i++) {
		int k = pick_idx(&t, &in);

		assert_true(k == 0 || k == 1); /* 1 healthy + 1 rescued */
	}
	t.farm.health.min_servers = 0;
	for (i = 0; i < 10; i++)
		assert_int_equal(pick_idx(&t, &in), 1);
	/* a farm taken offline picks nothing */
	t.farm.rt->offline = 1;
	assert_int_equal(pick_idx(&t, &in), -1);
	assert_int_equal(lb_farm_online(&t.farm), 0);
	t.farm.rt->offline = 0;
	tf_fini(&t);
}

/* maxLiveTrafficFailures within liveTrafficFailurePeriod, only the listed
 * codes and connection failures; without a URL test the server returns
 * after the period. */
static void test_live_traffic_failures(void **state)
{
	static const uint32_t w[] = {100, 100};
	struct lb_input in = {0};
	struct server_rt *rt;
	struct tfarm t;
	int i;

	(void)state;
	tf_init(&t, "live", LB_WEIGHTED_ROUND_ROBIN, 2, w);
	rt = t.srv[0].rt;
	t.farm.health.live_codes.lo[0] = 500;
	t.farm.health.live_codes.hi[0] = 999;
	t.farm.health.live_codes.n = 1;
	t.farm.health.max_live_failures = 3;
	t.farm.health.live_period_ms = 0;
	for (i = 0; i < 5; i++)
		lb_live_result(&t.srv[0], 503, T0);
	assert_int_equal(rt->healthy, 1); /* period 0: the test is off */
	t.farm.health.live_period_ms = 10000;
	lb_live_result(&t.srv[0], 200, T0);
	lb_live_result(&t.srv[0], 404, T0);
	lb_live_result(&t.srv[0], 500, T0);
	lb_live_result(&t.srv[0], -1, T0 + 1000);
	assert_int_equal(rt->healthy, 1);
	/* the first failure is more than a period old when the third comes */
	lb_live_result(&t.srv[0], 502, T0 + 10500);
	assert_int_equal(rt->healthy, 1);
	lb_live_result(&t.srv[0], 502, T0 + 10600);
	assert_int_equal(rt->healthy, 0);
	in.now_ms = T0 + 10700;
	assert_int_equal(pick_idx(&t, &in), 1);
	/* no URL test: back after the period */
	in.now_ms = T0 + 10600 + 10000;
	assert_int_equal(pick_idx(&t, &in) >= 0, 1);
	assert_int_equal(rt->healthy, 1);
	tf_fini(&t);
}

static void test_affinity_id(void **state)
{
	static const uint32_t w[] = {1, 1, 1, 1, 1, 1, 1, 1};
	struct tfarm t;
	uint64_t id;
	unsigned int i, j;

	(void)state;
	id = lb_affinity_id("web", "10.0.0.1", 8081);
	/* pinned: cookies in clients' browsers must survive restarts and
	 * upgrades, so the hash may never change */
	assert_true(id == 0x8a5a04d4834d9a4dULL);
	assert_true(id == lb_affinity_id("web", "10.0.0.1", 8081));
	assert_true(id == lb_affinity_id("WEB", "10.0.0.1", 8081));
	assert_true(id != lb_affinity_id("web", "10.0.0.1", 8082));
	assert_true(id != lb_affinity_id("web", "10.0.0.10", 8081));
	assert_true(id != lb_affinity_id("web2", "10.0.0.1", 8081));
	/* field boundaries matter */
	assert_true(lb_affinity_id("ab", "c", 80) != lb_affinity_id("a", "bc", 80));
	assert_true(lb_affinity_id("", "", 0) != 0);

	/* lb_attach fills the ids the loader left at 0, all distinct */
	tf_init(&t, "Aff-Id", LB_WEIGHTED_ROUND_ROBIN, 8, w);
	for (i = 0; i < 8; i++) {
		assert_true(t.srv[i].affinity_id != 0);
		assert_true(t.srv[i].affinity_id == lb_affinity_id("aff-id", t.addr[i], 80));
		for (j = 0; j < i; j++)
			assert_true(t.srv[i].affinity_id != t.srv[j].affinity_id);
	}
	tf_fini(&t);
}

static void test_affinity_parse(void **state)
{
	char buf[32];
	uint64_t id = lb_affinity_id("web", "app.internal", 80);

	(void)state;
	assert_true(lb_affinity_parse("0123456789abcdef", 16) == 0x0123456789abcdefULL);
	assert_true(lb_affinity_parse("FEDCBA9876543210", 16) == 0xfedcba9876543210ULL);
	assert_true(lb_affinity_parse("ffffffffFFFFFFFF", 16) == UINT64_MAX);
	/* the length is what the caller says, not a NUL */
	assert_true(lb_affinity_parse("0123456789abcdefXYZ", 16) == 0x0123456789abcdefULL);
	assert_true(lb_affinity_parse("0123456789abcde", 15) == 0);
	assert_true(lb_affinity_parse("0123456789abcdef0", 17) == 0);
	assert_true(lb_affinity_parse("0123456789abcdeg", 16) == 0);
	assert_true(lb_affinity_parse("0123456789abcde ", 16) == 0);
	assert_true(lb_affinity_parse("+123456789abcdef", 16) == 0);
	assert_true(lb_affinity_parse("0x23456789abcdef", 16) == 0);
	assert_true(lb_affinity_parse("", 0) == 0);
	assert_true(lb_affinity_parse(NULL, 16) == 0);
	/* round trip of the cookie format */
	snprintf(buf, sizeof(buf), "%016llx", (unsigned long long)id);
	assert_true(lb_affinity_parse(buf, strlen(buf)) == id);
}

/* ---- accounting --------------------------------------------------------- */

static void test_request_counters(void **state)
{
	static const uint32_t w[] = {100};
	struct tfarm t;
	struct server_rt *rt;

	(void)state;
	tf_init(&t, "acct", LB_WEIGHTED_ROUND_ROBIN, 1, w);
	rt = t.srv[0].rt;
	lb_request_start(&t.srv[0]);
	lb_request_start(&t.srv[0]);
	assert_int_equal(rt->current_requests, 2);
	assert_int_equal(rt->total_requests, 2);
	lb_request_end(&t.srv[0], 1, 10, 100, 1000, T0);
	lb_request_end(&t.srv[0], 0, 20, 50, 500, T0);
	lb_request_end(&t.srv[0], 7, 30, 1, 2, T0); /* unbalanced: no wrap */
	assert_int_equal(rt->current_requests, 0);
	assert_int_equal(rt->total_requests, 2);
	assert_int_equal(rt->failed_requests, 2);
	assert_true(rt->bytes_sent == 151);
	assert_true(rt->bytes_received == 1502);
	/* NULL and unattached servers are ignored, not crashes */
	lb_request_start(NULL);
	lb_request_end(NULL, 0, 0, 0, 0, T0);
	tf_fini(&t);
	lb_request_start(&t.srv[0]);
	lb_request_end(&t.srv[0], 0, 0, 0, 0, T0);
}

/* ---- runtime state across generations ----------------------------------- */

static void test_reload_keeps_state(void **state)
{
	static const uint32_t w[] = {100, 100};
	struct lb_input in = {0};
	struct tfarm *g1 = malloc(sizeof(*g1)), *g2 = malloc(sizeof(*g2)),
		     *g3 = malloc(sizeof(*g3));
	struct server_rt *rt_a;

	(void)state;
	assert_non_null(g1);
	assert_non_null(g2);
	assert_non_null(g3);
	/* gen 1: servers A and B */
	tf_build(g1, "Web", LB_WEIGHTED_ROUND_ROBIN, 2, w);
	snprintf(g1->addr[0], sizeof(g1->addr[0]), "App1.Example");
	snprintf(g1->addr[1], sizeof(g1->addr[1]), "app2.example");
	assert_int_equal(lb_attach(&g1->cfg), 0);
	rt_a = g1->srv[0].rt;
	assert_int_equal(rt_a->refcnt, 1);
	assert_int_equal(g1->farm.rt->refcnt, 1);
	lb_request_start(&g1->srv[0]);
	lb_request_start(&g1->srv[0]);
	lb_request_end(&g1->srv[0], 1, 5, 10, 20, T0);
	lb_request_start(&g1->srv[1]);
	lb_request_end(&g1->srv[1], 0, 5, 10, 20, T0);

	/* gen 2, attached before gen 1 goes, as on a reload: farm spelled
	 * differently, A kept (address in other case), B replaced by C */
	tf_build(g2, "web", LB_WEIGHTED_ROUND_ROBIN, 2, w);
	snprintf(g2->addr[0], sizeof(g2->addr[0]), "app1.example");
	snprintf(g2->addr[1], sizeof(g2->addr[1]), "app3.example");
	assert_int_equal(lb_attach(&g2->cfg), 0);
	assert_true(g2->srv[0].affinity_id == g1->srv[0].affinity_id);
	assert_ptr_equal(g2->srv[0].rt, rt_a);
	assert_ptr_equal(g2->farm.rt, g1->farm.rt);
	assert_ptr_not_equal(g2->srv[1].rt, g1->srv[1].rt);
	assert_int_equal(rt_a->refcnt, 2);
	assert_int_equal(g2->farm.rt->refcnt, 2);
	/* the same backend in two generations is one backend */
	in.exclude = &g1->srv[0];
	assert_int_equal(pick_idx(g2, &in), 1);

	lb_detach(&g1->cfg);
	assert_null(g1->srv[0].rt);
	assert_null(g1->farm.rt);
	/* the old generation's request ends on the shared state */
	lb_request_end(&g1->srv[0], 0, 5, 1, 1, T0);
	assert_int_equal(rt_a->refcnt, 1);
	assert_int_equal(g2->farm.rt->refcnt, 1);
	assert_true(rt_a->total_requests == 2);
	assert_true(rt_a->failed_requests == 1);
	assert_true(rt_a->bytes_sent == 10);
	assert_int_equal(rt_a->current_requests, 1);
	lb_request_end(&g2->srv[0], 0, 5, 1, 1, T0);
	assert_int_equal(rt_a->current_requests, 0);

	/* B left with gen 1: its state was freed, it comes back fresh */
	tf_build(g3, "WEB", LB_WEIGHTED_ROUND_ROBIN, 2, w);
	snprintf(g3->addr[0], sizeof(g3->addr[0]), "app1.example");
	snprintf(g3->addr[1], sizeof(g3->addr[1]), "app2.example");
	assert_int_equal(lb_attach(&g3->cfg), 0);
	assert_ptr_equal(g3->srv[0].rt, rt_a);
	assert_true(g3->srv[1].rt->total_requests == 0);
	assert_int_equal(g3->srv[1].rt->refcnt, 1);
	assert_true(list_empty(&g3->srv[1].rt->pool));

	tf_fini(g2);
	tf_fini(g3);
	free(g1);
	free(g2);
	free(g3);
}

static void test_detach_without_attach(void **state)
{
	static const uint32_t w[] = {100, 100};
	struct tfarm t;

	(void)state;
	tf_build(&t, "noattach", LB_WEIGHTED_ROUND_ROBIN, 2, w);
	lb_detach(&t.cfg); /* never attached: rt is NULL everywhere */
	assert_null(t.farm.rt);
	assert_null(t.srv[0].rt);
	assert_null(t.srv[1].rt);
	lb_detach(&t.cfg); /* twice */
	lb_detach(NULL);
	/* an unattached farm has nothing to offer */
	assert_null(lb_pick(&t.farm, NULL));
	assert_null(lb_pick(NULL, NULL));
	/* attach is idempotent: a second call takes no second reference */
	assert_int_equal(lb_attach(&t.cfg), 0);
	assert_int_equal(lb_attach(&t.cfg), 0);
	assert_int_equal(t.srv[0].rt->refcnt, 1);
	assert_int_equal(t.farm.rt->refcnt, 1);
	assert_non_null(lb_pick(&t.farm, NULL));
	tf_fini(&t);
}

/* Many farms and servers: the registry grows, every key is its own. */
static void test_registry_many(void **state)
{
	enum {
		NF = 24,
		NS = 12
	};
	struct config *c1 = calloc(2, sizeof(*c1));
	struct farm *farms = calloc(2 * NF, sizeof(*farms));
	struct server *srvs = calloc(2 * NF * NS, sizeof(*srvs));
	char(*names)[16] = calloc(NF, sizeof(*names));
	char(*addrs)[16] = calloc(NS, sizeof(*addrs));
	unsigned int g, f, s, f2, s2;

	(void)state;
	assert_true(c1 && farms && srvs && names && addrs);
	for (f = 0; f < NF; f++)
		snprintf(names[f], sizeof(names[f]), "farm%u", f);
	for (s = 0; s < NS; s++)
		snprintf(addrs[s], sizeof(addrs[s]), "backend%u", s);
	for (g = 0; g < 2; g++) {
		c1[g].farms = farms + g * NF;
		c1[g].nfarms = NF;
		for (f = 0; f < NF; f++) {
			struct farm *fm = &c1[g].farms[f];

			fm->name = names[f];
			fm->enabled = 1;
			fm->servers = srvs + (g * NF + f) * NS;
			fm->nservers = NS;
			for (s = 0; s < NS; s++) {
				fm->servers[s].address = addrs[s];
				fm->servers[s].http_port = 80;
				fm->servers[s].enabled = 1;
				fm->servers[s].weight = 1;
				fm->servers[s].farm = fm;
			}
		}
		assert_int_equal(lb_attach(&c1[g]), 0);
	}
	for (f = 0; f < NF; f++) {
		assert_ptr_equal(c1[0].farms[f].rt, c1[1].farms[f].rt);
		for (s = 0; s < NS; s++) {
			struct server_rt *rt = c1[0].farms[f].servers[s].rt;

			assert_ptr_equal(rt, c1[1].farms[f].servers[s].rt);
			assert_int_equal(rt->refcnt, 2);
			/* same address in another farm: other state */
			for (f2 = 0; f2 < f; f2++)
				for (s2 = 0; s2 < NS; s2++)
					assert_ptr_not_equal(rt, c1[0].farms[f2].servers[s2].rt);
		}
	}
	assert_string_equal(c1[0].farms[3].servers[5].rt->key, "farm3\nbackend5\n80");
	assert_string_equal(c1[0].farms[3].rt->key, "farm3");
	lb_detach(&c1[1]);
	assert_int_equal(c1[0].farms[0].servers[0].rt->refcnt, 1);
	lb_detach(&c1[0]);
	free(c1);
	free(farms);
	free(srvs);
	free(names);
	free(addrs);
}

/* Freeing a server's state while its pool still holds connections is a
 * proxy bug: the process must stop loudly, not leave pointers dangling. */
static void test_nonempty_pool_aborts(void **state)
{
	static const uint32_t w[] = {100};
	int status = 0;
	pid_t pid;

	(void)state;
	fflush(NULL);
	pid = fork();
	assert_true(pid != -1);
	if (pid == 0) {
		struct tfarm t;
		struct list conn;
		int fd = open("/dev/null", O_WRONLY);

		if (fd != -1)
			dup2(fd, STDERR_FILENO);
		tf_init(&t, "pooled", LB_WEIGHTED_ROUND_ROBIN, 1, w);
		list_add_tail(&t.srv[0].rt->pool, &conn);
		t.srv[0].rt->pool_len = 1;
		lb_detach(&t.cfg);
		_exit(0); /* not reached if lb_detach aborts */
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGABRT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_wrr_equal_weights_alternate),
		cmocka_unit_test(test_server_states),
		cmocka_unit_test(test_live_traffic_failures),
		cmocka_unit_test(test_wrr_exact_300_100_100),
		cmocka_unit_test(test_wrr_smooth_sequence_5_1_1),
		cmocka_unit_test(test_wrr_exclude_keeps_proportions),
		cmocka_unit_test(test_disabled_and_zero_weight_never_picked),
		cmocka_unit_test(test_exclude_honoured),
		cmocka_unit_test(test_nothing_available_is_null),
		cmocka_unit_test(test_farm_disabled_is_null),
		cmocka_unit_test(test_lr_picks_least_loaded),
		cmocka_unit_test(test_lr_ties_alternate),
		cmocka_unit_test(test_lrt_windows),
		cmocka_unit_test(test_lrt_unmeasured_tried_first_and_ties),
		cmocka_unit_test(test_wtt),
		cmocka_unit_test(test_hash_same_addr_same_server),
		cmocka_unit_test(test_hash_distribution_follows_weights),
		cmocka_unit_test(test_hash_stability),
		cmocka_unit_test(test_hash_query_string_names),
		cmocka_unit_test(test_hash_url_by_default),
		cmocka_unit_test(test_affinity_overrides_algorithm),
		cmocka_unit_test(test_affinity_ignored_or_falls_back),
		cmocka_unit_test(test_affinity_id),
		cmocka_unit_test(test_affinity_parse),
		cmocka_unit_test(test_request_counters),
		cmocka_unit_test(test_reload_keeps_state),
		cmocka_unit_test(test_detach_without_attach),
		cmocka_unit_test(test_registry_many),
		cmocka_unit_test(test_nonempty_pool_aborts),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
