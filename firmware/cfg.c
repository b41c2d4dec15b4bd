/* Configuration loader: JSON with ARR's names -> validated, immutable struct config. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cfg.h"
#include "json.h"
#include "lb.h"
#include "p11.h"
#include "rules.h"
#include "tls.h"

/* A configuration file larger than this is refused before parsing. */
#define CFG_FILE_MAX (1024 * 1024)
#define CFG_PATH_MAX 256

#define MS_PER_S   1000ULL
#define MS_PER_DAY (86400ULL * MS_PER_S)
/* Millisecond timeouts end up in int-millisecond timer APIs: stay below 2^31. */
#define DURATION_MS_MAX (24 * MS_PER_DAY)
/* The affinity cookie's Max-Age may reasonably be longer. */
#define DURATION_S_MAX (365 * MS_PER_DAY)

/* Loader state for one cfg_load_buf call. path is the JSON path of the value
 * being read ("$.webFarms[0].servers[1]"), grown and cut as the walk goes. */
struct cfg_ctx {
	struct config *cfg;
	char *err;
	size_t errlen;
	char path[CFG_PATH_MAX];
	size_t plen;
};

struct field;

/* A setter stores the JSON value v into the struct at base (f->off is the
 * field's offset in it). It returns 0, or -1 after writing the error. */
typedef int (*field_set_fn)(struct cfg_ctx *c, const struct json_value *v, void *base,
			    const struct field *f);

#define FIELD_REQUIRED 0x1

/* One accepted key of a JSON object: nginx-style directive table entry. */
struct field {
	const char *name;
	field_set_fn set;
	size_t off;
	int64_t min; /* integers: bounds; durations: bounds in ms */
	int64_t max;
	const void *aux; /* enum_desc for set_enum, field table for set_object */
	unsigned int flags;
};

struct enum_name {
	const char *name;
	int value;
};

struct enum_desc {
	const char *what; /* noun for "unknown <what> "x"" */
	const char *expected;
	const struct enum_name *names; /* ends with a NULL name */
};

/* ---- error and path helpers ------------------------------------------ */

/* Writes "<path>: <reason>" into the caller's buffer. Always returns -1. */
__attribute__((format(printf, 2, 3))) static int cfg_fail(struct cfg_ctx *c, const char *fmt, ...)
{
	char reason[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	if (c->errlen > 0)
		snprintf(c->err, c->errlen, "%s: %s", c->path, reason);
	return -1;
}

/* Appends ".key" to the path (control characters shown as '?', since keys
 * come from the file) and returns the previous length for path_pop. */
static size_t path_key(struct cfg_ctx *c, const char *key)
{
	size_t old = c->plen, i;

	if (c->plen < sizeof(c->path) - 1)
		c->path[c->plen++] = '.';
	for (i = 0; key[i] != '\0' && c->plen < sizeof(c->path) - 1; i++)
		c->path[c->plen++] = (unsigned char)key[i] < 0x20 ? '?' : key[i];
	c->path[c->plen] = '\0';
	return old;
}

/* Appends "[i]" to the path; returns the previous length. */
static size_t path_idx(struct cfg_ctx *c, size_t i)
{
	size_t old = c->plen;
	int n = snprintf(c->path + c->plen, sizeof(c->path) - c->plen, "[%zu]", i);

	if (n > 0)
		c->plen += (size_t)n < sizeof(c->path) - c->plen ? (size_t)n
								 : sizeof(c->path) - 1 - c->plen;
	return old;
}

static void path_pop(struct cfg_ctx *c, size_t old)
{
	c->plen = old;
	c->path[old] = '\0';
}

/* strdup that reports failure as a configuration error. */
static char *cfg_strdup(struct cfg_ctx *c, const char *s)
{
	char *d = strdup(s);

	if (d == NULL)
		cfg_fail(c, "out of memory");
	return d;
}

static char *cfg_strndup(struct cfg_ctx *c, const char *s, size_t n)
{
	char *d = strndup(s, n);

	if (d == NULL)
		cfg_fail(c, "out of memory");
	return d;
}

/* calloc of n elements that reports failure; n == 0 gives NULL and success. */
static int cfg_calloc(struct cfg_ctx *c, void *out, size_t n, size_t size)
{
	void *p = NULL;

	if (n > 0) {
		p = calloc(n, size);
		if (p == NULL)
			return cfg_fail(c, "out of memory");
	}
	*(void **)out = p;
	return 0;
}

/* ---- value checks ----------------------------------------------------- */

static int is_tchar(unsigned char ch)
{
	/* RFC 9110 token characters */
	return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
	       (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

static int is_token(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s; s++)
		if (!is_tchar((unsigned char)*s))
			return 0;
	return 1;
}

/* A farm name is the host part of a rewrite URL ("http://<farm>/..."). */
static int is_farm_name(const char *s)
{
	/* "." and ".." cannot be a URL path segment (/api/v1/farms/..) */
	if (*s == '\0' || !strcmp(s, ".") || !strcmp(s, ".."))
		return 0;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
		      (ch >= 'A' && ch <= 'Z') || ch == '-' || ch == '.' || ch == '_'))
			return 0;
	}
	return 1;
}

/* Server variable names are upper-case words such as REMOTE_ADDR or HTTP_X_ID. */
static int is_var_name(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
		      (ch >= 'A' && ch <= 'Z') || ch == '_'))
			return 0;
	}
	return 1;
}

/* No spaces or control characters: the value goes into a header or status line. */
static int is_visible(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s == 0x7F)
			return 0;
	return 1;
}

static int has_ctl(const char *s)
{
	for (; *s; s++)
		if (((unsigned char)*s < 0x20 && *s != '\t') || (unsigned char)*s == 0x7F)
			return 1;
	return 0;
}

/* AF_INET or AF_INET6 for a numeric IPv4 or IPv6 address (no scope, no
 * brackets), 0 for anything else. */
static int ip_family(const char *s)
{
	unsigned char bin[sizeof(struct in6_addr)];

	if (inet_pton(AF_INET, s, bin) == 1)
		return AF_INET;
	if (inet_pton(AF_INET6, s, bin) == 1)
		return AF_INET6;
	return 0;
}

static int is_ip(const char *s)
{
	return ip_family(s) != 0;
}

static int is_alnum(unsigned char ch)
{
	return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

/* RFC 1123 host name: dot-separated labels of 1 to 63 letters, digits and
 * '-', none starting or ending with '-'; 253 characters at most. */
static int is_host_name(const char *s)
{
	size_t len = strlen(s), label = 0, i;

	if (len == 0 || len > 253)
		return 0;
	for (i = 0; i <= len; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch == '.' || ch == '\0') {
			if (label == 0 || label > 63 || s[i - 1] == '-')
				return 0;
			label = 0;
		} else if (is_alnum(ch) || (ch == '-' && label > 0)) {
			label++;
		} else {
			return 0;
		}
	}
	return 1;
}

/* The appliance's own name: a host name the kernel takes (sethostname(2):
 * HOST_NAME_MAX, 64 bytes). */
static int is_system_host_name(const char *s)
{
	return strlen(s) <= 64 && is_host_name(s);
}

static int is_ip_or_host_name(const char *s)
{
	return is_ip(s) || is_host_name(s);
}

/* A network interface name as Linux takes it: 1 to 15 of [A-Za-z0-9_.-],
 * not "." or "..". */
static int is_ifname(const char *s)
{
	size_t i;

	if (!strcmp(s, ".") || !strcmp(s, ".."))
		return 0;
	for (i = 0; s[i]; i++)
		if (i == 15 || !(is_alnum((unsigned char)s[i]) || strchr("_.-", s[i])))
			return 0;
	return i > 0;
}

/* "address/prefix": a numeric IPv4 address with a prefix of 1 to 32, or
 * IPv6 with 1 to 128, in decimal without leading zeros (iproute2 would read
 * "/024" as octal). Returns the family, or 0. */
static int cidr_family(const char *s)
{
	const char *slash = strchr(s, '/');
	char ip[INET6_ADDRSTRLEN];
	size_t n = slash ? (size_t)(slash - s) : 0;
	unsigned int prefix = 0;
	int fam, i;

	if (!slash || n >= sizeof(ip) || slash[1] == '0')
		return 0;
	for (i = 1; slash[i]; i++) {
		if (i > 3 || slash[i] < '0' || slash[i] > '9')
			return 0;
		prefix = prefix * 10 + (unsigned int)(slash[i] - '0');
	}
	memcpy(ip, s, n);
	ip[n] = '\0';
	fam = ip_family(ip);
	if (!fam || prefix < 1 || prefix > (fam == AF_INET ? 32u : 128u))
		return 0;
	return fam;
}

static int is_cidr(const char *s)
{
	return cidr_family(s) != 0;
}

/* Formats ms as an ARR TimeSpan ("d.hh:mm:ss.fff", parts omitted when zero). */
static void fmt_timespan(char *buf, size_t len, uint64_t ms)
{
	uint64_t d = ms / MS_PER_DAY, rest = ms % MS_PER_DAY;
	unsigned int h = rest / 3600000, m = rest / 60000 % 60, s = rest / 1000 % 60;
	unsigned int f = rest % 1000;
	int n = 0;

	if (d > 0)
		n = snprintf(buf, len, "%" PRIu64 ".", d);
	if (n < 0 || (size_t)n >= len)
		return;
	if (f > 0)
		snprintf(buf + n, len - n, "%02u:%02u:%02u.%03u", h, m, s, f);
	else
		snprintf(buf + n, len - n, "%02u:%02u:%02u", h, m, s);
}

/* ---- generic setters (see field_set_fn) ------------------------------ */

static int set_bool(struct cfg_ctx *c, const struct json_value *v, void *base,
		    const struct field *f)
{
	if (v->type != JSON_TRUE && v->type != JSON_FALSE)
		return cfg_fail(c, "must be a boolean");
	*(int *)((char *)base + f->off) = v->type == JSON_TRUE;
	return 0;
}

/* Integer within [f->min, f->max]; stored as the caller's width by set_*. */
static int get_int(struct cfg_ctx *c, const struct json_value *v, const struct field *f,
		   int64_t *out)
{
	if (v->type != JSON_NUMBER || !v->u.num.is_int || v->u.num.i < f->min ||
	    v->u.num.i > f->max)
		return cfg_fail(c, "must be an integer from %" PRId64 " to %" PRId64, f->min,
				f->max);
	*out = v->u.num.i;
	return 0;
}

