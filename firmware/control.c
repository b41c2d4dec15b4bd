/* The control socket: a unix stream socket, root only, one JSON request per
 * connection (docs/control.md). Everything runs in the event loop; a Verify
 * URL Test answers when its probes are done. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/x509.h>

#include "cfg.h"
#include "control.h"
#include "p11.h"
#include "signer.h"
#include "tls.h"
#include "tokenops.h"
#include "health.h"
#include "jbuf.h"
#include "json.h"
#include "lb.h"
#include "list.h"
#include "log.h"
#include "proxy.h"

#define CTL_REQ_MAX    65536
#define CTL_TIMEOUT_MS 10000 /* to send the request */
#define CTL_MAX_CONNS  16

struct ctl_conn {
	struct ev_fd ev;
	struct ev_timer tmr;
	struct list link;
	char *in;
	size_t in_len;
	struct jbuf out;
	size_t out_off;
	int replying;
	struct verify *verify;
	char farm[256]; /* the farm a verify runs on, or the token of a token op */
	char in_op[32]; /* the op running asynchronously */
	/* a token operation running on the token's signer thread */
	struct signer_job *job;
	struct signer *job_signer;
	struct ev_fd job_ev;
	void (*job_done)(struct ctl_conn *c, void *arg, int rc);
};

static struct {
	struct ev_loop *loop;
	struct ev_fd lsn;
	char *path;
	struct list conns;
	struct list graveyard;
	unsigned int nconns;
	int inited;
	int (*reload)(char *err, size_t errlen);
} C;

void control_set_reload(int (*fn)(char *err, size_t errlen))
{
	C.reload = fn;
}

static void conn_close(struct ctl_conn *c);

/* ---- JSON output ------------------------------------------------------------ */

/* "key": value pieces; the caller writes commas. */
static void jb_key(struct jbuf *b, const char *k)
{
	jb_str(b, k);
	jb_lit(b, ":");
}

static const char *admin_name(int admin)
{
	switch (admin) {
	case SRV_DRAIN:
		return "DisallowNewConnections";
	case SRV_UNAVAILABLE_GRACEFULLY:
		return "UnavailableGracefully";
	case SRV_UNAVAILABLE_IMMEDIATELY:
		return "UnavailableImmediately";
	default:
		return "Available";
	}
}

static int admin_parse(const char *s)
{
	static const char *const names[] = {"Available", "DisallowNewConnections",
					    "UnavailableGracefully", "UnavailableImmediately"};
	int i;

	for (i = 0; i < 4; i++)
		if (!strcasecmp(s, names[i]))
			return i;
	return -1;
}

struct counters {
	uint64_t cur, total, failed, sent, recv, ws_cur, ws_total, rps;
	uint64_t resp_ms, resp_n;
};

static void counters_add(struct counters *k, struct server_rt *rt, uint64_t now)
{
	k->cur += rt->current_requests;
	k->total += rt->total_requests;
	k->failed += rt->failed_requests;
	k->sent += rt->bytes_sent;
	k->recv += rt->bytes_received;
	k->ws_cur += rt->ws_current;
	k->ws_total += rt->ws_total;
	k->rps += lb_rps(rt, now);
	if (rt->avg_response_ms) {
		k->resp_ms += rt->avg_response_ms;
		k->resp_n++;
	}
}

static void jb_counters(struct jbuf *b, const struct counters *k)
{
	jb_fmt(b,
	       "{\"currentRequests\":%" PRIu64 ",\"totalRequests\":%" PRIu64
	       ",\"failedRequests\":%" PRIu64 ",\"requestsPerSecond\":%" PRIu64,
	       k->cur, k->total, k->failed, k->rps);
	jb_fmt(b, ",\"bytesSent\":%" PRIu64 ",\"bytesReceived\":%" PRIu64, k->sent, k->recv);
	jb_fmt(b,
	       ",\"responseTimeMs\":%" PRIu64 ",\"webSocketCurrent\":%" PRIu64
	       ",\"webSocketTotal\":%" PRIu64 "}",
	       k->resp_n ? k->resp_ms / k->resp_n : 0, k->ws_cur, k->ws_total);
}

static void jb_time(struct jbuf *b, int64_t t)
{
	struct tm tm;
	time_t tt = (time_t)t;
	char s[32];

	if (!t || !gmtime_r(&tt, &tm)) {
		jb_lit(b, "null");
		return;
	}
	strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%SZ", &tm);
	jb_str(b, s);
}

static void jb_server(struct jbuf *b, const struct server *s, uint64_t now)
{
	struct server_rt *rt = s->rt;
	struct counters k;

	memset(&k, 0, sizeof(k));
	counters_add(&k, rt, now);
	jb_lit(b, "{");
	jb_key(b, "server");
	jb_str(b, rt->name);
	jb_lit(b, ",");
	jb_key(b, "address");
	jb_str(b, s->address);
	jb_fmt(b, ",\"httpPort\":%u,\"httpsPort\":%u,\"enabled\":%s,\"weight\":%u,", s->http_port,
	       s->https_port, s->enabled ? "true" : "false", s->weight);
	jb_key(b, "state");
	jb_str(b, admin_name(rt->admin));
	jb_fmt(b, ",\"healthy\":%s,\"health\":{", rt->healthy ? "true" : "false");
	jb_key(b, "lastResult");
	jb_str(b, health_result_name(rt->last_result));
	jb_fmt(b, ",\"lastStatus\":%d,\"lastTimeMs\":%u,", rt->last_status, rt->last_time_ms);
	jb_key(b, "lastReason");
	jb_str(b, rt->last_reason);
	jb_fmt(b, ",\"consecutiveFailures\":%u,\"liveFailures\":%u,\"since\":", rt->probe_failures,
	       rt->live_n);
	jb_time(b, rt->health_changed);
	jb_lit(b, "},\"counters\":");
	jb_counters(b, &k);
	jb_lit(b, "}");
}

