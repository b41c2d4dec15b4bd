/* farmgate-mgmt: the REST API (docs/management.md) and the embedded web UI.
 *
 * Authentication comes first: only the exact public paths below and the
 * embedded assets (which hold no data) are served without a session; any
 * other path, however it is spelt (..;/, %2e%2e/, //, double encoding), is
 * 401 without one. Paths are matched as sent, never decoded. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "buildopts.h"
#include "fgversion.h"
#include "cfg.h"
#include "json.h"
#include "log.h"
#include "mgmt.h"
#include "mgmt_config.h"
#include "rules.h"
#include "ui_assets.h"

#define API "/api/v1"

struct ctx {
	const struct mgmt_req *rq;
	struct mgmt_resp *rs;
	struct json_doc *doc; /* parsed body, or NULL */
	char csrf[33];
};

static void json_answer(struct ctx *x, int status)
{
	x->rs->status = status;
	x->rs->type = "application/json";
	x->rs->api = 1;
}

static void fail(struct ctx *x, int status, const char *msg)
{
	x->rs->body.len = 0;
	json_answer(x, status);
	jb_lit(&x->rs->body, "{\"error\":");
	jb_str(&x->rs->body, msg);
	jb_lit(&x->rs->body, "}\n");
}

static void ok_empty(struct ctx *x)
{
	json_answer(x, 200);
	jb_lit(&x->rs->body, "{\"ok\":true}\n");
}

static const char *body_str(struct ctx *x, const char *key)
{
	const struct json_value *v = x->doc ? json_get(x->doc->root, key) : NULL;

	return v && v->type == JSON_STRING ? v->u.str.s : NULL;
}

/* A state change must come from our own pages: the session's CSRF token and
 * the browser's word that the request is same-origin. */
static int csrf_ok(struct ctx *x)
{
	const struct mgmt_req *rq = x->rq;
	char want[600];

	if (!rq->csrf || strlen(rq->csrf) != 32 || CRYPTO_memcmp(rq->csrf, x->csrf, 32))
		return 0;
	if (rq->fetch_site && strcmp(rq->fetch_site, "same-origin"))
		return 0;
	if (rq->origin) {
		snprintf(want, sizeof(want), "https://%s", rq->host);
		if (strcmp(rq->origin, want))
			return 0;
	} else if (!rq->fetch_site) {
		return 0; /* a browser sends one of them; scripts must send Origin */
	}
	return 1;
}

/* ---- the control socket ---------------------------------------------------------- */

/* Sends req to farmgated and answers the browser with its answer (minus "ok"
 * when ok), or 502 with farmgated's error. */
static void relay(struct ctx *x, const char *req, int timeout_ms)
{
	char err[256];
	char *ans = control_call(req, timeout_ms, err, sizeof(err));
	struct json_doc *d;
	const struct json_value *okv, *e;

	if (!ans) {
		fail(x, 502, err);
		return;
	}
	d = json_parse(ans, strlen(ans), err, sizeof(err));
	okv = d ? json_get(d->root, "ok") : NULL;
	if (!okv) {
		fail(x, 502, "farmgated gave an answer that is not JSON");
	} else if (okv->type != JSON_TRUE) {
		const char *m;

		e = json_get(d->root, "error");
		m = e && e->type == JSON_STRING ? e->u.str.s : "farmgated refused";
		/* what names nothing that exists is 404, the rest 400 */
		fail(x,
		     strstr(m, "no farm") || strstr(m, "has no server") ||
				     !strncmp(m, "no token", 8)
			     ? 404
			     : 400,
		     m);
	} else {
		json_answer(x, 200);
		jb_lit(&x->rs->body, ans);
	}
	json_free(d);
	free(ans);
}

/* Builds {"op":op,"farm":farm[,"server":server][,key:value]} */
static void ctl_req(struct jbuf *b, const char *op, const char *farm, const char *server,
		    const char *key, const char *value)
{
	jb_lit(b, "{\"op\":");
	jb_str(b, op);
	if (farm) {
		jb_lit(b, ",\"farm\":");
		jb_str(b, farm);
	}
	if (server) {
		jb_lit(b, ",\"server\":");
		jb_str(b, server);
	}
	if (key) {
		jb_lit(b, ",");
		jb_str(b, key);
		jb_lit(b, ":");
		jb_str(b, value);
	}
	jb_lit(b, "}");
}

/* Percent-decodes one path segment (farm or server names); NULL if it
 * holds '/', a control byte or a bad escape. */
static char *segment(const char *s, size_t n)
{
	char *out = malloc(n + 1), *o = out;
	size_t i;

	if (!out)
		return NULL;
	for (i = 0; i < n; i++) {
		unsigned int v;

		if (s[i] == '%') {
			if (i + 2 >= n + 0 || sscanf(s + i + 1, "%2x", &v) != 1)
				goto bad;
			i += 2;
		} else {
			v = (unsigned char)s[i];
		}
		if (v < 0x20 || v == 0x7f || v == '/')
			goto bad;
		*o++ = (char)v;
	}
	*o = 0;
	if (!out[0])
		goto bad;
	return out;
bad:
	free(out);
	return NULL;
}

/* A configuration error: "$.webFarms[0].servers[1].weight: must be ..." gives
 * {"error": "...", "path": "$.webFarms[0].servers[1].weight"}. */
static void fail_cfg(struct ctx *x, int status, const char *err)
{
	const char *colon = err[0] == '$' ? strstr(err, ": ") : NULL;

	fail(x, status, err);
	if (colon) {
		char path[256];

		snprintf(path, sizeof(path), "%.*s", (int)(colon - err), err);
		x->rs->body.len -= 2; /* "}\n" */
		jb_lit(&x->rs->body, ",\"path\":");
		jb_str(&x->rs->body, path);
		jb_lit(&x->rs->body, "}\n");
	}
}

/* The running configuration file, parsed. NULL after answering. */
static struct json_doc *config_doc(struct ctx *x, char **text)
{
	char err[512];
	size_t len = 0;
	struct json_doc *d;

