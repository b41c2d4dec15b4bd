/* Load balancing: ARR's five algorithms, cookie affinity, and reload-proof runtime state. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>

#include "health.h"
#include "lb.h"
#include "log.h"
#include "tls.h"

/*
 * Runtime state registry.
 *
 * Counters, the smooth-WRR state and the idle connection pools belong to a
 * backend, not to one configuration generation: a reload builds a new
 * struct config while requests of the old one are still running, and both
 * must see (and update) the same server_rt. So the runtime objects live in
 * this module-level table, keyed by name, and each generation holds one
 * reference per farm and per server. This is the only global state of the
 * module; the data plane is single-threaded, so it takes no lock.
 */

enum lb_node_kind {
	LB_NODE_FARM = 1,
	LB_NODE_SERVER = 2,
};

struct lb_node {
	struct lb_node *next; /* hash chain */
	uint64_t hash;	      /* of kind + key */
	int kind;	      /* enum lb_node_kind */
	union {
		struct farm_rt farm;
		struct server_rt server;
	};
};

#define LB_REG_MIN_BUCKETS 16

static struct {
	struct lb_node **buckets;
	size_t nbuckets; /* power of two; 0 while the registry is empty */
	size_t count;
} lb_reg;

/* Default LeastResponseTime window when a server has no farm pointer. */
#define LB_DEFAULT_RT_PERIOD_MS 5000

/* ---- hashing --------------------------------------------------------- */

/*
 * The hashes below are part of the on-the-wire format: affinity ids are
 * written into client cookies and RequestHash decides which backend holds a
 * client's state, so both must give the same result after a restart, an
 * upgrade or on another appliance. Hence fixed constants, no random seed,
 * and explicit little-endian loads. Changing any constant breaks every
 * affinity cookie in the field.
 */
#define LB_K0 0x9e3779b97f4a7c15ULL
#define LB_K1 0xc2b2ae3d27d4eb4fULL

#define LB_SEED_REG   0x6c622d7265676973ULL /* registry keys */
#define LB_SEED_AFF   0x6c622d6166666e74ULL /* affinity ids */
#define LB_SEED_REQ   0x6c622d7265716873ULL /* RequestHash keys */
#define LB_SEED_SCORE 0x6c622d73636f7265ULL /* rendezvous scores */

/* A 64-bit bijective finalizer (splitmix64's): every input bit affects
 * every output bit with probability close to 1/2. */
static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

