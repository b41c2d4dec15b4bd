/* Unit tests for the configuration loader (cfg.c): values, defaults, errors, files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "cfg.h"
#include "lb.h"
#include "rules.h"

/* Test JSON is written with single quotes for readability; this turns them
 * into double quotes. The caller frees the result. */
static char *dq(const char *s)
{
	char *d = strdup(s), *p;

	assert_non_null(d);
	for (p = d; *p; p++)
		if (*p == '\'')
			*p = '"';
	return d;
}

static struct config *load_ok(const char *sq)
{
	char err[512] = "";
	char *json = dq(sq);
	struct config *cfg = cfg_load_buf(json, strlen(json), err, sizeof(err));

	free(json);
	if (cfg == NULL)
		fail_msg("unexpected error: %s", err);
	assert_string_equal(err, "");
	assert_int_equal(cfg->refcnt, 1);
	return cfg;
}

/* Loads sq and returns the error (in err), asserting the load failed. */
static void load_err(const char *sq, char *err, size_t errlen)
{
	char *json = dq(sq);
	struct config *cfg = cfg_load_buf(json, strlen(json), err, errlen);

	free(json);
	if (cfg != NULL) {
		cfg_put(cfg);
		fail_msg("loaded, but an error was expected");
	}
}

#define LISTEN	    "'listeners':[{'port':8080}]"
#define MIN_FARM    "{'name':'web','servers':[{'address':'127.0.0.1'}]}"
#define MIN_FARMS   "'webFarms':[" MIN_FARM "]"
#define RULE(extra) "{'name':'r','match':{'url':'.*'}" extra "}"

/* The example of docs/config-format.md, verbatim. */
static const char doc_example[] =
	"{\n"
	"  'listeners': [ { 'address': '127.0.0.1', 'port': 8080 } ],\n"
	"  'limits': {\n"
	"    'maxRequestLineLength': 8192,      'maxRequestHeadersSize': 16384,\n"
	"    'maxRequestHeaders': 100,          'maxConnections': 10000,\n"
	"    'maxResponseHeaderSize': 65536\n"
	"  },\n"
	"  'timeouts': {\n"
	"    'connect': '00:00:05', 'requestHeader': '00:00:10', 'keepAlive': '00:01:00',\n"
	"    'requestBody': '00:01:00', 'upstreamIdle': '00:00:30'\n"
	"  },\n"
	"  'log': { 'access': 'stderr', 'error': 'stderr', 'debug': false },\n"
	"  'webFarms': [\n"
	"    {\n"
	"      'name': 'web',\n"
	"      'enabled': true,\n"
	"      'servers': [\n"
	"        { 'address': '127.0.0.1', 'httpPort': 8081, 'httpsPort': 443,\n"
	"          'enabled': true, 'weight': 100, 'hostName': 'app.internal' }\n"
	"      ],\n"
	"      'loadBalancing': { 'algorithm': 'WeightedRoundRobin',\n"
	"                         'hashServerVariable': 'REMOTE_ADDR', 'queryStringNames': "
	"['user'],\n"
	"                         'leastResponseTimePeriod': '00:00:05' },\n"
	"      'affinity': { 'useCookie': false, 'cookieName': 'ARRAffinity', 'timeout': "
	"'00:20:00' },\n"
	"      'protocol': { 'timeout': '00:00:30', 'keepAlive': true, 'preserveHostHeader': "
	"true,\n"
	"                    'reverseRewriteHostInResponseHeaders': false,\n"
	"                    'xForwardedForHeaderName': 'X-Forwarded-For',\n"
	"                    'includePortInXForwardedFor': true, 'arrResponseHeader': true }\n"
	"    }\n"
	"  ],\n"
	"  'rules': [\n"
	"    { 'name': 'ARR_web_loadbalance', 'enabled': true, 'patternSyntax': 'Wildcard',\n"
	"      'stopProcessing': true,\n"
	"      'match': { 'url': '*', 'ignoreCase': true, 'negate': false },\n"
	"      'conditions': { 'logicalGrouping': 'MatchAll', 'trackAllCaptures': false,\n"
	"                      'add': [ { 'input': '{HTTP_HOST}', 'pattern': 'www.example.com',\n"
	"                                 'ignoreCase': true, 'negate': false } ] },\n"
	"      'action': { 'type': 'Rewrite', 'url': 'http://web/{R:0}', 'appendQueryString': "
	"true } }\n"
	"  ]\n"
	"}\n";

static void test_doc_example(void **state)
{
	struct config *cfg = load_ok(doc_example);
	const struct farm *f;
	const struct server *s;
	const struct sockaddr_in *sin;
	const struct rule *r;

	(void)state;
	assert_int_equal(cfg->nlisteners, 1);
	assert_string_equal(cfg->listeners[0].address, "127.0.0.1");
	assert_int_equal(cfg->listeners[0].port, 8080);
	assert_int_equal(cfg->limits.max_request_line, 8192);
	assert_int_equal(cfg->limits.max_header_size, 16384);
	assert_int_equal(cfg->limits.max_headers, 100);
	assert_int_equal(cfg->limits.max_connections, 10000);
	assert_int_equal(cfg->limits.max_response_header_size, 65536);
	assert_int_equal(cfg->timeouts.connect_ms, 5000);
	assert_int_equal(cfg->timeouts.request_header_ms, 10000);
	assert_int_equal(cfg->timeouts.keep_alive_ms, 60000);
	assert_int_equal(cfg->timeouts.request_body_ms, 60000);
	assert_int_equal(cfg->timeouts.upstream_idle_ms, 30000);
	assert_int_equal(cfg->log.access, LOG_TARGET_STDERR);
	assert_int_equal(cfg->log.error, LOG_TARGET_STDERR);
	assert_int_equal(cfg->log.debug, 0);

	assert_int_equal(cfg->nfarms, 1);
	f = &cfg->farms[0];
	assert_string_equal(f->name, "web");
	assert_int_equal(f->enabled, 1);
	assert_int_equal(f->nservers, 1);
	s = &f->servers[0];
	assert_string_equal(s->address, "127.0.0.1");
	assert_int_equal(s->http_port, 8081);
	assert_int_equal(s->https_port, 443);
	assert_int_equal(s->enabled, 1);
	assert_int_equal(s->weight, 100);
	assert_string_equal(s->host_name, "app.internal");
	assert_ptr_equal(s->farm, f);
	assert_int_equal(s->idx, 0);
	assert_true(s->affinity_id == lb_affinity_id("web", "127.0.0.1", 8081));
	assert_null(s->rt);
	/* resolved: AF_INET 127.0.0.1, port = httpPort */
	assert_int_equal(s->addrlen, sizeof(struct sockaddr_in));
	sin = (const struct sockaddr_in *)&s->addr;
	assert_int_equal(sin->sin_family, AF_INET);
	assert_int_equal(ntohs(sin->sin_port), 8081);
	assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x7F000001);

	assert_int_equal(f->lb.algorithm, LB_WEIGHTED_ROUND_ROBIN);
	assert_string_equal(f->lb.hash_server_variable, "REMOTE_ADDR");
	assert_int_equal(f->lb.nquery_string_names, 1);
	assert_string_equal(f->lb.query_string_names[0], "user");
	assert_int_equal(f->lb.least_response_time_period_ms, 5000);
	assert_int_equal(f->affinity.use_cookie, 0);
	assert_string_equal(f->affinity.cookie_name, "ARRAffinity");
	assert_int_equal(f->affinity.timeout_s, 1200);
	assert_int_equal(f->protocol.timeout_ms, 30000);
	assert_int_equal(f->protocol.keep_alive, 1);
	assert_int_equal(f->protocol.preserve_host_header, 1);
	assert_int_equal(f->protocol.reverse_rewrite_host, 0);
	assert_string_equal(f->protocol.xff_name, "X-Forwarded-For");
	assert_int_equal(f->protocol.xff_include_port, 1);
	assert_int_equal(f->protocol.arr_response_header, 1);
	assert_null(f->rt);

	assert_int_equal(cfg->nrules, 1);
	r = &cfg->rules[0];
	assert_string_equal(r->name, "ARR_web_loadbalance");
	assert_int_equal(r->enabled, 1);
	assert_int_equal(r->stop_processing, 1);
	assert_int_equal(r->match.syntax, RULE_SYNTAX_WILDCARD);
	assert_string_equal(r->match.pattern, "*");
	assert_int_equal(r->match.ignore_case, 1);
	assert_int_equal(r->match.negate, 0);
	assert_non_null(r->match.re); /* compiled by rules_compile */
	assert_int_equal(r->match_any, 0);
	assert_int_equal(r->track_all_captures, 0);
	assert_int_equal(r->nconds, 1);
	assert_string_equal(r->conds[0].input, "{HTTP_HOST}");
	assert_string_equal(r->conds[0].pat.pattern, "www.example.com");
	assert_int_equal(r->conds[0].pat.syntax, RULE_SYNTAX_WILDCARD);
	assert_int_equal(r->conds[0].pat.ignore_case, 1);
	assert_int_equal(r->conds[0].pat.negate, 0);
	assert_non_null(r->conds[0].pat.re);
	assert_int_equal(r->action.type, RULE_ACT_REWRITE);
	assert_string_equal(r->action.url, "http://web/{R:0}");
	assert_int_equal(r->action.append_query_string, 1);
	assert_int_equal(r->action.redirect_status, 301);
	cfg_put(cfg);
}