	*text = config_read(&len, err, sizeof(err));
	if (!*text) {
		fail(x, 500, err);
		return NULL;
	}
	d = json_parse(*text, len, err, sizeof(err));
	if (!d || d->root->type != JSON_OBJECT) {
		fail(x, 500, d ? "the configuration is not a JSON object" : err);
		json_free(d);
		free(*text);
		*text = NULL;
		return NULL;
	}
	return d;
}

/* Serialises doc with ed, applies it, answers. */
static void apply_edit(struct ctx *x, const struct json_doc *doc, const struct json_edit *ed,
		       const char *what)
{
	struct jbuf b = {0};
	char err[1024];
	int status;

	json_write(&b, doc->root, 0, ed);
	jb_lit(&b, "\n");
	if (b.oom) {
		fail(x, 503, "out of memory");
	} else if (config_apply(b.p, b.len, &status, err, sizeof(err)) == -1) {
		fail_cfg(x, status, err);
		audit(x->rq->ip, "config-refused", err);
	} else {
		ok_empty(x);
		audit(x->rq->ip, "config", what);
	}
	jb_free(&b);
}

static int farm_index(const struct json_value *farms, const char *name)
{
	size_t i;

	for (i = 0; i < json_len(farms); i++) {
		const struct json_value *n = json_get(json_at(farms, i), "name");

		if (n && n->type == JSON_STRING && !strcasecmp(n->u.str.s, name))
			return (int)i;
	}
	return -1;
}

/* GET/PUT /config, GET/POST /farms, GET/PUT/DELETE /farms/{farm}, GET/PUT
 * /rules: edits of the file, applied through a reload. Returns 1 if the
 * route was one of these. */
/* Edits are read-modify-write of one file: one at a time, from the read
 * through farmgated's reload, so no edit is lost. */
static pthread_mutex_t edit_lock = PTHREAD_MUTEX_INITIALIZER;

static int config_routes_locked(struct ctx *x, const char *path, int get);

static int config_routes(struct ctx *x, const char *path, int get)
{
	int r;

	if (get)
		return config_routes_locked(x, path, get);
	pthread_mutex_lock(&edit_lock);
	r = config_routes_locked(x, path, get);
	pthread_mutex_unlock(&edit_lock);
	return r;
}

static int config_routes_locked(struct ctx *x, const char *path, int get)
{
	const char *m = x->rq->method;
	struct json_edit ed;
	struct json_doc *doc = NULL;
	char *text = NULL, *farm = NULL, detail[300];
	const struct json_value *farms;
	int i;

	memset(&ed, 0, sizeof(ed));
	if (!strcmp(path, "/config") || !strcmp(path, "/backup")) {
		if (!get && !(!strcmp(path, "/config") && !strcmp(m, "PUT"))) {
			fail(x, 405, "GET or PUT");
			return 1;
		}
		if (!get) {
			char err[1024];
			int status;

			if (!x->doc) {
				fail(x, 400, "the body must be the configuration (JSON)");
			} else if (config_apply(x->rq->body, x->rq->body_len, &status, err,
						sizeof(err)) == -1) {
				fail_cfg(x, status, err);
				audit(x->rq->ip, "config-refused", err);
			} else {
				ok_empty(x);
				audit(x->rq->ip, "config", "replaced the whole configuration");
			}
			return 1;
		}
		if (!(doc = config_doc(x, &text)))
			return 1;
		ed.skip_secret = 1; /* an export never carries secrets */
		json_answer(x, 200);
		json_write(&x->rs->body, doc->root, 0, &ed);
		jb_lit(&x->rs->body, "\n");
		if (!strcmp(path, "/backup"))
			snprintf(x->rs->headers, sizeof(x->rs->headers),
				 "Content-Disposition: attachment; "
				 "filename=\"farmgate-config.json\"\r\n");
		goto out;
	}
	if (!strcmp(path, "/config/previous")) {
		char prev[1024], err[512];
		size_t len = 0;

		if (!get) {
			fail(x, 405, "use GET");
			return 1;
		}
		snprintf(prev, sizeof(prev), "%s.prev", M.cfg_path);
		text = config_read_path(prev, &len, err, sizeof(err));
		doc = text ? json_parse(text, len, err, sizeof(err)) : NULL;
		if (!doc) {
			fail(x, text ? 500 : 404, text ? err : "no previous configuration");
			goto out;
		}
		ed.skip_secret = 1;
		json_answer(x, 200);
		json_write(&x->rs->body, doc->root, 0, &ed);
		jb_lit(&x->rs->body, "\n");
		goto out;
	}
	if (!strcmp(path, "/config/restore") || !strcmp(path, "/restore")) {
		char err[1024];
		int status;

		if (strcmp(m, "POST")) {
			fail(x, 405, "use POST");
		} else if (!strcmp(path, "/restore")) {
			if (!x->doc)
				fail(x, 400, "the body must be a configuration backup (JSON)");
			else if (config_apply(x->rq->body, x->rq->body_len, &status, err,
					      sizeof(err)) == -1) {
				fail_cfg(x, status, err);
				audit(x->rq->ip, "config-refused", err);
			} else {
				ok_empty(x);
				audit(x->rq->ip, "config", "restored a backup");
			}
		} else if (config_restore_previous(&status, err, sizeof(err)) == -1) {
			fail_cfg(x, status, err);
			audit(x->rq->ip, "config-refused", err);
		} else {
			ok_empty(x);
			audit(x->rq->ip, "config", "restored the previous generation");
		}
		return 1;
	}
	if (!strcmp(path, "/rules")) {
		if (!get && strcmp(m, "PUT")) {
			fail(x, 405, "GET or PUT");
			return 1;
		}
		if (!(doc = config_doc(x, &text)))
			return 1;
		if (get) {
			const struct json_value *r = json_get(doc->root, "rules");

			json_answer(x, 200);
			if (r)
				json_write(&x->rs->body, r, 0, NULL);
			else
				jb_lit(&x->rs->body, "[]");
			jb_lit(&x->rs->body, "\n");
			goto out;
		}
		if (!x->doc || x->doc->root->type != JSON_ARRAY) {
			fail(x, 400, "the body must be the array of rules");
			goto out;
		}
		ed.parent = doc->root;
		ed.key = "rules";
		ed.with = x->doc->root;
		apply_edit(x, doc, &ed, "rules replaced");
		goto out;
	}
	if (strcmp(path, "/farms") && strncmp(path, "/farms/", 7))
		return 0;
	if (!strncmp(path, "/farms/", 7)) {
		if (strchr(path + 7, '/'))
			return 0; /* /farms/{farm}/...: the runtime routes */
		farm = segment(path + 7, strlen(path + 7));
		if (!farm) {
			fail(x, 404, "no such farm");
			return 1;
		}
	}
	if (!(doc = config_doc(x, &text)))
		goto out;
	farms = json_get(doc->root, "webFarms");
	i = farm ? farm_index(farms, farm) : -1;
	if (farm && i < 0 && strcmp(m, "PUT")) {
		fail(x, 404, "no such farm");
		goto out;
	}
	if (get) {
		ed.skip_secret = 1;
		json_answer(x, 200);
		if (farm)
			json_write(&x->rs->body, json_at(farms, (size_t)i), 0, &ed);
		else if (farms)
			json_write(&x->rs->body, farms, 0, &ed);
		else
			jb_lit(&x->rs->body, "[]");
		jb_lit(&x->rs->body, "\n");
		goto out;
	}
	if (!strcmp(m, "DELETE") && farm) {
		ed.arr = farms;
		ed.idx = (size_t)i;
		snprintf(detail, sizeof(detail), "farm %s deleted", farm);
		apply_edit(x, doc, &ed, detail);
		goto out;
	}
	if ((!strcmp(m, "PUT") && farm) || (!strcmp(m, "POST") && !farm)) {
		const struct json_value *nm = x->doc ? json_get(x->doc->root, "name") : NULL;

		if (!x->doc || x->doc->root->type != JSON_OBJECT || !nm ||
		    nm->type != JSON_STRING) {
			fail(x, 400, "the body must be a farm object with a \"name\"");
			goto out;
		}
		if (farm && strcasecmp(nm->u.str.s, farm) && farm_index(farms, nm->u.str.s) >= 0) {
			fail(x, 409, "another farm has that name");
			goto out;
		}
		if (!farm && farm_index(farms, nm->u.str.s) >= 0) {
			fail(x, 409, "a farm with that name exists: use PUT /farms/{farm}");
			goto out;
		}
		if (!farms) {
			/* no webFarms yet: the array is the new member */
			static const char one[] = "[]";
			struct json_doc *empty = json_parse(one, 2, detail, sizeof(detail));

			if (!empty) {
				fail(x, 503, "out of memory");
				goto out;
			}
			ed.parent = doc->root;
			ed.key = "webFarms";
			ed.with = empty->root;
			ed.arr = empty->root;
			ed.append = 1;
			ed.arr_with = x->doc->root;
			snprintf(detail, sizeof(detail), "farm %s added", nm->u.str.s);
			apply_edit(x, doc, &ed, detail);
			json_free(empty);
			goto out;
		}
		ed.arr = farms;
		ed.arr_with = x->doc->root;
		if (farm && i >= 0) {
			ed.idx = (size_t)i;
		} else {
			ed.append = 1;
		}
		snprintf(detail, sizeof(detail), "farm %s %s", nm->u.str.s,
			 ed.append ? "added" : "changed");
		apply_edit(x, doc, &ed, detail);
		goto out;
	}
	fail(x, 405, farm ? "GET, PUT or DELETE" : "GET or POST");
out:
	json_free(doc);
	free(text);
	free(farm);
	return 1;
}