static int set_u32(struct cfg_ctx *c, const struct json_value *v, void *base, const struct field *f)
{
	int64_t i = 0;

	if (get_int(c, v, f, &i) < 0)
		return -1;
	*(uint32_t *)((char *)base + f->off) = (uint32_t)i;
	return 0;
}

static int set_u16(struct cfg_ctx *c, const struct json_value *v, void *base, const struct field *f)
{
	int64_t i = 0;

	if (get_int(c, v, f, &i) < 0)
		return -1;
	*(uint16_t *)((char *)base + f->off) = (uint16_t)i;
	return 0;
}

static int set_int(struct cfg_ctx *c, const struct json_value *v, void *base, const struct field *f)
{
	int64_t i = 0;

	if (get_int(c, v, f, &i) < 0)
		return -1;
	*(int *)((char *)base + f->off) = (int)i;
	return 0;
}

/* Duration (TimeSpan string or integer seconds) in ms, within [min, max] ms. */
static int get_duration(struct cfg_ctx *c, const struct json_value *v, const struct field *f,
			uint64_t *ms)
{
	char lo[32], hi[32];

	if (v->type == JSON_NUMBER && v->u.num.is_int && v->u.num.i >= 0 &&
	    (uint64_t)v->u.num.i <= UINT64_MAX / MS_PER_S / 2) {
		*ms = (uint64_t)v->u.num.i * MS_PER_S;
	} else if (v->type != JSON_STRING || cfg_parse_timespan(v->u.str.s, v->u.str.len, ms) < 0) {
		return cfg_fail(c, "must be a duration: \"hh:mm:ss\", \"d.hh:mm:ss\" (optional "
				   "\".fff\") or an integer number of seconds");
	}
	if (*ms < (uint64_t)f->min || *ms > (uint64_t)f->max) {
		fmt_timespan(lo, sizeof(lo), (uint64_t)f->min);
		fmt_timespan(hi, sizeof(hi), (uint64_t)f->max);
		return cfg_fail(c, "must be a duration from %s to %s", lo, hi);
	}
	return 0;
}

static int set_ms(struct cfg_ctx *c, const struct json_value *v, void *base, const struct field *f)
{
	uint64_t ms;

	if (get_duration(c, v, f, &ms) < 0)
		return -1;
	*(uint32_t *)((char *)base + f->off) = (uint32_t)ms;
	return 0;
}

/* Stored in whole seconds (fractions dropped). */
static int set_secs(struct cfg_ctx *c, const struct json_value *v, void *base,
		    const struct field *f)
{
	uint64_t ms;

	if (get_duration(c, v, f, &ms) < 0)
		return -1;
	*(uint32_t *)((char *)base + f->off) = (uint32_t)(ms / MS_PER_S);
	return 0;
}

/* Any string; replaces (and frees) a default already in place. */
static int set_str(struct cfg_ctx *c, const struct json_value *v, void *base, const struct field *f)
{
	char **dst = (char **)((char *)base + f->off);
	char *s;

	if (v->type != JSON_STRING)
		return cfg_fail(c, "must be a string");
	s = cfg_strdup(c, v->u.str.s);
	if (s == NULL)
		return -1;
	free(*dst);
	*dst = s;
	return 0;
}

static int set_nonempty_str(struct cfg_ctx *c, const struct json_value *v, void *base,
			    const struct field *f)
{
	if (v->type == JSON_STRING && v->u.str.len == 0)
		return cfg_fail(c, "must not be empty");
	return set_str(c, v, base, f);
}

/* HTTP token (cookie and header names). */
static int set_token(struct cfg_ctx *c, const struct json_value *v, void *base,
		     const struct field *f)
{
	if (v->type == JSON_STRING && !is_token(v->u.str.s))
		return cfg_fail(c, "must be a non-empty HTTP token (letters, digits, "
				   "!#$%%&'*+-.^_`|~)");
	return set_str(c, v, base, f);
}

/* HTTP token, or "" meaning "feature off" (xForwardedForHeaderName). */
static int set_token_or_empty(struct cfg_ctx *c, const struct json_value *v, void *base,
			      const struct field *f)
{
	if (v->type == JSON_STRING && v->u.str.len == 0)
		return set_str(c, v, base, f);
	return set_token(c, v, base, f);
}

static int set_farm_name(struct cfg_ctx *c, const struct json_value *v, void *base,
			 const struct field *f)
{
	if (v->type == JSON_STRING && !is_farm_name(v->u.str.s))
		return cfg_fail(c, "must be a non-empty name of letters, digits, '-', '.' and "
				   "'_' (it is the host of rewrite URLs)");
	return set_str(c, v, base, f);
}

static int set_var_name(struct cfg_ctx *c, const struct json_value *v, void *base,
			const struct field *f)
{
	if (v->type == JSON_STRING && !is_var_name(v->u.str.s))
		return cfg_fail(c, "must be a server variable name such as REMOTE_ADDR");
	return set_str(c, v, base, f);
}

static int set_host_name(struct cfg_ctx *c, const struct json_value *v, void *base,
			 const struct field *f)
{
	if (v->type == JSON_STRING && (v->u.str.len == 0 || !is_visible(v->u.str.s)))
		return cfg_fail(c, "must be a non-empty host name without spaces or control "
				   "characters");
	return set_str(c, v, base, f);
}

/* Text that goes into a status line: no control characters. */
static int set_reason(struct cfg_ctx *c, const struct json_value *v, void *base,
		      const struct field *f)
{
	if (v->type == JSON_STRING && has_ctl(v->u.str.s))
		return cfg_fail(c, "must not contain control characters");
	return set_str(c, v, base, f);
}

/* A check of a string value: the test and the reason given when it fails. */
struct str_check {
	int (*ok)(const char *s);
	const char *must; /* "must be ..." */
};

/* v is a string that passes check k. Returns 0, or -1 after the error. */
static int check_str(struct cfg_ctx *c, const struct json_value *v, const struct str_check *k)
{
	if (v->type != JSON_STRING)
		return cfg_fail(c, "must be a string");
	if (!k->ok(v->u.str.s))
		return cfg_fail(c, "%s", k->must);
	return 0;
}

/* A string that passes the check f->aux (struct str_check). */
static int set_checked(struct cfg_ctx *c, const struct json_value *v, void *base,
		       const struct field *f)
{
	if (check_str(c, v, f->aux) < 0)
		return -1;
	return set_str(c, v, base, f);
}

/* An array of at most f->max strings, each passing the check f->aux, into
 * the struct str_list at base + f->off. */
static int set_str_list(struct cfg_ctx *c, const struct json_value *v, void *base,
			const struct field *f)
{
	struct str_list *l = (struct str_list *)((char *)base + f->off);
	size_t i, old;

	if (v->type != JSON_ARRAY)
		return cfg_fail(c, "must be an array");
	if (v->u.arr.n > (size_t)f->max)
		return cfg_fail(c, "at most %" PRId64 " entries", f->max);
	if (cfg_calloc(c, &l->v, v->u.arr.n, sizeof(char *)) < 0)
		return -1;
	l->n = v->u.arr.n;
	for (i = 0; i < v->u.arr.n; i++) {
		old = path_idx(c, i);
		if (check_str(c, v->u.arr.items[i], f->aux) < 0)
			return -1;
		l->v[i] = cfg_strdup(c, v->u.arr.items[i]->u.str.s);
		if (l->v[i] == NULL)
			return -1;
		path_pop(c, old);
	}
	return 0;
}

