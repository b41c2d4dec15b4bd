/* Unit tests of the URL Rewrite rules engine (rules.c), with hand-built configurations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "rules.h"

#define MAX_RULES 12
#define MAX_CONDS 6
#define MAX_HDRS  8

/* One test's world: a configuration with three farms and the rules the test
 * adds, one request, and the output buffer. Everything is static storage
 * of the fixture, as the configuration loader would have built it. */
struct fx {
	struct config cfg;
	struct farm farms[3];
	struct rule rules[MAX_RULES];
	struct rule_cond conds[MAX_RULES][MAX_CONDS];
	struct http_hdr hdrs[MAX_HDRS];
	struct rule_ctx ctx;
	struct rule_result res;
	char buf[2048];
	char err[256];
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	f->farms[0].name = "web";
	f->farms[1].name = "api";
	f->farms[2].name = "ARR-Authentication";
	f->cfg.farms = f->farms;
	f->cfg.nfarms = 3;
	f->cfg.rules = f->rules;
	f->cfg.nrules = 0;
	f->cfg.refcnt = 1;
	/* a plain GET from 192.0.2.7:51234 to port 80 */
	f->ctx.url = "/";
	f->ctx.url_len = 1;
	f->ctx.query = "";
	f->ctx.remote_addr = "192.0.2.7";
	f->ctx.remote_port = "51234";
	f->ctx.server_port = "80";
	f->ctx.method = "GET";
	f->ctx.method_len = 3;
	f->ctx.hdrs = f->hdrs;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	unsigned int i;

	for (i = 0; i < f->cfg.nrules; i++)
		rules_free(&f->rules[i]);
	free(f);
	return 0;
}

/* Adds an enabled rule with URL Rewrite's defaults (ignoreCase, MatchAll,
 * appendQueryString, Permanent redirects); the test adjusts the rest. */
static struct rule *add_rule(struct fx *f, enum rule_syntax syntax, const char *pattern,
			     enum rule_action_type type, const char *url)
{
	struct rule *r;

	assert_true(f->cfg.nrules < MAX_RULES);
	r = &f->rules[f->cfg.nrules++];
	r->name = "rule";
	r->enabled = 1;
	r->match.syntax = syntax;
	r->match.pattern = (char *)pattern;
	r->match.ignore_case = 1;
	r->conds = f->conds[r - f->rules];
	r->action.type = type;
	r->action.url = (char *)url;
	r->action.append_query_string = 1;
	r->action.redirect_status = 301;
	return r;
}

/* Adds a condition with the rule's patternSyntax (as the loader does). */
static struct rule_cond *add_cond(struct rule *r, const char *input, const char *pattern)
{
	struct rule_cond *c;

	assert_true(r->nconds < MAX_CONDS);
	c = &r->conds[r->nconds++];
	c->input = (char *)input;
	c->pat.syntax = r->match.syntax;
	c->pat.pattern = (char *)pattern;
	c->pat.ignore_case = 1;
	return c;
}

static void compile_all(struct fx *f)
{
	unsigned int i;

	for (i = 0; i < f->cfg.nrules; i++) {
		if (rules_compile(&f->cfg, &f->rules[i], f->err, sizeof(f->err)) != 0)
			fail_msg("rule %u does not compile: %s", i, f->err);
	}
}

/* Compiles the last added rule, expecting a failure; returns the message. */
static const char *compile_error(struct fx *f)
{
	struct rule *r = &f->rules[f->cfg.nrules - 1];

	f->err[0] = '\0';
	assert_int_equal(rules_compile(&f->cfg, r, f->err, sizeof(f->err)), -1);
	assert_true(f->err[0] != '\0');
	/* a failed compilation leaves nothing allocated behind */
	assert_null(r->match.re);
	assert_null(r->match.md);
	return f->err;
}

static void set_req(struct fx *f, const char *host, const char *path, const char *query)
{
	f->ctx.host = host;
	f->ctx.host_len = host ? strlen(host) : 0;
	f->ctx.url = path;
	f->ctx.url_len = strlen(path);
	f->ctx.query = query;
	f->ctx.query_len = strlen(query);
}

static void add_hdr(struct fx *f, const char *name, const char *value)
{
	struct http_hdr *h;

	assert_true(f->ctx.nhdrs < MAX_HDRS);
	h = &f->hdrs[f->ctx.nhdrs++];
	h->name = name;
	h->name_len = (uint32_t)strlen(name);
	h->value = value;
	h->value_len = (uint32_t)strlen(value);
}

static int eval(struct fx *f)
{
	memset(f->buf, 0x5a, sizeof(f->buf));
	rules_eval(&f->cfg, &f->ctx, &f->res, f->buf, sizeof(f->buf));
	if (f->res.url) {
		/* the result lives in the caller's buffer, NUL-terminated */
		assert_true(f->res.url >= f->buf && f->res.url < f->buf + sizeof(f->buf));
		assert_int_equal(strlen(f->res.url), f->res.url_len);
	}
	return f->res.outcome;
}

/* The rule ARR's UI generates for a farm. */
static struct rule *arr_rule(struct fx *f, const char *host, const char *target)
{
	struct rule *r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, target);

	r->stop_processing = 1;
	add_cond(r, "{HTTP_HOST}", host);
	return r;
}

/* ---- ARR's generated rule and farm routing ---------------------------- */