/* Every field set to something other than its default. */
static void test_non_default_values(void **state)
{
	struct config *cfg = load_ok(
		"{'listeners':[{'address':'::1','port':1},{'port':65535}],"
		"'limits':{'maxRequestLineLength':256,'maxRequestHeadersSize':1048576,"
		"'maxRequestHeaders':1,'maxConnections':1000000,'maxResponseHeaderSize':1024},"
		"'timeouts':{'connect':1,'requestHeader':'00:00:02.5','keepAlive':'1.00:00:00',"
		"'requestBody':'23:59:59','upstreamIdle':'00:00:00.001'},"
		"'log':{'access':'off','error':'syslog','debug':true},"
		"'webFarms':[{'servers':[{'address':'::1','httpPort':81,'httpsPort':8443,"
		"'enabled':false,'weight':0},{'address':'localhost','weight':100000}],"
		"'name':'Farm-2.x_y','enabled':false,"
		"'loadBalancing':{'algorithm':'requesthash','hashServerVariable':'HTTP_X_ID',"
		"'queryStringNames':['a','b'],'leastResponseTimePeriod':60},"
		"'affinity':{'useCookie':true,'cookieName':'SID','timeout':'1.02:03:04'},"
		"'protocol':{'timeout':'00:02:00','keepAlive':false,'preserveHostHeader':false,"
		"'reverseRewriteHostInResponseHeaders':true,'xForwardedForHeaderName':'',"
		"'includePortInXForwardedFor':false,'arrResponseHeader':false}}],"
		"'rules':["
		"{'name':'a','enabled':false,'patternSyntax':'ExactMatch','stopProcessing':true,"
		"'match':{'url':'x','ignoreCase':false,'negate':true},"
		"'conditions':{'logicalGrouping':'MatchAny','trackAllCaptures':true,'add':["
		"{'input':'{HTTPS}','pattern':'off','ignoreCase':false,'negate':true,"
		"'matchType':'Pattern'},{'input':'{URL}','pattern':'/y'}]},"
		"'action':{'type':'Redirect','url':'https://{HTTP_HOST}/{R:0}',"
		"'appendQueryString':false,'redirectType':'Temporary'}},"
		"{'name':'b','match':{'url':'^z$'},'conditions':[{'input':'{HTTP_HOST}',"
		"'pattern':'h'}],'action':{'type':'CustomResponse','statusCode':403,"
		"'statusReason':'Forbidden','statusDescription':'no\\nway'}},"
		"{'name':'c','match':{'url':'q'},'action':{'type':'AbortRequest'}},"
		"{'name':'d','match':{'url':'w'},'action':{'type':'Redirect','url':'/n',"
		"'redirectType':'Found'}},"
		"{'name':'e','match':{'url':'e'},'action':{'type':'Redirect','url':'/n',"
		"'redirectType':'SeeOther'}},"
		"{'name':'f','match':{'url':'f'},'action':{'type':'None'}}]}");
	const struct farm *f;
	const struct rule *r;

	(void)state;
	assert_int_equal(cfg->nlisteners, 2);
	assert_string_equal(cfg->listeners[0].address, "::1");
	assert_int_equal(cfg->listeners[0].port, 1);
	assert_string_equal(cfg->listeners[1].address, "0.0.0.0");
	assert_int_equal(cfg->listeners[1].port, 65535);
	assert_int_equal(cfg->limits.max_request_line, 256);
	assert_int_equal(cfg->limits.max_header_size, 1048576);
	assert_int_equal(cfg->limits.max_headers, 1);
	assert_int_equal(cfg->limits.max_connections, 1000000);
	assert_int_equal(cfg->limits.max_response_header_size, 1024);
	assert_int_equal(cfg->timeouts.connect_ms, 1000);
	assert_int_equal(cfg->timeouts.request_header_ms, 2500);
	assert_int_equal(cfg->timeouts.keep_alive_ms, 86400000);
	assert_int_equal(cfg->timeouts.request_body_ms, 86399000);
	assert_int_equal(cfg->timeouts.upstream_idle_ms, 1);
	assert_int_equal(cfg->log.access, LOG_TARGET_OFF);
	assert_int_equal(cfg->log.error, LOG_TARGET_SYSLOG);
	assert_int_equal(cfg->log.debug, 1);

	f = &cfg->farms[0];
	assert_string_equal(f->name, "Farm-2.x_y");
	assert_int_equal(f->enabled, 0);
	assert_int_equal(f->nservers, 2);
	assert_string_equal(f->servers[0].address, "::1");
	assert_int_equal(f->servers[0].http_port, 81);
	assert_int_equal(f->servers[0].https_port, 8443);
	assert_int_equal(f->servers[0].enabled, 0);
	assert_int_equal(f->servers[0].weight, 0);
	assert_null(f->servers[0].host_name);
	assert_int_equal(f->servers[0].addr.ss_family, AF_INET6);
	assert_int_equal(f->servers[0].addrlen, sizeof(struct sockaddr_in6));
	assert_int_equal(ntohs(((const struct sockaddr_in6 *)&f->servers[0].addr)->sin6_port), 81);
	/* the affinity id uses the farm name, which came after the servers */
	assert_true(f->servers[0].affinity_id == lb_affinity_id("Farm-2.x_y", "::1", 81));
	assert_true(f->servers[1].affinity_id == lb_affinity_id("Farm-2.x_y", "localhost", 80));
	assert_true(f->servers[0].affinity_id != f->servers[1].affinity_id);
	assert_int_equal(f->servers[1].idx, 1);
	assert_ptr_equal(f->servers[1].farm, f);
	assert_int_equal(f->servers[1].weight, 100000);
	assert_true(f->servers[1].addrlen > 0);
	assert_int_equal(f->lb.algorithm, LB_REQUEST_HASH);
	assert_string_equal(f->lb.hash_server_variable, "HTTP_X_ID");
	assert_int_equal(f->lb.nquery_string_names, 2);
	assert_string_equal(f->lb.query_string_names[0], "a");
	assert_string_equal(f->lb.query_string_names[1], "b");
	assert_int_equal(f->lb.least_response_time_period_ms, 60000);
	assert_int_equal(f->affinity.use_cookie, 1);
	assert_string_equal(f->affinity.cookie_name, "SID");
	assert_int_equal(f->affinity.timeout_s, 86400 + 2 * 3600 + 3 * 60 + 4);
	assert_int_equal(f->protocol.timeout_ms, 120000);
	assert_int_equal(f->protocol.keep_alive, 0);
	assert_int_equal(f->protocol.preserve_host_header, 0);
	assert_int_equal(f->protocol.reverse_rewrite_host, 1);
	assert_string_equal(f->protocol.xff_name, "");
	assert_int_equal(f->protocol.xff_include_port, 0);
	assert_int_equal(f->protocol.arr_response_header, 0);

	assert_int_equal(cfg->nrules, 6);
	r = &cfg->rules[0];
	assert_int_equal(r->enabled, 0);
	assert_int_equal(r->stop_processing, 1);
	assert_int_equal(r->match.syntax, RULE_SYNTAX_EXACT);
	assert_int_equal(r->match.ignore_case, 0);
	assert_int_equal(r->match.negate, 1);
	assert_int_equal(r->match_any, 1);
	assert_int_equal(r->track_all_captures, 1);
	assert_int_equal(r->nconds, 2);
	/* patternSyntax came before the conditions but applies to them too */
	assert_int_equal(r->conds[0].pat.syntax, RULE_SYNTAX_EXACT);
	assert_int_equal(r->conds[1].pat.syntax, RULE_SYNTAX_EXACT);
	assert_string_equal(r->conds[0].input, "{HTTPS}");
	assert_int_equal(r->conds[0].pat.ignore_case, 0);
	assert_int_equal(r->conds[0].pat.negate, 1);
	assert_int_equal(r->conds[1].pat.ignore_case, 1);
	assert_int_equal(r->conds[1].pat.negate, 0);
	assert_int_equal(r->action.type, RULE_ACT_REDIRECT);
	assert_string_equal(r->action.url, "https://{HTTP_HOST}/{R:0}");
	assert_int_equal(r->action.append_query_string, 0);
	assert_int_equal(r->action.redirect_status, 307);
	r = &cfg->rules[1];
	/* the array form of conditions means MatchAll */
	assert_int_equal(r->match_any, 0);
	assert_int_equal(r->nconds, 1);
	assert_int_equal(r->match.syntax, RULE_SYNTAX_ECMASCRIPT);
	assert_int_equal(r->conds[0].pat.syntax, RULE_SYNTAX_ECMASCRIPT);
	assert_int_equal(r->action.type, RULE_ACT_CUSTOM_RESPONSE);
	assert_int_equal(r->action.status_code, 403);
	assert_string_equal(r->action.status_reason, "Forbidden");
	assert_string_equal(r->action.status_description, "no\nway");
	assert_int_equal(cfg->rules[2].action.type, RULE_ACT_ABORT);
	assert_int_equal(cfg->rules[3].action.redirect_status, 302);
	assert_int_equal(cfg->rules[4].action.redirect_status, 303);
	assert_int_equal(cfg->rules[5].action.type, RULE_ACT_NONE);
	cfg_put(cfg);
}