/* POST /rules/test {url, host[, https]}: which rule and farm answer, by the
 * running file's rules (the data plane's own engine). */
static void rules_test(struct ctx *x)
{
	const char *url = body_str(x, "url"), *host = body_str(x, "host");
	const struct json_value *hv = x->doc ? json_get(x->doc->root, "https") : NULL;
	struct rule_result res;
	struct rule_ctx rc;
	struct config *cfg;
	char err[1024], *text, *buf;
	const char *q;
	size_t len = 0;
	static const char *const outcomes[] = {"NoRoute",	 "Farm",	 "Redirect",
					       "CustomResponse", "AbortRequest", "Error"};

	if (!url || url[0] != '/' || !host) {
		fail(x, 400, "\"url\" (starting with /) and \"host\" are required");
		return;
	}
	text = config_read(&len, err, sizeof(err));
	cfg = text ? cfg_load_buf(text, len, err, sizeof(err)) : NULL;
	free(text);
	if (!cfg) {
		fail(x, 500, err);
		return;
	}
	buf = malloc(16384);
	if (!buf) {
		cfg_put(cfg);
		fail(x, 503, "out of memory");
		return;
	}
	memset(&rc, 0, sizeof(rc));
	q = strchr(url, '?');
	rc.url = url;
	rc.url_len = q ? (size_t)(q - url) : strlen(url);
	rc.query = q ? q + 1 : "";
	rc.query_len = q ? strlen(q + 1) : 0;
	rc.host = host;
	rc.host_len = strlen(host);
	rc.https = hv && hv->type == JSON_TRUE;
	rc.remote_addr = x->rq->ip;
	rc.remote_port = "0";
	rc.server_port = rc.https ? "443" : "80";
	rc.method = "GET";
	rc.method_len = 3;
	rules_eval(cfg, &rc, &res, buf, 16384);
	json_answer(x, 200);
	jb_lit(&x->rs->body, "{\"outcome\":");
	jb_str(&x->rs->body, res.outcome >= 0 && res.outcome <= 5 ? outcomes[res.outcome] : "");
	jb_lit(&x->rs->body, ",\"rule\":");
	if (res.rule)
		jb_str(&x->rs->body, res.rule->name);
	else
		jb_lit(&x->rs->body, "null");
	jb_lit(&x->rs->body, ",\"farm\":");
	if (res.farm)
		jb_str(&x->rs->body, res.farm->name);
	else
		jb_lit(&x->rs->body, "null");
	jb_lit(&x->rs->body, ",\"url\":");
	if (res.url)
		jb_str(&x->rs->body, res.url);
	else
		jb_lit(&x->rs->body, "null");
	jb_fmt(&x->rs->body, ",\"https\":%s,\"status\":%d}\n", res.https ? "true" : "false",
	       res.status);
	free(buf);
	cfg_put(cfg);
}