static void jb_farm(struct jbuf *b, const struct farm *f, uint64_t now)
{
	struct counters k;
	unsigned int i, n = 0;

	memset(&k, 0, sizeof(k));
	for (i = 0; i < f->nservers; i++)
		if (f->servers[i].rt)
			counters_add(&k, f->servers[i].rt, now);
	jb_lit(b, "{");
	jb_key(b, "name");
	jb_str(b, f->name);
	jb_lit(b, ",");
	jb_key(b, "state");
	jb_str(b, f->rt && f->rt->offline ? "Offline" : "Online");
	jb_fmt(b, ",\"enabled\":%s,\"healthCheck\":", f->enabled ? "true" : "false");
	if (f->health.url) {
		jb_lit(b, "{");
		jb_key(b, "url");
		jb_str(b, f->health.url);
		jb_fmt(b, ",\"intervalMs\":%u,\"timeoutMs\":%u,\"retries\":%u,\"minServers\":%u}",
		       f->health.interval_ms, f->health.timeout_ms, f->health.retries,
		       f->health.min_servers);
	} else {
		jb_lit(b, "null");
	}
	jb_lit(b, ",\"counters\":");
	jb_counters(b, &k);
	jb_lit(b, ",\"servers\":[");
	for (i = 0; i < f->nservers; i++) {
		if (!f->servers[i].rt)
			continue;
		if (n++)
			jb_lit(b, ",");
		jb_server(b, &f->servers[i], now);
	}
	jb_lit(b, "]}");
}

/* ---- requests ---------------------------------------------------------------- */

static void reply_error(struct ctl_conn *c, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	c->out.len = 0;
	jb_lit(&c->out, "{\"ok\":false,\"error\":");
	jb_str(&c->out, msg);
	jb_lit(&c->out, "}\n");
}

static const char *str_member(const struct json_value *o, const char *k)
{
	const struct json_value *v = json_get(o, k);

	return v && v->type == JSON_STRING ? v->u.str.s : NULL;
}

/* The server of f named "address:port", "[v6]:port", or a bare address
 * that only one server has. */
static struct server *find_server(struct farm *f, const char *name, int *ambiguous)
{
	struct server *hit = NULL;
	unsigned int i, n = 0;

	*ambiguous = 0;
	for (i = 0; i < f->nservers; i++) {
		struct server *s = &f->servers[i];

		if (!s->rt)
			continue;
		if (!strcasecmp(s->rt->name, name))
			return s;
		if (!strcasecmp(s->address, name)) {
			hit = s;
			n++;
		}
	}
	if (n > 1) {
		*ambiguous = 1;
		return NULL;
	}
	return hit;
}

static void verify_done(void *arg)
{
	struct ctl_conn *c = arg;
	struct config *cfg = proxy_config();
	struct farm *f = cfg ? cfg_find_farm(cfg, c->farm, strlen(c->farm)) : NULL;
	unsigned int i, n = 0;

	c->verify = NULL;
	if (!f) {
		reply_error(c, "farm \"%s\" left the configuration during the test", c->farm);
	} else {
		c->out.len = 0;
		jb_lit(&c->out, "{\"ok\":true,\"farm\":");
		jb_str(&c->out, f->name);
		jb_lit(&c->out, ",\"results\":[");
		for (i = 0; i < f->nservers; i++) {
			struct server_rt *rt = f->servers[i].rt;

			if (!rt)
				continue;
			if (n++)
				jb_lit(&c->out, ",");
			jb_lit(&c->out, "{\"server\":");
			jb_str(&c->out, rt->name);
			jb_lit(&c->out, ",\"result\":");
			jb_str(&c->out, health_result_name(rt->last_result));
			jb_fmt(&c->out, ",\"status\":%d,\"timeMs\":%u,\"healthy\":%s,\"reason\":",
			       rt->last_status, rt->last_time_ms, rt->healthy ? "true" : "false");
			jb_str(&c->out, rt->last_reason);
			jb_lit(&c->out, "}");
		}
		jb_lit(&c->out, "]}\n");
	}
	c->replying = 1;
	ev_fd_mod(C.loop, &c->ev, EPOLLOUT);
}

/* ---- token operations (on the token's signer thread) ------------------------ */

struct token_job {
	char err[512];
	int kind;	     /* keygen: enum p11_key_kind */
	char label[128];     /* keygen, import: the label */
	char *subject, *san; /* csr */
	char *pem;	     /* import: the certificate */
	char pin[256];	     /* login, PFX password: wiped when the job is freed */
	char *pfx;	     /* PFX, base64 */
	struct jbuf out;     /* the JSON fragment built on the signer thread */
};

static void tj_free(void *arg)
{
	struct token_job *j = arg;

	jb_free(&j->out);
	free(j->subject);
	free(j->san);
	free(j->pem);
	OPENSSL_cleanse(j->pin, sizeof(j->pin));
	if (j->pfx)
		OPENSSL_cleanse(j->pfx, strlen(j->pfx));
	free(j->pfx);
	free(j);
}