static inline uint64_t rotl64(uint64_t x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static inline unsigned char lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* Streaming hash state, so that several fields can be hashed without
 * building a concatenated copy (no allocation on the hot path). */
struct lb_hash {
	uint64_t h;
	uint64_t len;
};

static inline void hash_init(struct lb_hash *st, uint64_t seed)
{
	st->h = seed;
	st->len = 0;
}

/* Absorbs one 64-bit word: the word is fully mixed before it is combined,
 * so structured inputs (IP strings, counters) spread over the whole range. */
static inline void hash_word(struct lb_hash *st, uint64_t w)
{
	st->h = rotl64(st->h ^ mix64(w ^ LB_K0), 29) * LB_K1 + LB_K0;
}

/* Absorbs p[0..len); fold lower-cases ASCII letters first (for names that
 * ARR compares case-insensitively). The length is absorbed too, so that
 * "ab"+"c" and "a"+"bc" differ when fields are hashed one after another. */
static void hash_bytes(struct lb_hash *st, const void *p, size_t len, int fold)
{
	const unsigned char *s = p;
	size_t i;

	while (len >= 8) {
		uint64_t w = 0;

		for (i = 0; i < 8; i++)
			w |= (uint64_t)(fold ? lower(s[i]) : s[i]) << (8 * i);
		hash_word(st, w);
		s += 8;
		len -= 8;
		st->len += 8;
	}
	if (len) {
		uint64_t w = 0;

		for (i = 0; i < len; i++)
			w |= (uint64_t)(fold ? lower(s[i]) : s[i]) << (8 * i);
		hash_word(st, w);
		st->len += len;
	}
	/* field separator: binds the field length into the state */
	hash_word(st, st->len ^ 0xff00ff00ff00ff00ULL);
}

static inline uint64_t hash_final(const struct lb_hash *st)
{
	return mix64(st->h ^ st->len);
}

/* ---- registry -------------------------------------------------------- */

static const char *node_key(const struct lb_node *n)
{
	return n->kind == LB_NODE_FARM ? n->farm.key : n->server.key;
}

static uint64_t reg_hash(int kind, const char *key)
{
	struct lb_hash st;

	hash_init(&st, LB_SEED_REG + (uint64_t)kind);
	hash_bytes(&st, key, strlen(key), 0);
	return hash_final(&st);
}

/* Doubles the bucket array when the load factor reaches 1. A failed
 * allocation is not an error: the table keeps working, only with longer
 * chains, and lookups happen at attach time only. */
static void reg_grow(void)
{
	size_t nb = lb_reg.nbuckets ? lb_reg.nbuckets * 2 : LB_REG_MIN_BUCKETS;
	struct lb_node **b;
	size_t i;

	if (lb_reg.nbuckets && lb_reg.count < lb_reg.nbuckets)
		return;
	b = calloc(nb, sizeof(*b));
	if (!b)
		return;
	for (i = 0; i < lb_reg.nbuckets; i++) {
		struct lb_node *n = lb_reg.buckets[i], *next;

		for (; n; n = next) {
			next = n->next;
			n->next = b[n->hash & (nb - 1)];
			b[n->hash & (nb - 1)] = n;
		}
	}
	free(lb_reg.buckets);
	lb_reg.buckets = b;
	lb_reg.nbuckets = nb;
}

/*
 * Finds the node of (kind, key) and takes a reference, or creates it with
 * refcnt 1. key is a malloc'ed string whose ownership passes to this
 * function: it becomes the node's key, or is freed if the node exists.
 * Returns the node, or NULL on allocation failure (key freed).
 */
static struct lb_node *reg_get(int kind, char *key)
{
	uint64_t h = reg_hash(kind, key);
	struct lb_node *n;

	reg_grow();
	if (!lb_reg.nbuckets) {
		free(key);
		return NULL;
	}
	for (n = lb_reg.buckets[h & (lb_reg.nbuckets - 1)]; n; n = n->next) {
		if (n->hash == h && n->kind == kind && strcmp(node_key(n), key) == 0) {
			free(key);
			if (kind == LB_NODE_FARM)
				n->farm.refcnt++;
			else
				n->server.refcnt++;
			return n;
		}
	}
	n = calloc(1, sizeof(*n));
	if (!n) {
		free(key);
		return NULL;
	}
	n->hash = h;
	n->kind = kind;
	if (kind == LB_NODE_FARM) {
		n->farm.key = key;
		n->farm.refcnt = 1;
	} else {
		n->server.key = key;
		n->server.refcnt = 1;
		n->server.healthy = 1;
		list_init(&n->server.pool);
		list_init(&n->server.pool_tls);
	}
	n->next = lb_reg.buckets[h & (lb_reg.nbuckets - 1)];
	lb_reg.buckets[h & (lb_reg.nbuckets - 1)] = n;
	lb_reg.count++;
	return n;
}

/* Unlinks and frees a node whose last reference is gone. The bucket array
 * goes with the last node, so a process that detached every generation
 * holds no memory here (LeakSanitizer stays quiet). */
static void reg_free(struct lb_node *n)
{
	struct lb_node **pp = &lb_reg.buckets[n->hash & (lb_reg.nbuckets - 1)];

	while (*pp != n)
		pp = &(*pp)->next;
	*pp = n->next;
	free((char *)node_key(n));
	free(n);
	if (--lb_reg.count == 0) {
		free(lb_reg.buckets);
		lb_reg.buckets = NULL;
		lb_reg.nbuckets = 0;
	}
}

/* Copies s lower-cased into d; returns the end of the copy. */
static char *copy_lower(char *d, const char *s)
{
	while (*s)
		*d++ = (char)lower((unsigned char)*s++);
	return d;
}

/* Builds the malloc'ed key "farm\naddress\nport", farm name and address
 * lower-cased: ARR farm names are case-insensitive, and so are DNS names
 * and IPv6 hex digits. Returns NULL on allocation failure. */
static char *server_key(const char *farm, const char *address, uint16_t port)
{
	size_t len = strlen(farm) + strlen(address) + sizeof("\n\n65535");
	char *key = malloc(len);
	char *p;

	if (!key)
		return NULL;
	p = copy_lower(key, farm);
	*p++ = '\n';
	p = copy_lower(p, address);
	snprintf(p, len - (size_t)(p - key), "\n%u", (unsigned int)port);
	return key;
}

static struct farm_rt *farm_rt_get(const char *name)
{
	char *key = malloc(strlen(name) + 1);
	struct lb_node *n;

	if (!key)
		return NULL;
	*copy_lower(key, name) = '\0';
	n = reg_get(LB_NODE_FARM, key);
	return n ? &n->farm : NULL;
}

static struct server_rt *server_rt_get(const char *farm, const char *address, uint16_t port)
{
	char *key = server_key(farm, address, port);
	struct lb_node *n;

	if (!key)
		return NULL;
	n = reg_get(LB_NODE_SERVER, key);
	if (n && !n->server.name) {
		size_t len = strlen(address) + sizeof("[]:65535");

		n->server.farm_name = strdup(farm);
		n->server.name = malloc(len);
		if (n->server.name)
			snprintf(n->server.name, len, strchr(address, ':') ? "[%s]:%u" : "%s:%u",
				 address, (unsigned int)port);
		if (!n->server.farm_name || !n->server.name) {
			free(n->server.farm_name);
			free(n->server.name);
			n->server.farm_name = n->server.name = NULL;
			if (--n->server.refcnt == 0)
				reg_free(n);
			return NULL;
		}
	}
	return n ? &n->server : NULL;
}

static void farm_rt_put(struct farm_rt *rt)
{
	if (--rt->refcnt == 0)
		reg_free(container_of(rt, struct lb_node, farm));
}

/* Drops a reference to a server's state. The proxy must have emptied the
 * pool of a server that leaves the configuration (its connections point at
 * this object): freeing it with connections inside would leave them
 * dangling, so that is a bug worth stopping the process for. */
static void server_rt_put(struct server_rt *rt)
{
	if (--rt->refcnt > 0)
		return;
	if (!list_empty(&rt->pool) || !list_empty(&rt->pool_tls)) {
		fprintf(stderr,
			"farmgated: lb: BUG: freeing runtime state of server \"%s\" with %u idle "
			"connection(s) still pooled; the proxy must drain the pool first\n",
			rt->key, rt->pool_len + rt->pool_tls_len);
		abort();
	}
	if (rt->tls_session)
		tls_session_free(rt->tls_session);
	if (rt->probe)
		health_probe_free(rt);
	free(rt->live_fail_ms);
	free(rt->farm_name);
	free(rt->name);
	reg_free(container_of(rt, struct lb_node, server));
}

/*
 * Takes a reference to the runtime state of every farm and server of cfg
 * (creating it on first use) and fills in server affinity ids the loader
 * left at 0. Farms or servers that already have rt are left alone, so a
 * repeated call is harmless. Returns 0, or -1 on allocation failure, in
 * which case cfg is left fully detached.
 */
int lb_attach(struct config *cfg)
{
	unsigned int i, j;

	for (i = 0; i < cfg->nfarms; i++) {
		struct farm *f = &cfg->farms[i];
		const char *fname = f->name ? f->name : "";

		if (!f->rt) {
			f->rt = farm_rt_get(fname);
			if (!f->rt)
				goto fail;
		}
		for (j = 0; j < f->nservers; j++) {
			struct server *s = &f->servers[j];
			const char *addr = s->address ? s->address : "";

			if (!s->affinity_id)
				s->affinity_id = lb_affinity_id(fname, addr, s->http_port);
			if (!s->rt) {
				s->rt = server_rt_get(fname, addr, s->http_port);
				if (!s->rt)
					goto fail;
			}
		}
	}
	return 0;
fail:
	lb_detach(cfg);
	return -1;
}

/* Drops every reference cfg holds and clears the rt pointers, so that a
 * second call, or a call on a never-attached cfg, does nothing. */
void lb_detach(struct config *cfg)
{
	unsigned int i, j;

	if (!cfg)
		return;
	for (i = 0; i < cfg->nfarms; i++) {
		struct farm *f = &cfg->farms[i];

		for (j = 0; j < f->nservers; j++) {
			struct server *s = &f->servers[j];

			if (s->rt) {
				server_rt_put(s->rt);
				s->rt = NULL;
			}
		}
		if (f->rt) {
			farm_rt_put(f->rt);
			f->rt = NULL;
		}
	}
}

/* ---- picking --------------------------------------------------------- */

static const struct lb_input lb_no_input;

/* A server takes part in a pick when it is enabled, has a weight, is not
 * the one the caller already tried (the same backend across generations
 * counts as the same: compare runtime state too), and is attached. */
static inline int eligible_as(const struct server *s, const struct lb_input *in, int affinity)
{
	if (!s->enabled || !s->weight || !s->rt)
		return 0;
	if (s->rt->admin != SRV_AVAILABLE && !(affinity && s->rt->admin == SRV_DRAIN))
		return 0;
	if (!s->rt->healthy && !(s->rt->rescue && s->farm && s->farm->health.min_servers))
		return 0;
	if (in->exclude && (s == in->exclude || s->rt == in->exclude->rt))
		return 0;
	return 1;
}

static inline int eligible(const struct server *s, const struct lb_input *in)
{
	return eligible_as(s, in, 0);
}

/*
 * Compares a/wa with b/wb exactly, for any 64-bit a, b and nonzero 32-bit
 * weights, without 128-bit arithmetic (not available on 32-bit boards):
 * compare the integer quotients, then the remainders cross-multiplied
 * (each remainder is below its weight, so the products fit in 64 bits).
 * Returns <0, 0 or >0.
 */
static int ratio_cmp(uint64_t a, uint32_t wa, uint64_t b, uint32_t wb)
{
	uint64_t qa = a / wa, qb = b / wb;
	uint64_t ra, rb;

	if (qa != qb)
		return qa < qb ? -1 : 1;
	ra = (a % wa) * wb;
	rb = (b % wb) * wa;
	return ra < rb ? -1 : ra > rb;
}

/* nginx's smooth weighted round robin: picks spread as evenly as the
 * weights allow (5,1,1 gives a a b a c a a) and every window of
 * sum(weights) picks is exact. Servers not eligible keep their state. */
static struct server *pick_wrr(struct farm *farm, const struct lb_input *in)
{
	struct server *best = NULL;
	int64_t total = 0;
	unsigned int i;

	for (i = 0; i < farm->nservers; i++) {
		struct server *s = &farm->servers[i];

		if (!eligible(s, in))
			continue;
		s->rt->wrr_current += s->weight;
		total += s->weight;
		if (!best || s->rt->wrr_current > best->rt->wrr_current)
			best = s;
	}
	if (best)
		best->rt->wrr_current -= total;
	return best;
}

static int cmp_requests(const struct server *a, const struct server *b)
{
	return ratio_cmp(a->rt->current_requests, a->weight, b->rt->current_requests, b->weight);
}

static int cmp_response_time(const struct server *a, const struct server *b)
{
	uint32_t x = a->rt->avg_response_ms, y = b->rt->avg_response_ms;

	return x < y ? -1 : x > y;
}

static inline uint64_t traffic(const struct server_rt *rt)
{
	uint64_t t = rt->bytes_sent + rt->bytes_received;

	return t < rt->bytes_sent ? UINT64_MAX : t; /* saturate */
}

static int cmp_traffic(const struct server *a, const struct server *b)
{
	return ratio_cmp(traffic(a->rt), a->weight, traffic(b->rt), b->weight);
}

/*
 * Picks the eligible server that cmp orders first. When several are equal
 * the farm's rr_counter chooses among them in turn, so that idle servers
 * (all at 0 requests, or not measured yet) share the load instead of the
 * first one taking everything. Two passes over the servers, no allocation.
 */
static struct server *pick_least(struct farm *farm, const struct lb_input *in,
				 int (*cmp)(const struct server *, const struct server *))
{
	struct server *best = NULL;
	unsigned int i, ties = 0, nth;

	for (i = 0; i < farm->nservers; i++) {
		struct server *s = &farm->servers[i];
		int c;

		if (!eligible(s, in))
			continue;
		c = best ? cmp(s, best) : -1;
		if (c < 0) {
			best = s;
			ties = 1;
		} else if (c == 0) {
			ties++;
		}
	}
	if (ties <= 1)
		return best;
	nth = (unsigned int)(farm->rt->rr_counter++ % ties);
	for (i = 0; i < farm->nservers; i++) {
		struct server *s = &farm->servers[i];

		if (eligible(s, in) && cmp(s, best) == 0 && nth-- == 0)
			return s;
	}
	return best; /* not reached: best itself is one of the ties */
}

/*
 * Closes the LeastResponseTime window of rt if it has run for period_ms:
 * its average becomes avg_response_ms (a window without requests keeps the
 * previous average) and a new window starts at now_ms. A clock that went
 * backwards does not close the window.
 */
static void rt_window_roll(struct server_rt *rt, uint32_t period_ms, uint64_t now_ms)
{
	if (now_ms < rt->rt_window_start_ms || now_ms - rt->rt_window_start_ms < period_ms)
		return;
	if (rt->rt_window_count)
		rt->avg_response_ms = (uint32_t)(rt->rt_window_sum_ms / rt->rt_window_count);
	rt->rt_window_start_ms = now_ms;
	rt->rt_window_sum_ms = 0;
	rt->rt_window_count = 0;
}

static struct server *pick_lrt(struct farm *farm, const struct lb_input *in)
{
	unsigned int i;

	/* a window that ended while no request completed on the server still
	 * has to be promoted before servers are compared */
	for (i = 0; i < farm->nservers; i++) {
		struct server *s = &farm->servers[i];

		if (eligible(s, in) && farm->lb.least_response_time_period_ms)
			rt_window_roll(s->rt, farm->lb.least_response_time_period_ms, in->now_ms);
	}
	return pick_least(farm, in, cmp_response_time);
}

/* Finds the value of parameter name[0..nlen) in a query string
 * "a=1&b=2" (exact, case-sensitive name match, as ARR; no percent
 * decoding). Returns 1 and sets *val and *vlen for the first occurrence, 0 if
 * absent. A parameter without '=' has an empty value. */
static int query_param(const char *q, size_t qlen, const char *name, size_t nlen, const char **val,
		       size_t *vlen)
{
	const char *end = q + qlen;

	while (q < end) {
		const char *amp = memchr(q, '&', (size_t)(end - q));
		const char *pend = amp ? amp : end;
		const char *eq = memchr(q, '=', (size_t)(pend - q));
		const char *nend = eq ? eq : pend;

		if ((size_t)(nend - q) == nlen && memcmp(q, name, nlen) == 0) {
			*val = eq ? eq + 1 : pend;
			*vlen = (size_t)(pend - *val);
			return 1;
		}
		q = amp ? amp + 1 : end;
	}
	return 0;
}

/*
 * The RequestHash key of a request, hashed: the hashServerVariable's value
 * (an absent variable hashes as the empty string, so such requests still
 * stick together), else the queryStringNames values in configured order
 * (an absent parameter differs from an empty one), else {URL}.
 */
static uint64_t request_key_hash(const struct farm *farm, const struct rule_ctx *vars)
{
	struct lb_hash st;

	hash_init(&st, LB_SEED_REQ);
	if (!vars) {
		hash_bytes(&st, "", 0, 0);
	} else if (farm->lb.hash_server_variable) {
		const char *name = farm->lb.hash_server_variable;
		size_t nlen = strlen(name);
		const char *val;
		size_t vlen;

		/* tolerate the template spelling "{REMOTE_ADDR}" */
		if (nlen >= 2 && name[0] == '{' && name[nlen - 1] == '}') {
			name++;
			nlen -= 2;
		}
		if (rules_var(vars, name, nlen, &val, &vlen) != 0 || !val) {
			val = "";
			vlen = 0;
		}
		hash_bytes(&st, val, vlen, 0);
	} else if (farm->lb.nquery_string_names) {
		unsigned int i;

		for (i = 0; i < farm->lb.nquery_string_names; i++) {
			const char *qn = farm->lb.query_string_names[i];
			const char *val;
			size_t vlen;

			if (vars->query && qn &&
			    query_param(vars->query, vars->query_len, qn, strlen(qn), &val, &vlen))
				hash_bytes(&st, val, vlen, 0);
			else
				hash_word(&st, 0xabadcafeabadcafeULL); /* absent */
		}
	} else {
		hash_bytes(&st, vars->url ? vars->url : "", vars->url ? vars->url_len : 0, 0);
	}
	return hash_final(&st);
}

/*
 * -log2(h / 2^64) in unsigned Q32 fixed point, for the weighted rendezvous
 * score: h is a uniform 64-bit hash, so h / 2^64 is a uniform u in (0, 1)
 * and -ln(u) / weight is an exponential variable of rate `weight`; the
 * server with the smallest one wins with probability weight / sum(weights).
 * The base of the logarithm does not matter (a common factor). The
 * fractional part of log2 of the 32-bit mantissa is computed bit by bit by
 * repeated squaring: integer only, 32 multiplications. Always >= 1.
 */
static uint64_t neg_log2_q32(uint64_t h)
{
	int msb, i;
	uint64_t m, frac = 0, r;

	if (!h)
		h = 1;
	msb = 63 - __builtin_clzll(h);
	/* mantissa in [2^31, 2^32): 1.31 fixed point, a value in [1, 2) */
	m = msb >= 31 ? h >> (msb - 31) : h << (31 - msb);
	for (i = 31; i >= 0; i--) {
		m = (m * m) >> 31;
		if (m >= (1ULL << 32)) {
			m >>= 1;
			frac |= 1ULL << i;
		}
	}
	r = (64ULL << 32) - (((uint64_t)msb << 32) | frac);
	return r ? r : 1;
}

/* Weighted rendezvous (highest random weight) hashing: each server gets an
 * independent score from (key, server id); removing or disabling a server
 * only moves the keys it held, and shares follow the weights. */
static struct server *pick_hash(struct farm *farm, const struct lb_input *in)
{
	uint64_t key = request_key_hash(farm, in->vars);
	struct server *best = NULL;
	uint64_t best_l = 0, best_h = 0;
	unsigned int i;

	for (i = 0; i < farm->nservers; i++) {
		struct server *s = &farm->servers[i];
		uint64_t h, l;
		int c;

		if (!eligible(s, in))
			continue;
		h = mix64(mix64(key ^ s->affinity_id) + (s->affinity_id ^ LB_SEED_SCORE));
		l = neg_log2_q32(h);
		c = best ? ratio_cmp(l, s->weight, best_l, best->weight) : -1;
		/* exact ties (rare) go to the higher raw hash: still a property
		 * of (key, server) alone, so stability holds */
		if (c < 0 || (c == 0 && h > best_h)) {
			best = s;
			best_l = l;
			best_h = h;
		}
	}
	return best;
}

/* Returns the server whose affinity id is id if it may take the request,
 * or NULL. A draining server (Disallow New Connections) still takes its
 * affinitised clients. */
static struct server *pick_affinity(struct farm *farm, const struct lb_input *in, uint64_t id)
{
	unsigned int i;

	for (i = 0; i < farm->nservers; i++) {
		struct server *s = &farm->servers[i];

		if (s->affinity_id == id && eligible_as(s, in, 1))
			return s;
	}
	return NULL;
}

/* minServers: while fewer servers than that are healthy and available,
 * unhealthy available ones (in configuration order) stay in rotation. */
static void min_servers_rescue(struct farm *farm)
{
	unsigned int i, ok = 0, need;

	for (i = 0; i < farm->nservers; i++) {
		const struct server *s = &farm->servers[i];

		if (s->enabled && s->weight && s->rt && s->rt->admin == SRV_AVAILABLE &&
		    s->rt->healthy)
			ok++;
	}
	need = farm->health.min_servers > ok ? farm->health.min_servers - ok : 0;
	for (i = 0; i < farm->nservers; i++) {
		struct server_rt *rt = farm->servers[i].rt;

		if (!rt || rt->healthy)
			continue;
		rt->rescue = need && farm->servers[i].enabled && farm->servers[i].weight &&
			     rt->admin == SRV_AVAILABLE;
		if (rt->rescue)
			need--;
	}
}

/* Without a URL test nothing would ever bring back a server that live
 * traffic marked unhealthy: it returns after liveTrafficFailurePeriod. */
static void live_recover(struct farm *farm, uint64_t now_ms)
{
	unsigned int i;

	for (i = 0; i < farm->nservers; i++) {
		struct server_rt *rt = farm->servers[i].rt;

		if (rt && !rt->healthy &&
		    now_ms - rt->unhealthy_since_ms >= farm->health.live_period_ms)
			lb_set_healthy(rt, 1, "no URL test: back after liveTrafficFailurePeriod",
				       now_ms);
	}
}

int lb_farm_online(const struct farm *farm)
{
	return farm->enabled && !(farm->rt && farm->rt->offline);
}

/* See lb.h. A farm that was never attached has no server available. in may
 * be NULL (no affinity, no exclusion, no variables). */
struct server *lb_pick(struct farm *farm, const struct lb_input *in)
{
	struct server *s;

	if (!farm || !lb_farm_online(farm) || !farm->rt || !farm->nservers)
		return NULL;
	if (!in)
		in = &lb_no_input;
	if (!farm->health.url && farm->health.live_period_ms && in->now_ms)
		live_recover(farm, in->now_ms);
	if (farm->health.min_servers)
		min_servers_rescue(farm);
	if (farm->affinity.use_cookie && in->affinity_id) {
		s = pick_affinity(farm, in, in->affinity_id);
		if (s)
			return s;
	}
	switch (farm->lb.algorithm) {
	case LB_LEAST_REQUESTS:
		return pick_least(farm, in, cmp_requests);
	case LB_LEAST_RESPONSE_TIME:
		return pick_lrt(farm, in);
	case LB_WEIGHTED_TOTAL_TRAFFIC:
		return pick_least(farm, in, cmp_traffic);
	case LB_REQUEST_HASH:
		return pick_hash(farm, in);
	case LB_WEIGHTED_ROUND_ROBIN:
	default:
		return pick_wrr(farm, in);
	}
}

/* ---- accounting ------------------------------------------------------ */

void lb_request_start(struct server *srv)
{
	if (!srv || !srv->rt)
		return;
	srv->rt->current_requests++;
	srv->rt->total_requests++;
}

/*
 * Ends a request started with lb_request_start: counters, and the
 * LeastResponseTime window of the server's farm period. Until a server's
 * first window closes (avg_response_ms still 0) the running average of the
 * open window is published, so a new server is measured at once rather
 * than after a whole period.
 */
void lb_request_end(struct server *srv, int failed, uint32_t response_ms, uint64_t bytes_sent,
		    uint64_t bytes_received, uint64_t now_ms)
{
	struct server_rt *rt;
	uint32_t period;

	if (!srv || !srv->rt)
		return;
	rt = srv->rt;
	if (rt->current_requests)
		rt->current_requests--;
	if (failed)
		rt->failed_requests++;
	rt->bytes_sent += bytes_sent;
	rt->bytes_received += bytes_received;
	lb_rps(rt, now_ms);
	rt->rps_count++;

	period = srv->farm ? srv->farm->lb.least_response_time_period_ms : LB_DEFAULT_RT_PERIOD_MS;
	if (!period) {
		/* no window: the last response time is the measure */
		rt->avg_response_ms = response_ms;
		return;
	}
	rt_window_roll(rt, period, now_ms);
	rt->rt_window_sum_ms += response_ms;
	rt->rt_window_count++;
	if (!rt->avg_response_ms)
		rt->avg_response_ms = (uint32_t)(rt->rt_window_sum_ms / rt->rt_window_count);
}

uint32_t lb_rps(struct server_rt *rt, uint64_t now_ms)
{
	uint64_t sec = now_ms / 1000;

	if (sec != rt->rps_sec) {
		rt->rps_last = sec == rt->rps_sec + 1 ? rt->rps_count : 0;
		rt->rps_count = 0;
		rt->rps_sec = sec;
	}
	return rt->rps_last;
}

void lb_reset_counters(struct server_rt *rt)
{
	rt->total_requests = 0;
	rt->failed_requests = 0;
	rt->bytes_sent = rt->bytes_received = 0;
	rt->avg_response_ms = 0;
	rt->rt_window_sum_ms = 0;
	rt->rt_window_count = 0;
	rt->ws_total = 0;
	rt->rps_count = rt->rps_last = 0;
}

/* ---- health ------------------------------------------------------------ */

void lb_set_healthy(struct server_rt *rt, int healthy, const char *why, uint64_t now_ms)
{
	healthy = !!healthy;
	if (rt->healthy == healthy)
		return;
	rt->healthy = healthy;
	rt->health_changed = (int64_t)time(NULL);
	rt->live_n = rt->live_head = 0;
	if (healthy) {
		rt->probe_failures = 0;
		LOGI("farm %s server %s: healthy again (%s)", rt->farm_name, rt->name, why);
	} else {
		rt->unhealthy_since_ms = now_ms;
		LOGW("farm %s server %s: unhealthy (%s)", rt->farm_name, rt->name, why);
	}
}

static int code_in(const struct code_set *cs, int code)
{
	unsigned int i;

	for (i = 0; i < cs->n; i++)
		if (code >= cs->lo[i] && code <= cs->hi[i])
			return 1;
	return 0;
}

void lb_live_result(struct server *srv, int backend_status, uint64_t now_ms)
{
	const struct farm *f = srv ? srv->farm : NULL;
	struct server_rt *rt = srv ? srv->rt : NULL;
	uint32_t max, i, n;
	char why[128];

	if (!rt || !f || !f->health.live_period_ms || !rt->healthy)
		return;
	if (backend_status >= 0 && !code_in(&f->health.live_codes, backend_status))
		return;
	max = f->health.max_live_failures;
	if (rt->live_cap != max) {
		uint64_t *p = realloc(rt->live_fail_ms, max * sizeof(*p));

		if (!p)
			return;
		rt->live_fail_ms = p;
		rt->live_cap = max;
		rt->live_n = rt->live_head = 0;
	}
	/* the ring holds the last `max` failure times, oldest at live_head */
	if (rt->live_n < max) {
		rt->live_fail_ms[(rt->live_head + rt->live_n) % max] = now_ms;
		rt->live_n++;
	} else {
		rt->live_fail_ms[rt->live_head] = now_ms;
		rt->live_head = (rt->live_head + 1) % max;
	}
	/* drop those older than the period */
	for (i = 0, n = rt->live_n; i < n; i++) {
		if (now_ms - rt->live_fail_ms[rt->live_head] < f->health.live_period_ms)
			break;
		rt->live_head = (rt->live_head + 1) % max;
		rt->live_n--;
	}
	if (rt->live_n < max)
		return;
	snprintf(why, sizeof(why), "%u live-traffic failures within %u ms, the last %s", max,
		 f->health.live_period_ms,
		 backend_status < 0 ? "a connection failure" : "a listed status code");
	if (backend_status >= 0) {
		char *p = why + strlen(why) - strlen("a listed status code");

		snprintf(p, sizeof(why) - (size_t)(p - why), "status %d", backend_status);
	}
	lb_set_healthy(rt, 0, why, now_ms);
}

/* ---- affinity -------------------------------------------------------- */

/* See lb.h. Farm name and address are hashed lower-cased (both are
 * case-insensitive names), so the cookie survives a change of spelling. */
uint64_t lb_affinity_id(const char *farm, const char *address, uint16_t port)
{
	struct lb_hash st;
	uint64_t id;

	hash_init(&st, LB_SEED_AFF);
	hash_bytes(&st, farm ? farm : "", farm ? strlen(farm) : 0, 1);
	hash_bytes(&st, address ? address : "", address ? strlen(address) : 0, 1);
	hash_word(&st, port);
	id = hash_final(&st);
	return id ? id : 1; /* 0 means "no affinity" */
}

/* See lb.h. Exactly 16 hex digits, either case; anything else (including
 * the all-zero id, which no server has) gives 0. */
uint64_t lb_affinity_parse(const char *s, size_t len)
{
	uint64_t v = 0;
	size_t i;

	if (!s || len != 16)
		return 0;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		unsigned int d;

		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return 0;
		v = (v << 4) | d;
	}
	return v;
}