static void test_defaults(void **state)
{
	struct config *cfg = load_ok("{" LISTEN "," MIN_FARMS ",'rules':[" RULE("") "]}");
	const struct farm *f = &cfg->farms[0];
	const struct server *s = &f->servers[0];
	const struct rule *r = &cfg->rules[0];

	(void)state;
	assert_string_equal(cfg->listeners[0].address, "0.0.0.0");
	assert_int_equal(cfg->listeners[0].port, 8080);
	assert_int_equal(cfg->limits.max_request_line, 8192);
	assert_int_equal(cfg->limits.max_header_size, 16384);
	assert_int_equal(cfg->limits.max_headers, 100);
	assert_int_equal(cfg->limits.max_connections, 10000);
	assert_int_equal(cfg->limits.max_response_header_size, 65536);
	assert_int_equal(cfg->timeouts.connect_ms, 5000);
	assert_int_equal(cfg->timeouts.request_header_ms, 10000);
	assert_int_equal(cfg->timeouts.keep_alive_ms, 60000);
	assert_int_equal(cfg->timeouts.request_body_ms, 60000);
	assert_int_equal(cfg->timeouts.upstream_idle_ms, 30000);
	assert_int_equal(cfg->log.access, LOG_TARGET_STDERR);
	assert_int_equal(cfg->log.error, LOG_TARGET_STDERR);
	assert_int_equal(cfg->log.debug, 0);

	assert_int_equal(f->enabled, 1);
	assert_int_equal(f->lb.algorithm, LB_WEIGHTED_ROUND_ROBIN);
	assert_null(f->lb.hash_server_variable);
	assert_null(f->lb.query_string_names);
	assert_int_equal(f->lb.nquery_string_names, 0);
	assert_int_equal(f->lb.least_response_time_period_ms, 5000);
	assert_int_equal(f->affinity.use_cookie, 0);
	assert_string_equal(f->affinity.cookie_name, "ARRAffinity");
	assert_int_equal(f->affinity.timeout_s, 1200);
	assert_int_equal(f->protocol.timeout_ms, 30000);
	assert_int_equal(f->protocol.keep_alive, 1);
	assert_int_equal(f->protocol.preserve_host_header, 1);
	assert_int_equal(f->protocol.reverse_rewrite_host, 0);
	assert_string_equal(f->protocol.xff_name, "X-Forwarded-For");
	assert_int_equal(f->protocol.xff_include_port, 1);
	assert_int_equal(f->protocol.arr_response_header, 1);

	assert_int_equal(s->http_port, 80);
	assert_int_equal(s->https_port, 443);
	assert_int_equal(s->enabled, 1);
	assert_int_equal(s->weight, 100);
	assert_null(s->host_name);
	assert_int_equal(ntohs(((const struct sockaddr_in *)&s->addr)->sin_port), 80);

	assert_int_equal(r->enabled, 1);
	assert_int_equal(r->stop_processing, 0);
	assert_int_equal(r->match.syntax, RULE_SYNTAX_ECMASCRIPT);
	assert_int_equal(r->match.ignore_case, 1);
	assert_int_equal(r->match.negate, 0);
	assert_int_equal(r->nconds, 0);
	assert_null(r->conds);
	assert_int_equal(r->match_any, 0);
	assert_int_equal(r->track_all_captures, 0);
	assert_int_equal(r->action.type, RULE_ACT_NONE);
	assert_null(r->action.url);
	assert_int_equal(r->action.append_query_string, 1);
	assert_int_equal(r->action.redirect_status, 301);
	assert_int_equal(r->action.status_code, 0);
	assert_null(r->action.status_reason);
	assert_null(r->action.status_description);
	cfg_put(cfg);
}

static void test_no_rules_no_farms_is_valid(void **state)
{
	struct config *cfg = load_ok("{" LISTEN "}");

	(void)state;
	assert_int_equal(cfg->nfarms, 0);
	assert_null(cfg->farms);
	assert_int_equal(cfg->nrules, 0);
	assert_null(cfg->rules);
	cfg_put(cfg);
	cfg = load_ok("{" LISTEN "," MIN_FARMS ",'rules':[]}");
	assert_int_equal(cfg->nfarms, 1);
	assert_int_equal(cfg->nrules, 0);
	cfg_put(cfg);
}

static void test_find_farm_and_refcount(void **state)
{
	struct config *cfg = load_ok("{" LISTEN ",'webFarms':[{'name':'Alpha'},{'name':'beta'}]}");

	(void)state;
	assert_ptr_equal(cfg_find_farm(cfg, "alpha", 5), &cfg->farms[0]);
	assert_ptr_equal(cfg_find_farm(cfg, "ALPHA", 5), &cfg->farms[0]);
	assert_ptr_equal(cfg_find_farm(cfg, "BETA/x", 4), &cfg->farms[1]);
	assert_null(cfg_find_farm(cfg, "alph", 4));
	assert_null(cfg_find_farm(cfg, "alphas", 6));
	assert_null(cfg_find_farm(cfg, "gamma", 5));
	assert_null(cfg_find_farm(cfg, "", 0));
	assert_int_equal(cfg->farms[0].nservers, 0);
	cfg_get(cfg);
	assert_int_equal(cfg->refcnt, 2);
	cfg_put(cfg);
	assert_int_equal(cfg->refcnt, 1);
	cfg_put(cfg); /* freed here: LeakSanitizer checks it all went */
	cfg_put(NULL);
}

/* Freeing a generation that went through lb_attach releases its runtime state. */
static void test_put_after_lb_attach(void **state)
{
	struct config *cfg = load_ok("{" LISTEN "," MIN_FARMS "}");

	(void)state;
	assert_int_equal(lb_attach(cfg), 0);
	assert_non_null(cfg->farms[0].rt);
	assert_non_null(cfg->farms[0].servers[0].rt);
	cfg_put(cfg);
}

static void test_enums_case_insensitive(void **state)
{
	struct config *cfg =
		load_ok("{" LISTEN ",'log':{'access':'SYSLOG'},'webFarms':[{'name':'w',"
			"'loadBalancing':{'algorithm':'leastresponsetime'}}],'rules':[{'name':'r',"
			"'patternSyntax':'wildcard','match':{'url':'*'},'action':{'type':'rewrite',"
			"'url':'http://W/{R:0}'}}]}");

	(void)state;
	assert_int_equal(cfg->log.access, LOG_TARGET_SYSLOG);
	assert_int_equal(cfg->farms[0].lb.algorithm, LB_LEAST_RESPONSE_TIME);
	assert_int_equal(cfg->rules[0].match.syntax, RULE_SYNTAX_WILDCARD);
	assert_int_equal(cfg->rules[0].action.type, RULE_ACT_REWRITE);
	cfg_put(cfg);
}