static void job_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events);

static void conn_reply_ready(struct ctl_conn *c)
{
	c->replying = 1;
	ev_timer_set(C.loop, &c->tmr, C.loop->now_ms + CTL_TIMEOUT_MS);
	ev_fd_mod(C.loop, &c->ev, EPOLLOUT);
}

/* Queues fn on tok's signer; done(c, arg, rc) answers when it finished. */
static int token_async(struct ctl_conn *c, struct fg_token *tok,
		       int (*fn)(struct p11_token *t, void *arg), void *arg,
		       void (*done)(struct ctl_conn *c, void *arg, int rc))
{
	c->job = signer_post(tok->signer, fn, arg, tj_free);
	if (!c->job)
		return -1;
	c->job_signer = tok->signer;
	c->job_done = done;
	c->job_ev.fd = signer_job_fd(c->job);
	c->job_ev.cb = job_cb;
	if (ev_fd_add(C.loop, &c->job_ev, EPOLLIN) == -1) {
		signer_job_release(c->job_signer, c->job);
		c->job = NULL;
		return -1;
	}
	return 0;
}

static void job_forget(struct ctl_conn *c)
{
	if (!c->job)
		return;
	c->job_ev.fd = -1; /* closed with the job (which leaves epoll then) */
	signer_job_release(c->job_signer, c->job);
	c->job = NULL;
}

static void job_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	struct ctl_conn *c = container_of(w, struct ctl_conn, job_ev);

	(void)loop;
	(void)events;
	if (!c->job || !signer_job_done(c->job))
		return;
	c->job_done(c, signer_job_arg(c->job), signer_job_rc(c->job));
	job_forget(c);
	conn_reply_ready(c);
}

static void tj_put(struct token_job *j, const char *s, size_t n)
{
	jb_put(&j->out, s, n);
}

static void tj_str(struct token_job *j, const char *s)
{
	jb_str(&j->out, s);
}

static void tj_name(struct token_job *j, const X509_NAME *nm)
{
	char buf[512];

	X509_NAME_oneline(nm, buf, sizeof(buf));
	tj_str(j, buf);
}

/* What the token says about itself and every certificate on it. */
static int token_describe(struct p11_token *t, void *arg)
{
	static const struct {
		CK_MECHANISM_TYPE m;
		const char *name;
	} mechs[] = {
		{CKM_RSA_PKCS, "RSA-PKCS"},
		{CKM_RSA_X_509, "RSA-X-509"},
		{CKM_RSA_PKCS_PSS, "RSA-PKCS-PSS"},
		{CKM_ECDSA, "ECDSA"},
		{CKM_RSA_PKCS_KEY_PAIR_GEN, "RSA-PKCS-KEY-PAIR-GEN"},
		{CKM_EC_KEY_PAIR_GEN, "EC-KEY-PAIR-GEN"},
	};
	struct token_job *j = arg;
	struct p11_cert *certs = NULL;
	size_t n = 0, i, k;
	char hex[65];

	tj_put(j, "\"label\":", 8);
	tj_str(j, p11_token_label(t));
	tj_put(j, ",\"serial\":", 10);
	tj_str(j, p11_token_serial(t));
	jb_fmt(&j->out, ",\"slot\":%lu", (unsigned long)p11_token_slot(t));
	tj_put(j, ",\"pinFlags\":", 12);
	tj_str(j, p11_pin_flags_text(p11_token_flags(t)));
	tj_put(j, ",\"mechanisms\":[", 15);
	for (i = 0, k = 0; i < sizeof(mechs) / sizeof(mechs[0]); i++)
		if (p11_token_has_mechanism(t, mechs[i].m)) {
			if (k++)
				tj_put(j, ",", 1);
			tj_str(j, mechs[i].name);
		}
	tj_put(j, "],\"certificates\":[", 18);
	if (p11_certs_list(t, &certs, &n, j->err, sizeof(j->err)) == -1)
		n = 0;
	for (i = 0; i < n; i++) {
		const struct p11_cert *c = &certs[i];
		EVP_PKEY *pk = X509_get0_pubkey(c->x509);
		const ASN1_TIME *na = X509_get0_notAfter(c->x509);
		struct tm tm;
		char when[32] = "";

		if (na && ASN1_TIME_to_tm(na, &tm))
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
		tj_put(j, i ? ",{\"label\":" : "{\"label\":", i ? 10 : 9);
		tj_str(j, c->label);
		tj_put(j, ",\"id\":", 6);
		tj_str(j, p11_hex_lower(c->id, c->id_len < 32 ? c->id_len : 32, hex));
		tj_put(j, ",\"sha1\":", 8);
		tj_str(j, p11_hex_upper(c->sha1, 20, hex));
		tj_put(j, ",\"sha256\":", 10);
		tj_str(j, p11_hex_upper(c->sha256, 32, hex));
		tj_put(j, ",\"subject\":", 11);
		tj_name(j, X509_get_subject_name(c->x509));
		tj_put(j, ",\"issuer\":", 10);
		tj_name(j, X509_get_issuer_name(c->x509));
		tj_put(j, ",\"notAfter\":", 12);
		tj_str(j, when);
		jb_fmt(&j->out, ",\"keyType\":\"%s %d\"}",
		       pk && EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC ? "EC" : "RSA",
		       pk ? EVP_PKEY_get_bits(pk) : 0);
	}
	p11_certs_free(certs, n);
	tj_put(j, "]", 1);
	return 0;
}