static void str_list_free(struct str_list *l)
{
	unsigned int i;

	for (i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
}

/* One of the names in f->aux (ASCII case-insensitive, as IIS reads enums). */
static int set_enum(struct cfg_ctx *c, const struct json_value *v, void *base,
		    const struct field *f)
{
	const struct enum_desc *d = f->aux;
	const struct enum_name *e;

	if (v->type != JSON_STRING)
		return cfg_fail(c, "must be a string");
	for (e = d->names; e->name != NULL; e++) {
		if (strcasecmp(e->name, v->u.str.s) == 0) {
			*(int *)((char *)base + f->off) = e->value;
			return 0;
		}
	}
	/* the value is echoed only when it cannot garble the log line */
	if (has_ctl(v->u.str.s))
		return cfg_fail(c, "unknown %s (expected %s)", d->what, d->expected);
	return cfg_fail(c, "unknown %s \"%.64s\" (expected %s)", d->what, v->u.str.s, d->expected);
}

static int parse_fields(struct cfg_ctx *c, const struct json_value *v, const struct field *tbl,
			void *base);

/* A nested JSON object whose fields (f->aux) live in the same struct as the
 * parent's: field offsets are relative to base. */
static int set_object(struct cfg_ctx *c, const struct json_value *v, void *base,
		      const struct field *f)
{
	return parse_fields(c, v, f->aux, base);
}

/* Walks the members of object v in document order, dispatching each to its
 * table entry (tbl ends with a NULL name); unknown keys and missing
 * FIELD_REQUIRED keys are errors. base is the struct the offsets refer to. */
static int parse_fields(struct cfg_ctx *c, const struct json_value *v, const struct field *tbl,
			void *base)
{
	uint64_t seen = 0;
	size_t i, k, old;

	if (v->type != JSON_OBJECT)
		return cfg_fail(c, "must be an object");
	for (i = 0; i < v->u.obj.n; i++) {
		const struct json_member *m = &v->u.obj.members[i];

		old = path_key(c, m->key);
		for (k = 0; tbl[k].name != NULL; k++)
			if (strcmp(tbl[k].name, m->key) == 0)
				break;
		if (tbl[k].name == NULL)
			return cfg_fail(c, "unknown field");
		if (tbl[k].set(c, m->value, base, &tbl[k]) < 0)
			return -1;
		seen |= 1ULL << k;
		path_pop(c, old);
	}
	for (k = 0; tbl[k].name != NULL; k++) {
		if ((tbl[k].flags & FIELD_REQUIRED) && !(seen & (1ULL << k))) {
			path_key(c, tbl[k].name);
			return cfg_fail(c, "is required");
		}
	}
	return 0;
}

/* ---- enums ------------------------------------------------------------- */

static const struct enum_desc algo_desc = {
	"algorithm",
	"WeightedRoundRobin, LeastRequests, LeastResponseTime, WeightedTotalTraffic or "
	"RequestHash",
	(const struct enum_name[]){
		{"WeightedRoundRobin", LB_WEIGHTED_ROUND_ROBIN},
		{"LeastRequests", LB_LEAST_REQUESTS},
		{"LeastResponseTime", LB_LEAST_RESPONSE_TIME},
		{"WeightedTotalTraffic", LB_WEIGHTED_TOTAL_TRAFFIC},
		{"RequestHash", LB_REQUEST_HASH},
		{NULL, 0},
	},
};

static const struct enum_desc log_desc = {
	"log target",
	"stderr, syslog or off",
	(const struct enum_name[]){
		{"stderr", LOG_TARGET_STDERR},
		{"syslog", LOG_TARGET_SYSLOG},
		{"off", LOG_TARGET_OFF},
		{NULL, 0},
	},
};

static const struct enum_desc syntax_desc = {
	"patternSyntax",
	"ECMAScript, Wildcard or ExactMatch",
	(const struct enum_name[]){
		{"ECMAScript", RULE_SYNTAX_ECMASCRIPT},
		{"Wildcard", RULE_SYNTAX_WILDCARD},
		{"ExactMatch", RULE_SYNTAX_EXACT},
		{NULL, 0},
	},
};

static const struct enum_desc grouping_desc = {
	"logicalGrouping",
	"MatchAll or MatchAny",
	(const struct enum_name[]){
		{"MatchAll", 0},
		{"MatchAny", 1},
		{NULL, 0},
	},
};

static const struct enum_desc action_desc = {
	"action type",
	"None, Rewrite, Redirect, CustomResponse or AbortRequest",
	(const struct enum_name[]){
		{"None", RULE_ACT_NONE},
		{"Rewrite", RULE_ACT_REWRITE},
		{"Redirect", RULE_ACT_REDIRECT},
		{"CustomResponse", RULE_ACT_CUSTOM_RESPONSE},
		{"AbortRequest", RULE_ACT_ABORT},
		{NULL, 0},
	},
};

static const struct enum_desc redirect_desc = {
	"redirectType",
	"Permanent, Found, SeeOther or Temporary",
	(const struct enum_name[]){
		{"Permanent", 301},
		{"Found", 302},
		{"SeeOther", 303},
		{"Temporary", 307},
		{NULL, 0},
	},
};

static const struct enum_desc client_cert_desc = {
	"clientCertificates",
	"Ignore, Accept or Require",
	(const struct enum_name[]){
		{"Ignore", CLIENT_CERT_IGNORE},
		{"Accept", CLIENT_CERT_ACCEPT},
		{"Require", CLIENT_CERT_REQUIRE},
		{NULL, 0},
	},
};

static const struct enum_desc cert_failure_desc = {
	"clientCertFailure",
	"Handshake or Forbidden",
	(const struct enum_name[]){
		{"Handshake", 0},
		{"Forbidden", 1},
		{NULL, 0},
	},
};

/* ---- listeners -------------------------------------------------------- */

static const struct field listener_cert_fields[] = {
	{"certificateFile", set_nonempty_str, offsetof(struct listener_cert_cfg, cert_file)},
	{"keyFile", set_nonempty_str, offsetof(struct listener_cert_cfg, key_file)},
	{"certificateHash", set_nonempty_str, offsetof(struct listener_cert_cfg, cert_hash)},
	{"certificateToken", set_nonempty_str, offsetof(struct listener_cert_cfg, cert_token)},
	{"chainFile", set_nonempty_str, offsetof(struct listener_cert_cfg, chain_file)},
	{NULL},
};

/* "certificates" of an HTTPS listener (base is its listener_ssl_cfg). Each
 * comes either from files or from a token, never both. */
static int set_listener_certs(struct cfg_ctx *c, const struct json_value *v, void *base,
			      const struct field *f)
{
	struct listener_ssl_cfg *ssl = base;
	size_t i, old;

	(void)f;
	if (v->type != JSON_ARRAY)
		return cfg_fail(c, "must be an array");
	if (v->u.arr.n == 0)
		return cfg_fail(c, "at least one certificate is required");
	if (cfg_calloc(c, &ssl->certs, v->u.arr.n, sizeof(*ssl->certs)) < 0)
		return -1;
	ssl->ncerts = v->u.arr.n;
	for (i = 0; i < v->u.arr.n; i++) {
		struct listener_cert_cfg *lc = &ssl->certs[i];

		old = path_idx(c, i);
		if (parse_fields(c, v->u.arr.items[i], listener_cert_fields, lc) < 0)
			return -1;
		if (lc->cert_hash && (lc->cert_file || lc->key_file))
			return cfg_fail(c, "certificateHash (a token certificate) and "
					   "certificateFile/keyFile are exclusive");
		if (!lc->cert_hash && !lc->cert_file)
			return cfg_fail(c, "needs certificateFile and keyFile, or "
					   "certificateHash");
		if (lc->cert_file && !lc->key_file) {
			path_key(c, "keyFile");
			return cfg_fail(c, "is required with certificateFile");
		}
		if (!lc->cert_hash && (lc->cert_token || lc->chain_file))
			return cfg_fail(c, "certificateToken and chainFile go with "
					   "certificateHash (a certificate file carries its "
					   "own chain)");
		path_pop(c, old);
	}
	return 0;
}

/* "crlFiles": array of paths (base is the listener_ssl_cfg). */
static int set_crl_files(struct cfg_ctx *c, const struct json_value *v, void *base,
			 const struct field *f)
{
	struct listener_ssl_cfg *ssl = base;
	size_t i, old;

	(void)f;
	if (v->type != JSON_ARRAY)
		return cfg_fail(c, "must be an array of paths");
	if (cfg_calloc(c, &ssl->crl_files, v->u.arr.n, sizeof(char *)) < 0)
		return -1;
	ssl->ncrl_files = v->u.arr.n;
	for (i = 0; i < v->u.arr.n; i++) {
		const struct json_value *item = v->u.arr.items[i];

		old = path_idx(c, i);
		if (item->type != JSON_STRING || item->u.str.len == 0)
			return cfg_fail(c, "must be a non-empty path");
		ssl->crl_files[i] = cfg_strdup(c, item->u.str.s);
		if (ssl->crl_files[i] == NULL)
			return -1;
		path_pop(c, old);
	}
	return 0;
}

static const struct field listener_ssl_fields[] = {
	{"certificates", set_listener_certs, 0, 0, 0, NULL, FIELD_REQUIRED},
	{"clientCertificates", set_enum, offsetof(struct listener_ssl_cfg, client_certs), 0, 0,
	 &client_cert_desc},
	{"clientCaFile", set_nonempty_str, offsetof(struct listener_ssl_cfg, client_ca_file)},
	{"crlFiles", set_crl_files, 0},
	{"verifyDepth", set_u32, offsetof(struct listener_ssl_cfg, verify_depth), 0, 16},
	{"clientCertFailure", set_enum, offsetof(struct listener_ssl_cfg, failure_forbidden), 0, 0,
	 &cert_failure_desc},
	{"sessionTickets", set_bool, offsetof(struct listener_ssl_cfg, session_tickets)},
	{"sessionTicketKeyRotation", set_ms, offsetof(struct listener_ssl_cfg, ticket_rotation_ms),
	 MS_PER_S, DURATION_MS_MAX},
	{NULL},
};

/* "ssl" of a listener (base is the listener_cfg): makes it an HTTPS listener. */
static int set_listener_ssl(struct cfg_ctx *c, const struct json_value *v, void *base,
			    const struct field *f)
{
	struct listener_cfg *l = base;
	struct listener_ssl_cfg *ssl;

	(void)f;
	if (cfg_calloc(c, &l->ssl, 1, sizeof(*l->ssl)) < 0)
		return -1;
	ssl = l->ssl;
	ssl->verify_depth = 4;
	ssl->session_tickets = 1;
	ssl->ticket_rotation_ms = 3600000;
	if (parse_fields(c, v, listener_ssl_fields, ssl) < 0)
		return -1;
	if (ssl->client_certs != CLIENT_CERT_IGNORE && !ssl->client_ca_file) {
		path_key(c, "clientCaFile");
		return cfg_fail(c, "is required when clientCertificates is %s",
				ssl->client_certs == CLIENT_CERT_ACCEPT ? "Accept" : "Require");
	}
	return 0;
}

/* Listener address: a numeric IPv4 or IPv6 literal (no name lookups). */
static int set_listen_addr(struct cfg_ctx *c, const struct json_value *v, void *base,
			   const struct field *f)
{
	if (v->type == JSON_STRING && !is_ip(v->u.str.s))
		return cfg_fail(c, "must be a numeric IPv4 or IPv6 address");
	return set_str(c, v, base, f);
}

static const struct field listener_fields[] = {
	{"address", set_listen_addr, offsetof(struct listener_cfg, address)},
	{"port", set_u16, offsetof(struct listener_cfg, port), 1, 65535, NULL, FIELD_REQUIRED},
	{"ssl", set_listener_ssl, 0},
	{NULL},
};

/* Binary form of a listener address, so "::1" and "0::1" compare equal. */
static void listen_key(const struct listener_cfg *l, unsigned char key[17])
{
	memset(key, 0, 17);
	if (inet_pton(AF_INET, l->address, key + 1) == 1)
		key[0] = 4;
	else if (inet_pton(AF_INET6, l->address, key + 1) == 1)
		key[0] = 6;
}

/* "listeners": the array of listen sockets (base is the config). */
static int set_listeners(struct cfg_ctx *c, const struct json_value *v, void *base,
			 const struct field *f)
{
	struct config *cfg = base;
	size_t i, j, old;
	unsigned char ki[17], kj[17];

	(void)f;
	if (v->type != JSON_ARRAY)
		return cfg_fail(c, "must be an array");
	if (v->u.arr.n == 0)
		return cfg_fail(c, "at least one listener is required");
	if (cfg_calloc(c, &cfg->listeners, v->u.arr.n, sizeof(*cfg->listeners)) < 0)
		return -1;
	cfg->nlisteners = v->u.arr.n;
	for (i = 0; i < v->u.arr.n; i++) {
		struct listener_cfg *l = &cfg->listeners[i];

		old = path_idx(c, i);
		if (parse_fields(c, v->u.arr.items[i], listener_fields, l) < 0)
			return -1;
		if (l->address == NULL) {
			l->address = cfg_strdup(c, "0.0.0.0");
			if (l->address == NULL)
				return -1;
		}
		listen_key(l, ki);
		for (j = 0; j < i; j++) {
			listen_key(&cfg->listeners[j], kj);
			if (memcmp(ki, kj, sizeof(ki)) == 0 && cfg->listeners[j].port == l->port)
				return cfg_fail(c,
						"duplicate listener %s port %u (same as "
						"listeners[%zu])",
						l->address, l->port, j);
		}
		path_pop(c, old);
	}
	return 0;
}

/* ---- farms and servers ------------------------------------------------ */

static int set_cert_pin(struct cfg_ctx *c, const struct json_value *v, void *base,
			const struct field *f);

static const struct field server_fields[] = {
	{"address", set_nonempty_str, offsetof(struct server, address), 0, 0, NULL, FIELD_REQUIRED},
	{"httpPort", set_u16, offsetof(struct server, http_port), 1, 65535},
	{"httpsPort", set_u16, offsetof(struct server, https_port), 1, 65535},
	{"enabled", set_bool, offsetof(struct server, enabled)},
	{"weight", set_u32, offsetof(struct server, weight), 0, 100000},
	{"hostName", set_host_name, offsetof(struct server, host_name)},
	{"certificatePin", set_cert_pin, 0},
	{"healthCheckAlternateHostName", set_host_name, offsetof(struct server, hc_host)},
	{"healthCheckAlternatePort", set_u16, offsetof(struct server, hc_port), 1, 65535},
	{NULL},
};

/* "certificatePin": the SHA-256 of the backend's certificate, hex (spaces and
 * colons allowed, either case), for backends whose certificate no CA vouches
 * for. Base is the server. */
static int set_cert_pin(struct cfg_ctx *c, const struct json_value *v, void *base,
			const struct field *f)
{
	struct server *s = base;
	char e[256];
	size_t n = 0;

	(void)f;
	if (v->type != JSON_STRING)
		return cfg_fail(c, "must be a string");
	if (p11_thumbprint_parse(v->u.str.s, s->cert_pin, &n, e, sizeof(e)) == -1)
		return cfg_fail(c, "%s", e);
	if (n != sizeof(s->cert_pin))
		return cfg_fail(c, "must be the certificate's SHA-256 (64 hex digits), not SHA-1");
	s->has_cert_pin = 1;
	return 0;
}

/* "servers" of a farm (base is the farm). Resolution and the affinity id wait
 * for the whole farm, whose name may come after its servers. */
static int set_servers(struct cfg_ctx *c, const struct json_value *v, void *base,
		       const struct field *f)
{
	struct farm *farm = base;
	size_t i, old;

	(void)f;
	if (v->type != JSON_ARRAY)
		return cfg_fail(c, "must be an array");
	if (cfg_calloc(c, &farm->servers, v->u.arr.n, sizeof(*farm->servers)) < 0)
		return -1;
	farm->nservers = v->u.arr.n;
	for (i = 0; i < v->u.arr.n; i++) {
		struct server *s = &farm->servers[i];

		s->http_port = 80;
		s->https_port = 443;
		s->enabled = 1;
		s->weight = 100;
		old = path_idx(c, i);
		if (parse_fields(c, v->u.arr.items[i], server_fields, s) < 0)
			return -1;
		path_pop(c, old);
	}
	return 0;
}

/* "queryStringNames": array of non-empty strings (base is the farm). */
static int set_qs_names(struct cfg_ctx *c, const struct json_value *v, void *base,
			const struct field *f)
{
	struct farm *farm = base;
	size_t i, old;

	(void)f;
	if (v->type != JSON_ARRAY)
		return cfg_fail(c, "must be an array of strings");
	if (cfg_calloc(c, &farm->lb.query_string_names, v->u.arr.n, sizeof(char *)) < 0)
		return -1;
	farm->lb.nquery_string_names = v->u.arr.n;
	for (i = 0; i < v->u.arr.n; i++) {
		const struct json_value *item = v->u.arr.items[i];

		old = path_idx(c, i);
		if (item->type != JSON_STRING)
			return cfg_fail(c, "must be a string");
		if (item->u.str.len == 0)
			return cfg_fail(c, "must not be empty");
		farm->lb.query_string_names[i] = cfg_strdup(c, item->u.str.s);
		if (farm->lb.query_string_names[i] == NULL)
			return -1;
		path_pop(c, old);
	}
	return 0;
}

static const struct field lb_fields[] = {
	{"algorithm", set_enum, offsetof(struct farm, lb.algorithm), 0, 0, &algo_desc},
	{"hashServerVariable", set_var_name, offsetof(struct farm, lb.hash_server_variable)},
	{"queryStringNames", set_qs_names, 0},
	{"leastResponseTimePeriod", set_ms, offsetof(struct farm, lb.least_response_time_period_ms),
	 1, DURATION_MS_MAX},
	{NULL},
};

static const struct field affinity_fields[] = {
	{"useCookie", set_bool, offsetof(struct farm, affinity.use_cookie)},
	{"cookieName", set_token, offsetof(struct farm, affinity.cookie_name)},
	{"timeout", set_secs, offsetof(struct farm, affinity.timeout_s), MS_PER_S, DURATION_S_MAX},
	{NULL},
};

static const struct field protocol_fields[] = {
	{"timeout", set_ms, offsetof(struct farm, protocol.timeout_ms), 1, DURATION_MS_MAX},
	{"keepAlive", set_bool, offsetof(struct farm, protocol.keep_alive)},
	{"preserveHostHeader", set_bool, offsetof(struct farm, protocol.preserve_host_header)},
	{"reverseRewriteHostInResponseHeaders", set_bool,
	 offsetof(struct farm, protocol.reverse_rewrite_host)},
	{"xForwardedForHeaderName", set_token_or_empty, offsetof(struct farm, protocol.xff_name)},
	{"includePortInXForwardedFor", set_bool, offsetof(struct farm, protocol.xff_include_port)},
	{"arrResponseHeader", set_bool, offsetof(struct farm, protocol.arr_response_header)},
	{"clientCertHash", set_nonempty_str, offsetof(struct farm, protocol.client_cert_hash)},
	{"clientCertToken", set_nonempty_str, offsetof(struct farm, protocol.client_cert_token)},
	{"backendCaFile", set_nonempty_str, offsetof(struct farm, protocol.backend_ca_file)},
	{"clientCertFileName", set_nonempty_str, offsetof(struct farm, protocol.client_cert_file)},
	{"clientCertPassword", set_str, offsetof(struct farm, protocol.client_cert_password)},
	{"clientCertHeaderName", set_token_or_empty,
	 offsetof(struct farm, protocol.client_cert_header)},
	{"sslHeaderName", set_token_or_empty, offsetof(struct farm, protocol.ssl_header)},
	{"clientCertRfc9440", set_bool, offsetof(struct farm, protocol.client_cert_rfc9440)},
	{NULL},
};

/* Status codes and ranges: "200-399", "500-", "200,204,300-302" (base+off
 * is a struct code_set). */
static int set_codes(struct cfg_ctx *c, const struct json_value *v, void *base,
		     const struct field *f)
{
	struct code_set *cs = (struct code_set *)((char *)base + f->off);
	const char *p;

	if (v->type != JSON_STRING)
		return cfg_fail(c, "must be a string of status codes and ranges, e.g. "
				   "\"200-399\" or \"500-\"");
	p = v->u.str.s;
	cs->n = 0;
	for (;;) {
		unsigned long lo, hi;
		char *e;

		while (*p == ' ')
			p++;
		if (*p < '0' || *p > '9')
			goto bad;
		lo = strtoul(p, &e, 10);
		p = e;
		hi = lo;
		if (*p == '-') {
			p++;
			if (*p >= '0' && *p <= '9') {
				hi = strtoul(p, &e, 10);
				p = e;
			} else {
				hi = 999;
			}
		}
		if (lo < 100 || hi > 999 || lo > hi)
			goto bad;
		if (cs->n == CODE_SET_MAX)
			return cfg_fail(c, "at most %d codes or ranges", CODE_SET_MAX);
		cs->lo[cs->n] = (uint16_t)lo;
		cs->hi[cs->n] = (uint16_t)hi;
		cs->n++;
		while (*p == ' ')
			p++;
		if (!*p)
			return 0;
		if (*p++ != ',')
			goto bad;
	}
bad:
	return cfg_fail(c, "must be status codes (100-999) and ranges separated by commas, e.g. "
			   "\"200-399\", \"500-\" or \"200,204,300-302\"");
}

/* healthCheck.url: http(s)://authority/path (base is the farm). */
static int set_health_url(struct cfg_ctx *c, const struct json_value *v, void *base,
			  const struct field *f)
{
	struct farm *farm = base;
	const char *s, *a, *slash;
	size_t alen;

	(void)f;
	if (v->type != JSON_STRING)
		return cfg_fail(c, "must be a string");
	s = v->u.str.s;
	if (!strncasecmp(s, "http://", 7)) {
		a = s + 7;
	} else if (!strncasecmp(s, "https://", 8)) {
		a = s + 8;
		farm->health.https = 1;
	} else {
		return cfg_fail(c, "must be an http:// or https:// URL");
	}
	slash = strchr(a, '/');
	alen = slash ? (size_t)(slash - a) : strlen(a);
	if (!alen || !is_visible(s) || memchr(a, '?', alen) || memchr(a, '#', alen) ||
	    memchr(a, '@', alen))
		return cfg_fail(c, "must be an http:// or https:// URL with a host, without "
				   "spaces or control characters");
	if (strchr(s, '#'))
		return cfg_fail(c, "must not contain a fragment ('#')");
	free(farm->health.url);
	free(farm->health.host);
	free(farm->health.path);
	farm->health.url = cfg_strdup(c, s);
	farm->health.host = cfg_strndup(c, a, alen);
	farm->health.path = cfg_strdup(c, slash ? slash : "/");
	if (!farm->health.url || !farm->health.host || !farm->health.path)
		return -1;
	return 0;
}

static const struct field health_fields[] = {
	{"url", set_health_url, 0},
	{"interval", set_ms, offsetof(struct farm, health.interval_ms), 100, DURATION_MS_MAX},
	{"timeout", set_ms, offsetof(struct farm, health.timeout_ms), 100, DURATION_MS_MAX},
	{"retries", set_u32, offsetof(struct farm, health.retries), 1, 100},
	{"statusCodeMatch", set_codes, offsetof(struct farm, health.status_match)},
	{"responseMatch", set_nonempty_str, offsetof(struct farm, health.response_match)},
	{"liveTrafficFailureCodes", set_codes, offsetof(struct farm, health.live_codes)},
	{"maxLiveTrafficFailures", set_u32, offsetof(struct farm, health.max_live_failures), 1,
	 100000},
	{"liveTrafficFailurePeriod", set_ms, offsetof(struct farm, health.live_period_ms), 0,
	 DURATION_MS_MAX},
	{"minServers", set_u32, offsetof(struct farm, health.min_servers), 0, 1000},
	{NULL},
};

static const struct field farm_fields[] = {
	{"name", set_farm_name, offsetof(struct farm, name), 0, 0, NULL, FIELD_REQUIRED},
	{"enabled", set_bool, offsetof(struct farm, enabled)},
	{"servers", set_servers, 0},
	{"loadBalancing", set_object, 0, 0, 0, lb_fields},
	{"affinity", set_object, 0, 0, 0, affinity_fields},
	{"protocol", set_object, 0, 0, 0, protocol_fields},
	{"healthCheck", set_object, 0, 0, 0, health_fields},
	{NULL},
};

/* Fills the server's derived fields and resolves its address (the only
 * place names are looked up: never on the data path). Path is the server's. */
static int server_finish(struct cfg_ctx *c, struct farm *farm, unsigned int idx)
{
	struct server *s = &farm->servers[idx];
	struct addrinfo hints, *res = NULL;
	char port[8];
	size_t old;
	unsigned int j;
	int rc;

	s->farm = farm;
	s->idx = idx;
	s->affinity_id = lb_affinity_id(farm->name, s->address, s->http_port);
	old = path_key(c, "address");
	for (j = 0; j < idx; j++)
		if (strcasecmp(farm->servers[j].address, s->address) == 0 &&
		    farm->servers[j].http_port == s->http_port)
			return cfg_fail(c,
					"duplicate server %.128s port %u in farm \"%s\" (same as "
					"servers[%u])",
					s->address, s->http_port, farm->name, j);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	snprintf(port, sizeof(port), "%u", s->http_port);
	rc = getaddrinfo(s->address, port, &hints, &res);
	if (rc != 0)
		return cfg_fail(c, "cannot resolve \"%.128s\": %s", s->address,
				rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
	if (res == NULL || res->ai_addrlen > sizeof(s->addr)) {
		freeaddrinfo(res);
		return cfg_fail(c, "cannot resolve \"%.128s\": no usable address", s->address);
	}
	memcpy(&s->addr, res->ai_addr, res->ai_addrlen);
	s->addrlen = res->ai_addrlen;
	freeaddrinfo(res);
	/* the same address with httpsPort, for rewrites to https://<farm>/ */
	memcpy(&s->tls_addr, &s->addr, s->addrlen);
	if (s->tls_addr.ss_family == AF_INET6)
		((struct sockaddr_in6 *)&s->tls_addr)->sin6_port = htons(s->https_port);
	else
		((struct sockaddr_in *)&s->tls_addr)->sin_port = htons(s->https_port);
	path_pop(c, old);
	return 0;
}

/* "webFarms" (base is the config). */
static int set_farms(struct cfg_ctx *c, const struct json_value *v, void *base,
		     const struct field *f)
{
	struct config *cfg = base;
	size_t i, j, old, old2;

	(void)f;
	if (v->type != JSON_ARRAY)
		return cfg_fail(c, "must be an array");
	if (cfg_calloc(c, &cfg->farms, v->u.arr.n, sizeof(*cfg->farms)) < 0)
		return -1;
	cfg->nfarms = v->u.arr.n;
	for (i = 0; i < v->u.arr.n; i++) {
		struct farm *farm = &cfg->farms[i];

		farm->enabled = 1;
		farm->lb.algorithm = LB_WEIGHTED_ROUND_ROBIN;
		farm->lb.least_response_time_period_ms = 5000;
		farm->affinity.timeout_s = 1200;
		farm->protocol.timeout_ms = 30000;
		farm->protocol.keep_alive = 1;
		farm->protocol.preserve_host_header = 1;
		farm->protocol.xff_include_port = 1;
		farm->protocol.arr_response_header = 1;
		farm->health.interval_ms = 30000;
		farm->health.timeout_ms = 30000;
		farm->health.retries = 3;
		farm->health.status_match.lo[0] = 200;
		farm->health.status_match.hi[0] = 399;
		farm->health.status_match.n = 1;
		farm->health.live_codes.lo[0] = 500;
		farm->health.live_codes.hi[0] = 999;
		farm->health.live_codes.n = 1;
		farm->health.max_live_failures = 10;
		old = path_idx(c, i);
		farm->affinity.cookie_name = cfg_strdup(c, "ARRAffinity");
		farm->protocol.xff_name = cfg_strdup(c, "X-Forwarded-For");
		farm->protocol.client_cert_header = cfg_strdup(c, "X-ARR-ClientCert");
		farm->protocol.ssl_header = cfg_strdup(c, "X-ARR-SSL");
		if (farm->affinity.cookie_name == NULL || farm->protocol.xff_name == NULL ||
		    farm->protocol.client_cert_header == NULL || farm->protocol.ssl_header == NULL)
			return -1;
		if (parse_fields(c, v->u.arr.items[i], farm_fields, farm) < 0)
			return -1;
		for (j = 0; j < i; j++) {
			if (strcasecmp(cfg->farms[j].name, farm->name) == 0) {
				path_key(c, "name");
				return cfg_fail(c, "duplicate farm name \"%s\"", farm->name);
			}
		}
		for (j = 0; j < farm->nservers; j++) {
			old2 = path_key(c, "servers");
			path_idx(c, j);
			if (server_finish(c, farm, j) < 0)
				return -1;
			path_pop(c, old2);
		}
		path_pop(c, old);
	}
	return 0;
}

/* ---- rules ------------------------------------------------------------ */

/* "matchType": URL Rewrite also has IsFile / IsDirectory, meaningless on a proxy. */
static int set_match_type(struct cfg_ctx *c, const struct json_value *v, void *base,
			  const struct field *f)
{
	(void)base;
	(void)f;
	if (v->type != JSON_STRING)
		return cfg_fail(c, "must be a string");
	if (strcasecmp(v->u.str.s, "Pattern") != 0)
		return cfg_fail(c, "only Pattern is supported");
	return 0;
}

static const struct field cond_fields[] = {
	{"input", set_nonempty_str, offsetof(struct rule_cond, input), 0, 0, NULL, FIELD_REQUIRED},
	{"pattern", set_str, offsetof(struct rule_cond, pat.pattern), 0, 0, NULL, FIELD_REQUIRED},
	{"ignoreCase", set_bool, offsetof(struct rule_cond, pat.ignore_case)},
	{"negate", set_bool, offsetof(struct rule_cond, pat.negate)},
	{"matchType", set_match_type, 0},
	{NULL},
};

/* The conditions array (either form's list; base is the rule). */
static int set_cond_list(struct cfg_ctx *c, const struct json_value *v, void *base,
			 const struct field *f)
{
	struct rule *r = base;
	size_t i, old;

	(void)f;
	if (v->type != JSON_ARRAY)
		return cfg_fail(c, "must be an array");
	if (cfg_calloc(c, &r->conds, v->u.arr.n, sizeof(*r->conds)) < 0)
		return -1;
	r->nconds = v->u.arr.n;
	for (i = 0; i < v->u.arr.n; i++) {
		r->conds[i].pat.ignore_case = 1;
		old = path_idx(c, i);
		if (parse_fields(c, v->u.arr.items[i], cond_fields, &r->conds[i]) < 0)
			return -1;
		path_pop(c, old);
	}
	return 0;
}

static const struct field conds_obj_fields[] = {
	{"logicalGrouping", set_enum, offsetof(struct rule, match_any), 0, 0, &grouping_desc},
	{"trackAllCaptures", set_bool, offsetof(struct rule, track_all_captures)},
	{"add", set_cond_list, 0},
	{NULL},
};

/* "conditions": {logicalGrouping, trackAllCaptures, add: [...]} or, as a
 * shorthand, the bare list (MatchAll). */
static int set_conditions(struct cfg_ctx *c, const struct json_value *v, void *base,
			  const struct field *f)
{
	if (v->type == JSON_ARRAY)
		return set_cond_list(c, v, base, f);
	if (v->type != JSON_OBJECT)
		return cfg_fail(c, "must be an object or an array");
	return parse_fields(c, v, conds_obj_fields, base);
}

static const struct field match_fields[] = {
	{"url", set_str, offsetof(struct rule, match.pattern), 0, 0, NULL, FIELD_REQUIRED},
	{"ignoreCase", set_bool, offsetof(struct rule, match.ignore_case)},
	{"negate", set_bool, offsetof(struct rule, match.negate)},
	{NULL},
};

static const struct field action_fields[] = {
	{"type", set_enum, offsetof(struct rule, action.type), 0, 0, &action_desc},
	{"url", set_str, offsetof(struct rule, action.url)},
	{"appendQueryString", set_bool, offsetof(struct rule, action.append_query_string)},
	{"redirectType", set_enum, offsetof(struct rule, action.redirect_status), 0, 0,
	 &redirect_desc},
	{"statusCode", set_int, offsetof(struct rule, action.status_code), 200, 999},
	{"statusReason", set_reason, offsetof(struct rule, action.status_reason)},
	{"statusDescription", set_str, offsetof(struct rule, action.status_description)},
	{NULL},
};

/* Checks what an action type needs. Path is the rule's. */
static int action_finish(struct cfg_ctx *c, struct rule *r)
{
	const struct rule_action *a = &r->action;
	const char *tname = a->type == RULE_ACT_REWRITE ? "Rewrite" : "Redirect";

	switch (a->type) {
	case RULE_ACT_REWRITE:
	case RULE_ACT_REDIRECT:
		path_key(c, "action");
		path_key(c, "url");
		if (a->url == NULL)
			return cfg_fail(c, "is required for a %s action", tname);
		if (a->url[0] == '\0')
			return cfg_fail(c, "must not be empty for a %s action", tname);
		break;
	case RULE_ACT_CUSTOM_RESPONSE:
		if (a->status_code == 0) {
			path_key(c, "action");
			path_key(c, "statusCode");
			return cfg_fail(c, "is required for a CustomResponse action");
		}
		break;
	default:
		break;
	}
	return 0;
}

static const struct field rule_fields[] = {
	{"name", set_nonempty_str, offsetof(struct rule, name), 0, 0, NULL, FIELD_REQUIRED},
	{"enabled", set_bool, offsetof(struct rule, enabled)},
	/* parsed into match.syntax, copied to the conditions afterwards */
	{"patternSyntax", set_enum, offsetof(struct rule, match.syntax), 0, 0, &syntax_desc},
	{"stopProcessing", set_bool, offsetof(struct rule, stop_processing)},
	{"match", set_object, 0, 0, 0, match_fields, FIELD_REQUIRED},
	{"conditions", set_conditions, 0},
	{"action", set_object, 0, 0, 0, action_fields},
	{NULL},
};

/* "rules" (base is the config). Compiled later, once every farm is known. */
static int set_rules(struct cfg_ctx *c, const struct json_value *v, void *base,
		     const struct field *f)
{
	struct config *cfg = base;
	size_t i, j, old;

	(void)f;
	if (v->type != JSON_ARRAY)
		return cfg_fail(c, "must be an array");
	if (cfg_calloc(c, &cfg->rules, v->u.arr.n, sizeof(*cfg->rules)) < 0)
		return -1;
	cfg->nrules = v->u.arr.n;
	for (i = 0; i < v->u.arr.n; i++) {
		struct rule *r = &cfg->rules[i];

		r->enabled = 1;
		r->match.syntax = RULE_SYNTAX_ECMASCRIPT;
		r->match.ignore_case = 1;
		r->action.type = RULE_ACT_NONE;
		r->action.append_query_string = 1;
		r->action.redirect_status = 301;
		old = path_idx(c, i);
		if (parse_fields(c, v->u.arr.items[i], rule_fields, r) < 0)
			return -1;
		for (j = 0; j < r->nconds; j++)
			r->conds[j].pat.syntax = r->match.syntax;
		for (j = 0; j < i; j++) {
			if (strcmp(cfg->rules[j].name, r->name) == 0) {
				path_key(c, "name");
				return cfg_fail(c, "duplicate rule name \"%s\"", r->name);
			}
		}
		if (action_finish(c, r) < 0)
			return -1;
		path_pop(c, old);
	}
	return 0;
}

/* ---- top level -------------------------------------------------------- */

static const struct field limits_fields[] = {
	{"maxRequestLineLength", set_u32, offsetof(struct config, limits.max_request_line), 256,
	 65536},
	{"maxRequestHeadersSize", set_u32, offsetof(struct config, limits.max_header_size), 1024,
	 1048576},
	{"maxRequestHeaders", set_u32, offsetof(struct config, limits.max_headers), 1, 1000},
	{"maxConnections", set_u32, offsetof(struct config, limits.max_connections), 1, 1000000},
	{"maxResponseHeaderSize", set_u32, offsetof(struct config, limits.max_response_header_size),
	 1024, 1048576},
	{NULL},
};

static const struct field timeouts_fields[] = {
	{"connect", set_ms, offsetof(struct config, timeouts.connect_ms), 1, DURATION_MS_MAX},
	{"requestHeader", set_ms, offsetof(struct config, timeouts.request_header_ms), 1,
	 DURATION_MS_MAX},
	{"keepAlive", set_ms, offsetof(struct config, timeouts.keep_alive_ms), 1, DURATION_MS_MAX},
	{"requestBody", set_ms, offsetof(struct config, timeouts.request_body_ms), 1,
	 DURATION_MS_MAX},
	{"upstreamIdle", set_ms, offsetof(struct config, timeouts.upstream_idle_ms), 1,
	 DURATION_MS_MAX},
	{NULL},
};

static const struct field log_fields[] = {
	{"access", set_enum, offsetof(struct config, log.access), 0, 0, &log_desc},
	{"error", set_enum, offsetof(struct config, log.error), 0, 0, &log_desc},
	{"debug", set_bool, offsetof(struct config, log.debug)},
	{NULL},
};

static const struct field token_fields[] = {
	{"name", set_nonempty_str, offsetof(struct token_cfg, name), 0, 0, NULL, FIELD_REQUIRED},
	{"module", set_nonempty_str, offsetof(struct token_cfg, module), 0, 0, NULL,
	 FIELD_REQUIRED},
	{"uri", set_nonempty_str, offsetof(struct token_cfg, uri), 0, 0, NULL, FIELD_REQUIRED},
	{"pinFile", set_nonempty_str, offsetof(struct token_cfg, pin_file)},
	{NULL},
};

/* "tokens": the PKCS#11 tokens holding client-certificate keys (base is the
 * config). They are opened by tls_prepare(), not here. */
static int set_tokens(struct cfg_ctx *c, const struct json_value *v, void *base,
		      const struct field *f)
{
	struct config *cfg = base;
	size_t i, j, old;

	(void)f;
	if (v->type != JSON_ARRAY)
		return cfg_fail(c, "must be an array");
	if (cfg_calloc(c, &cfg->tokens, v->u.arr.n, sizeof(*cfg->tokens)) < 0)
		return -1;
	cfg->ntokens = v->u.arr.n;
	for (i = 0; i < v->u.arr.n; i++) {
		old = path_idx(c, i);
		if (parse_fields(c, v->u.arr.items[i], token_fields, &cfg->tokens[i]) < 0)
			return -1;
		for (j = 0; j < i; j++)
			if (!strcmp(cfg->tokens[j].name, cfg->tokens[i].name)) {
				path_key(c, "name");
				return cfg_fail(c, "duplicate token name \"%s\"",
						cfg->tokens[i].name);
			}
		path_pop(c, old);
	}
	return 0;
}

/* control.socket: a path, or "" for none (base is the config). */
static int set_control_socket(struct cfg_ctx *c, const struct json_value *v, void *base,
			      const struct field *f)
{
	struct config *cfg = base;
	struct sockaddr_un un;

	(void)f;
	if (v->type != JSON_STRING)
		return cfg_fail(c, "must be a string");
	if (v->u.str.len >= sizeof(un.sun_path))
		return cfg_fail(c, "must be shorter than %zu bytes (a unix socket path)",
				sizeof(un.sun_path));
	if (v->u.str.len && v->u.str.s[0] != '/')
		return cfg_fail(c, "must be an absolute path, or \"\" for no control socket");
	free(cfg->control_socket);
	cfg->control_socket = v->u.str.len ? cfg_strdup(c, v->u.str.s) : NULL;
	return v->u.str.len && !cfg->control_socket ? -1 : 0;
}

static const struct field control_fields[] = {
	{"socket", set_control_socket, 0},
	{NULL},
};

static const struct field mgmt_fields[] = {
	{"address", set_listen_addr, offsetof(struct config, mgmt.address)},
	{"port", set_u16, offsetof(struct config, mgmt.port), 1, 65535},
	{"certificateFile", set_nonempty_str, offsetof(struct config, mgmt.cert_file)},
	{"keyFile", set_nonempty_str, offsetof(struct config, mgmt.key_file)},
	{"certificateHash", set_nonempty_str, offsetof(struct config, mgmt.cert_hash)},
	{"certificateToken", set_nonempty_str, offsetof(struct config, mgmt.cert_token)},
	{NULL},
};

static int set_mgmt(struct cfg_ctx *c, const struct json_value *v, void *base,
		    const struct field *f)
{
	struct config *cfg = base;

	(void)f;
	cfg->mgmt.configured = 1;
	return parse_fields(c, v, mgmt_fields, base);
}

/* ---- system: the appliance's operating-system settings ------------------ */

static const struct str_check host_name_check = {
	is_system_host_name,
	"must be a host name (RFC 1123: dot-separated labels of 1 to 63 letters, digits and '-', "
	"not starting or ending with '-'; 64 characters at most, the kernel's limit)"};
static const struct str_check ifname_check = {
	is_ifname, "must be a network interface name: 1 to 15 letters, digits, '_', '.' and '-'"};
static const struct str_check ip_check = {is_ip, "must be a numeric IPv4 or IPv6 address"};
static const struct str_check cidr_check = {
	is_cidr, "must be an IPv4 or IPv6 address with its prefix length, e.g. 192.168.1.10/24 "
		 "or 2001:db8::10/64"};
static const struct str_check ntp_check = {
	is_ip_or_host_name, "must be a numeric IPv4 or IPv6 address or a host name (RFC 1123)"};

static const struct enum_desc net_mode_desc = {
	"mode",
	"dhcp or static",
	(const struct enum_name[]){
		{"dhcp", NET_MODE_DHCP},
		{"static", NET_MODE_STATIC},
		{NULL, 0},
	},
};

static const struct field net_fields[] = {
	{"interface", set_checked, offsetof(struct config, system.net.interface), 0, 0,
	 &ifname_check},
	{"mode", set_enum, offsetof(struct config, system.net.mode), 0, 0, &net_mode_desc},
	{"address", set_checked, offsetof(struct config, system.net.address), 0, 0, &cidr_check},
	{"gateway", set_checked, offsetof(struct config, system.net.gateway), 0, 0, &ip_check},
	{"dns", set_str_list, offsetof(struct config, system.net.dns), 0, SYSTEM_DNS_MAX,
	 &ip_check},
	{NULL},
};

/* system.network (base is the config): static mode needs an address, and a
 * gateway of its family; DHCP gives both, so neither is written then. */
static int set_network(struct cfg_ctx *c, const struct json_value *v, void *base,
		       const struct field *f)
{
	const struct system_cfg *s = &((struct config *)base)->system;
	int fam;

	(void)f;
	if (parse_fields(c, v, net_fields, base) < 0)
		return -1;
	if (s->net.mode == NET_MODE_DHCP) {
		if (!s->net.address && !s->net.gateway)
			return 0;
		path_key(c, s->net.address ? "address" : "gateway");
		return cfg_fail(c, "only with mode static");
	}
	if (!s->net.address) {
		path_key(c, "address");
		return cfg_fail(c, "is required with mode static");
	}
	fam = cidr_family(s->net.address);
	if (s->net.gateway && ip_family(s->net.gateway) != fam) {
		path_key(c, "gateway");
		return cfg_fail(c, "must be an %s address, as address is",
				fam == AF_INET ? "IPv4" : "IPv6");
	}
	return 0;
}

static const struct field system_fields[] = {
	{"hostName", set_checked, offsetof(struct config, system.host_name), 0, 0,
	 &host_name_check},
	{"network", set_network, 0},
	{"ntpServers", set_str_list, offsetof(struct config, system.ntp_servers), 0, SYSTEM_NTP_MAX,
	 &ntp_check},
	{NULL},
};

/* The defaults of what the file leaves out. */
static int system_finish(struct cfg_ctx *c, struct config *cfg)
{
	struct system_cfg *s = &cfg->system;

	snprintf(c->path, sizeof(c->path), "$.system");
	c->plen = strlen(c->path);
	if (!s->host_name && !(s->host_name = cfg_strdup(c, "farmgate")))
		return -1;
	if (!s->net.interface && !(s->net.interface = cfg_strdup(c, "eth0")))
		return -1;
	return 0;
}

static const struct field top_fields[] = {
	{"tokens", set_tokens, 0},
	{"listeners", set_listeners, 0},
	{"limits", set_object, 0, 0, 0, limits_fields},
	{"timeouts", set_object, 0, 0, 0, timeouts_fields},
	{"log", set_object, 0, 0, 0, log_fields},
	{"webFarms", set_farms, 0},
	{"rules", set_rules, 0},
	{"control", set_object, 0, 0, 0, control_fields},
	{"management", set_mgmt, 0},
	{"system", set_object, 0, 0, 0, system_fields},
	{NULL},
};

/* A certificate on a token names a defined token, or there is exactly one.
 * c->path is the field to blame. */
static int check_token_ref(struct cfg_ctx *c, const struct config *cfg, const char *tok,
			   const char *field)
{
	unsigned int j;

	if (!tok && cfg->ntokens != 1)
		return cfg_fail(c,
				cfg->ntokens ? "several tokens are defined: set %s"
					     : "needs a token: none is defined in $.tokens",
				field);
	for (j = 0; tok && j < cfg->ntokens; j++)
		if (!strcmp(cfg->tokens[j].name, tok))
			return 0;
	if (tok)
		return cfg_fail(c, "token \"%s\" is not defined in $.tokens", tok);
	return 0;
}

/* Every farm with a client certificate, and every listener certificate on a
 * token, names a defined token (or there is exactly one). Whether the
 * certificate is on it is tls_prepare()'s check. */
static int check_identities(struct cfg_ctx *c, struct config *cfg)
{
	unsigned int i, j;

	for (i = 0; i < cfg->nfarms; i++) {
		const struct farm *f = &cfg->farms[i];
		const char *tok = f->protocol.client_cert_token;

		if (!f->protocol.client_cert_hash && !f->protocol.client_cert_file && !tok)
			continue;
		snprintf(c->path, sizeof(c->path), "$.webFarms[%u].protocol.%s", i,
			 tok ? "clientCertToken"
			     : (f->protocol.client_cert_hash ? "clientCertHash"
							     : "clientCertFileName"));
		c->plen = strlen(c->path);
		if (!f->protocol.client_cert_hash && !f->protocol.client_cert_file)
			return cfg_fail(c, "names a token but no clientCertHash");
		if (check_token_ref(c, cfg, tok, "clientCertToken") < 0)
			return -1;
	}
	for (i = 0; i < cfg->nlisteners; i++) {
		const struct listener_ssl_cfg *ssl = cfg->listeners[i].ssl;

		for (j = 0; ssl && j < ssl->ncerts; j++) {
			const char *tok = ssl->certs[j].cert_token;

			if (!ssl->certs[j].cert_hash)
				continue;
			snprintf(c->path, sizeof(c->path),
				 "$.listeners[%u].ssl.certificates[%u].%s", i, j,
				 tok ? "certificateToken" : "certificateHash");
			c->plen = strlen(c->path);
			if (check_token_ref(c, cfg, tok, "certificateToken") < 0)
				return -1;
		}
	}
	return 0;
}

/* The management listener: its defaults, key and certificate together, and
 * never on a data-plane listener's port (whatever the Host header, the UI
 * must not be reachable through the data plane). */
static int mgmt_finish(struct cfg_ctx *c, struct config *cfg)
{
	unsigned char km[17], kl[17];
	struct listener_cfg m;
	unsigned int i;

	if (!cfg->mgmt.address && !(cfg->mgmt.address = cfg_strdup(c, "0.0.0.0")))
		return -1;
	if (!cfg->mgmt.port)
		cfg->mgmt.port = 8443;
	snprintf(c->path, sizeof(c->path), "$.management");
	c->plen = strlen(c->path);
	if (!cfg->mgmt.cert_file != !cfg->mgmt.key_file)
		return cfg_fail(c, "certificateFile and keyFile go together");
	if (cfg->mgmt.cert_hash && cfg->mgmt.cert_file)
		return cfg_fail(c, "certificateHash (on a token) and certificateFile/keyFile are "
				   "exclusive");
	if (cfg->mgmt.cert_hash) {
		const char *tok = cfg->mgmt.cert_token;
		unsigned int j;

		for (j = 0; tok && j < cfg->ntokens; j++)
			if (!strcmp(cfg->tokens[j].name, tok))
				break;
		if (tok ? j == cfg->ntokens : cfg->ntokens != 1)
			return cfg_fail(
				c, tok ? "certificateToken names no token of $.tokens"
				       : "certificateHash needs exactly one token in $.tokens, or "
					 "certificateToken");
	}
	m.address = cfg->mgmt.address;
	listen_key(&m, km);
	for (i = 0; cfg->mgmt.configured && i < cfg->nlisteners; i++) {
		const struct listener_cfg *l = &cfg->listeners[i];
		int any;

		if (l->port != cfg->mgmt.port)
			continue;
		listen_key(l, kl);
		any = !strcmp(l->address, "0.0.0.0") || !strcmp(l->address, "::") ||
		      !strcmp(cfg->mgmt.address, "0.0.0.0") || !strcmp(cfg->mgmt.address, "::");
		if (any || !memcmp(km, kl, sizeof(km)))
			return cfg_fail(c,
					"port %u is also $.listeners[%u]'s: the management "
					"listener must not share a data-plane listener",
					cfg->mgmt.port, i);
	}
	return 0;
}

/* Frees cfg and everything it owns. rules_free runs on the first ncompiled
 * rules only (those rules_compile saw). Safe on a partly built config. */
static void cfg_free(struct config *cfg, unsigned int ncompiled)
{
	unsigned int i, j;

	lb_detach(cfg);
	tls_config_free(cfg);
	for (i = 0; i < cfg->ntokens; i++) {
		free(cfg->tokens[i].name);
		free(cfg->tokens[i].module);
		free(cfg->tokens[i].uri);
		free(cfg->tokens[i].pin_file);
	}
	free(cfg->tokens);
	for (i = 0; i < cfg->nlisteners; i++) {
		struct listener_ssl_cfg *ssl = cfg->listeners[i].ssl;

		free(cfg->listeners[i].address);
		if (!ssl)
			continue;
		for (j = 0; j < ssl->ncerts; j++) {
			free(ssl->certs[j].cert_file);
			free(ssl->certs[j].key_file);
			free(ssl->certs[j].cert_hash);
			free(ssl->certs[j].cert_token);
			free(ssl->certs[j].chain_file);
		}
		free(ssl->certs);
		free(ssl->client_ca_file);
		for (j = 0; j < ssl->ncrl_files; j++)
			free(ssl->crl_files[j]);
		free(ssl->crl_files);
		free(ssl);
	}
	free(cfg->listeners);
	for (i = 0; i < cfg->nfarms; i++) {
		struct farm *f = &cfg->farms[i];

		for (j = 0; j < f->nservers; j++) {
			free(f->servers[j].address);
			free(f->servers[j].host_name);
			free(f->servers[j].hc_host);
		}
		free(f->health.url);
		free(f->health.host);
		free(f->health.path);
		free(f->health.response_match);
		free(f->servers);
		free(f->name);
		free(f->lb.hash_server_variable);
		for (j = 0; j < f->lb.nquery_string_names; j++)
			free(f->lb.query_string_names[j]);
		free(f->lb.query_string_names);
		free(f->affinity.cookie_name);
		free(f->protocol.xff_name);
		free(f->protocol.client_cert_header);
		free(f->protocol.ssl_header);
		free(f->protocol.client_cert_hash);
		free(f->protocol.client_cert_token);
		free(f->protocol.backend_ca_file);
		free(f->protocol.client_cert_file);
		if (f->protocol.client_cert_password)
			explicit_bzero(f->protocol.client_cert_password,
				       strlen(f->protocol.client_cert_password));
		free(f->protocol.client_cert_password);
	}
	free(cfg->farms);
	for (i = 0; i < cfg->nrules; i++) {
		struct rule *r = &cfg->rules[i];

		if (i < ncompiled)
			rules_free(r);
		free(r->name);
		free(r->match.pattern);
		for (j = 0; j < r->nconds; j++) {
			free(r->conds[j].input);
			free(r->conds[j].pat.pattern);
		}
		free(r->conds);
		free(r->action.url);
		free(r->action.status_reason);
		free(r->action.status_description);
	}
	free(cfg->rules);
	free(cfg->control_socket);
	free(cfg->mgmt.address);
	free(cfg->mgmt.cert_file);
	free(cfg->mgmt.key_file);
	free(cfg->mgmt.cert_hash);
	free(cfg->mgmt.cert_token);
	free(cfg->system.host_name);
	free(cfg->system.net.interface);
	free(cfg->system.net.address);
	free(cfg->system.net.gateway);
	str_list_free(&cfg->system.net.dns);
	str_list_free(&cfg->system.ntp_servers);
	free(cfg);
}

struct config *cfg_load_buf(const char *json, size_t len, char *err, size_t errlen)
{
	struct cfg_ctx c = {.err = err, .errlen = errlen, .path = "$", .plen = 1};
	struct json_doc *doc;
	struct config *cfg;
	unsigned int i, ncompiled = 0;
	char rerr[256];
	int rc;

	if (errlen > 0)
		err[0] = '\0';
	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL) {
		cfg_fail(&c, "out of memory");
		return NULL;
	}
	cfg->refcnt = 1;
	if (!EVP_Digest(json, len, cfg->sha256, NULL, EVP_sha256(), NULL)) {
		free(cfg);
		cfg_fail(&c, "out of memory");
		return NULL;
	}
	cfg->limits.max_request_line = 8192;
	cfg->limits.max_header_size = 16384;
	cfg->limits.max_headers = 100;
	cfg->limits.max_connections = 10000;
	cfg->limits.max_response_header_size = 65536;
	cfg->timeouts.connect_ms = 5000;
	cfg->timeouts.request_header_ms = 10000;
	cfg->timeouts.keep_alive_ms = 60000;
	cfg->timeouts.request_body_ms = 60000;
	cfg->timeouts.upstream_idle_ms = 30000;
	cfg->log.access = LOG_TARGET_STDERR;
	cfg->log.error = LOG_TARGET_STDERR;
	cfg->control_socket = strdup(CFG_CONTROL_SOCKET);
	if (cfg->control_socket == NULL) {
		cfg_fail(&c, "out of memory");
		goto fail;
	}

	doc = json_parse(json, len, err, errlen);
	if (doc == NULL)
		goto fail;
	rc = parse_fields(&c, doc->root, top_fields, cfg);
	json_free(doc);
	if (rc < 0)
		goto fail;
	if (cfg->nlisteners == 0) {
		path_key(&c, "listeners");
		cfg_fail(&c, "at least one listener is required");
		goto fail;
	}
	if (check_identities(&c, cfg) < 0)
		goto fail;
	if (mgmt_finish(&c, cfg) < 0 || system_finish(&c, cfg) < 0)
		goto fail;
	/* rules name farms: compile once all of them exist */
	for (i = 0; i < cfg->nrules; i++) {
		rerr[0] = '\0';
		ncompiled = i + 1;
		if (rules_compile(cfg, &cfg->rules[i], rerr, sizeof(rerr)) < 0) {
			if (errlen > 0)
				snprintf(err, errlen, "$.rules[%u]%s%s", i, rerr[0] ? "." : ": ",
					 rerr[0] ? rerr : "invalid rule");
			goto fail;
		}
	}
	return cfg;
fail:
	cfg_free(cfg, ncompiled);
	return NULL;
}

struct config *cfg_load_file(const char *path, char *err, size_t errlen)
{
	struct config *cfg;
	struct stat st;
	size_t len = 0, cap, plen;
	char *buf = NULL, *nb;
	ssize_t n;
	int fd, e;

	if (errlen > 0)
		err[0] = '\0';
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd == -1) {
		e = errno;
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
		return NULL;
	}
	if (fstat(fd, &st) == -1) {
		e = errno;
		snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(e));
		goto fail;
	}
	if (st.st_size > CFG_FILE_MAX) {
		snprintf(err, errlen, "%s: larger than %d bytes (1 MiB)", path, CFG_FILE_MAX);
		goto fail;
	}
	/* st_size is a hint only (the file may change, or be a pipe): read to
	 * EOF, one byte past the limit to notice growth */
	cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 4096;
	buf = malloc(cap);
	if (buf == NULL) {
		snprintf(err, errlen, "%s: out of memory", path);
		goto fail;
	}
	for (;;) {
		if (len == cap) {
			if (cap > CFG_FILE_MAX) {
				snprintf(err, errlen, "%s: larger than %d bytes (1 MiB)", path,
					 CFG_FILE_MAX);
				goto fail;
			}
			cap = cap * 2 > CFG_FILE_MAX + 1 ? CFG_FILE_MAX + 1 : cap * 2;
			nb = realloc(buf, cap);
			if (nb == NULL) {
				snprintf(err, errlen, "%s: out of memory", path);
				goto fail;
			}
			buf = nb;
		}
		n = read(fd, buf + len, cap - len);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			e = errno;
			snprintf(err, errlen, "%s: cannot read: %s", path, strerror(e));
			goto fail;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len > CFG_FILE_MAX) {
		snprintf(err, errlen, "%s: larger than %d bytes (1 MiB)", path, CFG_FILE_MAX);
		goto fail;
	}
	close(fd);
	/* the path prefix goes first; the loader writes its message after it */
	plen = errlen > 0 ? (size_t)snprintf(err, errlen, "%s: ", path) : 0;
	if (plen >= errlen) {
		char tmp[1];

		cfg = cfg_load_buf(buf, len, tmp, 0);
	} else {
		cfg = cfg_load_buf(buf, len, err + plen, errlen - plen);
		if (cfg != NULL)
			err[0] = '\0';
	}
	free(buf);
	return cfg;