/* A control request's parsed answer, or NULL after answering the browser. */
static struct json_doc *ctl_doc(struct ctx *x, const char *req, int timeout_ms)
{
	char err[256];
	char *ans = control_call(req, timeout_ms, err, sizeof(err));
	struct json_doc *d;
	const struct json_value *ok, *e;

	if (!ans) {
		fail(x, 502, err);
		return NULL;
	}
	d = json_parse(ans, strlen(ans), err, sizeof(err));
	free(ans);
	ok = d ? json_get(d->root, "ok") : NULL;
	if (!ok || ok->type != JSON_TRUE) {
		e = d ? json_get(d->root, "error") : NULL;
		fail(x, e && e->type == JSON_STRING && strstr(e->u.str.s, "no token") ? 404 : 502,
		     e && e->type == JSON_STRING ? e->u.str.s : "farmgated gave no answer");
		json_free(d);
		return NULL;
	}
	return d;
}

/* GET /tokens: every token farmgated opened, with what each says about
 * itself (label, serial, PIN flags, mechanisms) and its signature counters;
 * GET /tokens/{t}/certificates: the certificates on one, with thumbprints. */
static void token_routes(struct ctx *x, const char *rest)
{
	struct json_doc *list = NULL, *one = NULL;
	const struct json_value *toks;
	struct jbuf req = {0};
	size_t i, k;

	if (!rest[0]) {
		if (!(list = ctl_doc(x, "{\"op\":\"tokens\"}", 10000)))
			return;
		toks = json_get(list->root, "tokens");
		json_answer(x, 200);
		jb_lit(&x->rs->body, "{\"tokens\":[");
		for (i = 0; i < json_len(toks); i++) {
			const struct json_value *t = json_at(toks, i), *nm = json_get(t, "name");

			if (i)
				jb_lit(&x->rs->body, ",");
			req.len = 0;
			ctl_req(&req, "token", NULL, NULL, "token",
				nm && nm->type == JSON_STRING ? nm->u.str.s : "");
			one = ctl_doc(x, req.p, 60000);
			if (!one)
				goto out;
			jb_lit(&x->rs->body, "{");
			for (k = 0; k < t->u.obj.n; k++) {
				jb_str(&x->rs->body, t->u.obj.members[k].key);
				jb_lit(&x->rs->body, ":");
				json_write(&x->rs->body, t->u.obj.members[k].value, 2, NULL);
				jb_lit(&x->rs->body, ",");
			}
			for (k = 0; k < one->root->u.obj.n; k++) {
				const struct json_member *m = &one->root->u.obj.members[k];

				if (!strcmp(m->key, "ok") || !strcmp(m->key, "token") ||
				    !strcmp(m->key, "certificates"))
					continue;
				jb_str(&x->rs->body, m->key);
				jb_lit(&x->rs->body, ":");
				json_write(&x->rs->body, m->value, 2, NULL);
				jb_lit(&x->rs->body, ",");
			}
			jb_fmt(&x->rs->body, "\"certificateCount\":%zu}",
			       json_len(json_get(one->root, "certificates")));
			json_free(one);
			one = NULL;
		}
		jb_lit(&x->rs->body, "]}\n");
		goto out;
	}
	if (rest[0] == '/') {
		const char *e = strchr(rest + 1, '/');
		char *tn = e ? segment(rest + 1, (size_t)(e - rest - 1)) : NULL;

		if (!tn || strcmp(e, "/certificates")) {
			free(tn);
			fail(x, 404, "no such route");
			return;
		}
		ctl_req(&req, "token", NULL, NULL, "token", tn);
		free(tn);
		if (!(one = ctl_doc(x, req.p, 60000)))
			goto out;
		json_answer(x, 200);
		jb_lit(&x->rs->body, "{\"certificates\":");
		if (json_get(one->root, "certificates"))
			json_write(&x->rs->body, json_get(one->root, "certificates"), 0, NULL);
		else
			jb_lit(&x->rs->body, "[]");
		jb_lit(&x->rs->body, "}\n");
		goto out;
	}
	fail(x, 404, "no such route");
out:
	json_free(list);
	json_free(one);
	jb_free(&req);
}

/* POST /tokens/{t}/keys {type, label}, /csr {keyLabel, subject, san},
 * /certificates {pem[, label]}: run in farmgated on the token's signer. */