static void token_describe_done(struct ctl_conn *c, void *arg, int rc)
{
	struct token_job *j = arg;

	(void)rc;
	c->out.len = 0;
	jb_lit(&c->out, "{\"ok\":true,\"token\":");
	jb_str(&c->out, c->farm);
	jb_lit(&c->out, ",");
	if (j->out.p)
		jb_put(&c->out, j->out.p, j->out.len);
	jb_lit(&c->out, "}\n");
}

/* keygen, csr and import: the operator's token operations (hsm/tokenops) */
static int token_keygen(struct p11_token *t, void *arg)
{
	struct token_job *j = arg;
	unsigned char id[128];
	size_t n = 0;
	char hex[257];

	if (tokop_keygen(t, (enum p11_key_kind)j->kind, j->label, NULL, 0, id, &n, j->err,
			 sizeof(j->err)))
		return -1;
	tj_put(j, "\"id\":", 5);
	tj_str(j, p11_hex_lower(id, n, hex));
	tj_put(j, ",\"label\":", 9);
	tj_str(j, j->label);
	return 0;
}

static int token_csr(struct p11_token *t, void *arg)
{
	struct token_job *j = arg;
	X509_REQ *req = tokop_csr(t, NULL, 0, j->label, j->subject, j->san, j->err, sizeof(j->err));
	BIO *b;
	char *pem;
	long n;

	if (!req)
		return -1;
	b = BIO_new(BIO_s_mem());
	if (!b || !PEM_write_bio_X509_REQ(b, req)) {
		snprintf(j->err, sizeof(j->err), "out of memory");
		BIO_free(b);
		X509_REQ_free(req);
		return -1;
	}
	n = BIO_get_mem_data(b, &pem);
	tj_put(j, "\"csr\":", 6);
	{
		char *z = strndup(pem, (size_t)n);

		if (z)
			tj_str(j, z);
		free(z);
	}
	BIO_free(b);
	X509_REQ_free(req);
	return 0;
}

static int token_import(struct p11_token *t, void *arg)
{
	struct token_job *j = arg;
	X509 *x = tokop_parse_cert((const unsigned char *)j->pem, strlen(j->pem));
	unsigned char d[32];
	char label[128], hex[65];
	int rc;

	if (!x) {
		snprintf(j->err, sizeof(j->err), "not a PEM or DER X.509 certificate");
		return -1;
	}
	rc = tokop_import_cert(t, x, j->label[0] ? j->label : NULL, 0, label, j->err,
			       sizeof(j->err));
	if (!rc) {
		tj_put(j, "\"label\":", 8);
		tj_str(j, label);
		X509_digest(x, EVP_sha1(), d, NULL);
		tj_put(j, ",\"sha1\":", 8);
		tj_str(j, p11_hex_upper(d, 20, hex));
		X509_digest(x, EVP_sha256(), d, NULL);
		tj_put(j, ",\"sha256\":", 10);
		tj_str(j, p11_hex_upper(d, 32, hex));
	}
	X509_free(x);
	return rc;
}

/* PIN entry after boot: one try, never repeated by farmgated itself. */
static int token_login(struct p11_token *t, void *arg)
{
	struct token_job *j = arg;

	return p11_token_login(t, j->pin, j->err, sizeof(j->err)) ? -1 : 0;
}

static void token_login_done(struct ctl_conn *c, void *arg, int rc)
{
	struct token_job *j = arg;
	struct fg_token *tok = tls_token_find(proxy_config(), c->farm);
	char err[1024];

	c->out.len = 0;
	if (rc != 0 || !tok) {
		LOGW("token %s: the PIN given through the control socket was refused: %s", c->farm,
		     j->err);
		reply_error(c, "token %s: %s", c->farm, j->err[0] ? j->err : "login failed");
		return;
	}
	signer_await_pin(tok->signer, 0);
	LOGI("token %s: logged in with the PIN from the control socket (kept in memory only)",
	     tok->name);
	/* the farms that use it find their keys now, through a reload */
	if (C.reload && C.reload(err, sizeof(err)) == -1) {
		reply_error(c, "token %s is logged in, but the reload failed: %s", tok->name, err);
		return;
	}
	jb_lit(&c->out, "{\"ok\":true,\"token\":");
	jb_str(&c->out, tok->name);
	jb_lit(&c->out, ",\"loggedIn\":true}\n");
}

/* ARR's PFX, imported onto the token (key sensitive, never extractable);
 * the software copy is freed at once. */
