/* libFuzzer harness: the URL Rewrite rules engine. A realistic rule set is
 * loaded once (cfg_load_buf, as farmgated loads its file); fuzz inputs are
 * requests run through rules_eval, or a rule of their own that rules_compile
 * checks and rules_eval then runs.
 *
 * Input: byte 0 is flags (bit 0: HTTPS; bit 7: the input is a rule); the rest
 * are '\n'-separated fields. A request: host, target, method, X-Farm value,
 * remote address. A rule: its match pattern, action URL, condition input,
 * condition pattern, then the request's host and target. */
#include "cfg.h"
#include "fuzz.h"
#include "rules.h"

#define SCRATCH 16384 /* proxy.c's rule scratch buffer */

/* the rules a site would write: every action type, all three syntaxes, conditions,
 * {R:n}, {C:n}, server variables (docs/config-format.md) */
static const char CONFIG[] =
	"{\"listeners\": [{\"address\": \"127.0.0.1\", \"port\": 8080}],"
	" \"webFarms\": ["
	"  {\"name\": \"web\", \"servers\": [{\"address\": \"127.0.0.1\", \"httpPort\": 8081}]},"
	"  {\"name\": \"api\", \"servers\": [{\"address\": \"::1\", \"httpPort\": 8082}]}],"
	" \"rules\": ["
	"  {\"name\": \"to-https\", \"patternSyntax\": \"Wildcard\", \"stopProcessing\": true,"
	"   \"match\": {\"url\": \"*\"},"
	"   \"conditions\": [{\"input\": \"{HTTPS}\", \"pattern\": \"off\"},"
	"                  {\"input\": \"{HTTP_HOST}\", \"pattern\": \"secure.*\"}],"
	"   \"action\": {\"type\": \"Redirect\", \"url\": \"https://{HTTP_HOST}/{R:0}\"}},"
	"  {\"name\": \"block\", \"stopProcessing\": true,"
	"   \"match\": {\"url\": \"^(admin|\\\\.git)(/.*)?$\"},"
	"   \"action\": {\"type\": \"CustomResponse\", \"statusCode\": 403,"
	"              \"statusReason\": \"Forbidden\", \"statusDescription\": \"no\"}},"
	"  {\"name\": \"abort\", \"patternSyntax\": \"ExactMatch\","
	"   \"match\": {\"url\": \"wp-login.php\"},"
	"   \"action\": {\"type\": \"AbortRequest\"}},"
	"  {\"name\": \"old\", \"patternSyntax\": \"Wildcard\", \"stopProcessing\": true,"
	"   \"match\": {\"url\": \"old/*\"},"
	"   \"action\": {\"type\": \"Redirect\", \"url\": \"/new/{R:1}\","
	"              \"redirectType\": \"Found\"}},"
	"  {\"name\": \"strip\", \"match\": {\"url\": \"^app/(.*)\"},"
	"   \"action\": {\"type\": \"Rewrite\", \"url\": \"/{R:1}\", \"appendQueryString\": true}},"
	"  {\"name\": \"api\", \"stopProcessing\": true,"
	"   \"match\": {\"url\": \"^api/v(\\\\d+)/(.*)\"},"
	"   \"conditions\": {\"logicalGrouping\": \"MatchAny\", \"trackAllCaptures\": true,"
	"     \"add\": [{\"input\": \"{HTTP_HOST}\","
	"              \"pattern\": \"^api\\\\.example\\\\.com$\"},"
	"             {\"input\": \"{QUERY_STRING}\", \"pattern\": \"(^|&)api=1\"}]},"
	"   \"action\": {\"type\": \"Rewrite\","
	"              \"url\": \"http://api/v{R:1}/{R:2}?m={REQUEST_METHOD}\"}},"
	"  {\"name\": \"by-header\", \"stopProcessing\": true, \"match\": {\"url\": \".*\"},"
	"   \"conditions\": [{\"input\": \"{HTTP_X_FARM}\", \"pattern\": \"^(web|api)$\"},"
	"                  {\"input\": \"{REMOTE_ADDR}\","
	"                   \"pattern\": \"^(192\\\\.0\\\\.2|127)\\\\.\"}],"
	"   \"action\": {\"type\": \"Rewrite\", \"url\": \"https://{C:1}/{R:0}\"}},"
	"  {\"name\": \"ARR_web_loadbalance\", \"patternSyntax\": \"Wildcard\","
	"   \"stopProcessing\": true, \"match\": {\"url\": \"*\"},"
	"   \"conditions\": [{\"input\": \"{HTTP_HOST}\", \"pattern\": \"*.example.com\"}],"
	"   \"action\": {\"type\": \"Rewrite\", \"url\": \"http://web/{R:0}\"}}]}";

static struct config *cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char err[512];

	(void)argc;
	(void)argv;
	cfg = cfg_load_buf(CONFIG, sizeof(CONFIG) - 1, err, sizeof(err));
	if (cfg == NULL) {
		fprintf(stderr, "fuzz_rules: the built-in configuration: %s\n", err);
		abort();
	}
	return 0;
}

/* The next field as a NUL-terminated copy (stops at a NUL byte, as JSON
 * strings in the configuration never hold one). The caller frees it. */
static char *next_str(const uint8_t **data, size_t *len)
{
	const char *f;
	size_t n;
	char *s;

	fuzz_field(data, len, '\n', &f, &n);
	s = strndup(f, n);
	FUZZ_CHECK(s != NULL);
	return s;
}

/* What a request carries: the strings the context points into. */
struct req {
	char *host, *target, *method, *xfarm, *addr;
	struct http_hdr hdrs[2];
};

/* Fills ctx from r as proxy.c does: the target split at '?', url starting
 * with '/'. */