static void test_timespan(void **state)
{
	static const struct {
		const char *s;
		uint64_t ms;
	} ok[] = {
		{"00:00:00", 0},
		{"00:00:05", 5000},
		{"00:20:00", 1200000},
		{"01:00:00", 3600000},
		{"23:59:59", 86399000},
		{"1:2:3", 3723000},
		{"1.00:00:00", 86400000},
		{"2.03:04:05", 2 * 86400000ULL + 3 * 3600000 + 4 * 60000 + 5000},
		{"00:00:01.5", 1500},
		{"00:00:01.25", 1250},
		{"00:00:00.001", 1},
		{"00:00:00.0009999", 0},
		{"00:00:02.1234567", 2123},
		{"10.00:00:00.500", 864000500},
		{"99999999.23:59:59.999", 99999999ULL * 86400000 + 86399999},
	};
	static const char *const bad[] = {
		"",
		"00:00",
		"00:60:00",
		"00:00:60",
		"24:00:00",
		"1.24:00:00",
		"000:00:00",
		"00:000:00",
		"00:00:000",
		"-00:00:01",
		"+00:00:01",
		" 00:00:01",
		"00:00:01 ",
		"00:00:01.",
		"00:00:01.12345678",
		"1.",
		"1.00:00",
		"a0:00:00",
		"00:00:0x",
		"00::00",
		"100000000.00:00:00",
		"5",
		"00:00:01:00",
		".00:00:01",
		"1..00:00:00",
	};
	uint64_t ms;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		ms = 12345;
		if (cfg_parse_timespan(ok[i].s, strlen(ok[i].s), &ms) != 0)
			fail_msg("\"%s\" refused", ok[i].s);
		if (ms != ok[i].ms)
			fail_msg("\"%s\": %llu ms, expected %llu", ok[i].s, (unsigned long long)ms,
				 (unsigned long long)ok[i].ms);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (cfg_parse_timespan(bad[i], strlen(bad[i]), &ms) != -1)
			fail_msg("\"%s\" accepted", bad[i]);
	/* the length is explicit: what follows it is not read */
	assert_int_equal(cfg_parse_timespan("00:00:07garbage", 8, &ms), 0);
	assert_int_equal(ms, 7000);
}

/* ---- error cases: exact messages ---------------------------------------- */

#define SYS_HOST_MSG                                                                               \
	"$.system.hostName: must be a host name (RFC 1123: dot-separated labels of 1 to 63 "       \
	"letters, digits and '-', not starting or ending with '-'; 64 characters at most, the "    \
	"kernel's limit)"
#define SYS_IF_MSG                                                                                 \
	"$.system.network.interface: must be a network interface name: 1 to 15 letters, digits, "  \
	"'_', '.' and '-'"
#define SYS_CIDR_MSG                                                                               \
	"$.system.network.address: must be an IPv4 or IPv6 address with its prefix length, e.g. "  \
	"192.168.1.10/24 or 2001:db8::10/64"
#define LABEL63 "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk"
#define LABEL64 LABEL63 "l"

struct err_case {
	const char *json; /* single-quoted */
	const char *msg;  /* the whole expected message */
};