static int token_import_pfx(struct p11_token *t, void *arg)
{
	struct token_job *j = arg;
	size_t b64 = strlen(j->pfx);
	unsigned char *der = malloc(b64 / 4 * 3 + 3), d[32], id[8];
	const unsigned char *p = der;
	STACK_OF(X509) *ca = NULL;
	EVP_PKEY *pkey = NULL;
	PKCS12 *p12 = NULL;
	X509 *x = NULL;
	char label[128], hex[65];
	int n, rc = -1;

	static OSSL_PROVIDER *legacy; /* older PFX files use RC2 / 3DES; kept loaded */

	if (!legacy)
		legacy = OSSL_PROVIDER_try_load(NULL, "legacy", 1);
	n = der ? EVP_DecodeBlock(der, (const unsigned char *)j->pfx, (int)b64) : -1;
	while (n > 0 && b64 && j->pfx[b64 - 1] == '=') { /* EVP_DecodeBlock counts padding */
		n--;
		b64--;
	}
	if (n <= 0 || !(p12 = d2i_PKCS12(NULL, &p, n))) {
		snprintf(j->err, sizeof(j->err), "not a PFX (PKCS#12, base64)");
		goto out;
	}
	if (!PKCS12_parse(p12, j->pin, &pkey, &x, &ca) || !pkey || !x) {
		snprintf(j->err, sizeof(j->err),
			 "wrong PFX password, or no key and certificate in it");
		goto out;
	}
	if (X509_check_private_key(x, pkey) != 1) {
		snprintf(j->err, sizeof(j->err),
			 "the PFX's key does not belong to its certificate");
		goto out;
	}
	if (tokop_cert_stored(t, x, j->err, sizeof(j->err)))
		goto out;
	X509_digest(x, EVP_sha1(), d, NULL);
	memcpy(id, d, sizeof(id)); /* CKA_ID from the thumbprint, as a config import does */
	tokop_pick_label(x, j->label[0] ? j->label : NULL, (const char *)X509_alias_get0(x, NULL),
			 label);
	if (tokop_import_key_cert(t, pkey, x, label, id, sizeof(id), j->err, sizeof(j->err)))
		goto out;
	tj_put(j, "\"label\":", 8);
	tj_str(j, label);
	tj_put(j, ",\"sha1\":", 8);
	tj_str(j, p11_hex_upper(d, 20, hex));
	X509_digest(x, EVP_sha256(), d, NULL);
	tj_put(j, ",\"sha256\":", 10);
	tj_str(j, p11_hex_upper(d, 32, hex));
	rc = 0;
out:
	EVP_PKEY_free(pkey); /* the software copy goes now */
	X509_free(x);
	sk_X509_pop_free(ca, X509_free);
	PKCS12_free(p12);
	if (der) {
		OPENSSL_cleanse(der, b64 / 4 * 3 + 3);
		free(der);
	}
	ERR_clear_error();
	return rc;
}

static void token_op_done(struct ctl_conn *c, void *arg, int rc)
{
	struct token_job *j = arg;

	c->out.len = 0;
	if (rc != 0) {
		reply_error(c, "token %s: %s", c->farm, j->err[0] ? j->err : "failed");
		return;
	}
	jb_lit(&c->out, "{\"ok\":true,\"token\":");
	jb_str(&c->out, c->farm);
	if (j->out.p) {
		jb_lit(&c->out, ",");
		jb_put(&c->out, j->out.p, j->out.len);
	}
	jb_lit(&c->out, "}\n");
	LOGI("token %s: %s (control socket)", c->farm, c->in_op);
}

static void jb_tokens(struct jbuf *b)
{
	const struct config *cfg = proxy_config();
	unsigned int i;
	int n = 0;

	jb_lit(b, "{\"ok\":true,\"tokens\":[");
	for (i = 0; cfg && i < cfg->ntokens; i++) {
		struct fg_token *t = tls_token_of(&cfg->tokens[i]);
		const struct sign_stats *st;
		unsigned long long cnt;

		if (!t)
			continue;
		st = signer_stats(t->signer);
		cnt = atomic_load(&st->count);
		if (n++)
			jb_lit(b, ",");
		jb_lit(b, "{\"name\":");
		jb_str(b, t->name);
		jb_lit(b, ",\"module\":");
		jb_str(b, t->module);
		jb_lit(b, ",\"uri\":");
		jb_str(b, t->uri);
		jb_fmt(b, ",\"needsPin\":%s", signer_awaiting_pin(t->signer) ? "true" : "false");
		jb_fmt(b, ",\"loggedIn\":%s,\"signatures\":%llu,\"signatureErrors\":%llu",
		       signer_is_up(t->signer) ? "true" : "false", cnt,
		       (unsigned long long)atomic_load(&st->errors));
		jb_fmt(b, ",\"avgSignatureUs\":%llu,\"maxSignatureUs\":%llu}",
		       cnt ? (unsigned long long)atomic_load(&st->total_us) / cnt : 0ULL,
		       (unsigned long long)atomic_load(&st->max_us));
	}
	jb_lit(b, "]}\n");
}

static void jb_log_line(const char *line, void *arg)
{
	struct ctl_conn *c = arg;

	if (c->out.len && c->out.p[c->out.len - 1] != '[')
		jb_lit(&c->out, ",");
	jb_str(&c->out, line);
}

/* Handles one request. Returns 1 when the answer is ready in c->out, 0 when
 * it comes later (verify). */