static void test_arr_rule_routes_with_path_and_query(void **state)
{
	struct fx *f = *state;

	arr_rule(f, "www.example.com", "http://web/{R:0}");
	compile_all(f);
	set_req(f, "www.example.com", "/shop/cart.aspx", "id=7&x=%20");
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[0]);
	assert_ptr_equal(f->res.rule, &f->rules[0]);
	assert_int_equal(f->res.https, 0);
	assert_string_equal(f->res.url, "/shop/cart.aspx?id=7&x=%20");
}

static void test_arr_rule_root_path(void **state)
{
	struct fx *f = *state;

	arr_rule(f, "www.example.com", "http://web/{R:0}");
	compile_all(f);
	set_req(f, "www.example.com", "/", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/");
}

static void test_two_farms_by_host(void **state)
{
	struct fx *f = *state;

	arr_rule(f, "www.example.com", "http://web/{R:0}");
	arr_rule(f, "api.example.com", "http://api/{R:0}");
	compile_all(f);

	set_req(f, "api.example.com", "/v1/users", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[1]);
	assert_ptr_equal(f->res.rule, &f->rules[1]);
	assert_string_equal(f->res.url, "/v1/users");

	set_req(f, "WWW.Example.COM", "/v1/users", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[0]);

	set_req(f, "other.example.com", "/v1/users", "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	assert_null(f->res.farm);
}

static void test_https_target_and_farm_name_case(void **state)
{
	struct fx *f = *state;

	/* the scenario of the source article: farm name = front host */
	arr_rule(f, "ARR-Authentication", "HTTPS://arr-authentication/{R:0}");
	compile_all(f);
	set_req(f, "arr-authentication", "/whoami", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[2]);
	assert_int_equal(f->res.https, 1);
	assert_string_equal(f->res.url, "/whoami");
}

static void test_farm_target_without_path(void **state)
{
	struct fx *f = *state;

	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://api");
	compile_all(f);
	set_req(f, "h", "/a/b", "q=1");
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[1]);
	assert_string_equal(f->res.url, "/?q=1");
}

static void test_farm_target_query_without_path(void **state)
{
	struct fx *f = *state;

	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "https://web?p={R:0}");
	compile_all(f);
	set_req(f, "h", "/a/b", "q=1");
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[0]);
	assert_int_equal(f->res.https, 1);
	assert_string_equal(f->res.url, "/?p=a/b&q=1");
}

static void test_farm_from_host_variable(void **state)
{
	struct fx *f = *state;

	/* the farm is chosen per request from a server variable */
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://{HTTP_HOST}/{R:0}");
	compile_all(f);
	set_req(f, "API", "/x", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[1]);
	assert_string_equal(f->res.url, "/x");
}

static void test_unknown_farm_at_runtime_is_error(void **state)
{
	struct fx *f = *state;

	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://{HTTP_HOST}/{R:0}");
	compile_all(f);
	set_req(f, "nosuchfarm", "/x", "");
	assert_int_equal(eval(f), RULES_ERROR);
	assert_null(f->res.farm);
	assert_ptr_equal(f->res.rule, &f->rules[0]);
}

/* ---- pattern syntaxes --------------------------------------------------- */

