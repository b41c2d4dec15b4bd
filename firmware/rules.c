/* URL Rewrite rules engine: IIS URL Rewrite 2.x patterns, conditions, back-references, actions. */
#define PCRE2_CODE_UNIT_WIDTH 8

#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules.h"

/*
 * What the engine matches, and why:
 *
 * - match.url sees the URL path without its leading '/' and without the
 *   query string, exactly as the client sent it: Farmgate does NOT
 *   percent-decode it first (IIS matches the decoded path). A pattern for
 *   "a b" must therefore be written "a%20b". Matching raw bytes keeps one
 *   canonical form (no "%2F" vs "/" confusion between the rules and the
 *   backend) and means the engine never copies the path.
 * - ECMAScript patterns are PCRE2 (Perl syntax, a superset of what URL
 *   Rewrite's ECMAScript accepts for practical patterns), unanchored like
 *   URL Rewrite's search. No PCRE2_UTF: the input is raw bytes, and
 *   (*UTF) in a pattern is refused (PCRE2_NEVER_UTF).
 * - Wildcard: only '*' is special (any sequence, greedy, one capture each).
 *   URL Rewrite's documentation mentions '?', but the module treats it as a
 *   literal character, and so do we. The whole input must match.
 * - ExactMatch: the whole input equals the pattern (ASCII case folding when
 *   ignoreCase).
 *
 * Every compiled pattern carries PCRE2 resource limits in its own text
 * ("(*LIMIT_MATCH=..)" etc.), because struct rule_pattern has no room for a
 * match context and rules_eval must not allocate one: a hostile URL against
 * a backtracking pattern stops after a bounded number of steps and the
 * pattern simply does not match (negate then applies as for any other non-match).
 */

/* ECMAScript patterns are a build option (Kconfig RULES_ECMASCRIPT). A plain
 * 0/1 rather than IS_ENABLED() so that cppcheck (make lint) can expand it. */
#ifdef CONFIG_RULES_ECMASCRIPT
#define RULES_ECMASCRIPT 1
#else
#define RULES_ECMASCRIPT 0
#endif

/* Back-references {R:0}..{R:9} and {C:0}..{C:9}, as in URL Rewrite. */
#define RULES_MAX_REFS 10

/* PCRE2 limits per match, as start-of-pattern items: a match limit of
 * 200000 steps bounds CPU (~2 ms interpreted, well under 1 ms with JIT;
 * PCRE2's own default of 10 million allows ~130 ms); depth and heap (KiB)
 * bound the interpreter's backtracking memory, which PCRE2 keeps in the
 * match data between calls. A pattern's own later (*LIMIT_MATCH=n) item
 * overrides ours, but never beyond PCRE2's default: that is the operator's
 * choice, not the client's. */
#define RULES_LIMITS_PREFIX "(*LIMIT_MATCH=200000)(*LIMIT_DEPTH=10000)(*LIMIT_HEAP=2048)"

/* Captures of one match: offsets into subj; a group that did not take part
 * is empty. n == 0 after a non-match or a negated match. */
struct caps {
	const char *subj;
	unsigned int n;
	size_t off[RULES_MAX_REFS][2];
};

/* Scratch state of one rules_eval(): the caller's buffer holds the current
 * rewritten URL (if a rule rewrote the path) at [0, state_len), then working
 * space for condition inputs and action targets. */
struct eval {
	char *buf;
	size_t bufsz;
	size_t state_len; /* bytes of "path?query\0" at buf, 0 = not rewritten */
};

enum rule_step {
	STEP_CONTINUE = 0, /* go on with the next rule */
	STEP_STOP = 1,	   /* stopProcessing: end without a farm */
	STEP_DONE = 2,	   /* res is final */
};

/* One "{...}" reference of a template. */
enum ref_kind {
	REF_R = 0,
	REF_C = 1,
	REF_VAR = 2,
};

enum ref_err {
	REF_OK = 0,
	REF_UNCLOSED = -1,
	REF_EMPTY = -2,
	REF_BAD_BACKREF = -3,
	REF_NESTED = -4,
	REF_FUNCTION = -5,
	REF_UNKNOWN_VAR = -6,
};

struct tpl_ref {
	enum ref_kind kind;
	unsigned int idx; /* REF_R / REF_C */
	const char *name; /* text between the braces */
	size_t name_len;
};