static void make_ctx(struct req *r, int https, struct rule_ctx *ctx)
{
	const char *q = strchr(r->target, '?');
	size_t tlen = strlen(r->target);

	memset(ctx, 0, sizeof(*ctx));
	ctx->url = r->target;
	ctx->url_len = q ? (size_t)(q - r->target) : tlen;
	ctx->query = q ? q + 1 : "";
	ctx->query_len = q ? tlen - (size_t)(q + 1 - r->target) : 0;
	ctx->host = r->host;
	ctx->host_len = strlen(r->host);
	ctx->https = https;
	ctx->remote_addr = r->addr;
	ctx->remote_port = "51234";
	ctx->server_port = https ? "443" : "80";
	ctx->method = r->method;
	ctx->method_len = strlen(r->method);
	r->hdrs[0] = (struct http_hdr){"Host", r->host, 4, (uint32_t)ctx->host_len};
	r->hdrs[1] = (struct http_hdr){"X-Farm", r->xfarm, 6, (uint32_t)strlen(r->xfarm)};
	ctx->hdrs = r->hdrs;
	ctx->nhdrs = 2;
}

/* Makes the target origin-form as the parser guarantees: a leading '/'. */
static void fix_target(struct req *r)
{
	char *t;

	if (r->target[0] == '/')
		return;
	t = malloc(strlen(r->target) + 2);
	FUZZ_CHECK(t != NULL);
	t[0] = '/';
	strcpy(t + 1, r->target);
	free(r->target);
	r->target = t;
}

static void eval_check(const struct config *c, const struct rule_ctx *ctx)
{
	static char buf[SCRATCH];
	struct rule_result res;
	unsigned int i;

	rules_eval(c, ctx, &res, buf, sizeof(buf));
	switch (res.outcome) {
	case RULES_FARM:
		for (i = 0; i < c->nfarms && res.farm != &c->farms[i]; i++)
			;
		FUZZ_CHECK(i < c->nfarms);
		/* fall through */
	case RULES_NO_ROUTE:
		FUZZ_CHECK(res.url_len > 0 && res.url[0] == '/');
		/* fall through */
	case RULES_REDIRECT:
		FUZZ_CHECK(res.url != NULL && fuzz_within(res.url, res.url_len + 1, buf, SCRATCH));
		FUZZ_CHECK(res.url[res.url_len] == '\0' && strlen(res.url) == res.url_len);
		if (res.outcome == RULES_REDIRECT)
			FUZZ_CHECK(res.status == 301 || res.status == 302 || res.status == 303 ||
				   res.status == 307);
		break;
	case RULES_CUSTOM:
		FUZZ_CHECK(res.status >= 200 && res.status <= 999);
		break;
	case RULES_ABORT:
	case RULES_ERROR:
		break;
	default:
		FUZZ_CHECK(!"unknown outcome");
	}
}

/* Compiles the input's own rule against the loaded farms and runs it alone. */
static void fuzz_rule(uint8_t flags, const uint8_t *data, size_t size, struct req *r)
{
	static const enum rule_action_type types[4] = {RULE_ACT_REWRITE, RULE_ACT_REDIRECT,
						       RULE_ACT_NONE, RULE_ACT_CUSTOM_RESPONSE};
	struct config one = *cfg;
	struct rule rule;
	struct rule_cond cond;
	struct rule_ctx ctx;
	char err[256];

	memset(&rule, 0, sizeof(rule));
	memset(&cond, 0, sizeof(cond));
	rule.name = "fuzz";
	rule.enabled = 1;
	rule.match.syntax = (enum rule_syntax)((flags >> 1) % 3);
	rule.match.pattern = next_str(&data, &size);
	rule.match.ignore_case = (flags >> 3) & 1;
	rule.match.negate = (flags >> 4) & 1;
	rule.action.type = types[(flags >> 5) & 3];
	rule.action.url = next_str(&data, &size);
	rule.action.append_query_string = 1;
	rule.action.redirect_status = 302;
	rule.action.status_code = 418;
	cond.input = next_str(&data, &size);
	cond.pat.syntax = rule.match.syntax;
	cond.pat.pattern = next_str(&data, &size);
	cond.pat.ignore_case = 1;
	rule.conds = &cond;
	rule.nconds = cond.input[0] ? 1 : 0;
	r->host = next_str(&data, &size);
	r->target = next_str(&data, &size);
	r->method = strdup("GET");
	r->xfarm = strdup("web");
	r->addr = strdup("192.0.2.7");
	FUZZ_CHECK(r->method && r->xfarm && r->addr);
	fix_target(r);
	if (rules_compile(&one, &rule, err, sizeof(err)) == 0) {
		one.rules = &rule;
		one.nrules = 1;
		make_ctx(r, flags & 1, &ctx);
		eval_check(&one, &ctx);
		rules_free(&rule);
	} else {
		FUZZ_CHECK(err[0] != '\0' && rule.match.re == NULL && rule.match.md == NULL);
	}
	free(rule.match.pattern);
	free(rule.action.url);
	free(cond.input);
	free(cond.pat.pattern);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct req r;
	struct rule_ctx ctx;
	uint8_t flags;

	if (size < 1)
		return 0;
	flags = data[0];
	data++;
	size--;
	memset(&r, 0, sizeof(r));
	if (flags & 0x80) {
		fuzz_rule(flags, data, size, &r);
	} else {
		r.host = next_str(&data, &size);
		r.target = next_str(&data, &size);
		r.method = next_str(&data, &size);
		r.xfarm = next_str(&data, &size);
		r.addr = next_str(&data, &size);
		fix_target(&r);
		make_ctx(&r, flags & 1, &ctx);
		eval_check(cfg, &ctx);
	}
	free(r.host);
	free(r.target);
	free(r.method);
	free(r.xfarm);
	free(r.addr);
	return 0;
}