static const struct err_case err_cases[] = {
	{"{}", "$.listeners: at least one listener is required"},
	{"{'listeners':[]}", "$.listeners: at least one listener is required"},
	{"{'listeners':{'port':80}}", "$.listeners: must be an array"},
	{"[]", "$: must be an object"},
	{"{'listeners':[{'port':0}]}", "$.listeners[0].port: must be an integer from 1 to 65535"},
	{"{'listeners':[{'port':'80'}]}",
	 "$.listeners[0].port: must be an integer from 1 to 65535"},
	{"{'listeners':[{'port':80.0}]}",
	 "$.listeners[0].port: must be an integer from 1 to 65535"},
	{"{'listeners':[{'address':'localhost','port':80}]}",
	 "$.listeners[0].address: must be a numeric IPv4 or IPv6 address"},
	{"{'listeners':[{'address':'::1'}]}", "$.listeners[0].port: is required"},
	{"{'listeners':[{'port':80},[]]}", "$.listeners[1]: must be an object"},
	{"{'listeners':[{'address':'::1','port':80},{'address':'0::1','port':80}]}",
	 "$.listeners[1]: duplicate listener 0::1 port 80 (same as listeners[0])"},
	{"{'listeners':[{'port':80,'backlog':5}]}", "$.listeners[0].backlog: unknown field"},
	{"{" LISTEN ",'healthCheck':{}}", "$.healthCheck: unknown field"},
	{"{" LISTEN ",'limits':{'maxRequestLineLength':100}}",
	 "$.limits.maxRequestLineLength: must be an integer from 256 to 65536"},
	{"{" LISTEN ",'limits':{'maxRequestHeaders':1.5}}",
	 "$.limits.maxRequestHeaders: must be an integer from 1 to 1000"},
	{"{" LISTEN ",'limits':{'maxConnections':1000001}}",
	 "$.limits.maxConnections: must be an integer from 1 to 1000000"},
	{"{" LISTEN ",'limits':[]}", "$.limits: must be an object"},
	{"{" LISTEN ",'timeouts':{'connect':'00:60:00'}}",
	 "$.timeouts.connect: must be a duration: \"hh:mm:ss\", \"d.hh:mm:ss\" (optional "
	 "\".fff\") or an integer number of seconds"},
	{"{" LISTEN ",'timeouts':{'keepAlive':true}}",
	 "$.timeouts.keepAlive: must be a duration: \"hh:mm:ss\", \"d.hh:mm:ss\" (optional "
	 "\".fff\") or an integer number of seconds"},
	{"{" LISTEN ",'timeouts':{'connect':0}}",
	 "$.timeouts.connect: must be a duration from 00:00:00.001 to 24.00:00:00"},
	{"{" LISTEN ",'timeouts':{'requestBody':'25.00:00:00'}}",
	 "$.timeouts.requestBody: must be a duration from 00:00:00.001 to 24.00:00:00"},
	{"{" LISTEN ",'log':{'access':'file'}}",
	 "$.log.access: unknown log target \"file\" (expected stderr, syslog or off)"},
	{"{" LISTEN ",'log':{'debug':'yes'}}", "$.log.debug: must be a boolean"},
	{"{" LISTEN ",'log':{'error':'off\\n'}}",
	 "$.log.error: unknown log target (expected stderr, syslog or off)"},
	{"{" LISTEN ",'log':{'error':1}}", "$.log.error: must be a string"},
	{"{" LISTEN ",'webFarms':{}}", "$.webFarms: must be an array"},
	{"{" LISTEN ",'webFarms':[{}]}", "$.webFarms[0].name: is required"},
	{"{" LISTEN ",'webFarms':[{'name':''}]}",
	 "$.webFarms[0].name: must be a non-empty name of letters, digits, '-', '.' and '_' (it "
	 "is the host of rewrite URLs)"},
	{"{" LISTEN ",'webFarms':[{'name':'a/b'}]}",
	 "$.webFarms[0].name: must be a non-empty name of letters, digits, '-', '.' and '_' (it "
	 "is the host of rewrite URLs)"},
	{"{" LISTEN ",'webFarms':[{'name':'web'},{'name':'WEB'}]}",
	 "$.webFarms[1].name: duplicate farm name \"WEB\""},
	{"{" LISTEN ",'webFarms':[{'name':'web','enabled':'true'}]}",
	 "$.webFarms[0].enabled: must be a boolean"},
	{"{" LISTEN ",'webFarms':[{'name':'web','servers':[{'address':'127.0.0.1'},"
	 "{'address':'127.0.0.2','weight':100001}]}]}",
	 "$.webFarms[0].servers[1].weight: must be an integer from 0 to 100000"},
	{"{" LISTEN ",'webFarms':[{'name':'web','servers':[{'address':'127.0.0.1',"
	 "'weight':-1}]}]}",
	 "$.webFarms[0].servers[0].weight: must be an integer from 0 to 100000"},
	{"{" LISTEN ",'webFarms':[{'name':'web','servers':[{'address':'127.0.0.1',"
	 "'httpsPort':70000}]}]}",
	 "$.webFarms[0].servers[0].httpsPort: must be an integer from 1 to 65535"},
	{"{" LISTEN ",'webFarms':[{'name':'web','servers':[{'httpPort':81}]}]}",
	 "$.webFarms[0].servers[0].address: is required"},
	{"{" LISTEN ",'webFarms':[{'name':'web','servers':[{'address':''}]}]}",
	 "$.webFarms[0].servers[0].address: must not be empty"},
	{"{" LISTEN ",'webFarms':[{'name':'web','servers':[{'address':'127.0.0.1',"
	 "'hostName':'a b'}]}]}",
	 "$.webFarms[0].servers[0].hostName: must be a non-empty host name without spaces or "
	 "control characters"},
	{"{" LISTEN ",'webFarms':[{'name':'web','servers':[{'address':'127.0.0.1',"
	 "'httpPort':8081},{'address':'127.0.0.1','httpPort':8082},{'address':'127.0.0.1',"
	 "'httpPort':8081}]}]}",
	 "$.webFarms[0].servers[2].address: duplicate server 127.0.0.1 port 8081 in farm "
	 "\"web\" (same as servers[0])"},
	{"{" LISTEN ",'webFarms':[{'name':'web','servers':{}}]}",
	 "$.webFarms[0].servers: must be an array"},
	{"{" LISTEN ",'webFarms':[{'name':'web','loadBalancing':{'algorithm':'RoundRobin'}}]}",
	 "$.webFarms[0].loadBalancing.algorithm: unknown algorithm \"RoundRobin\" (expected "
	 "WeightedRoundRobin, LeastRequests, LeastResponseTime, WeightedTotalTraffic or "
	 "RequestHash)"},
	{"{" LISTEN ",'webFarms':[{'name':'web','loadBalancing':{'hashServerVariable':"
	 "'{REMOTE_ADDR}'}}]}",
	 "$.webFarms[0].loadBalancing.hashServerVariable: must be a server variable name such "
	 "as REMOTE_ADDR"},
	{"{" LISTEN ",'webFarms':[{'name':'web','loadBalancing':{'queryStringNames':['a',1]}}]}",
	 "$.webFarms[0].loadBalancing.queryStringNames[1]: must be a string"},
	{"{" LISTEN ",'webFarms':[{'name':'web','loadBalancing':{'queryStringNames':'a'}}]}",
	 "$.webFarms[0].loadBalancing.queryStringNames: must be an array of strings"},
	{"{" LISTEN ",'webFarms':[{'name':'web','protocol':{'foo':1}}]}",
	 "$.webFarms[0].protocol.foo: unknown field"},
	{"{" LISTEN ",'webFarms':[{'name':'web','protocol':{'xForwardedForHeaderName':'X F'}}]}",
	 "$.webFarms[0].protocol.xForwardedForHeaderName: must be a non-empty HTTP token "
	 "(letters, digits, !#$%&'*+-.^_`|~)"},
	{"{" LISTEN ",'webFarms':[{'name':'web','protocol':{'timeout':'-00:00:01'}}]}",
	 "$.webFarms[0].protocol.timeout: must be a duration: \"hh:mm:ss\", \"d.hh:mm:ss\" "
	 "(optional \".fff\") or an integer number of seconds"},
	{"{" LISTEN ",'webFarms':[{'name':'web','affinity':{'cookieName':''}}]}",
	 "$.webFarms[0].affinity.cookieName: must be a non-empty HTTP token (letters, digits, "
	 "!#$%&'*+-.^_`|~)"},
	{"{" LISTEN ",'webFarms':[{'name':'web','affinity':{'timeout':0}}]}",
	 "$.webFarms[0].affinity.timeout: must be a duration from 00:00:01 to 365.00:00:00"},
	{"{" LISTEN ",'rules':{}}", "$.rules: must be an array"},
	{"{" LISTEN ",'rules':[{'match':{'url':'x'}}]}", "$.rules[0].name: is required"},
	{"{" LISTEN ",'rules':[" RULE("") "," RULE("") "]}",
	 "$.rules[1].name: duplicate rule name \"r\""},
	{"{" LISTEN ",'rules':[{'name':'r'}]}", "$.rules[0].match: is required"},
	{"{" LISTEN ",'rules':[{'name':'r','match':{'ignoreCase':false}}]}",
	 "$.rules[0].match.url: is required"},
	{"{" LISTEN ",'rules':[{'name':'r','match':{'url':1}}]}",
	 "$.rules[0].match.url: must be a string"},
	{"{" LISTEN ",'rules':[" RULE(",'enabled':'true'") "]}",
	 "$.rules[0].enabled: must be a boolean"},
	{"{" LISTEN ",'rules':[" RULE(",'patternSyntax':'Regex'") "]}",
	 "$.rules[0].patternSyntax: unknown patternSyntax \"Regex\" (expected ECMAScript, "
	 "Wildcard or ExactMatch)"},
	{"{" LISTEN ",'rules':[" RULE(",'conditions':{'add':[{'input':'{HTTP_HOST}','pattern':"
				      "'x','matchType':'IsFile'}]}") "]}",
	 "$.rules[0].conditions.add[0].matchType: only Pattern is supported"},
	{"{" LISTEN ",'rules':[" RULE(",'conditions':[{'input':'{HTTP_HOST}'}]") "]}",
	 "$.rules[0].conditions[0].pattern: is required"},
	{"{" LISTEN ",'rules':[" RULE(",'conditions':[{'pattern':'x'}]") "]}",
	 "$.rules[0].conditions[0].input: is required"},
	{"{" LISTEN ",'rules':[" RULE(",'conditions':'x'") "]}",
	 "$.rules[0].conditions: must be an object or an array"},
	{"{" LISTEN ",'rules':[" RULE(",'conditions':{'logicalGrouping':'Any'}") "]}",
	 "$.rules[0].conditions.logicalGrouping: unknown logicalGrouping \"Any\" (expected "
	 "MatchAll or MatchAny)"},
	{"{" LISTEN ",'rules':[" RULE(",'conditions':{'add':[],'foo':1}") "]}",
	 "$.rules[0].conditions.foo: unknown field"},
	{"{" LISTEN ",'rules':[" RULE(",'action':{'type':'Proxy'}") "]}",
	 "$.rules[0].action.type: unknown action type \"Proxy\" (expected None, Rewrite, "
	 "Redirect, CustomResponse or AbortRequest)"},
	{"{" LISTEN ",'rules':[" RULE(",'action':{'type':'Rewrite'}") "]}",
	 "$.rules[0].action.url: is required for a Rewrite action"},
	{"{" LISTEN ",'rules':[" RULE(",'action':{'type':'Redirect','url':''}") "]}",
	 "$.rules[0].action.url: must not be empty for a Redirect action"},
	{"{" LISTEN ",'rules':[" RULE(",'action':{'type':'Redirect','url':'/',"
				      "'redirectType':'Moved'}") "]}",
	 "$.rules[0].action.redirectType: unknown redirectType \"Moved\" (expected Permanent, "
	 "Found, SeeOther or Temporary)"},
	{"{" LISTEN ",'rules':[" RULE(",'action':{'type':'CustomResponse'}") "]}",
	 "$.rules[0].action.statusCode: is required for a CustomResponse action"},
	{"{" LISTEN ",'rules':[" RULE(",'action':{'type':'CustomResponse','statusCode':1000}") "]}",
	 "$.rules[0].action.statusCode: must be an integer from 200 to 999"},
	{"{" LISTEN ",'rules':[" RULE(",'action':{'type':'CustomResponse','statusCode':403,"
				      "'statusReason':'a\\r\\nb'}") "]}",
	 "$.rules[0].action.statusReason: must not contain control characters"},
	{"{" LISTEN ",'rules':[" RULE(",'action':{'type':'AbortRequest','x':1}") "]}",
	 "$.rules[0].action.x: unknown field"},
	/* from rules_compile, prefixed with the rule's path */
	{"{" LISTEN "," MIN_FARMS
	 ",'rules':[" RULE("") ",{'name':'s','match':{'url':'s'}},"
			       "{'name':'t','match':{'url':'.*'},'action':{'type':'Rewrite','url':'"
			       "http://foo/{R:0}'}}]}",
	 "$.rules[2].action.url: farm \"foo\" is not defined"},
	{"{" LISTEN
	 ",'rules':[" RULE(",'conditions':[{'input':'{NO_SUCH_VAR}','pattern':'x'}]") "]}",
	 "$.rules[0].conditions.add[0].input: unknown server variable {NO_SUCH_VAR}"},
	/* HTTPS listeners */
	{"{'listeners':[{'port':443,'ssl':{}}]}", "$.listeners[0].ssl.certificates: is required"},
	{"{'listeners':[{'port':443,'ssl':{'certificates':[]}}]}",
	 "$.listeners[0].ssl.certificates: at least one certificate is required"},
	{"{'listeners':[{'port':443,'ssl':{'certificates':[{}]}}]}",
	 "$.listeners[0].ssl.certificates[0]: needs certificateFile and keyFile, or "
	 "certificateHash"},
	{"{'listeners':[{'port':443,'ssl':{'certificates':[{'certificateFile':'/c'}]}}]}",
	 "$.listeners[0].ssl.certificates[0].keyFile: is required with certificateFile"},
	{"{'listeners':[{'port':443,'ssl':{'certificates':[{'certificateFile':'/c','keyFile':'/k',"
	 "'certificateHash':'00'}]}}]}",
	 "$.listeners[0].ssl.certificates[0]: certificateHash (a token certificate) and "
	 "certificateFile/keyFile are exclusive"},
	{"{'listeners':[{'port':443,'ssl':{'certificates':[{'certificateFile':'/c','keyFile':'/k',"
	 "'chainFile':'/x'}]}}]}",
	 "$.listeners[0].ssl.certificates[0]: certificateToken and chainFile go with "
	 "certificateHash (a certificate file carries its own chain)"},
	{"{'listeners':[{'port':443,'ssl':{'certificates':[{'certificateFile':'/c','keyFile':'/"
	 "k'}],"
	 "'clientCertificates':'Require'}}]}",
	 "$.listeners[0].ssl.clientCaFile: is required when clientCertificates is Require"},
	{"{'listeners':[{'port':443,'ssl':{'certificates':[{'certificateFile':'/c','keyFile':'/"
	 "k'}],"
	 "'clientCertificates':'Maybe'}}]}",
	 "$.listeners[0].ssl.clientCertificates: unknown clientCertificates \"Maybe\" (expected "
	 "Ignore, Accept or Require)"},
	{"{'listeners':[{'port':443,'ssl':{'certificates':[{'certificateFile':'/c','keyFile':'/"
	 "k'}],"
	 "'clientCertFailure':'Drop'}}]}",
	 "$.listeners[0].ssl.clientCertFailure: unknown clientCertFailure \"Drop\" (expected "
	 "Handshake or Forbidden)"},
	{"{'listeners':[{'port':443,'ssl':{'certificates':[{'certificateFile':'/c','keyFile':'/"
	 "k'}],"
	 "'verifyDepth':17}}]}",
	 "$.listeners[0].ssl.verifyDepth: must be an integer from 0 to 16"},
	{"{'listeners':[{'port':443,'ssl':{'certificates':[{'certificateFile':'/c','keyFile':'/"
	 "k'}],"
	 "'crlFiles':['']}}]}",
	 "$.listeners[0].ssl.crlFiles[0]: must be a non-empty path"},
	{"{'listeners':[{'port':443,'ssl':{'certificates':[{'certificateFile':'/c','keyFile':'/"
	 "k'}],"
	 "'sessionTicketKeyRotation':'00:00:00'}}]}",
	 "$.listeners[0].ssl.sessionTicketKeyRotation: must be a duration from 00:00:01 to "
	 "24.00:00:00"},
	{"{'listeners':[{'port':443,'ssl':{'certificates':[{'certificateHash':'00'}]}}]}",
	 "$.listeners[0].ssl.certificates[0].certificateHash: needs a token: none is defined in "
	 "$.tokens"},
	{"{'tokens':[{'name':'a','module':'/m','uri':'pkcs11:token=a','pinFile':'/p'}],"
	 "'listeners':[{'port':443,'ssl':{'certificates':[{'certificateHash':'00',"
	 "'certificateToken':'b'}]}}]}",
	 "$.listeners[0].ssl.certificates[0].certificateToken: token \"b\" is not defined in "
	 "$.tokens"},
	{"{" LISTEN ",'webFarms':[{'name':'web','protocol':{'clientCertHeaderName':'a b'}}]}",
	 "$.webFarms[0].protocol.clientCertHeaderName: must be a non-empty HTTP token (letters, "
	 "digits, !#$%&'*+-.^_`|~)"},
	/* system: the appliance's operating-system settings */
	{"{" LISTEN ",'system':[]}", "$.system: must be an object"},
	{"{" LISTEN ",'system':{'hostname':'a'}}", "$.system.hostname: unknown field"},
	{"{" LISTEN ",'system':{'hostName':5}}", "$.system.hostName: must be a string"},
	{"{" LISTEN ",'system':{'hostName':''}}", SYS_HOST_MSG},
	{"{" LISTEN ",'system':{'hostName':'-farmgate'}}", SYS_HOST_MSG},
	{"{" LISTEN ",'system':{'hostName':'farmgate-.lan'}}", SYS_HOST_MSG},
	{"{" LISTEN ",'system':{'hostName':'farm..gate'}}", SYS_HOST_MSG},
	{"{" LISTEN ",'system':{'hostName':'farmgate.'}}", SYS_HOST_MSG},
	{"{" LISTEN ",'system':{'hostName':'farm_gate'}}", SYS_HOST_MSG},
	{"{" LISTEN ",'system':{'hostName':'farm gate'}}", SYS_HOST_MSG},
	{"{" LISTEN ",'system':{'hostName':'farm\\u0027gate'}}", SYS_HOST_MSG},
	{"{" LISTEN ",'system':{'hostName':'" LABEL64 "'}}", SYS_HOST_MSG},
	{"{" LISTEN ",'system':{'network':{'interface':''}}}", SYS_IF_MSG},
	{"{" LISTEN ",'system':{'network':{'interface':'eth0:1'}}}", SYS_IF_MSG},
	{"{" LISTEN ",'system':{'network':{'interface':'..'}}}", SYS_IF_MSG},
	{"{" LISTEN ",'system':{'network':{'interface':'abcdefghijklmnop'}}}", SYS_IF_MSG},
	{"{" LISTEN ",'system':{'network':{'interface':'eth0','speed':100}}}",
	 "$.system.network.speed: unknown field"},
	{"{" LISTEN ",'system':{'network':{'mode':'manual'}}}",
	 "$.system.network.mode: unknown mode \"manual\" (expected dhcp or static)"},
	{"{" LISTEN ",'system':{'network':{'mode':'static'}}}",
	 "$.system.network.address: is required with mode static"},
	{"{" LISTEN ",'system':{'network':{'address':'192.168.1.10/24'}}}",
	 "$.system.network.address: only with mode static"},
	{"{" LISTEN ",'system':{'network':{'gateway':'192.168.1.1','mode':'dhcp'}}}",
	 "$.system.network.gateway: only with mode static"},
	{"{" LISTEN ",'system':{'network':{'mode':'static','address':'192.168.1.10'}}}",
	 SYS_CIDR_MSG},
	{"{" LISTEN ",'system':{'network':{'mode':'static','address':'192.168.1.10/33'}}}",
	 SYS_CIDR_MSG},
	{"{" LISTEN ",'system':{'network':{'mode':'static','address':'192.168.1.10/0'}}}",
	 SYS_CIDR_MSG},
	{"{" LISTEN ",'system':{'network':{'mode':'static','address':'192.168.1.10/024'}}}",
	 SYS_CIDR_MSG},
	{"{" LISTEN ",'system':{'network':{'mode':'static','address':'192.168.1.10/24 '}}}",
	 SYS_CIDR_MSG},
	{"{" LISTEN ",'system':{'network':{'mode':'static','address':'192.168.1.300/24'}}}",
	 SYS_CIDR_MSG},
	{"{" LISTEN ",'system':{'network':{'mode':'static','address':'2001:db8::1/129'}}}",
	 SYS_CIDR_MSG},
	{"{" LISTEN ",'system':{'network':{'mode':'static','address':'fe80::1%eth0/64'}}}",
	 SYS_CIDR_MSG},
	{"{" LISTEN ",'system':{'network':{'mode':'static','address':'farmgate.lan/24'}}}",
	 SYS_CIDR_MSG},
	{"{" LISTEN ",'system':{'network':{'mode':'static','address':'192.168.1.10/24',"
	 "'gateway':'router.lan'}}}",
	 "$.system.network.gateway: must be a numeric IPv4 or IPv6 address"},
	{"{" LISTEN ",'system':{'network':{'mode':'static','address':'192.168.1.10/24',"
	 "'gateway':'fe80::1'}}}",
	 "$.system.network.gateway: must be an IPv4 address, as address is"},
	{"{" LISTEN ",'system':{'network':{'mode':'static','address':'2001:db8::10/64',"
	 "'gateway':'192.168.1.1'}}}",
	 "$.system.network.gateway: must be an IPv6 address, as address is"},
	{"{" LISTEN ",'system':{'network':{'dns':'9.9.9.9'}}}",
	 "$.system.network.dns: must be an array"},
	{"{" LISTEN ",'system':{'network':{'dns':['1.1.1.1','1.0.0.1','9.9.9.9','8.8.8.8']}}}",
	 "$.system.network.dns: at most 3 entries"},
	{"{" LISTEN ",'system':{'network':{'dns':['1.1.1.1','dns.example']}}}",
	 "$.system.network.dns[1]: must be a numeric IPv4 or IPv6 address"},
	{"{" LISTEN ",'system':{'ntpServers':'pool.ntp.org'}}",
	 "$.system.ntpServers: must be an array"},
	{"{" LISTEN ",'system':{'ntpServers':['a','b','c','d','e']}}",
	 "$.system.ntpServers: at most 4 entries"},
	{"{" LISTEN ",'system':{'ntpServers':[1]}}", "$.system.ntpServers[0]: must be a string"},
	{"{" LISTEN ",'system':{'ntpServers':['pool.ntp.org','ntp server']}}",
	 "$.system.ntpServers[1]: must be a numeric IPv4 or IPv6 address or a host name (RFC "
	 "1123)"},
	/* JSON syntax errors: line and column */
	{"{\n  'listeners': [\n    {'port' 80}\n  ]\n}",
	 "line 3, column 13: unexpected character '8', expected ':' after the key"},
	{"{'listeners':[{'port':80}],'listeners':[]}",
	 "line 1, column 28: duplicate key \"listeners\""},
	{"{'listeners':[{'port':80}]}}",
	 "line 1, column 28: unexpected character '}', expected end of input after the value"},
	{"", "line 1, column 1: unexpected end of input, expected a value"},
};