static void token_post(struct ctx *x, const char *rest)
{
	const char *e = rest[0] == '/' ? strchr(rest + 1, '/') : NULL;
	char *tn = e ? segment(rest + 1, (size_t)(e - rest - 1)) : NULL;
	const struct json_value *root = x->doc ? x->doc->root : NULL;
	struct jbuf req = {0};
	const char *op = NULL;

	if (!tn) {
		fail(x, 404, "no such route");
		return;
	}
	if (!root || root->type != JSON_OBJECT) {
		fail(x, 400, "the body must be a JSON object");
		goto out;
	}
	jb_lit(&req, "{\"op\":");
	if (!strcmp(e, "/keys")) {
		op = "token-keygen";
		jb_str(&req, op);
		jb_lit(&req, ",\"type\":");
		jb_str(&req, body_str(x, "type") ? body_str(x, "type") : "");
		jb_lit(&req, ",\"label\":");
		jb_str(&req, body_str(x, "label") ? body_str(x, "label") : "");
	} else if (!strcmp(e, "/csr")) {
		const struct json_value *san = json_get(root, "san");
		struct jbuf s2 = {0};
		size_t i;

		op = "token-csr";
		jb_str(&req, op);
		jb_lit(&req, ",\"label\":");
		jb_str(&req, body_str(x, "keyLabel") ? body_str(x, "keyLabel") : "");
		jb_lit(&req, ",\"subject\":");
		jb_str(&req, body_str(x, "subject") ? body_str(x, "subject") : "");
		if (san && san->type == JSON_STRING) {
			jb_lit(&s2, san->u.str.s);
		} else {
			for (i = 0; i < json_len(san); i++) {
				const struct json_value *v = json_at(san, i);

				if (v->type != JSON_STRING)
					continue;
				if (s2.len)
					jb_lit(&s2, ",");
				jb_lit(&s2, v->u.str.s);
			}
		}
		if (s2.len) {
			jb_lit(&req, ",\"san\":");
			jb_str(&req, s2.p);
		}
		jb_free(&s2);
	} else if (!strcmp(e, "/pin")) {
		/* farmgated logs in with it and keeps it in memory only; it is
		 * never written here, nor in the audit log */
		op = "token-login";
		jb_str(&req, op);
		jb_lit(&req, ",\"pin\":");
		jb_str(&req, body_str(x, "pin") ? body_str(x, "pin") : "");
	} else if (!strcmp(e, "/pfx")) {
		op = "token-import-pfx";
		jb_str(&req, op);
		jb_lit(&req, ",\"pfx\":");
		jb_str(&req, body_str(x, "pfxBase64") ? body_str(x, "pfxBase64") : "");
		jb_lit(&req, ",\"password\":");
		jb_str(&req, body_str(x, "password") ? body_str(x, "password") : "");
		if (body_str(x, "label")) {
			jb_lit(&req, ",\"label\":");
			jb_str(&req, body_str(x, "label"));
		}
	} else if (!strcmp(e, "/certificates")) {
		op = "token-import-cert";
		jb_str(&req, op);
		jb_lit(&req, ",\"pem\":");
		jb_str(&req, body_str(x, "pem") ? body_str(x, "pem") : "");
		if (body_str(x, "label")) {
			jb_lit(&req, ",\"label\":");
			jb_str(&req, body_str(x, "label"));
		}
	} else {
		fail(x, 404, "no such route");
		goto out;
	}
	jb_lit(&req, ",\"token\":");
	jb_str(&req, tn);
	jb_lit(&req, "}");
	relay(x, req.p, 120000); /* a smart card generates keys slowly */
	if (x->rs->status == 200) {
		char what[300];

		snprintf(what, sizeof(what), "%s on token %s", op, tn);
		audit(x->rq->ip, "token", what);
	}
out:
	if (req.p)
		OPENSSL_cleanse(req.p, req.len); /* it may hold a PIN */
	jb_free(&req);
	free(tn);
}

/* GET /audit: the last entries of the audit log, newest last. */
static void audit_list(struct ctx *x)
{
	char path[512], line[1024];
	FILE *f;
	long n = 0;

	snprintf(path, sizeof(path), "%s/audit.log", M.data_dir);
	json_answer(x, 200);
	jb_lit(&x->rs->body, "{\"entries\":[");
	f = fopen(path, "r");
	if (f) {
		struct stat st;

		if (fstat(fileno(f), &st) == 0 && st.st_size > 256 * 1024 &&
		    fseek(f, st.st_size - 256 * 1024, SEEK_SET) == 0 &&
		    !fgets(line, sizeof(line), f)) /* the first line is cut: skip it */
			line[0] = 0;
		while (fgets(line, sizeof(line), f)) {
			char *t[4] = {line, NULL, NULL, NULL};
			int k;

			line[strcspn(line, "\n")] = 0;
			for (k = 1; k < 4; k++) {
				t[k] = t[k - 1] ? strchr(t[k - 1], '\t') : NULL;
				if (t[k])
					*t[k]++ = 0;
			}
			if (!t[3])
				continue;
			jb_lit(&x->rs->body, n++ ? ",{\"time\":" : "{\"time\":");
			jb_str(&x->rs->body, t[0]);
			jb_lit(&x->rs->body, ",\"ip\":");
			jb_str(&x->rs->body, t[1]);
			jb_lit(&x->rs->body, ",\"action\":");
			jb_str(&x->rs->body, t[2]);
			jb_lit(&x->rs->body, ",\"detail\":");
			jb_str(&x->rs->body, t[3]);
			jb_lit(&x->rs->body, "}");
		}
		fclose(f);
	}
	jb_lit(&x->rs->body, "]}\n");
}

/* /api/v1/farms/{farm}/... */
static void farm_routes(struct ctx *x, const char *rest)
{
	const char *slash = strchr(rest, '/');
	char *farm = slash ? segment(rest, (size_t)(slash - rest)) : NULL;
	struct jbuf req = {0};
	const char *st;

	if (!farm || strcmp(x->rq->method, "POST")) {
		fail(x, farm ? 405 : 404, farm ? "use POST" : "no such route");
		free(farm);
		return;
	}
	if (!strcmp(slash, "/state")) {
		st = body_str(x, "state");
		if (!st) {
			fail(x, 400, "\"state\": Online or Offline");
			goto out;
		}
		ctl_req(&req, "farm", farm, NULL, "state", st);
		relay(x, req.p, 10000);
		if (x->rs->status == 200)
			audit(x->rq->ip, "farm-state", req.p);
	} else if (!strcmp(slash, "/verify")) {
		ctl_req(&req, "verify", farm, NULL, NULL, NULL);
		relay(x, req.p, 120000);
	} else if (!strcmp(slash, "/reset")) {
		ctl_req(&req, "reset", farm, NULL, NULL, NULL);
		relay(x, req.p, 10000);
		if (x->rs->status == 200)
			audit(x->rq->ip, "farm-reset", req.p);
	} else if (!strncmp(slash, "/servers/", 9)) {
		const char *s = slash + 9, *e = strchr(s, '/');
		char *server = e ? segment(s, (size_t)(e - s)) : NULL;

		if (!server || strcmp(e, "/state")) {
			fail(x, 404, "no such route");
			free(server);
			goto out;
		}
		st = body_str(x, "state");
		if (!st) {
			fail(x, 400,
			     "\"state\": Available, DisallowNewConnections, UnavailableGracefully "
			     "or UnavailableImmediately");
			free(server);
			goto out;
		}
		ctl_req(&req, "server", farm, server, "state", st);
		relay(x, req.p, 10000);
		if (x->rs->status == 200)
			audit(x->rq->ip, "server-state", req.p);
		free(server);
	} else {
		fail(x, 404, "no such route");
	}
out:
	jb_free(&req);
	free(farm);
}

/* ---- Prometheus -------------------------------------------------------------------- */