fail:
	free(buf);
	close(fd);
	return NULL;
}

void cfg_get(struct config *cfg)
{
	cfg->refcnt++;
}

void cfg_put(struct config *cfg)
{
	if (cfg == NULL)
		return;
	if (--cfg->refcnt > 0)
		return;
	cfg_free(cfg, cfg->nrules);
}

struct farm *cfg_find_farm(const struct config *cfg, const char *name, size_t len)
{
	unsigned int i;

	for (i = 0; i < cfg->nfarms; i++) {
		const char *n = cfg->farms[i].name;

		if (strncasecmp(n, name, len) == 0 && n[len] == '\0')
			return &cfg->farms[i];
	}
	return NULL;
}

/* What may stand between single quotes in sh without any escaping, and
 * more: exactly the bytes the system settings are validated to. */
static int shell_safe(const char *s)
{
	for (; s && *s; s++)
		if (!is_alnum((unsigned char)*s) && !strchr(".:/_-", *s))
			return 0;
	return 1;
}

/* See cfg.h. Every value is checked before anything is printed. */
int cfg_system_shell(const struct config *cfg, FILE *out, char *err, size_t errlen)
{
	const struct system_cfg *s = &cfg->system;
	const struct {
		const char *name;
		const char *value;	     /* NULL: "" (or the list) */
		const struct str_list *list; /* space-separated */
	} vars[] = {
		{"FG_HOSTNAME", s->host_name, NULL},
		{"FG_NET_IF", s->net.interface, NULL},
		{"FG_NET_MODE", s->net.mode == NET_MODE_STATIC ? "static" : "dhcp", NULL},
		{"FG_NET_ADDRESS", s->net.address, NULL},
		{"FG_NET_GATEWAY", s->net.gateway, NULL},
		{"FG_NET_DNS", NULL, &s->net.dns},
		{"FG_NTP_SERVERS", NULL, &s->ntp_servers},
	};
	size_t i;
	unsigned int j;

	for (i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
		int ok = shell_safe(vars[i].value);

		for (j = 0; vars[i].list && j < vars[i].list->n; j++)
			ok = ok && shell_safe(vars[i].list->v[j]);
		if (!ok) {
			snprintf(err, errlen,
				 "%s: a value holds a byte outside [A-Za-z0-9.:/_-]: nothing "
				 "printed",
				 vars[i].name);
			return -1;
		}
	}
	for (i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
		fprintf(out, "%s='%s", vars[i].name, vars[i].value ? vars[i].value : "");
		for (j = 0; vars[i].list && j < vars[i].list->n; j++)
			fprintf(out, "%s%s", j ? " " : "", vars[i].list->v[j]);
		fputs("'\n", out);
	}
	return 0;
}