#define N_ERR_CASES (sizeof(err_cases) / sizeof(err_cases[0]))

static void run_err_case(void **state)
{
	const struct err_case *ec = *state;
	char err[512];

	memset(err, 'x', sizeof(err));
	load_err(ec->json, err, sizeof(err));
	assert_string_equal(err, ec->msg);
}

/* When the reason text comes from a library (PCRE2, the resolver), only the
 * path and our part of the message are fixed. */
static void test_errors_from_libraries(void **state)
{
	char err[512];
	static const char pfx_re[] = "$.rules[0].match.url: ";
	static const char pfx_dns[] = "$.webFarms[0].servers[0].address: cannot resolve "
				      "\"no-such-host.invalid\": ";

	(void)state;
	load_err("{" LISTEN ",'rules':[{'name':'r','match':{'url':'(a'}}]}", err, sizeof(err));
	assert_memory_equal(err, pfx_re, sizeof(pfx_re) - 1);
	assert_non_null(strstr(err, "at offset"));
	load_err("{" LISTEN ",'webFarms':[{'name':'w','servers':[{'address':'no-such-host.invalid'"
		 "}]}]}",
		 err, sizeof(err));
	assert_memory_equal(err, pfx_dns, sizeof(pfx_dns) - 1);
	assert_true(strlen(err) > sizeof(pfx_dns));
}