#ifdef CONFIG_RULES_ECMASCRIPT
static void test_ecmascript_groups(void **state)
{
	struct fx *f = *state;

	add_rule(f, RULE_SYNTAX_ECMASCRIPT, "^api/v([0-9]+)/(.*)$", RULE_ACT_REWRITE,
		 "http://api/version{R:1}/{R:2}?all={R:0}");
	compile_all(f);
	set_req(f, "h", "/api/v12/users/7", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/version12/users/7?all=api/v12/users/7");

	set_req(f, "h", "/api/vX/users", "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
}

static void test_ecmascript_unanchored_search(void **state)
{
	struct fx *f = *state;

	/* "foo" is found anywhere; {R:0} is the matched text, {R:1} unset */
	add_rule(f, RULE_SYNTAX_ECMASCRIPT, "fo+(x)?", RULE_ACT_REDIRECT, "/m/{R:0}/{R:1}/");
	compile_all(f);
	set_req(f, "h", "/a/b/fooo/c", "");
	assert_int_equal(eval(f), RULES_REDIRECT);
	assert_string_equal(f->res.url, "/m/fooo//");
}

static void test_ecmascript_anchor_sees_path_without_slash(void **state)
{
	struct fx *f = *state;

	add_rule(f, RULE_SYNTAX_ECMASCRIPT, "^api/", RULE_ACT_REWRITE, "http://api/{R:0}");
	compile_all(f);
	set_req(f, "h", "/v1/api/x", "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	set_req(f, "h", "/api/x", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/api/");
}

static void test_ecmascript_ignore_case(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_ECMASCRIPT, "^Admin$", RULE_ACT_ABORT, NULL);
	r->match.ignore_case = 1;
	r = add_rule(f, RULE_SYNTAX_ECMASCRIPT, "^Shop$", RULE_ACT_REWRITE, "http://web/{R:0}");
	r->match.ignore_case = 0;
	compile_all(f);

	set_req(f, "h", "/ADMIN", "");
	assert_int_equal(eval(f), RULES_ABORT);
	set_req(f, "h", "/SHOP", "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	set_req(f, "h", "/Shop", "");
	assert_int_equal(eval(f), RULES_FARM);
}

static void test_ecmascript_dollar_is_end_only(void **state)
{
	struct fx *f = *state;

	add_rule(f, RULE_SYNTAX_ECMASCRIPT, "^a$", RULE_ACT_ABORT, NULL);
	compile_all(f);
	/* PCRE's default '$' would also match before a final newline */
	set_req(f, "h", "/a\n", "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	set_req(f, "h", "/a", "");
	assert_int_equal(eval(f), RULES_ABORT);
}

static void test_catastrophic_backtracking_is_bounded(void **state)
{
	struct fx *f = *state;
	char path[64];
	struct timespec t0, t1;
	double secs;
	int rc;

	/* ^(a+)+$ on "aaa...ab" takes 2^n steps without a match limit */
	add_rule(f, RULE_SYNTAX_ECMASCRIPT, "^(a+)+$", RULE_ACT_ABORT, NULL);
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	compile_all(f);
	path[0] = '/';
	memset(path + 1, 'a', 40);
	strcpy(path + 41, "b");
	set_req(f, "h", path, "");
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = eval(f);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	assert_int_equal(rc, RULES_FARM); /* no match: the next rule routes */
	assert_true(secs < 1.0);

	/* the brief's case: 30 'a's then 'b' */
	path[31] = 'b';
	path[32] = '\0';
	set_req(f, "h", path, "");
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = eval(f);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	assert_int_equal(rc, RULES_FARM);
	assert_true(secs < 1.0);

	/* the pattern still works on inputs within the limit */
	set_req(f, "h", "/aaaa", "");
	assert_int_equal(eval(f), RULES_ABORT);
}

static void test_match_limit_below_pcre2_default(void **state)
{
	struct fx *f = *state;
	char path[32];

	/* the second branch matches, but only after ~2^20 backtracking steps
	 * in the first: PCRE2's default limit (10 million) lets it through,
	 * the engine's own limit gives up first and the rule does not match */
	add_rule(f, RULE_SYNTAX_ECMASCRIPT, "^(?:(a+)+x|a*y)$", RULE_ACT_ABORT, NULL);
	compile_all(f);
	set_req(f, "h", "/aaay", "");
	assert_int_equal(eval(f), RULES_ABORT);
	path[0] = '/';
	memset(path + 1, 'a', 20);
	strcpy(path + 21, "y");
	set_req(f, "h", path, "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	/* a limit hit is a non-match, so negate applies to it */
	f->rules[0].match.negate = 1;
	assert_int_equal(eval(f), RULES_ABORT);
}

static void test_compile_error_bad_regex(void **state)
{
	struct fx *f = *state;
	const char *e;

	add_rule(f, RULE_SYNTAX_ECMASCRIPT, "^api/(v[0-9]+", RULE_ACT_NONE, NULL);
	e = compile_error(f);
	assert_non_null(strstr(e, "match.url: "));
	assert_non_null(strstr(e, "at offset 13"));
}

static void test_compile_error_condition_pattern(void **state)
{
	struct fx *f = *state;
	struct rule *r;
	const char *e;

	r = add_rule(f, RULE_SYNTAX_ECMASCRIPT, ".*", RULE_ACT_NONE, NULL);
	add_cond(r, "{HTTP_HOST}", "^ok$");
	add_cond(r, "{URL}", "a[b");
	e = compile_error(f);
	assert_non_null(strstr(e, "conditions.add[1].pattern: "));
	assert_null(r->conds[0].pat.re); /* the first condition was freed again */
}

static void test_compile_error_utf_refused(void **state)
{
	struct fx *f = *state;

	/* inputs are raw bytes: UTF mode would reject non-UTF-8 URLs */
	add_rule(f, RULE_SYNTAX_ECMASCRIPT, "(*UTF)x", RULE_ACT_NONE, NULL);
	assert_non_null(strstr(compile_error(f), "match.url: "));
}
#else
static void test_ecmascript_disabled(void **state)
{
	struct fx *f = *state;

	add_rule(f, RULE_SYNTAX_ECMASCRIPT, ".*", RULE_ACT_NONE, NULL);
	assert_string_equal(compile_error(f), "match.url: ECMAScript patterns are not enabled in "
					      "this build (CONFIG_RULES_ECMASCRIPT)");
}
#endif

static void test_wildcard_several_stars(void **state)
{
	struct fx *f = *state;

	add_rule(f, RULE_SYNTAX_WILDCARD, "*/*.html", RULE_ACT_REWRITE,
		 "http://web/{R:2}/{R:1}/{R:0}");
	compile_all(f);
	set_req(f, "h", "/contoso/test.html", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/test/contoso/contoso/test.html");

	/* '*' is greedy: the first one takes up to the last '/' */
	set_req(f, "h", "/a/b/c.html", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/c/a/b/a/b/c.html");

	set_req(f, "h", "/a/b/c.htm", "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
}

static void test_wildcard_is_anchored_and_literal(void **state)
{
	struct fx *f = *state;

	/* regex metacharacters are literals; '?' too (IIS ignores it) */
	add_rule(f, RULE_SYNTAX_WILDCARD, "api/v1.0/x?(*)", RULE_ACT_REWRITE, "http://api/{R:1}");
	compile_all(f);
	set_req(f, "h", "/api/v1.0/x?(yes)", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/yes");

	set_req(f, "h", "/api/v1x0/x?(yes)", ""); /* '.' is not "any" */
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	set_req(f, "h", "/api/v1.0/xy(yes)", ""); /* '?' is not "one char" */
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	set_req(f, "h", "/v2/api/v1.0/x?(yes)", ""); /* anchored at the start */
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	set_req(f, "h", "/api/v1.0/x?(yes)/", ""); /* and at the end */
	assert_int_equal(eval(f), RULES_NO_ROUTE);
}

static void test_wildcard_ignore_case_off(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "Docs/*", RULE_ACT_REWRITE, "http://web/{R:0}");
	r->match.ignore_case = 0;
	add_rule(f, RULE_SYNTAX_WILDCARD, "docs/*", RULE_ACT_REWRITE, "http://api/{R:0}");
	compile_all(f);
	set_req(f, "h", "/docs/X", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[1]);
	/* the ignoreCase rule keeps the input's case in {R:0} */
	set_req(f, "h", "/DOCS/X", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[1]);
	assert_string_equal(f->res.url, "/DOCS/X");
	set_req(f, "h", "/Docs/X", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[0]);
}

static void test_exact_match(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	add_rule(f, RULE_SYNTAX_EXACT, "login.aspx", RULE_ACT_REDIRECT, "https://sso/{R:0}");
	r = add_rule(f, RULE_SYNTAX_EXACT, "Health", RULE_ACT_CUSTOM_RESPONSE, NULL);
	r->match.ignore_case = 0;
	r->action.status_code = 200;
	compile_all(f);

	set_req(f, "h", "/LOGIN.aspx", "");
	assert_int_equal(eval(f), RULES_REDIRECT);
	assert_string_equal(f->res.url, "https://sso/LOGIN.aspx");
	set_req(f, "h", "/login.aspx/x", "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	set_req(f, "h", "/xlogin.aspx", "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	set_req(f, "h", "/health", "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	set_req(f, "h", "/Health", "");
	assert_int_equal(eval(f), RULES_CUSTOM);
}

static void test_raw_path_not_decoded(void **state)
{
	struct fx *f = *state;

	add_rule(f, RULE_SYNTAX_EXACT, "a/b", RULE_ACT_ABORT, NULL);
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	compile_all(f);
	set_req(f, "h", "/a%2Fb", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/a%2Fb");
	set_req(f, "h", "/a/b", "");
	assert_int_equal(eval(f), RULES_ABORT);
}

/* ---- negate and conditions ---------------------------------------------- */

static void test_negate_match(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "public/*", RULE_ACT_REDIRECT, "/login?r=[{R:0}]");
	r->match.negate = 1;
	r->action.redirect_status = 302;
	compile_all(f);

	set_req(f, "h", "/public/x", "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	/* a negated match has no captures: {R:0} is empty */
	set_req(f, "h", "/private/x", "");
	assert_int_equal(eval(f), RULES_REDIRECT);
	assert_int_equal(f->res.status, 302);
	assert_string_equal(f->res.url, "/login?r=[]");
}

static void test_negate_condition(void **state)
{
	struct fx *f = *state;
	struct rule *r;
	struct rule_cond *c;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	c = add_cond(r, "{HTTP_HOST}", "blocked.example.com");
	c->pat.negate = 1;
	compile_all(f);

	set_req(f, "blocked.example.com", "/x", "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	set_req(f, "fine.example.com", "/x", "");
	assert_int_equal(eval(f), RULES_FARM);
}

static void test_match_all_vs_match_any(void **state)
{
	struct fx *f = *state;
	struct rule *all, *any;

	all = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	add_cond(all, "{HTTP_HOST}", "a.example");
	add_cond(all, "{REQUEST_METHOD}", "POST");
	any = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://api/{R:0}");
	any->match_any = 1;
	add_cond(any, "{HTTP_HOST}", "a.example");
	add_cond(any, "{REQUEST_METHOD}", "POST");
	compile_all(f);

	/* both hold: MatchAll routes */
	set_req(f, "a.example", "/", "");
	f->ctx.method = "POST";
	f->ctx.method_len = 4;
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[0]);

	/* only one holds: MatchAll fails, MatchAny routes */
	f->ctx.method = "GET";
	f->ctx.method_len = 3;
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[1]);

	set_req(f, "b.example", "/", "");
	f->ctx.method = "POST";
	f->ctx.method_len = 4;
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[1]);

	/* none holds */
	f->ctx.method = "GET";
	f->ctx.method_len = 3;
	assert_int_equal(eval(f), RULES_NO_ROUTE);
}

static void test_cond_backref_from_last_matched(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REDIRECT,
		     "https://{C:1}.example/{C:2}/{R:0}");
	add_cond(r, "{HTTP_HOST}", "*.old.example");
	add_cond(r, "{QUERY_STRING}", "lang=*&page=*");
	r->action.append_query_string = 0;
	compile_all(f);
	set_req(f, "shop.old.example", "/items", "lang=de&page=3");
	assert_int_equal(eval(f), RULES_REDIRECT);
	/* {C:1}/{C:2} are the second (last matched) condition's captures */
	assert_string_equal(f->res.url, "https://de.example/3/items");
}

static void test_match_any_captures_of_first_success(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REDIRECT, "/t/{C:0}/{C:1}");
	r->match_any = 1;
	r->action.append_query_string = 0;
	add_cond(r, "{HTTP_HOST}", "www.*");
	add_cond(r, "{HTTP_USER_AGENT}", "*bot*");
	compile_all(f);
	set_req(f, "other", "/", "");
	add_hdr(f, "User-Agent", "Googlebot/2.1");
	assert_int_equal(eval(f), RULES_REDIRECT);
	assert_string_equal(f->res.url, "/t/Googlebot/2.1/Google");
	/* evaluation stops at the first success: {C:n} is the first's */
	set_req(f, "www.x", "/", "");
	assert_int_equal(eval(f), RULES_REDIRECT);
	assert_string_equal(f->res.url, "/t/www.x/x");
}

static void test_cond_inputs_use_backrefs(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	/* {R:n} and the previous condition's {C:n} inside condition inputs;
	 * the action sees {C:n} of the last condition */
	r = add_rule(f, RULE_SYNTAX_WILDCARD, "tenant/*/*", RULE_ACT_REWRITE, "http://{C:1}/{R:2}");
	add_cond(r, "{R:1}-{HTTP_HOST}", "*-front.example");
	add_cond(r, "{C:1}.farm", "*.farm");
	compile_all(f);
	set_req(f, "front.example", "/tenant/api/orders", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[1]);
	assert_string_equal(f->res.url, "/orders");

	set_req(f, "front.example", "/tenant/web/orders", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[0]);

	set_req(f, "back.example", "/tenant/web/orders", "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
}

static void test_negated_condition_has_no_captures(void **state)
{
	struct fx *f = *state;
	struct rule *r;
	struct rule_cond *c;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REDIRECT, "/x[{C:0}]");
	r->action.append_query_string = 0;
	add_cond(r, "{HTTP_HOST}", "*");
	c = add_cond(r, "{HTTPS}", "on");
	c->pat.negate = 1;
	compile_all(f);
	set_req(f, "h.example", "/", "");
	assert_int_equal(eval(f), RULES_REDIRECT);
	assert_string_equal(f->res.url, "/x[]");
}

/* ---- rule flow ----------------------------------------------------------- */

static void test_stop_processing(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "static/*", RULE_ACT_NONE, NULL);
	r->stop_processing = 1;
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	compile_all(f);

	set_req(f, "h", "/static/a.css", "v=1");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	assert_null(f->res.farm);
	assert_string_equal(f->res.url, "/static/a.css?v=1");

	/* without stopProcessing a matched None rule lets the next run */
	r->stop_processing = 0;
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/static/a.css?v=1");
}

static void test_rewrite_path_then_farm_rule(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	add_rule(f, RULE_SYNTAX_WILDCARD, "old/*", RULE_ACT_REWRITE, "new/{R:1}");
	/* the next rule sees the rewritten URL, in its match and in {URL} */
	r = add_rule(f, RULE_SYNTAX_WILDCARD, "new/*", RULE_ACT_REWRITE,
		     "http://api/{R:1}?from={URL}");
	add_cond(r, "{URL}", "/new/*");
	compile_all(f);
	set_req(f, "h", "/old/page", "a=1");
	assert_int_equal(eval(f), RULES_FARM);
	assert_ptr_equal(f->res.farm, &f->farms[1]);
	assert_ptr_equal(f->res.rule, &f->rules[1]);
	assert_string_equal(f->res.url, "/page?from=/new/page&a=1");
}

static void test_rewrite_path_sets_query_string(void **state)
{
	struct fx *f = *state;

	add_rule(f, RULE_SYNTAX_WILDCARD, "p/*", RULE_ACT_REWRITE, "/index.php?id={R:1}");
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE,
		 "http://web/{R:0}?q={QUERY_STRING}")
		->action.append_query_string = 0;
	compile_all(f);
	set_req(f, "h", "/p/42", "x=y");
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/index.php?q=id=42&x=y");
}

static void test_rewrite_path_with_stop_is_no_route(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "/app/{R:0}");
	r->stop_processing = 1;
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	compile_all(f);
	set_req(f, "h", "/x", "k=v");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	assert_string_equal(f->res.url, "/app/x?k=v");
}

static void test_rewrite_path_append_query_false_drops_query(void **state)
{
	struct fx *f = *state;

	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "/clean/{R:0}");
	r->action.append_query_string = 0;
	r->stop_processing = 1;
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	compile_all(f);
	set_req(f, "h", "/x", "secret=1");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	assert_string_equal(f->res.url, "/clean/x");
	/* the following rules see no query string either */
	r->stop_processing = 0;
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/clean/x");
}

static void test_append_query_string(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "a/*", RULE_ACT_REWRITE, "http://web/{R:1}");
	r->action.append_query_string = 0;
	add_rule(f, RULE_SYNTAX_WILDCARD, "b/*", RULE_ACT_REWRITE, "http://web/{R:1}?src=b");
	add_rule(f, RULE_SYNTAX_WILDCARD, "c/*", RULE_ACT_REWRITE, "http://web/{R:1}?src=c")
		->action.append_query_string = 0;
	compile_all(f);

	set_req(f, "h", "/a/x", "k=v");
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/x");
	set_req(f, "h", "/b/x", "k=v");
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/x?src=b&k=v");
	set_req(f, "h", "/b/x", ""); /* nothing to append */
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/x?src=b");
	set_req(f, "h", "/c/x", "k=v");
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/x?src=c");
}

static void test_redirect_statuses(void **state)
{
	static const int codes[] = {301, 302, 303, 307};
	struct fx *f = *state;
	unsigned int i;

	for (i = 0; i < 4; i++) {
		struct rule *r;

		f->cfg.nrules = 0;
		r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REDIRECT,
			     "https://{HTTP_HOST}/{R:0}");
		r->action.redirect_status = codes[i];
		compile_all(f);
		set_req(f, "www.example.com", "/a/b", "x=1");
		assert_int_equal(eval(f), RULES_REDIRECT);
		assert_int_equal(f->res.status, codes[i]);
		assert_ptr_equal(f->res.rule, r);
		assert_null(f->res.farm);
		assert_string_equal(f->res.url, "https://www.example.com/a/b?x=1");
		rules_free(r);
	}
}