static int handle(struct ctl_conn *c, const struct json_value *req)
{
	struct config *cfg = proxy_config();
	const char *op = str_member(req, "op");
	const char *fname = str_member(req, "farm");
	const char *sname = str_member(req, "server");
	uint64_t now = C.loop->now_ms;
	struct farm *f = NULL;
	struct server *s = NULL;
	unsigned int i;
	int amb = 0;

	if (req->type != JSON_OBJECT || !op) {
		reply_error(c, "a request is a JSON object with \"op\"");
		return 1;
	}
	if (!cfg) {
		reply_error(c, "no configuration");
		return 1;
	}
	if (fname) {
		f = cfg_find_farm(cfg, fname, strlen(fname));
		if (!f) {
			reply_error(c, "no farm \"%s\"", fname);
			return 1;
		}
	}
	if (sname) {
		if (!f) {
			reply_error(c, "\"server\" needs \"farm\"");
			return 1;
		}
		s = find_server(f, sname, &amb);
		if (!s) {
			reply_error(c,
				    amb ? "farm %s has several servers at %s: give address:port"
					: "farm %s has no server \"%s\"",
				    f->name, sname);
			return 1;
		}
	}
	if (!strcmp(op, "logs")) {
		jb_lit(&c->out, "{\"ok\":true,\"lines\":[");
		log_recent(jb_log_line, c);
		jb_lit(&c->out, "]}\n");
		return 1;
	}
	if (!strcmp(op, "tokens")) {
		jb_tokens(&c->out);
		return 1;
	}
	if (!strcmp(op, "token")) {
		const char *tn = str_member(req, "token");
		struct fg_token *tok = tn ? tls_token_find(proxy_config(), tn) : NULL;
		struct token_job *j;

		if (!tok) {
			reply_error(c, "no token \"%s\"", tn ? tn : "");
			return 1;
		}
		j = calloc(1, sizeof(*j));
		snprintf(c->farm, sizeof(c->farm), "%s", tok->name);
		if (!j || token_async(c, tok, token_describe, j, token_describe_done) == -1) {
			reply_error(c, "cannot reach token %s", tok->name);
			return 1;
		}
		return 0;
	}
	if (!strcmp(op, "token-login")) {
		const char *tn = str_member(req, "token"), *pin = str_member(req, "pin");
		struct fg_token *tok = tn ? tls_token_find(proxy_config(), tn) : NULL;
		struct token_job *j;

		if (!tok) {
			reply_error(c, "no token \"%s\"", tn ? tn : "");
			return 1;
		}
		if (!signer_awaiting_pin(tok->signer)) {
			reply_error(c, "token %s is not waiting for a PIN", tok->name);
			return 1;
		}
		if (!pin || !*pin || strlen(pin) >= sizeof(j->pin)) {
			reply_error(c, "\"pin\" is required (at most 255 bytes)");
			return 1;
		}
		j = calloc(1, sizeof(*j));
		if (!j) {
			reply_error(c, "out of memory");
			return 1;
		}
		memcpy(j->pin, pin, strlen(pin) + 1);
		snprintf(c->farm, sizeof(c->farm), "%s", tok->name);
		if (token_async(c, tok, token_login, j, token_login_done) == -1) {
			reply_error(c, "cannot reach token %s", tok->name);
			return 1;
		}
		return 0;
	}
	if (!strcmp(op, "token-keygen") || !strcmp(op, "token-csr") ||
	    !strcmp(op, "token-import-cert") || !strcmp(op, "token-import-pfx")) {
		const char *tn = str_member(req, "token"), *label = str_member(req, "label");
		struct fg_token *tok = tn ? tls_token_find(proxy_config(), tn) : NULL;
		int (*fn)(struct p11_token *, void *) = token_keygen;
		struct token_job *j;
		enum p11_key_kind kind;

		if (!tok) {
			reply_error(c, "no token \"%s\"", tn ? tn : "");
			return 1;
		}
		j = calloc(1, sizeof(*j));
		if (!j) {
			reply_error(c, "out of memory");
			return 1;
		}
		snprintf(j->label, sizeof(j->label), "%s", label ? label : "");
		if (!strcmp(op, "token-keygen")) {
			const char *type = str_member(req, "type");

			if (!type || tokop_key_kind(type, &kind) == -1 || !j->label[0]) {
				tj_free(j);
				reply_error(c,
					    "\"type\" (RSA-2048, RSA-3072, EC-P256, EC-P384) and "
					    "\"label\" are required");
				return 1;
			}
			j->kind = (int)kind;
		} else if (!strcmp(op, "token-csr")) {
			const char *sub = str_member(req, "subject"), *san = str_member(req, "san");

			if (!sub || !j->label[0]) {
				tj_free(j);
				reply_error(c,
					    "\"label\" (the key's) and \"subject\" (/CN=...) are "
					    "required");
				return 1;
			}
			j->subject = strdup(sub);
			j->san = san ? strdup(san) : NULL;
			fn = token_csr;
		} else if (!strcmp(op, "token-import-pfx")) {
			const char *pfx = str_member(req, "pfx"), *pw = str_member(req, "password");

			if (!pfx || !*pfx || (pw && strlen(pw) >= sizeof(j->pin))) {
				tj_free(j);
				reply_error(
					c, "\"pfx\" (base64) is required, \"password\" at most 255 "
					   "bytes");
				return 1;
			}
			j->pfx = strdup(pfx);
			snprintf(j->pin, sizeof(j->pin), "%s", pw ? pw : "");
			fn = token_import_pfx;
		} else {
			const char *pem = str_member(req, "pem");

			if (!pem) {
				tj_free(j);
				reply_error(c, "\"pem\" (the certificate) is required");
				return 1;
			}
			j->pem = strdup(pem);
			fn = token_import;
		}
		snprintf(c->farm, sizeof(c->farm), "%s", tok->name);
		snprintf(c->in_op, sizeof(c->in_op), "%s", op);
		if (token_async(c, tok, fn, j, token_op_done) == -1) {
			reply_error(c, "cannot reach token %s", tok->name);
			return 1;
		}
		return 0;
	}
	if (!strcmp(op, "reload")) {
		char err[1024];

		if (!C.reload || C.reload(err, sizeof(err)) == -1) {
			reply_error(c, "%s", C.reload ? err : "reload is not available");
			return 1;
		}
		jb_lit(&c->out, "{\"ok\":true}\n");
		return 1;
	}
	if (!strcmp(op, "status")) {
		/* the digest of the file text running: farmgate-mgmt compares it
		 * with the file's to find a save that was never applied */
		jb_lit(&c->out, "{\"ok\":true,\"configSha256\":\"");
		for (i = 0; i < sizeof(cfg->sha256); i++)
			jb_fmt(&c->out, "%02x", cfg->sha256[i]);
		jb_lit(&c->out, "\",\"farms\":[");
		for (i = 0; i < cfg->nfarms; i++) {
			if (f && f != &cfg->farms[i])
				continue;
			if (!f && i)
				jb_lit(&c->out, ",");
			jb_farm(&c->out, &cfg->farms[i], now);
		}
		jb_lit(&c->out, "]}\n");
		return 1;
	}
	if (!strcmp(op, "server") || !strcmp(op, "health")) {
		const struct json_value *hv = json_get(req, "healthy");
		const char *st = str_member(req, "state");
		int admin;

		if (!s) {
			reply_error(c, "\"%s\" needs \"farm\" and \"server\"", op);
			return 1;
		}
		if (!strcmp(op, "server")) {
			admin = st ? admin_parse(st) : -1;
			if (admin < 0) {
				reply_error(c,
					    "\"state\" must be Available, DisallowNewConnections, "
					    "UnavailableGracefully or UnavailableImmediately");
				return 1;
			}
			if (admin != s->rt->admin)
				LOGI("farm %s server %s: %s (control socket)", f->name, s->rt->name,
				     admin_name(admin));
			proxy_server_admin(s->rt, admin);
		} else {
			if (!hv || (hv->type != JSON_TRUE && hv->type != JSON_FALSE)) {
				reply_error(c, "\"healthy\" must be true or false");
				return 1;
			}
			lb_set_healthy(s->rt, hv->type == JSON_TRUE, "set by the operator", now);
		}
		jb_lit(&c->out, "{\"ok\":true,\"farm\":");
		jb_str(&c->out, f->name);
		jb_lit(&c->out, ",\"server\":");
		jb_server(&c->out, s, now);
		jb_lit(&c->out, "}\n");
		return 1;
	}
	if (!f) {
		reply_error(c, "\"%s\" needs \"farm\"", op);
		return 1;
	}
	if (!strcmp(op, "farm")) {
		const char *st = str_member(req, "state");

		if (!st || (strcasecmp(st, "Online") && strcasecmp(st, "Offline"))) {
			reply_error(c, "\"state\" must be Online or Offline");
			return 1;
		}
		if (f->rt && f->rt->offline != !strcasecmp(st, "Offline")) {
			f->rt->offline = !strcasecmp(st, "Offline");
			LOGI("farm %s: %s (control socket)", f->name,
			     f->rt->offline ? "taken offline" : "brought online");
		}
	} else if (!strcmp(op, "reset")) {
		for (i = 0; i < f->nservers; i++)
			if (f->servers[i].rt && (!s || s == &f->servers[i]))
				lb_reset_counters(f->servers[i].rt);
	} else if (!strcmp(op, "verify")) {
		if (!f->health.url) {
			reply_error(c, "farm %s has no URL test (healthCheck.url)", f->name);
			return 1;
		}
		snprintf(c->farm, sizeof(c->farm), "%s", f->name);
		c->verify = health_verify(f, verify_done, c);
		if (!c->verify) {
			reply_error(c, "out of memory");
			return 1;
		}
		return 0;
	} else {
		reply_error(
			c,
			"unknown op \"%s\" (status, server, farm, health, verify, reset, reload)",
			op);
		return 1;
	}
	jb_lit(&c->out, "{\"ok\":true,\"farm\":");
	jb_farm(&c->out, f, now);
	jb_lit(&c->out, "}\n");
	return 1;
}