/* The error buffer may be small or absent; messages are truncated, never overrun. */
static void test_small_error_buffer(void **state)
{
	char err[6];
	char *json = dq("{'listeners':[]}");

	(void)state;
	memset(err, 'x', sizeof(err));
	assert_null(cfg_load_buf(json, strlen(json), err, sizeof(err)));
	assert_string_equal(err, "$.lis");
	assert_null(cfg_load_buf(json, strlen(json), NULL, 0));
	free(json);
	assert_null(cfg_load_file("/nonexistent/farmgate.json", NULL, 0));
}

/* ---- files -------------------------------------------------------------- */

/* Writes len bytes to a new temporary file; returns its path (caller frees
 * and unlinks). */
static char *temp_file(const char *data, size_t len)
{
	char *path = strdup("/tmp/test_cfg_XXXXXX");
	int fd;

	assert_non_null(path);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
	return path;
}

static void test_load_file(void **state)
{
	char *json = dq(doc_example), *path;
	char err[512] = "x";
	struct config *cfg;

	(void)state;
	path = temp_file(json, strlen(json));
	cfg = cfg_load_file(path, err, sizeof(err));
	assert_non_null(cfg);
	assert_string_equal(err, "");
	assert_string_equal(cfg->farms[0].name, "web");
	assert_int_equal(cfg->listeners[0].port, 8080);
	cfg_put(cfg);
	unlink(path);
	free(path);
	free(json);
}