static void test_redirect_without_query(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REDIRECT, "/moved?to={R:0}");
	r->action.append_query_string = 0;
	r->action.redirect_status = 307;
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	compile_all(f);
	set_req(f, "h", "/a", "x=1");
	assert_int_equal(eval(f), RULES_REDIRECT); /* a redirect ends evaluation */
	assert_int_equal(f->res.status, 307);
	assert_string_equal(f->res.url, "/moved?to=a");
}

static void test_custom_response(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "admin*", RULE_ACT_CUSTOM_RESPONSE, NULL);
	r->action.status_code = 403;
	r->action.status_reason = "Forbidden";
	r->action.status_description = "{\"error\":\"no admin here\"}";
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	compile_all(f);
	set_req(f, "h", "/admin/users", "");
	assert_int_equal(eval(f), RULES_CUSTOM);
	assert_int_equal(f->res.status, 403);
	assert_string_equal(f->res.reason, "Forbidden");
	assert_string_equal(f->res.body, "{\"error\":\"no admin here\"}");
	assert_ptr_equal(f->res.rule, r);
}

static void test_abort_request(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_ABORT, NULL);
	add_cond(r, "{HTTP_USER_AGENT}", "*sqlmap*");
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	compile_all(f);
	set_req(f, "h", "/", "");
	add_hdr(f, "user-agent", "sqlmap/1.7");
	assert_int_equal(eval(f), RULES_ABORT);
	assert_ptr_equal(f->res.rule, r);
	f->hdrs[0].value = "curl/8";
	f->hdrs[0].value_len = 6;
	assert_int_equal(eval(f), RULES_FARM);
}