/* ---- connections ------------------------------------------------------------- */

static void conn_io(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	struct ctl_conn *c = container_of(w, struct ctl_conn, ev);

	(void)loop;
	if (c->replying) {
		while (c->out_off < c->out.len) {
			ssize_t n = write(c->ev.fd, c->out.p + c->out_off, c->out.len - c->out_off);

			if (n < 0 && errno == EAGAIN)
				return;
			if (n <= 0)
				break;
			c->out_off += (size_t)n;
		}
		conn_close(c);
		return;
	}
	if (c->verify || c->job) { /* waiting for the probes or the token */
		if (events & (EPOLLHUP | EPOLLERR))
			conn_close(c);
		return;
	}
	for (;;) {
		ssize_t n = read(c->ev.fd, c->in + c->in_len, CTL_REQ_MAX - c->in_len);
		char *nl;
		char err[256];
		struct json_doc *doc;

		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			if (!c->in_len) {
				conn_close(c);
				return;
			}
		} else {
			c->in_len += (size_t)n;
		}
		nl = memchr(c->in, '\n', c->in_len);
		if (!nl && n > 0 && c->in_len < CTL_REQ_MAX)
			continue;
		if (!nl && c->in_len >= CTL_REQ_MAX) {
			reply_error(c, "request longer than %d bytes", CTL_REQ_MAX);
		} else {
			size_t len = nl ? (size_t)(nl - c->in) : c->in_len;

			doc = json_parse(c->in, len, err, sizeof(err));
			if (!doc) {
				reply_error(c, "bad JSON: %s", err);
			} else {
				int ready = handle(c, doc->root);
				static const char *const secrets[] = {"pin", "password", "pfx"};
				unsigned int k;

				for (k = 0; k < 3; k++) { /* never left in memory */
					const struct json_value *pv =
						json_get(doc->root, secrets[k]);

					if (pv && pv->type == JSON_STRING)
						OPENSSL_cleanse((char *)pv->u.str.s, pv->u.str.len);
				}
				OPENSSL_cleanse(c->in, c->in_len);
				json_free(doc);
				if (!ready) {
					/* the answer comes with the probes' results; a
					 * client that half-closed still gets it */
					ev_fd_mod(C.loop, &c->ev, 0);
					ev_timer_del(C.loop, &c->tmr);
					return;
				}
			}
		}
		if (c->out.oom)
			reply_error(c, "out of memory");
		c->replying = 1;
		ev_timer_set(C.loop, &c->tmr, C.loop->now_ms + CTL_TIMEOUT_MS);
		ev_fd_mod(C.loop, &c->ev, EPOLLOUT);
		return;
	}
}