static void test_load_file_errors_have_the_path(void **state)
{
	char err[512], want[600];
	char *json = dq("{'listeners':[{'port':80}],\n'webFarms':[{'name':'w','weight':1}]}");
	char *path;

	(void)state;
	path = temp_file(json, strlen(json));
	assert_null(cfg_load_file(path, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s: $.webFarms[0].weight: unknown field", path);
	assert_string_equal(err, want);
	unlink(path);
	free(path);
	free(json);

	path = temp_file("{\"listeners\":\n[{\"port\":08}]}", 27);
	assert_null(cfg_load_file(path, err, sizeof(err)));
	snprintf(want, sizeof(want),
		 "%s: line 2, column 10: leading zeros are not allowed in "
		 "numbers",
		 path);
	assert_string_equal(err, want);
	unlink(path);
	free(path);
}

static void test_load_file_missing_and_unreadable(void **state)
{
	char err[512];

	(void)state;
	assert_null(cfg_load_file("/nonexistent/farmgate.json", err, sizeof(err)));
	assert_string_equal(err, "/nonexistent/farmgate.json: cannot open: No such file or "
				 "directory");
	assert_null(cfg_load_file("/tmp", err, sizeof(err)));
	assert_string_equal(err, "/tmp: cannot read: Is a directory");
}

static void test_load_file_size_limit(void **state)
{
	size_t big = 1024 * 1024 + 1, n;
	char *data = malloc(big), *path, err[512], want[600];
	struct config *cfg;
	static const char head[] = "{\"listeners\":[{\"port\":80}]}";

	(void)state;
	assert_non_null(data);
	/* exactly 1 MiB (valid JSON padded with spaces) is accepted */
	memset(data, ' ', big);
	memcpy(data, head, sizeof(head) - 1);
	n = big - 1;
	path = temp_file(data, n);
	cfg = cfg_load_file(path, err, sizeof(err));
	if (cfg == NULL)
		fail_msg("1 MiB refused: %s", err);
	cfg_put(cfg);
	unlink(path);
	free(path);
	/* one byte more is refused before parsing */
	path = temp_file(data, big);
	assert_null(cfg_load_file(path, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s: larger than 1048576 bytes (1 MiB)", path);
	assert_string_equal(err, want);
	unlink(path);
	free(path);
	free(data);
}

/* The system section printed as farmgated -S prints it. The caller frees. */
static char *system_shell(const struct config *cfg, int want_rc, char *err, size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	assert_non_null(f);
	assert_int_equal(cfg_system_shell(cfg, f, err, errlen), want_rc);
	assert_int_equal(fclose(f), 0);
	return text;
}

static void test_system_defaults(void **state)
{
	struct config *cfg = load_ok("{" LISTEN "}");
	const struct system_cfg *s = &cfg->system;
	char err[256] = "", *text;

	(void)state;
	assert_string_equal(s->host_name, "farmgate");
	assert_string_equal(s->net.interface, "eth0");
	assert_int_equal(s->net.mode, NET_MODE_DHCP);
	assert_null(s->net.address);
	assert_null(s->net.gateway);
	assert_int_equal(s->net.dns.n, 0);
	assert_int_equal(s->ntp_servers.n, 0);
	text = system_shell(cfg, 0, err, sizeof(err));
	assert_string_equal(text, "FG_HOSTNAME='farmgate'\n"
				  "FG_NET_IF='eth0'\n"
				  "FG_NET_MODE='dhcp'\n"
				  "FG_NET_ADDRESS=''\n"
				  "FG_NET_GATEWAY=''\n"
				  "FG_NET_DNS=''\n"
				  "FG_NTP_SERVERS=''\n");
	assert_string_equal(err, "");
	free(text);
	cfg_put(cfg);
	/* an empty section, an empty network: the same */
	cfg = load_ok("{" LISTEN ",'system':{'network':{},'ntpServers':[]}}");
	assert_string_equal(cfg->system.host_name, "farmgate");
	assert_string_equal(cfg->system.net.interface, "eth0");
	assert_int_equal(cfg->system.net.mode, NET_MODE_DHCP);
	cfg_put(cfg);
}

static void test_system_static(void **state)
{
	struct config *cfg = load_ok(
		"{" LISTEN ",'system':{'hostName':'fg-01.example.lan','network':{"
		"'interface':'enp0s3','mode':'static','address':'192.168.1.10/24',"
		"'gateway':'192.168.1.1','dns':['192.168.1.1','9.9.9.9','2620:fe::fe']},"
		"'ntpServers':['0.debian.pool.ntp.org','192.168.1.1','2001:db8::123','ntp']}}");
	char err[256] = "", *text;

	(void)state;
	text = system_shell(cfg, 0, err, sizeof(err));
	assert_string_equal(
		text, "FG_HOSTNAME='fg-01.example.lan'\n"
		      "FG_NET_IF='enp0s3'\n"
		      "FG_NET_MODE='static'\n"
		      "FG_NET_ADDRESS='192.168.1.10/24'\n"
		      "FG_NET_GATEWAY='192.168.1.1'\n"
		      "FG_NET_DNS='192.168.1.1 9.9.9.9 2620:fe::fe'\n"
		      "FG_NTP_SERVERS='0.debian.pool.ntp.org 192.168.1.1 2001:db8::123 ntp'\n");
	free(text);
	cfg_put(cfg);
	/* IPv6, the mode in another case, no gateway; DHCP with its DNS overridden */
	cfg = load_ok("{" LISTEN
		      ",'system':{'network':{'mode':'Static','address':'2001:db8::10/64',"
		      "'interface':'br-lan.10'}}}");
	assert_int_equal(cfg->system.net.mode, NET_MODE_STATIC);
	assert_string_equal(cfg->system.net.address, "2001:db8::10/64");
	assert_null(cfg->system.net.gateway);
	cfg_put(cfg);
	cfg = load_ok("{" LISTEN ",'system':{'network':{'dns':['192.168.1.1']}}}");
	assert_int_equal(cfg->system.net.mode, NET_MODE_DHCP);
	assert_int_equal(cfg->system.net.dns.n, 1);
	assert_string_equal(cfg->system.net.dns.v[0], "192.168.1.1");
	cfg_put(cfg);
}

/* The edges of the host-name and prefix rules. */
static void test_system_edges(void **state)
{
	static const char *const ok[] = {
		"{" LISTEN ",'system':{'hostName':'" LABEL63 "'}}",
		"{" LISTEN ",'system':{'hostName':'a'}}",
		"{" LISTEN ",'system':{'hostName':'1-2.3'}}",
		"{" LISTEN ",'system':{'network':{'mode':'static','address':'10.0.0.1/32'}}}",
		"{" LISTEN ",'system':{'network':{'mode':'static','address':'10.0.0.1/1'}}}",
		"{" LISTEN ",'system':{'network':{'mode':'static','address':'::1/128'}}}",
		"{" LISTEN ",'system':{'network':{'interface':'a'}}}",
		"{" LISTEN ",'system':{'network':{'interface':'abcdefghijklmno'}}}",
	};
	char json[600], err[512];
	struct config *cfg;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		cfg_put(load_ok(ok[i]));
	/* 64 characters (the kernel's HOST_NAME_MAX) load; 65 do not, nor do the 253 that
	 * DNS would take */
	snprintf(json, sizeof(json), "{" LISTEN ",'system':{'hostName':'%.31s.%.32s'}}", LABEL63,
		 LABEL63);
	cfg = load_ok(json);
	assert_int_equal(strlen(cfg->system.host_name), 64);
	cfg_put(cfg);
	snprintf(json, sizeof(json), "{" LISTEN ",'system':{'hostName':'%.32s.%.32s'}}", LABEL63,
		 LABEL63);
	load_err(json, err, sizeof(err));
	assert_string_equal(err, SYS_HOST_MSG);
	snprintf(json, sizeof(json), "{" LISTEN ",'system':{'hostName':'%s.%s.%s.%s'}}", LABEL63,
		 LABEL63, LABEL63, "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghi");
	load_err(json, err, sizeof(err));
	assert_string_equal(err, SYS_HOST_MSG);
}

/* The last guard: a value with a byte a shell could read is never printed. */
static void test_system_shell_refuses_unsafe_bytes(void **state)
{
	static const char *const bad[] = {"farm'gate", "farm gate", "a$b", "a\nb", "a\"b", "é"};
	struct config *cfg;
	char err[256], *text;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cfg = load_ok("{" LISTEN ",'system':{'ntpServers':['pool.ntp.org','ntp']}}");
		free(cfg->system.ntp_servers.v[1]);
		cfg->system.ntp_servers.v[1] = strdup(bad[i]);
		assert_non_null(cfg->system.ntp_servers.v[1]);
		text = system_shell(cfg, -1, err, sizeof(err));
		assert_string_equal(text, "");
		assert_string_equal(err, "FG_NTP_SERVERS: a value holds a byte outside "
					 "[A-Za-z0-9.:/_-]: nothing printed");
		free(text);
		cfg_put(cfg);
	}
	cfg = load_ok("{" LISTEN "}");
	free(cfg->system.host_name);
	cfg->system.host_name = strdup("x';reboot;'");
	assert_non_null(cfg->system.host_name);
	text = system_shell(cfg, -1, err, sizeof(err));
	assert_string_equal(text, "");
	assert_string_equal(err, "FG_HOSTNAME: a value holds a byte outside [A-Za-z0-9.:/_-]: "
				 "nothing printed");
	free(text);
	cfg_put(cfg);
}

/* Every strict prefix of a valid file is refused, without leaks (LSan) or
 * out-of-bounds reads (ASan): covers the free paths at every stage. */
static void test_every_prefix_fails_cleanly(void **state)
{
	char *json = dq(doc_example), *copy, err[512];
	size_t len = strlen(json), n;
	struct config *cfg;

	(void)state;
	for (n = 0; n < len; n++) {
		/* the document ends with "}\n": the prefix without the newline is whole */
		if (n == len - 1)
			continue;
		copy = malloc(n ? n : 1);
		assert_non_null(copy);
		memcpy(copy, json, n);
		cfg = cfg_load_buf(copy, n, err, sizeof(err));
		free(copy);
		if (cfg != NULL)
			fail_msg("a prefix of %zu bytes loaded", n);
	}
	free(json);
}

static const struct CMUnitTest fixed_tests[] = {
	cmocka_unit_test(test_doc_example),
	cmocka_unit_test(test_non_default_values),
	cmocka_unit_test(test_defaults),
	cmocka_unit_test(test_no_rules_no_farms_is_valid),
	cmocka_unit_test(test_find_farm_and_refcount),
	cmocka_unit_test(test_put_after_lb_attach),
	cmocka_unit_test(test_enums_case_insensitive),
	cmocka_unit_test(test_timespan),
	cmocka_unit_test(test_errors_from_libraries),
	cmocka_unit_test(test_small_error_buffer),
	cmocka_unit_test(test_load_file),
	cmocka_unit_test(test_load_file_errors_have_the_path),
	cmocka_unit_test(test_load_file_missing_and_unreadable),
	cmocka_unit_test(test_load_file_size_limit),
	cmocka_unit_test(test_every_prefix_fails_cleanly),
	cmocka_unit_test(test_system_defaults),
	cmocka_unit_test(test_system_static),
	cmocka_unit_test(test_system_edges),
	cmocka_unit_test(test_system_shell_refuses_unsafe_bytes),
};

#define N_FIXED_TESTS (sizeof(fixed_tests) / sizeof(fixed_tests[0]))

int main(void)
{
	struct CMUnitTest tests[N_FIXED_TESTS + N_ERR_CASES];
	char names[N_ERR_CASES][32];
	size_t i;

	memcpy(tests, fixed_tests, sizeof(fixed_tests));
	/* one test per error case, so a failure names its case */
	for (i = 0; i < N_ERR_CASES; i++) {
		snprintf(names[i], sizeof(names[i]), "error_case_%02zu", i);
		tests[N_FIXED_TESTS + i] = (struct CMUnitTest){
			.name = names[i],
			.test_func = run_err_case,
			.initial_state = (void *)&err_cases[i],
		};
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