static void test_disabled_rule_skipped(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_ABORT, NULL);
	r->enabled = 0;
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	compile_all(f);
	set_req(f, "h", "/x", "");
	assert_int_equal(eval(f), RULES_FARM);
	r->enabled = 1;
	assert_int_equal(eval(f), RULES_ABORT);
}

static void test_no_rule_matches(void **state)
{
	struct fx *f = *state;

	arr_rule(f, "www.example.com", "http://web/{R:0}");
	compile_all(f);
	set_req(f, "unknown.example.com", "/x/y", "a=b");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	assert_null(f->res.rule);
	assert_string_equal(f->res.url, "/x/y?a=b");

	f->cfg.nrules = 0; /* no rules at all */
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	set_req(f, "h", "/", "");
	assert_int_equal(eval(f), RULES_NO_ROUTE);
	assert_string_equal(f->res.url, "/");
	f->cfg.nrules = 1;
}

/* ---- server variables ---------------------------------------------------- */

static void test_header_variable_underscore_dash(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REDIRECT,
		     "/v/[{HTTP_X_CUSTOM}]/[{http_x_missing}]");
	r->action.append_query_string = 0;
	compile_all(f);
	set_req(f, "h", "/", "");
	/* a '_' in the name matches only a '-': X_Custom cannot pose as X-Custom */
	add_hdr(f, "X_Custom", "forged");
	add_hdr(f, "x-custom", "real");
	add_hdr(f, "X-Custom", "second");
	assert_int_equal(eval(f), RULES_REDIRECT);
	assert_string_equal(f->res.url, "/v/[real]/[]");
}