/* Server variables with a fixed meaning (HTTP_<NAME> is handled apart). */
static const char *const known_vars[] = {
	"HTTP_HOST",	      "URL",	      "QUERY_STRING", "HTTPS",
	"REMOTE_ADDR",	      "REMOTE_PORT",  "SERVER_PORT",  "REQUEST_METHOD",
	"SERVER_PORT_SECURE", "CERT_SUBJECT", "CERT_ISSUER",  "CERT_SERIALNUMBER",
};

static int ascii_lower(int c)
{
	return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

/* ASCII case-insensitive comparison of n bytes; 1 if equal. */
static int ieq(const char *a, const char *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (ascii_lower((unsigned char)a[i]) != ascii_lower((unsigned char)b[i]))
			return 0;
	return 1;
}

/* 1 if name[0..len) is the literal lit, ignoring ASCII case. */
static int name_is(const char *name, size_t len, const char *lit)
{
	return strlen(lit) == len && ieq(name, lit, len);
}

/* 1 if s[0..len) starts with the literal prefix, ignoring ASCII case. */
static int starts_with_ci(const char *s, size_t len, const char *prefix)
{
	size_t pl = strlen(prefix);

	return len >= pl && ieq(s, prefix, pl);
}

/* Writes "field: message" into err (if any) and returns -1. */
static int __attribute__((format(printf, 4, 5)))
fail(char *err, size_t errlen, const char *field, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!err || !errlen)
		return -1;
	n = snprintf(err, errlen, "%s: ", field);
	if (n < 0 || (size_t)n >= errlen)
		return -1;
	va_start(ap, fmt);
	vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return -1;
}

/* Farm by name (ASCII case-insensitive, as ARR's farm names). NULL if none. */
static struct farm *find_farm(const struct config *cfg, const char *name, size_t len)
{
	unsigned int i;

	if (!cfg || !len)
		return NULL;
	for (i = 0; i < cfg->nfarms; i++) {
		struct farm *f = &cfg->farms[i];

		if (f->name && name_is(name, len, f->name))
			return f;
	}
	return NULL;
}