static void conn_timer(struct ev_loop *loop, struct ev_timer *t)
{
	(void)loop;
	conn_close(container_of(t, struct ctl_conn, tmr));
}

static void conn_close(struct ctl_conn *c)
{
	if (c->ev.fd < 0)
		return;
	if (c->verify) {
		health_verify_cancel(c->verify);
		c->verify = NULL;
	}
	job_forget(c);
	ev_timer_del(C.loop, &c->tmr);
	ev_fd_close(C.loop, &c->ev);
	list_del(&c->link);
	list_add_tail(&C.graveyard, &c->link);
	C.nconns--;
}

static void collect(void)
{
	while (!list_empty(&C.graveyard)) {
		struct ctl_conn *c = container_of(C.graveyard.next, struct ctl_conn, link);

		list_del(&c->link);
		free(c->in);
		free(c->out.p);
		free(c);
	}
}

/* root, or the daemon's own user */
static int peer_allowed(int fd)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == -1)
		return 0;
	return cr.uid == 0 || cr.uid == geteuid();
}

static void lsn_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	(void)events;
	collect();
	for (;;) {
		int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct ctl_conn *c;

		if (fd == -1)
			return;
		if (!peer_allowed(fd)) {
			static const char deny[] =
				"{\"ok\":false,\"error\":\"permission denied: root "
				"only\"}\n";

			LOGW("control socket: refused a peer that is not root");
			if (write(fd, deny, sizeof(deny) - 1) < 0) {
				/* nothing more to tell it */
			}
			close(fd);
			continue;
		}
		c = C.nconns < CTL_MAX_CONNS ? calloc(1, sizeof(*c)) : NULL;
		if (c)
			c->in = malloc(CTL_REQ_MAX);
		if (!c || !c->in) {
			if (c)
				free(c);
			close(fd);
			continue;
		}
		c->ev.fd = fd;
		c->ev.cb = conn_io;
		c->job_ev.fd = -1;
		ev_timer_init(&c->tmr, conn_timer);
		if (ev_fd_add(loop, &c->ev, EPOLLIN | EPOLLRDHUP) == -1) {
			free(c->in);
			free(c);
			close(fd);
			continue;
		}
		list_add_tail(&C.conns, &c->link);
		C.nconns++;
		ev_timer_set(loop, &c->tmr, loop->now_ms + CTL_TIMEOUT_MS);
	}
}

static void lsn_close(void)
{
	if (C.lsn.fd >= 0) {
		ev_fd_close(C.loop, &C.lsn);
		if (C.path)
			unlink(C.path);
	}
	free(C.path);
	C.path = NULL;
}

void control_listen(struct ev_loop *loop, const char *path)
{
	struct sockaddr_un un;
	mode_t old;
	int fd;

	if (!C.inited) {
		list_init(&C.conns);
		list_init(&C.graveyard);
		C.lsn.fd = -1;
		C.inited = 1;
	}
	C.loop = loop;
	if ((!path && !C.path) || (path && C.path && !strcmp(path, C.path)))
		return;
	lsn_close();
	if (!path)
		return;
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	snprintf(un.sun_path, sizeof(un.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		goto fail;
	if (connect(fd, (struct sockaddr *)&un, sizeof(un)) == 0 || errno == EAGAIN) {
		LOGW("control socket %s: another farmgated answers there; this one has no "
		     "control socket",
		     path);
		close(fd);
		return;
	}
	if (errno == ECONNREFUSED)
		unlink(path); /* stale: its daemon is gone */
	close(fd);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		goto fail;
	old = umask(077);
	if (bind(fd, (struct sockaddr *)&un, sizeof(un)) == -1) {
		umask(old);
		close(fd);
		goto fail;
	}
	umask(old);
	if (chmod(path, 0600) == -1 || listen(fd, 16) == -1) {
		close(fd);
		unlink(path);
		goto fail;
	}
	C.lsn.fd = fd;
	C.lsn.cb = lsn_cb;
	if (ev_fd_add(loop, &C.lsn, EPOLLIN) == -1) {
		close(fd);
		C.lsn.fd = -1;
		unlink(path);
		goto fail;
	}
	C.path = strdup(path);
	LOGI("control socket on %s", path);
	return;
fail:
	LOGW("control socket %s: %s; running without one", path, strerror(errno));
}

void control_close(void)
{
	struct list *pos, *tmp;

	if (!C.inited)
		return;
	lsn_close();
	list_for_each_safe(pos, tmp, &C.conns) conn_close(container_of(pos, struct ctl_conn, link));
	collect();
}