/* Zeroes stack below the caller, so what a callee leaves uninitialised is NULL
 * (as fuzz_rules met it) instead of whatever an earlier call left there. */
static void __attribute__((noinline)) scrub_stack(void)
{
	volatile char junk[64 * 1024];
	size_t i;

	for (i = 0; i < sizeof(junk); i++)
		junk[i] = 0;
}

/* An absent header in a template expands to "", never from an unset pointer
 * (memcpy(out, NULL, 0) is undefined: UBSan aborts the ASan build). A
 * condition on a header most requests lack is the everyday case. Found by
 * fuzz_rules (tests/fuzz/regress/rules/missing-header-template). */
static void test_missing_header_expands_from_empty_string(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_ECMASCRIPT, ".*", RULE_ACT_REDIRECT, "{HTTP_X_ABSENT}/a");
	r->action.append_query_string = 0;
	add_cond(r, "{HTTP_X_FORWARDED_PROTO}", "^$");
	compile_all(f);
	set_req(f, "h", "/", "");
	scrub_stack();
	assert_int_equal(eval(f), RULES_REDIRECT);
	assert_string_equal(f->res.url, "/a");
}

static void test_https_and_remote_addr(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(
		f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE,
		"http://web/{HTTPS}/{REMOTE_ADDR}/{REMOTE_PORT}/{SERVER_PORT}/{REQUEST_METHOD}");
	add_cond(r, "{REMOTE_ADDR}", "192.0.2.*");
	compile_all(f);
	set_req(f, "h", "/", "");
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/off/192.0.2.7/51234/80/GET");
	f->ctx.https = 1;
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/on/192.0.2.7/51234/80/GET");
	f->ctx.remote_addr = "198.51.100.1";
	assert_int_equal(eval(f), RULES_NO_ROUTE);
}