static void prom_label(struct jbuf *b, const char *s)
{
	jb_lit(b, "\"");
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			jb_fmt(b, "\\%c", *s);
		else if (*s == '\n')
			jb_lit(b, "\\n");
		else
			jb_put(b, s, 1);
	}
	jb_lit(b, "\"");
}

static double num(const struct json_value *o, const char *k)
{
	const struct json_value *v = json_get(o, k);

	return v && v->type == JSON_NUMBER ? strtod(v->u.num.text, NULL) : 0;
}

static void metrics(struct ctx *x)
{
	static const char *const ctr[][2] = {
		{"totalRequests", "farmgate_server_requests_total"},
		{"failedRequests", "farmgate_server_failed_requests_total"},
		{"bytesSent", "farmgate_server_sent_bytes_total"},
		{"bytesReceived", "farmgate_server_received_bytes_total"},
		{"webSocketTotal", "farmgate_server_websockets_total"},
	};
	static const char *const gauge[][2] = {
		{"currentRequests", "farmgate_server_current_requests"},
		{"requestsPerSecond", "farmgate_server_requests_per_second"},
		{"responseTimeMs", "farmgate_server_response_time_ms"},
		{"webSocketCurrent", "farmgate_server_websockets_current"},
	};
	char err[256];
	char *ans = control_call("{\"op\":\"status\"}", 10000, err, sizeof(err));
	struct json_doc *d = ans ? json_parse(ans, strlen(ans), err, sizeof(err)) : NULL;
	const struct json_value *farms = d ? json_get(d->root, "farms") : NULL;
	struct jbuf *b = &x->rs->body;
	size_t i, j, k;

	if (!farms) {
		fail(x, 502, ans ? "farmgated gave no status" : err);
		goto out;
	}
	x->rs->status = 200;
	x->rs->type = "text/plain; version=0.0.4; charset=utf-8";
	x->rs->api = 1;
	for (k = 0; k < sizeof(ctr) / sizeof(ctr[0]) + sizeof(gauge) / sizeof(gauge[0]) + 2; k++) {
		const char *key, *name, *type;

		if (k < sizeof(ctr) / sizeof(ctr[0])) {
			key = ctr[k][0];
			name = ctr[k][1];
			type = "counter";
		} else if (k < sizeof(ctr) / sizeof(ctr[0]) + sizeof(gauge) / sizeof(gauge[0])) {
			key = gauge[k - sizeof(ctr) / sizeof(ctr[0])][0];
			name = gauge[k - sizeof(ctr) / sizeof(ctr[0])][1];
			type = "gauge";
		} else if (k == sizeof(ctr) / sizeof(ctr[0]) + sizeof(gauge) / sizeof(gauge[0])) {
			key = "healthy";
			name = "farmgate_server_healthy";
			type = "gauge";
		} else {
			key = "available";
			name = "farmgate_server_available";
			type = "gauge";
		}
		jb_fmt(b, "# TYPE %s %s\n", name, type);
		for (i = 0; i < json_len(farms); i++) {
			const struct json_value *f = json_at(farms, i);
			const struct json_value *fn = json_get(f, "name");
			const struct json_value *servers = json_get(f, "servers");

			for (j = 0; j < json_len(servers); j++) {
				const struct json_value *s = json_at(servers, j);
				const struct json_value *sn = json_get(s, "server");
				const struct json_value *c = json_get(s, "counters");
				const struct json_value *h = json_get(s, "healthy");
				const struct json_value *st = json_get(s, "state");
				double v;

				if (!fn || fn->type != JSON_STRING || !sn ||
				    sn->type != JSON_STRING)
					continue;
				if (!strcmp(key, "healthy"))
					v = h && h->type == JSON_TRUE;
				else if (!strcmp(key, "available"))
					v = st && st->type == JSON_STRING &&
					    !strcmp(st->u.str.s, "Available");
				else
					v = num(c, key);
				jb_fmt(b, "%s{farm=", name);
				prom_label(b, fn->u.str.s);
				jb_lit(b, ",server=");
				prom_label(b, sn->u.str.s);
				jb_fmt(b, "} %.17g\n", v);
			}
		}
	}
	/* the tokens' signature counters */
	free(ans);
	json_free(d);
	ans = control_call("{\"op\":\"tokens\"}", 10000, err, sizeof(err));
	d = ans ? json_parse(ans, strlen(ans), err, sizeof(err)) : NULL;
	farms = d ? json_get(d->root, "tokens") : NULL;
	for (k = 0; k < 4; k++) {
		static const char *const tk[][3] = {
			{"signatures", "farmgate_token_signatures_total", "counter"},
			{"signatureErrors", "farmgate_token_signature_errors_total", "counter"},
			{"loggedIn", "farmgate_token_logged_in", "gauge"},
			{"avgSignatureUs", "farmgate_token_signature_avg_microseconds", "gauge"},
		};

		if (!json_len(farms))
			break;
		jb_fmt(b, "# TYPE %s %s\n", tk[k][1], tk[k][2]);
		for (i = 0; i < json_len(farms); i++) {
			const struct json_value *t = json_at(farms, i), *n = json_get(t, "name");
			const struct json_value *v = json_get(t, tk[k][0]);

			if (!n || n->type != JSON_STRING)
				continue;
			jb_fmt(b, "%s{token=", tk[k][1]);
			prom_label(b, n->u.str.s);
			jb_fmt(b, "} %.17g\n",
			       v && v->type == JSON_TRUE ? 1.0 : (v ? num(t, tk[k][0]) : 0));
		}
	}
out:
	json_free(d);
	free(ans);
}

/* ---- the routes ----------------------------------------------------------------------- */

static const char *cookie_attrs = "; Path=/; Secure; HttpOnly; SameSite=Strict";

/* Login throttling: 1 after answering 429 while this address must wait. */
static int throttled(struct ctx *x)
{
	unsigned int wait = throttle_wait(x->rq->ip);

	if (!wait)
		return 0;
	snprintf(x->rs->headers, sizeof(x->rs->headers), "Retry-After: %u\r\n", wait);
	fail(x, 429, "too many failed attempts: wait and try again");
	return 1;
}

/* The administrator's password again, for what cannot be undone: checked
 * and throttled as a login is (a wrong one counts as a failed login, and is
 * audited as "<action>-failed"). Returns 1, or 0 after answering. */