/* 1 if NAME (without "HTTP_") can name a header: token characters only. */
static int header_var_ok(const char *name, size_t len)
{
	size_t i;

	if (!len)
		return 0;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

/* 1 if a template may reference the server variable name[0..len). */
static int var_known(const char *name, size_t len)
{
	size_t i;

	for (i = 0; i < sizeof(known_vars) / sizeof(known_vars[0]); i++)
		if (name_is(name, len, known_vars[i]))
			return 1;
	return starts_with_ci(name, len, "HTTP_") && header_var_ok(name + 5, len - 5);
}

/*
 * Header lookup for {HTTP_<NAME>}: a '_' of NAME matches only a '-' of the
 * header name, so "X_Forwarded_For: forged" cannot pose as
 * {HTTP_X_FORWARDED_FOR} (the header-spoofing trick nginx and Apache guard
 * against by dropping underscored headers). First field wins. Returns the
 * header or NULL.
 */
static const struct http_hdr *find_header(const struct rule_ctx *ctx, const char *name, size_t len)
{
	unsigned int i;
	size_t j;

	if (!ctx->hdrs)
		return NULL;
	for (i = 0; i < ctx->nhdrs; i++) {
		const struct http_hdr *h = &ctx->hdrs[i];

		if (h->name_len != len)
			continue;
		for (j = 0; j < len; j++) {
			int a = ascii_lower((unsigned char)h->name[j]);
			int b = ascii_lower((unsigned char)name[j]);

			if (b == '_' ? a != '-' : a != b)
				break;
		}
		if (j == len)
			return h;
	}
	return NULL;
}

/* Points *val and *len at the NUL-terminated s. Returns 0, or -1 if s is NULL (absent). */
static int cstr_var(const char *s, const char **val, size_t *len)
{
	if (!s)
		return -1;
	*val = s;
	*len = strlen(s);
	return 0;
}

/* Server variable lookup shared by templates and the load balancer. The
 * slices point into ctx's memory (or static strings); nothing is copied. */
int rules_var(const struct rule_ctx *ctx, const char *name, size_t name_len, const char **val,
	      size_t *len)
{
	const struct http_hdr *h;

	if (!ctx || !name)
		return -1;
	if (name_is(name, name_len, "HTTP_HOST") && ctx->host) {
		*val = ctx->host;
		*len = ctx->host_len;
		return 0;
	}
	if (name_is(name, name_len, "URL")) {
		if (!ctx->url)
			return -1;
		*val = ctx->url;
		*len = ctx->url_len;
		return 0;
	}
	if (name_is(name, name_len, "QUERY_STRING")) {
		/* "may be empty": an absent query string is the empty one */
		*val = ctx->query ? ctx->query : "";
		*len = ctx->query ? ctx->query_len : 0;
		return 0;
	}
	if (name_is(name, name_len, "HTTPS")) {
		*val = ctx->https ? "on" : "off";
		*len = ctx->https ? 2 : 3;
		return 0;
	}
	if (name_is(name, name_len, "SERVER_PORT_SECURE"))
		return cstr_var(ctx->https ? "1" : "0", val, len);
	/* the client certificate's fields: empty without one, as in IIS */
	if (name_is(name, name_len, "CERT_SUBJECT"))
		return cstr_var(ctx->cert_subject ? ctx->cert_subject : "", val, len);
	if (name_is(name, name_len, "CERT_ISSUER"))
		return cstr_var(ctx->cert_issuer ? ctx->cert_issuer : "", val, len);
	if (name_is(name, name_len, "CERT_SERIALNUMBER"))
		return cstr_var(ctx->cert_serial ? ctx->cert_serial : "", val, len);
	if (name_is(name, name_len, "REMOTE_ADDR"))
		return cstr_var(ctx->remote_addr, val, len);
	if (name_is(name, name_len, "REMOTE_PORT"))
		return cstr_var(ctx->remote_port, val, len);
	if (name_is(name, name_len, "SERVER_PORT"))
		return cstr_var(ctx->server_port, val, len);
	if (name_is(name, name_len, "REQUEST_METHOD")) {
		if (!ctx->method)
			return -1;
		*val = ctx->method;
		*len = ctx->method_len;
		return 0;
	}
	/* HTTP_<NAME>, and HTTP_HOST when the caller left ctx->host unset */
	if (starts_with_ci(name, name_len, "HTTP_") && name_len > 5) {
		h = find_header(ctx, name + 5, name_len - 5);
		if (!h)
			return -1;
		*val = h->value;
		*len = h->value_len;
		return 0;
	}
	return -1;
}

/*
 * Parses the reference that starts at s (a '{'). On REF_OK fills ref and
 * sets *end just past the '}'. URL Rewrite has no escape for '{': any
 * "{...}" is a reference. Rewrite maps and functions ("{ToLower:...}",
 * "{map:{R:1}}") are not supported.
 */
static int ref_parse(const char *s, struct tpl_ref *ref, const char **end)
{
	const char *p = s + 1;
	const char *name = p;
	size_t len, i;
	unsigned int idx = 0;

	while (*p && *p != '}' && *p != '{')
		p++;
	if (*p == '{')
		return REF_NESTED;
	if (!*p)
		return REF_UNCLOSED;
	len = (size_t)(p - name);
	*end = p + 1;
	ref->name = name;
	ref->name_len = len;
	if (!len)
		return REF_EMPTY;
	if (len >= 2 && name[1] == ':' && strchr("RrCc", name[0])) {
		if (len == 2 || len > 3)
			return REF_BAD_BACKREF; /* "{R:}" or n > 9 (or junk) */
		for (i = 2; i < len; i++) {
			if (name[i] < '0' || name[i] > '9')
				return REF_BAD_BACKREF;
			idx = idx * 10 + (unsigned int)(name[i] - '0');
		}
		ref->kind = (name[0] == 'R' || name[0] == 'r') ? REF_R : REF_C;
		ref->idx = idx;
		return REF_OK;
	}
	if (memchr(name, ':', len))
		return REF_FUNCTION;
	if (!var_known(name, len))
		return REF_UNKNOWN_VAR;
	ref->kind = REF_VAR;
	return REF_OK;
}

/*
 * Validates a template at load time. Sets *uses_c when it holds a {C:n}.
 * Returns 0, or -1 with "field: ..." in err.
 */
static int tpl_check(const char *tpl, const char *field, int *uses_c, char *err, size_t errlen)
{
	const char *s = tpl;

	while ((s = strchr(s, '{'))) {
		struct tpl_ref ref;
		const char *end = s + 1;
		int rc = ref_parse(s, &ref, &end);
		size_t off = (size_t)(s - tpl);

		switch (rc) {
		case REF_OK:
			if (ref.kind == REF_C)
				*uses_c = 1;
			break;
		case REF_UNCLOSED:
			return fail(err, errlen, field, "unclosed '{' at offset %zu", off);
		case REF_NESTED:
			return fail(err, errlen, field,
				    "nested '{' at offset %zu (rewrite maps and functions are "
				    "not supported)",
				    off);
		case REF_EMPTY:
			return fail(err, errlen, field, "empty reference {} at offset %zu", off);
		case REF_BAD_BACKREF:
			return fail(err, errlen, field,
				    "back-reference {%.*s} is invalid (use {R:0}..{R:9} or "
				    "{C:0}..{C:9})",
				    (int)ref.name_len, ref.name);
		case REF_FUNCTION:
			return fail(err, errlen, field,
				    "{%.*s}: rewrite maps and functions are not supported",
				    (int)ref.name_len, ref.name);
		default:
			return fail(err, errlen, field, "unknown server variable {%.*s}",
				    (int)ref.name_len, ref.name);
		}
		s = end;
	}
	return 0;
}

/* Value of back-reference idx in c ("" when absent). */
static void caps_get(const struct caps *c, unsigned int idx, const char **v, size_t *vl)
{
	if (!c || idx >= c->n || !c->subj) {
		*v = "";
		*vl = 0;
		return;
	}
	*v = c->subj + c->off[idx][0];
	*vl = c->off[idx][1] - c->off[idx][0];
}

/*
 * Expands tpl with server variables from cur and back-references r / c into
 * out[0..cap), NUL-terminated; *outlen excludes the NUL. Returns 0, or -1
 * if it does not fit (or the template is malformed, which rules_compile
 * rules out). The inputs must not overlap out.
 */
static int expand(const char *tpl, const struct rule_ctx *cur, const struct caps *r,
		  const struct caps *c, char *out, size_t cap, size_t *outlen)
{
	const char *s = tpl;
	size_t n = 0;

	while (*s) {
		const char *v;
		size_t vl;

		if (*s != '{') {
			const char *brace = strchr(s, '{');

			vl = brace ? (size_t)(brace - s) : strlen(s);
			v = s;
			s += vl;
		} else {
			struct tpl_ref ref;
			const char *end;

			if (ref_parse(s, &ref, &end) != REF_OK)
				return -1;
			if (ref.kind == REF_R)
				caps_get(r, ref.idx, &v, &vl);
			else if (ref.kind == REF_C)
				caps_get(c, ref.idx, &v, &vl);
			else if (rules_var(cur, ref.name, ref.name_len, &v, &vl) != 0 || !v) {
				/* a missing header expands to "" (rules_var left v unset) */
				v = "";
				vl = 0;
			}
			s = end;
		}
		if (vl >= cap - n)
			return -1;
		memcpy(out + n, v, vl);
		n += vl;
	}
	if (n >= cap)
		return -1;
	out[n] = '\0';
	*outlen = n;
	return 0;
}

/* Frees one compiled pattern; safe on a zeroed or already freed one. */
static void pattern_free(struct rule_pattern *p)
{
	pcre2_match_data_free(p->md);
	pcre2_code_free(p->re);
	p->md = NULL;
	p->re = NULL;
}

/*
 * Builds the PCRE2 source for p into a new malloc'd string: the limits
 * prefix, then the ECMAScript pattern as written, or the Wildcard pattern
 * with every '*' as "(.*)" and every other non-alphanumeric byte escaped,
 * then "\z" (the end anchor; the start anchor is PCRE2_ANCHORED). Returns
 * NULL on allocation failure; the caller frees.
 */
static char *pattern_source(const struct rule_pattern *p)
{
	size_t plen = strlen(p->pattern);
	size_t pre = strlen(RULES_LIMITS_PREFIX);
	char *src = malloc(pre + 4 * plen + 3);
	char *o;
	const char *s;

	if (!src)
		return NULL;
	memcpy(src, RULES_LIMITS_PREFIX, pre);
	o = src + pre;
	if (p->syntax == RULE_SYNTAX_ECMASCRIPT) {
		memcpy(o, p->pattern, plen + 1);
		return src;
	}
	for (s = p->pattern; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '*') {
			memcpy(o, "(.*)", 4);
			o += 4;
			continue;
		}
		/* a backslash before a non-alphanumeric ASCII byte is always a
		 * literal in PCRE2; bytes >= 0x80 are never special without UTF */
		if (c < 0x80 &&
		    !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
			*o++ = '\\';
		*o++ = (char)c;
	}
	memcpy(o, "\\z", 3);
	return src;
}

/*
 * Compiles p (ECMAScript or Wildcard through PCRE2; nothing for ExactMatch)
 * and preallocates its match data, owned by p until pattern_free(). Returns
 * 0, or -1 with "field: ..." in err.
 */
static int pattern_compile(struct rule_pattern *p, const char *field, char *err, size_t errlen)
{
	uint32_t opts = PCRE2_NEVER_UTF;
	int errcode;
	PCRE2_SIZE erroff;
	pcre2_code *re;
	char *src;

	if (!p->pattern)
		return fail(err, errlen, field, "a pattern is required");
	switch (p->syntax) {
	case RULE_SYNTAX_EXACT:
		return 0;
	case RULE_SYNTAX_ECMASCRIPT:
		if (!RULES_ECMASCRIPT)
			return fail(err, errlen, field,
				    "ECMAScript patterns are not enabled in this build "
				    "(CONFIG_RULES_ECMASCRIPT)");
		/* ECMAScript's '$' is the end of the input, not "before a final \n" */
		opts |= PCRE2_DOLLAR_ENDONLY;
		break;
	case RULE_SYNTAX_WILDCARD:
		opts |= PCRE2_ANCHORED | PCRE2_DOTALL;
		break;
	default:
		return fail(err, errlen, field, "unknown patternSyntax %d", (int)p->syntax);
	}
	if (p->ignore_case)
		opts |= PCRE2_CASELESS;

	src = pattern_source(p);
	if (!src)
		return fail(err, errlen, field, "out of memory");
	re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, opts, &errcode, &erroff, NULL);
	free(src);
	if (!re) {
		PCRE2_UCHAR msg[160];
		size_t pre = strlen(RULES_LIMITS_PREFIX);

		if (pcre2_get_error_message(errcode, msg, sizeof(msg)) < 0)
			snprintf((char *)msg, sizeof(msg), "PCRE2 error %d", errcode);
		/* offsets past the prefix are offsets in the pattern as written
		 * (exact for ECMAScript; Wildcard sources never fail to compile) */
		return fail(err, errlen, field, "%s at offset %zu", (const char *)msg,
			    erroff >= pre ? (size_t)(erroff - pre) : (size_t)0);
	}
	/* JIT is an optimisation only: without it (or if it fails) the
	 * interpreter runs the same pattern under the same limits */
	(void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
	p->md = pcre2_match_data_create_from_pattern(re, NULL);
	if (!p->md) {
		pcre2_code_free(re);
		return fail(err, errlen, field, "out of memory");
	}
	p->re = re;
	/* one throw-away match now: without JIT, PCRE2 allocates its
	 * backtracking frames in the match data on first use and keeps them,
	 * so the data path does not pay (or risk) that allocation */
	(void)pcre2_match(re, (PCRE2_SPTR) "", 0, 0, 0, p->md, NULL);
	return 0;
}

/*
 * Matches p against subj[0..len). Returns 1 when the rule or condition
 * passes (a match, or a non-match under negate), else 0. On a plain match
 * the captures are copied out of the shared match data into *c (so the next
 * match of the same pattern cannot clobber them); a negated pass has none.
 * Resource-limit and other PCRE2 errors count as a non-match.
 */
static int pattern_match(const struct rule_pattern *p, const char *subj, size_t len, struct caps *c)
{
	int matched = 0;
	unsigned int i;

	if (!subj)
		subj = "";
	c->subj = subj;
	c->n = 0;
	if (p->syntax == RULE_SYNTAX_EXACT) {
		size_t plen = strlen(p->pattern);

		matched = plen == len && (p->ignore_case ? ieq(subj, p->pattern, len)
							 : !memcmp(subj, p->pattern, len));
		if (matched) {
			c->n = 1;
			c->off[0][0] = 0;
			c->off[0][1] = len;
		}
	} else if (p->re && p->md) {
		int rc = pcre2_match(p->re, (PCRE2_SPTR)subj, len, 0, 0, p->md, NULL);

		if (rc > 0) {
			PCRE2_SIZE *ov = pcre2_get_ovector_pointer(p->md);
			uint32_t ovn = pcre2_get_ovector_count(p->md);

			matched = 1;
			c->n = ovn < RULES_MAX_REFS ? ovn : RULES_MAX_REFS;
			for (i = 0; i < c->n; i++) {
				/* groups past rc, or unset ones, did not take part */
				if ((int)i >= rc || ov[2 * i] == PCRE2_UNSET) {
					c->off[i][0] = 0;
					c->off[i][1] = 0;
				} else {
					c->off[i][0] = ov[2 * i];
					c->off[i][1] = ov[2 * i + 1];
				}
			}
		}
	}
	if (p->negate) {
		c->n = 0;
		return !matched;
	}
	return matched;
}

/*
 * Appends "?q" (or "&q" when dst already has a query) to dst[0..*len) when
 * enabled and q is non-empty. cap is the room at dst including the NUL.
 * Returns 0, or -1 if it does not fit.
 */
static int append_query(char *dst, size_t *len, size_t cap, const char *q, size_t qlen, int enabled)
{
	size_t n = *len;

	if (!enabled || !q || !qlen)
		return 0;
	if (n + 1 + qlen >= cap)
		return -1;
	dst[n] = memchr(dst, '?', n) ? '&' : '?';
	memcpy(dst + n + 1, q, qlen);
	n += 1 + qlen;
	dst[n] = '\0';
	*len = n;
	return 0;
}

/* Sets res to RULES_ERROR decided by r (NULL: no rule) and returns STEP_DONE. */
static int result_error(struct rule_result *res, const struct rule *r)
{
	memset(res, 0, sizeof(*res));
	res->outcome = RULES_ERROR;
	res->rule = r;
	return STEP_DONE;
}

/*
 * Runs a Rewrite action whose expanded target is written at out[0..cap).
 * A target "http(s)://<farm>[/path][?query]" decides the request
 * (STEP_DONE with RULES_FARM, or RULES_ERROR for an unknown farm). Any
 * other target is a new path: it becomes {URL} (and {QUERY_STRING}) of the
 * following rules, kept at the start of the buffer.
 */
static int do_rewrite(const struct config *cfg, const struct rule *r, struct rule_ctx *cur,
		      struct eval *ev, const struct caps *rc, const struct caps *cc, char *out,
		      size_t cap, struct rule_result *res)
{
	char *end = ev->buf + ev->bufsz;
	char *s = out + 1; /* out[0] is kept for a '/' to prepend */
	size_t len, skip = 0;
	int https = 0;

	if (cap < 2 || expand(r->action.url, cur, rc, cc, s, cap - 1, &len) < 0)
		return result_error(res, r);
	if (starts_with_ci(s, len, "http://")) {
		skip = 7;
	} else if (starts_with_ci(s, len, "https://")) {
		skip = 8;
		https = 1;
	}
	if (skip) {
		char *auth = s + skip;
		char *p = auth;
		size_t plen;
		struct farm *farm;

		/* bounded by len, not by a NUL: values expanded into the
		 * target are bytes from the request */
		while (p < s + len && *p != '/' && *p != '?')
			p++;
		plen = len - (size_t)(p - s);
		farm = find_farm(cfg, auth, (size_t)(p - auth));
		if (!farm)
			return result_error(res, r);
		/* the authority is consumed: its last byte can hold the '/' */
		if (!plen || *p != '/') {
			*--p = '/';
			plen++;
		}
		if (append_query(p, &plen, (size_t)(end - p), cur->query, cur->query_len,
				 r->action.append_query_string) < 0)
			return result_error(res, r);
		memset(res, 0, sizeof(*res));
		res->outcome = RULES_FARM;
		res->rule = r;
		res->farm = farm;
		res->https = https;
		res->url = p;
		res->url_len = plen;
		return STEP_DONE;
	}

	if (!len || s[0] != '/') {
		*--s = '/';
		len++;
	}
	if (append_query(s, &len, (size_t)(end - s), cur->query, cur->query_len,
			 r->action.append_query_string) < 0)
		return result_error(res, r);
	/* the new URL replaces the old one at the start of the buffer; nothing
	 * still needs the old one (captures of this rule are dead now) */
	memmove(ev->buf, s, len + 1);
	ev->state_len = len + 1;
	s = memchr(ev->buf, '?', len);
	cur->url = ev->buf;
	cur->url_len = s ? (size_t)(s - ev->buf) : len;
	cur->query = s ? s + 1 : ev->buf + len;
	cur->query_len = s ? len - cur->url_len - 1 : 0;
	return r->stop_processing ? STEP_STOP : STEP_CONTINUE;
}

/*
 * Evaluates one enabled rule: pattern, conditions, action. Scratch layout
 * in ev->buf after the rewritten URL (base = state_len): the input of the
 * last matched condition (the subject of {C:n}), then the input being
 * tested or the action's target. Returns an enum rule_step.
 */
static int rule_apply(const struct config *cfg, const struct rule *r, struct rule_ctx *cur,
		      struct eval *ev, struct rule_result *res)
{
	size_t base = ev->state_len, clen = 0, len;
	struct caps rc, cc, tmp;
	const char *subj = cur->url;
	size_t slen = cur->url_len;
	char *out;
	unsigned int i;

	if (slen && subj[0] == '/') {
		subj++;
		slen--;
	}
	if (!pattern_match(&r->match, subj, slen, &rc))
		return STEP_CONTINUE;

	cc.subj = NULL;
	cc.n = 0;
	if (r->nconds) {
		int ok = !r->match_any;

		for (i = 0; i < r->nconds; i++) {
			const struct rule_cond *cond = &r->conds[i];
			char *in = ev->buf + base + clen;
			size_t room = ev->bufsz - base - clen;
			int pass;

			if (expand(cond->input, cur, &rc, &cc, in, room, &len) < 0)
				return result_error(res, r);
			pass = pattern_match(&cond->pat, in, len, &tmp);
			if (pass) {
				/* the last matched condition owns {C:n}: keep its
				 * input at base (offsets are relative) */
				memmove(ev->buf + base, in, len + 1);
				tmp.subj = ev->buf + base;
				cc = tmp;
				clen = len + 1;
				if (r->match_any) {
					ok = 1;
					break;
				}
			} else if (!r->match_any) {
				ok = 0;
				break;
			}
		}
		if (!ok)
			return STEP_CONTINUE;
	}

	out = ev->buf + base + clen;
	switch (r->action.type) {
	case RULE_ACT_NONE:
		break;
	case RULE_ACT_REWRITE:
		return do_rewrite(cfg, r, cur, ev, &rc, &cc, out, ev->bufsz - base - clen, res);
	case RULE_ACT_REDIRECT:
		if (expand(r->action.url, cur, &rc, &cc, out, ev->bufsz - base - clen, &len) < 0 ||
		    append_query(out, &len, ev->bufsz - base - clen, cur->query, cur->query_len,
				 r->action.append_query_string) < 0)
			return result_error(res, r);
		memset(res, 0, sizeof(*res));
		res->outcome = RULES_REDIRECT;
		res->rule = r;
		res->status = r->action.redirect_status;
		res->url = out;
		res->url_len = len;
		return STEP_DONE;
	case RULE_ACT_CUSTOM_RESPONSE:
		memset(res, 0, sizeof(*res));
		res->outcome = RULES_CUSTOM;
		res->rule = r;
		res->status = r->action.status_code;
		res->reason = r->action.status_reason;
		res->body = r->action.status_description;
		return STEP_DONE;
	case RULE_ACT_ABORT:
		memset(res, 0, sizeof(*res));
		res->outcome = RULES_ABORT;
		res->rule = r;
		return STEP_DONE;
	default:
		return result_error(res, r);
	}
	return r->stop_processing ? STEP_STOP : STEP_CONTINUE;
}

/*
 * Runs cfg's enabled rules in order. The {URL} and {QUERY_STRING} seen by a
 * rule are those left by earlier path rewrites; appendQueryString appends
 * that current query string. Everything res points to is in buf, in cfg or
 * static; no allocation (PCRE2 reuses each pattern's preallocated match data:
 * the data plane is single-threaded).
 */
void rules_eval(const struct config *cfg, const struct rule_ctx *ctx, struct rule_result *res,
		char *buf, size_t bufsz)
{
	struct rule_ctx cur = *ctx;
	struct eval ev = {.buf = buf, .bufsz = bufsz, .state_len = 0};
	unsigned int i;
	size_t n;

	memset(res, 0, sizeof(*res));
	if (!buf || !bufsz) {
		res->outcome = RULES_ERROR;
		return;
	}
	for (i = 0; cfg && i < cfg->nrules; i++) {
		const struct rule *r = &cfg->rules[i];
		int step;

		if (!r->enabled)
			continue;
		step = rule_apply(cfg, r, &cur, &ev, res);
		if (step == STEP_DONE)
			return;
		if (step == STEP_STOP)
			break;
	}

	/* no farm: report the (possibly rewritten) path?query */
	res->outcome = RULES_NO_ROUTE;
	res->url = buf;
	if (ev.state_len) {
		res->url_len = ev.state_len - 1;
		return;
	}
	n = cur.url_len + (cur.query_len ? 1 + cur.query_len : 0);
	if (n >= bufsz) {
		result_error(res, NULL);
		return;
	}
	if (cur.url_len)
		memcpy(buf, cur.url, cur.url_len);
	if (cur.query_len) {
		buf[cur.url_len] = '?';
		memcpy(buf + cur.url_len + 1, cur.query, cur.query_len);
	}
	buf[n] = '\0';
	res->url_len = n;
}

/* Checks a Rewrite target with a literal "http(s)://<name>" authority (no
 * '{' in it) against cfg's farms, so a typo fails at load time. */
static int check_literal_farm(const struct config *cfg, const char *url, char *err, size_t errlen)
{
	size_t len = strlen(url), skip, alen;
	const char *auth;

	if (starts_with_ci(url, len, "http://"))
		skip = 7;
	else if (starts_with_ci(url, len, "https://"))
		skip = 8;
	else
		return 0;
	auth = url + skip;
	alen = strcspn(auth, "/?");
	if (memchr(auth, '{', alen))
		return 0; /* decided per request */
	if (!find_farm(cfg, auth, alen))
		return fail(err, errlen, "action.url", "farm \"%.*s\" is not defined", (int)alen,
			    auth);
	return 0;
}

/* Compiles one rule (see rules.h). On failure everything compiled so far is
 * freed again, so the rule is left as the caller gave it. */
int rules_compile(const struct config *cfg, struct rule *rule, char *err, size_t errlen)
{
	const struct rule_action *a = &rule->action;
	char field[64];
	int uses_c = 0;
	unsigned int i;

	if (err && errlen)
		err[0] = '\0';
	if (!rule->match.pattern) {
		fail(err, errlen, "match.url", "required");
		goto fail;
	}
	if (pattern_compile(&rule->match, "match.url", err, errlen) < 0)
		goto fail;
	if (rule->nconds && !rule->conds) {
		fail(err, errlen, "conditions", "missing condition array");
		goto fail;
	}
	for (i = 0; i < rule->nconds; i++) {
		struct rule_cond *cond = &rule->conds[i];

		snprintf(field, sizeof(field), "conditions.add[%u].input", i);
		if (!cond->input) {
			fail(err, errlen, field, "required");
			goto fail;
		}
		if (tpl_check(cond->input, field, &uses_c, err, errlen) < 0)
			goto fail;
		snprintf(field, sizeof(field), "conditions.add[%u].pattern", i);
		if (pattern_compile(&cond->pat, field, err, errlen) < 0)
			goto fail;
	}

	switch (a->type) {
	case RULE_ACT_NONE:
	case RULE_ACT_ABORT:
	case RULE_ACT_CUSTOM_RESPONSE:
		break;
	case RULE_ACT_REDIRECT:
		if (a->redirect_status != 301 && a->redirect_status != 302 &&
		    a->redirect_status != 303 && a->redirect_status != 307) {
			fail(err, errlen, "action.redirectType",
			     "status %d is not 301, 302, 303 or 307", a->redirect_status);
			goto fail;
		}
		/* fall through */
	case RULE_ACT_REWRITE:
		if (!a->url) {
			fail(err, errlen, "action.url", "required");
			goto fail;
		}
		if (tpl_check(a->url, "action.url", &uses_c, err, errlen) < 0)
			goto fail;
		if (a->type == RULE_ACT_REWRITE && check_literal_farm(cfg, a->url, err, errlen) < 0)
			goto fail;
		break;
	default:
		fail(err, errlen, "action.type", "unknown action type %d", (int)a->type);
		goto fail;
	}

	/*
	 * trackAllCaptures=true numbers the captures of all matched conditions
	 * consecutively in URL Rewrite, but how {C:0} and each condition's
	 * group 0 are numbered is not documented precisely enough to copy.
	 * Rather than route differently from IIS, refuse the combination that
	 * would expose the numbering; without {C:n} the flag changes nothing.
	 */
	if (rule->track_all_captures && uses_c) {
		fail(err, errlen, "conditions.trackAllCaptures",
		     "true is not supported together with {C:n} back-references");
		goto fail;
	}
	return 0;

fail:
	rules_free(rule);
	return -1;
}

/* Frees the compiled patterns of rule; safe on a zeroed, partially compiled
 * or already freed rule. The strings belong to the configuration. */
void rules_free(struct rule *rule)
{
	unsigned int i;

	if (!rule)
		return;
	pattern_free(&rule->match);
	for (i = 0; rule->conds && i < rule->nconds; i++)
		pattern_free(&rule->conds[i].pat);
}