static void test_rules_var(void **state)
{
	struct fx *f = *state;
	const char *v;
	size_t n;

	set_req(f, "www.example.com", "/p", "q=1");
	add_hdr(f, "Host", "ignored-when-ctx-host-is-set");
	add_hdr(f, "X-Forwarded-For", "203.0.113.9");

	assert_int_equal(rules_var(&f->ctx, "http_host", 9, &v, &n), 0);
	assert_int_equal(n, 15);
	assert_memory_equal(v, "www.example.com", n);
	assert_int_equal(rules_var(&f->ctx, "URL", 3, &v, &n), 0);
	assert_memory_equal(v, "/p", 2);
	assert_int_equal(rules_var(&f->ctx, "QUERY_STRING", 12, &v, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(rules_var(&f->ctx, "HTTP_X_FORWARDED_FOR", 20, &v, &n), 0);
	assert_int_equal(n, 11);
	assert_memory_equal(v, "203.0.113.9", n);
	/* the name is a slice: only name_len bytes count */
	assert_int_equal(rules_var(&f->ctx, "REMOTE_ADDRESS", 11, &v, &n), 0);
	assert_string_equal(v, "192.0.2.7");
	assert_int_equal(rules_var(&f->ctx, "HTTP_X_REAL_IP", 14, &v, &n), -1);
	assert_int_equal(rules_var(&f->ctx, "NOPE", 4, &v, &n), -1);
	assert_int_equal(rules_var(&f->ctx, "HTTP_", 5, &v, &n), -1);
	/* without ctx->host, {HTTP_HOST} falls back to the Host header */
	f->ctx.host = NULL;
	f->ctx.host_len = 0;
	assert_int_equal(rules_var(&f->ctx, "HTTP_HOST", 9, &v, &n), 0);
	assert_memory_equal(v, "ignored-when-ctx-host-is-set", n);
	f->ctx.remote_addr = NULL;
	assert_int_equal(rules_var(&f->ctx, "REMOTE_ADDR", 11, &v, &n), -1);
}

/* ---- limits and errors ---------------------------------------------------- */

static void test_buffer_too_small(void **state)
{
	struct fx *f = *state;
	char small[20];
	int i;

	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	compile_all(f);
	set_req(f, "h", "/0123456789abcdef", "");
	rules_eval(&f->cfg, &f->ctx, &f->res, small, sizeof(small));
	assert_int_equal(f->res.outcome, RULES_ERROR);
	assert_null(f->res.farm);
	assert_null(f->res.url);

	/* exactly big enough: one byte kept for a '/', "http://web/0123456", NUL */
	set_req(f, "h", "/0123456", "");
	rules_eval(&f->cfg, &f->ctx, &f->res, small, sizeof(small));
	assert_int_equal(f->res.outcome, RULES_FARM);
	assert_string_equal(f->res.url, "/0123456");
	rules_eval(&f->cfg, &f->ctx, &f->res, small, sizeof(small) - 1);
	assert_int_equal(f->res.outcome, RULES_ERROR);

	/* the appended query must fit too; so must NO_ROUTE's path?query */
	for (i = 0; i < 2; i++) {
		if (i)
			f->cfg.nrules = 0;
		set_req(f, "h", "/0123456", "abcdefghijklmnop");
		rules_eval(&f->cfg, &f->ctx, &f->res, small, sizeof(small));
		assert_int_equal(f->res.outcome, RULES_ERROR);
	}
	f->cfg.nrules = 1;
	rules_eval(&f->cfg, &f->ctx, &f->res, small, 0);
	assert_int_equal(f->res.outcome, RULES_ERROR);
}

static void test_buffer_exact_fit(void **state)
{
	struct fx *f = *state;
	/* heap, exactly 20 bytes: ASan sees a write past the end */
	char *small = malloc(20);

	assert_non_null(small);
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	compile_all(f);
	/* "http://web/ab" is expanded after one spare byte; the origin-form
	 * URL starts at offset 11, leaving 9 bytes: "/ab?q=12" and its NUL */
	set_req(f, "h", "/ab", "q=12");
	rules_eval(&f->cfg, &f->ctx, &f->res, small, 20);
	assert_int_equal(f->res.outcome, RULES_FARM);
	assert_string_equal(f->res.url, "/ab?q=12");
	set_req(f, "h", "/ab", "q=123");
	rules_eval(&f->cfg, &f->ctx, &f->res, small, 20);
	assert_int_equal(f->res.outcome, RULES_ERROR);

	/* NO_ROUTE: "/0123456789?abcdefg" is 19 bytes + NUL */
	f->cfg.nrules = 0;
	set_req(f, "h", "/0123456789", "abcdefg");
	rules_eval(&f->cfg, &f->ctx, &f->res, small, 20);
	assert_int_equal(f->res.outcome, RULES_NO_ROUTE);
	assert_string_equal(f->res.url, "/0123456789?abcdefg");
	set_req(f, "h", "/0123456789", "abcdefgh");
	rules_eval(&f->cfg, &f->ctx, &f->res, small, 20);
	assert_int_equal(f->res.outcome, RULES_ERROR);
	f->cfg.nrules = 1;
	free(small);
}

static void test_buffer_too_small_for_condition_input(void **state)
{
	struct fx *f = *state;
	struct rule *r;
	char small[24];

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/");
	add_cond(r, "{HTTP_USER_AGENT}", "*");
	compile_all(f);
	set_req(f, "h", "/", "");
	add_hdr(f, "User-Agent", "a user agent far longer than the buffer");
	rules_eval(&f->cfg, &f->ctx, &f->res, small, sizeof(small));
	assert_int_equal(f->res.outcome, RULES_ERROR);
	rules_eval(&f->cfg, &f->ctx, &f->res, f->buf, sizeof(f->buf));
	assert_int_equal(f->res.outcome, RULES_FARM);
}

static void test_compile_error_unknown_variable(void **state)
{
	struct fx *f = *state;

	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{FOO}");
	assert_string_equal(compile_error(f), "action.url: unknown server variable {FOO}");
}

static void test_compile_error_unknown_variable_in_condition(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_NONE, NULL);
	add_cond(r, "{HTTP_HOST}", "*");
	add_cond(r, "{SERVER_NAME}", "*");
	assert_string_equal(compile_error(f),
			    "conditions.add[1].input: unknown server variable {SERVER_NAME}");
}

static void test_compile_error_unclosed_brace(void **state)
{
	struct fx *f = *state;
	const char *e;

	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REDIRECT, "/x/{R:1");
	e = compile_error(f);
	assert_non_null(strstr(e, "action.url: unclosed '{'"));
	assert_non_null(strstr(e, "offset 3"));
}