static int password_again(struct ctx *x, const char *action)
{
	const char *pw = body_str(x, "password");
	char failed[64];
	int ok;

	if (throttled(x))
		return 0;
	if (!pw) {
		fail(x, 400, "\"password\" is required");
		return 0;
	}
	ok = auth_check_password(pw);
	throttle_result(x->rq->ip, ok);
	if (!ok) {
		snprintf(failed, sizeof(failed), "%s-failed", action);
		audit(x->rq->ip, failed, "wrong password");
		fail(x, 403, "wrong password: nothing was done");
	}
	return ok;
}

/* POST /system/reboot {password}, POST /system/factory-reset {password,
 * confirm: "factory-reset"}: with -x, 202 and the helper runs once the
 * answer is out (mgmt.c); without, 501. */
static void system_action(struct ctx *x, const char *what)
{
	static const char *const actions[] = {"reboot", "factory-reset"};
	const char *confirm = body_str(x, "confirm"), *action = NULL;
	unsigned int i;

	for (i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
		if (!strcmp(what, actions[i]))
			action = actions[i];
	if (!action) {
		fail(x, 404, "no such route");
		return;
	}
	if (strcmp(x->rq->method, "POST")) {
		fail(x, 405, "use POST");
		return;
	}
	if (!M.system_helper) {
		fail(x, 501, "not available on this system");
		return;
	}
	if (action == actions[1] && (!confirm || strcmp(confirm, "factory-reset"))) {
		fail(x, 400,
		     "\"confirm\" must be \"factory-reset\": the configuration, tokens, keys and "
		     "logs on the appliance are erased");
		return;
	}
	if (!password_again(x, action))
		return;
	audit(x->rq->ip, action, "accepted");
	x->rs->run_after = action;
	json_answer(x, 202);
	jb_lit(&x->rs->body, "{\"accepted\":true}\n");
}

static void auth_routes(struct ctx *x, const char *what, int logged_in)
{
	const struct mgmt_req *rq = x->rq;
	const char *why = NULL;
	char id[33], csrf[33];

	if (!strcmp(what, "state") && !strcmp(rq->method, "GET")) {
		json_answer(x, 200);
		jb_fmt(&x->rs->body, "{\"passwordSet\":%s,\"loggedIn\":%s",
		       auth_password_set() ? "true" : "false", logged_in ? "true" : "false");
		if (logged_in)
			jb_fmt(&x->rs->body, ",\"csrfToken\":\"%s\"", x->csrf);
		jb_lit(&x->rs->body, "}\n");
		return;
	}
	if (strcmp(rq->method, "POST")) {
		fail(x, 405, "use POST");
		return;
	}
	if (!strcmp(what, "setup") || !strcmp(what, "login")) {
		const char *pw = body_str(x, "password");
		int ok;

		/* same-origin only, even before a session exists */
		if ((rq->fetch_site && strcmp(rq->fetch_site, "same-origin") &&
		     strcmp(rq->fetch_site, "none")) ||
		    (rq->origin &&
		     (strncmp(rq->origin, "https://", 8) || strcmp(rq->origin + 8, rq->host)))) {
			fail(x, 403, "cross-site request refused");
			return;
		}
		if (throttled(x))
			return;
		if (!pw) {
			fail(x, 400, "\"password\" is required");
			return;
		}
		if (!strcmp(what, "setup")) {
			const char *code = body_str(x, "setupCode");

			ok = auth_setup(code ? code : "", pw, &why) == 0;
			/* a wrong code counts as a failed guess; nothing else touches
			 * the throttle (a refused setup must not reset it) */
			if (ok || (why && !strncmp(why, "wrong", 5)))
				throttle_result(rq->ip, ok);
			if (!ok) {
				fail(x, why && !strncmp(why, "wrong", 5) ? 403 : 400, why);
				return;
			}
			audit(rq->ip, "password-setup", "");
		} else {
			ok = auth_password_set() && auth_check_password(pw);
			if (auth_password_set()) /* nothing to guess before setup */
				throttle_result(rq->ip, ok);
			if (!ok) {
				audit(rq->ip, "login-failed", "");
				fail(x, 401,
				     auth_password_set() ? "wrong password"
							 : "no password yet: use the setup");
				return;
			}
			audit(rq->ip, "login", "");
		}
		/* a new session (rotated at every login) */
		session_drop(rq->cookie);
		if (session_new(id, csrf) == -1) {
			fail(x, 503, "no randomness");
			return;
		}
		snprintf(x->rs->headers, sizeof(x->rs->headers),
			 "Set-Cookie: __Host-fgsid=%s%s; Max-Age=28800\r\n", id, cookie_attrs);
		json_answer(x, 200);
		jb_fmt(&x->rs->body, "{\"ok\":true,\"csrfToken\":\"%s\"}\n", csrf);
		OPENSSL_cleanse(id, sizeof(id));
		return;
	}
	if (!logged_in) {
		fail(x, 401, "log in first");
		return;
	}
	if (!csrf_ok(x)) {
		fail(x, 403, "CSRF token or Origin missing or wrong");
		return;
	}
	if (!strcmp(what, "logout")) {
		session_drop(rq->cookie);
		snprintf(x->rs->headers, sizeof(x->rs->headers),
			 "Set-Cookie: __Host-fgsid=%s; Max-Age=0\r\n", cookie_attrs);
		audit(rq->ip, "logout", "");
		ok_empty(x);
		return;
	}
	if (!strcmp(what, "password")) {
		const char *cur = body_str(x, "current"), *pw = body_str(x, "password");

		if (!cur || !pw) {
			fail(x, 400, "\"current\" and \"password\" are required");
			return;
		}
		if (auth_change_password(cur, pw, &why) == -1) {
			fail(x, 400, why);
			return;
		}
		snprintf(x->rs->headers, sizeof(x->rs->headers),
			 "Set-Cookie: __Host-fgsid=%s; Max-Age=0\r\n", cookie_attrs);
		audit(rq->ip, "password-change", "every session was closed");
		ok_empty(x);
		return;
	}
	fail(x, 404, "no such route");
}

static int basic_auth_ok(const char *authz, const char *ip)
{
	unsigned char dec[400];
	const char *colon;
	int n;

	if (!authz || strncasecmp(authz, "Basic ", 6) || strlen(authz + 6) > 500)
		return 0;
	n = EVP_DecodeBlock(dec, (const unsigned char *)authz + 6, (int)strlen(authz + 6));
	if (n <= 0)
		return 0;
	dec[n] = 0;
	colon = strchr((const char *)dec, ':');
	if (!colon || !auth_password_set() || throttle_wait(ip))
		return 0;
	if (!auth_check_password(colon + 1)) {
		throttle_result(ip, 0);
		audit(ip, "login-failed", "/metrics (Basic)");
		return 0;
	}
	throttle_result(ip, 1);
	return 1;
}

static const struct ui_asset *asset_of(const char *path)
{
	unsigned int i;

	if (!strcmp(path, "/"))
		path = "/index.html";
	for (i = 0; i < ui_nassets; i++)
		if (!strcmp(ui_assets[i].path, path))
			return &ui_assets[i];
	return NULL;
}

void mgmt_handle(const struct mgmt_req *rq, struct mgmt_resp *rs)
{
	const struct ui_asset *a;
	struct ctx x;
	char err[256];
	int logged_in, get = !strcmp(rq->method, "GET") || !strcmp(rq->method, "HEAD");

	memset(&x, 0, sizeof(x));
	x.rq = rq;
	x.rs = rs;
	/* the web UI: exact asset paths, public (no data in them) */
	if (get && (a = asset_of(rq->path))) {
		rs->status = 200;
		rs->type = a->type;
		rs->static_body = a->data;
		rs->static_len = a->len;
		snprintf(rs->headers, sizeof(rs->headers),
			 "ETag: \"%s\"\r\nCache-Control: no-cache\r\n", a->etag);
		return;
	}
	logged_in = session_find(rq->cookie, x.csrf);
	if (rq->body_len) {
		x.doc = json_parse(rq->body, rq->body_len, err, sizeof(err));
		if (!x.doc && strncmp(rq->path, API "/", sizeof(API))) {
			/* bodies elsewhere are not ours to read */
		} else if (!x.doc) {
			if (!logged_in &&
			    strncmp(rq->path, API "/auth/", sizeof(API "/auth/") - 1)) {
				fail(&x, 401, "log in first");
				return;
			}
			fail(&x, 400, err);
			return;
		}
	}
	if (!strncmp(rq->path, API "/auth/", sizeof(API "/auth/") - 1) &&
	    (!strcmp(rq->path, API "/auth/state") || !strcmp(rq->path, API "/auth/setup") ||
	     !strcmp(rq->path, API "/auth/login") || !strcmp(rq->path, API "/auth/logout") ||
	     !strcmp(rq->path, API "/auth/password"))) {
		auth_routes(&x, rq->path + sizeof(API "/auth/") - 1, logged_in);
		goto out;
	}
	if (!strcmp(rq->path, "/metrics") && get &&
	    (logged_in || basic_auth_ok(rq->authz, rq->ip))) {
		metrics(&x);
		goto out;
	}
	if (!logged_in) {
		if (!strcmp(rq->path, "/metrics"))
			snprintf(rs->headers, sizeof(rs->headers),
				 "WWW-Authenticate: Basic realm=\"farmgate\"\r\n");
		fail(&x, 401, "log in first");
		goto out;
	}
	if (!get && !csrf_ok(&x)) {
		fail(&x, 403, "CSRF token or Origin missing or wrong");
		goto out;
	}
	if (!strcmp(rq->path, API "/status") && get) {
		relay(&x, "{\"op\":\"status\"}", 10000);
	} else if (!strcmp(rq->path, API "/system") && get) {
		json_answer(&x, 200);
		jb_lit(&rs->body, "{\"version\":");
		jb_str(&rs->body, FG_VERSION);
		jb_fmt(&rs->body,
		       ",\"uptimeS\":%lld,\"buildOptions\":", (long long)(time(NULL) - M.started));
		jb_str(&rs->body, FG_BUILD_OPTIONS);
		jb_lit(&rs->body, M.system_helper ? ",\"actions\":[\"reboot\",\"factory-reset\"]}\n"
						  : ",\"actions\":[]}\n");
	} else if (!strncmp(rq->path, API "/system/", sizeof(API "/system/") - 1)) {
		system_action(&x, rq->path + sizeof(API "/system/") - 1);
	} else if (!strncmp(rq->path, API "/", sizeof(API)) &&
		   config_routes(&x, rq->path + sizeof(API) - 1, get)) {
		/* answered */
	} else if (!strcmp(rq->path, API "/rules/test") && !strcmp(rq->method, "POST")) {
		rules_test(&x);
	} else if (!strncmp(rq->path, API "/tokens", sizeof(API "/tokens") - 1) && get) {
		token_routes(&x, rq->path + sizeof(API "/tokens") - 1);
	} else if (!strncmp(rq->path, API "/tokens/", sizeof(API "/tokens/") - 1) &&
		   !strcmp(rq->method, "POST")) {
		token_post(&x, rq->path + sizeof(API "/tokens") - 1);
	} else if (!strcmp(rq->path, API "/logs") && get) {
		relay(&x, "{\"op\":\"logs\"}", 10000); /* farmgated's recent log */
	} else if (!strcmp(rq->path, API "/audit") && get) {
		audit_list(&x);
	} else if (!strncmp(rq->path, API "/farms/", sizeof(API "/farms/") - 1)) {
		farm_routes(&x, rq->path + sizeof(API "/farms/") - 1);
	} else {
		fail(&x, 404, "no such route");
	}
out:
	if (x.doc) {
		/* secrets never linger in freed memory */
		static const char *const secret[] = {"pin", "password", "current", "setupCode",
						     "pfxBase64"};
		unsigned int i;

		for (i = 0; i < sizeof(secret) / sizeof(secret[0]); i++) {
			const struct json_value *v = json_get(x.doc->root, secret[i]);

			if (v && v->type == JSON_STRING)
				OPENSSL_cleanse((char *)v->u.str.s, v->u.str.len);
		}
	}
	json_free(x.doc);
}