/* Reads 1 to maxd decimal digits at s[*i..len) into *v. */
static int ts_digits(const char *s, size_t len, size_t *i, unsigned int maxd, uint64_t *v)
{
	size_t start = *i;

	*v = 0;
	while (*i < len && s[*i] >= '0' && s[*i] <= '9' && *i - start < maxd)
		*v = *v * 10 + (uint64_t)(s[(*i)++] - '0');
	if (*i == start || (*i < len && s[*i] >= '0' && s[*i] <= '9'))
		return -1;
	return 0;
}

/* See cfg.h. Accepts [d.]h:mm:ss[.f] as .NET's TimeSpan writes it: hours
 * below 24 (days carry the rest), minutes and seconds below 60, up to 7
 * fraction digits (beyond milliseconds they are dropped), no sign, no
 * spaces. Days are capped at 8 digits so the result cannot overflow. */
int cfg_parse_timespan(const char *s, size_t len, uint64_t *ms)
{
	uint64_t first, days = 0, h, m, sec, frac = 0, scale;
	size_t i = 0, fstart;

	if (ts_digits(s, len, &i, 8, &first) < 0)
		return -1;
	if (i < len && s[i] == '.') {
		days = first;
		i++;
		if (ts_digits(s, len, &i, 2, &h) < 0)
			return -1;
	} else {
		if (i > 2)
			return -1;
		h = first;
	}
	if (i >= len || s[i++] != ':' || ts_digits(s, len, &i, 2, &m) < 0)
		return -1;
	if (i >= len || s[i++] != ':' || ts_digits(s, len, &i, 2, &sec) < 0)
		return -1;
	if (i < len && s[i] == '.') {
		i++;
		fstart = i;
		if (ts_digits(s, len, &i, 7, &frac) < 0)
			return -1;
		/* scale the fraction to milliseconds: ".5" is 500, ".0005" is 0 */
		for (scale = i - fstart; scale < 3; scale++)
			frac *= 10;
		for (; scale > 3; scale--)
			frac /= 10;
	}
	if (i != len || h > 23 || m > 59 || sec > 59)
		return -1;
	*ms = days * MS_PER_DAY + h * 3600000 + m * 60000 + sec * 1000 + frac;
	return 0;
}