static void test_compile_error_backref_range(void **state)
{
	struct fx *f = *state;

	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REDIRECT, "/x/{R:10}");
	assert_non_null(strstr(compile_error(f), "action.url: back-reference {R:10}"));
	f->cfg.nrules = 0;
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REDIRECT, "/x/{C:}");
	assert_non_null(strstr(compile_error(f), "action.url: back-reference {C:}"));
	f->cfg.nrules = 0;
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REDIRECT, "/x/{ToLower:{R:1}}");
	assert_non_null(strstr(compile_error(f), "not supported"));
	f->cfg.nrules = 0;
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REDIRECT, "/x/{R:9}{C:0}{r:3}");
	compile_all(f);
}

static void test_compile_error_undefined_literal_farm(void **state)
{
	struct fx *f = *state;

	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "https://wbe/{R:0}");
	assert_string_equal(compile_error(f), "action.url: farm \"wbe\" is not defined");
	/* names compare case-insensitively, and a variable authority is checked per request */
	f->cfg.nrules = 0;
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "https://WEB?x=1");
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://{HTTP_HOST}/");
	/* a Redirect's host is not a farm */
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REDIRECT, "https://elsewhere/");
	compile_all(f);
}

static void test_track_all_captures(void **state)
{
	struct fx *f = *state;
	struct rule *r;

	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REDIRECT, "/{C:1}");
	add_cond(r, "{HTTP_HOST}", "*");
	r->track_all_captures = 1;
	assert_non_null(strstr(compile_error(f), "conditions.trackAllCaptures: "));
	/* without {C:n} the flag cannot change anything and is accepted */
	r->action.url = "/{R:0}";
	compile_all(f);
}

static void test_rules_free_is_idempotent(void **state)
{
	struct fx *f = *state;
	struct rule zero;
	struct rule *r;

	memset(&zero, 0, sizeof(zero));
	rules_free(&zero);
	rules_free(NULL);
	r = add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_NONE, NULL);
	add_cond(r, "{URL}", "*");
	compile_all(f);
	assert_non_null(r->match.re);
	assert_non_null(r->match.md);
	assert_non_null(r->conds[0].pat.re);
	rules_free(r);
	assert_null(r->match.re);
	assert_null(r->conds[0].pat.md);
	rules_free(r); /* teardown frees once more */
}

static void test_many_rewrites_keep_state(void **state)
{
	struct fx *f = *state;
	int i;

	/* a chain of path rewrites, each one seeing the previous result */
	for (i = 0; i < 5; i++)
		add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "x{R:0}");
	add_rule(f, RULE_SYNTAX_WILDCARD, "*", RULE_ACT_REWRITE, "http://web/{R:0}");
	compile_all(f);
	set_req(f, "h", "/p", "q=1");
	assert_int_equal(eval(f), RULES_FARM);
	assert_string_equal(f->res.url, "/xxxxxp?q=1");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
		T(test_arr_rule_routes_with_path_and_query),
		T(test_arr_rule_root_path),
		T(test_two_farms_by_host),
		T(test_https_target_and_farm_name_case),
		T(test_farm_target_without_path),
		T(test_farm_target_query_without_path),
		T(test_farm_from_host_variable),
		T(test_unknown_farm_at_runtime_is_error),
#ifdef CONFIG_RULES_ECMASCRIPT
		T(test_ecmascript_groups),
		T(test_ecmascript_unanchored_search),
		T(test_ecmascript_anchor_sees_path_without_slash),
		T(test_ecmascript_ignore_case),
		T(test_ecmascript_dollar_is_end_only),
		T(test_catastrophic_backtracking_is_bounded),
		T(test_match_limit_below_pcre2_default),
		T(test_compile_error_bad_regex),
		T(test_compile_error_condition_pattern),
		T(test_compile_error_utf_refused),
#else
		T(test_ecmascript_disabled),
#endif
		T(test_wildcard_several_stars),
		T(test_wildcard_is_anchored_and_literal),
		T(test_wildcard_ignore_case_off),
		T(test_exact_match),
		T(test_raw_path_not_decoded),
		T(test_negate_match),
		T(test_negate_condition),
		T(test_match_all_vs_match_any),
		T(test_cond_backref_from_last_matched),
		T(test_match_any_captures_of_first_success),
		T(test_cond_inputs_use_backrefs),
		T(test_negated_condition_has_no_captures),
		T(test_stop_processing),
		T(test_rewrite_path_then_farm_rule),
		T(test_rewrite_path_sets_query_string),
		T(test_rewrite_path_with_stop_is_no_route),
		T(test_rewrite_path_append_query_false_drops_query),
		T(test_append_query_string),
		T(test_redirect_statuses),
		T(test_redirect_without_query),
		T(test_custom_response),
		T(test_abort_request),
		T(test_disabled_rule_skipped),
		T(test_no_rule_matches),
		T(test_header_variable_underscore_dash),
		T(test_missing_header_expands_from_empty_string),
		T(test_https_and_remote_addr),
		T(test_rules_var),
		T(test_buffer_too_small),
		T(test_buffer_exact_fit),
		T(test_buffer_too_small_for_condition_input),
		T(test_compile_error_unknown_variable),
		T(test_compile_error_unknown_variable_in_condition),
		T(test_compile_error_unclosed_brace),
		T(test_compile_error_backref_range),
		T(test_compile_error_undefined_literal_farm),
		T(test_track_all_captures),
		T(test_rules_free_is_idempotent),
		T(test_many_rewrites_keep_state),
#undef T
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
