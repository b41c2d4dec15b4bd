/* Upstream TLS: farms' client contexts with token identities, backend verification,
 * session resumption per server, and the registry of open tokens. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pkcs12.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "key.h"
#include "lb.h"
#include "log.h"
#include "p11.h"
#include "tls.h"
#include "tls_front.h"
#include "tokenops.h"

#define DEFAULT_CA_FILE "/etc/ssl/certs/ca-certificates.crt"

struct module_ref {
	struct list link;
	char *path;
	struct p11_module *mod;
};

static struct {
	struct ev_loop *loop;
	tls_token_cb cb;
	struct list tokens;  /* struct fg_token */
	struct list modules; /* struct module_ref */
	int inited;
	int idx_srv;   /* SSL ex data: struct server * (verification) */
	int idx_rt;    /* SSL ex data: struct server_rt * (session store) */
	int idx_ident; /* SSL ex data: the identity the session carries */
} T;

static void tls_once(void)
{
	if (T.inited)
		return;
	T.inited = 1;
	list_init(&T.tokens);
	list_init(&T.modules);
	T.idx_srv = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	T.idx_rt = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	T.idx_ident = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* ---- tokens ------------------------------------------------------------- */

static void token_watch(struct fg_token *t);

static void token_state_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	struct fg_token *t = container_of(w, struct fg_token, state_ev);

	(void)loop;
	(void)events;
	signer_state_ack(t->signer);
	if (T.cb)
		T.cb(t, signer_is_up(t->signer));
}

static struct p11_module *module_get(const char *path, char *err, size_t errlen)
{
	struct list *pos, *tmp;
	struct module_ref *m;

	list_for_each_safe(pos, tmp, &T.modules)
	{
		m = container_of(pos, struct module_ref, link);
		if (!strcmp(m->path, path))
			return m->mod;
	}
	m = calloc(1, sizeof(*m));
	if (!m || !(m->path = strdup(path))) {
		free(m);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	m->mod = p11_module_load(path, err, errlen);
	if (!m->mod) {
		free(m->path);
		free(m);
		return NULL;
	}
	list_add_tail(&T.modules, &m->link);
	return m->mod;
}

static int same_token(const struct fg_token *t, const struct token_cfg *tc)
{
	return !strcmp(t->name, tc->name) && !strcmp(t->module, tc->module) &&
	       !strcmp(t->uri, tc->uri) &&
	       !strcmp(t->pin_file ? t->pin_file : "", tc->pin_file ? tc->pin_file : "");
}

static void token_free(struct fg_token *t)
{
	if (t->signer) {
		if (T.loop && t->state_ev.fd >= 0)
			epoll_ctl(T.loop->epfd, EPOLL_CTL_DEL, t->state_ev.fd, NULL);
		signer_free(t->signer); /* closes the token and its eventfd */
	}
	free(t->name);
	free(t->module);
	free(t->uri);
	free(t->pin_file);
	free(t);
}

static int pin_is(struct p11_token *tok, void *arg)
{
	return p11_token_pin_is(tok, arg);
}

/* A reload that finds a token open already: its pinFile must still hold the
 * PIN it logged in with (a token cannot be asked to check another PIN while
 * logged in), so that what runs is what a restart would run. */
static int token_pin_still(struct fg_token *t, const struct token_cfg *tc, unsigned int i,
			   char *err, size_t errlen)
{
	char pin[256], e[512];
	int same;

	if (!tc->pin_file || signer_awaiting_pin(t->signer))
		return 1;
	if (p11_pin_file_read(tc->pin_file, pin, sizeof(pin), e, sizeof(e)) == -1) {
		snprintf(err, errlen, "$.tokens[%u].pinFile: %s", i, e);
		return 0;
	}
	same = signer_call(t->signer, pin_is, pin) == 1;
	OPENSSL_cleanse(pin, sizeof(pin));
	if (!same)
		snprintf(err, errlen,
			 "$.tokens[%u].pinFile: holds another PIN than the one token %s is logged "
			 "in with; restart farmgated to use a new PIN",
			 i, tc->name);
	return same;
}

/* Opens, logs in and starts the signer of one configured token, or returns
 * the one already open. The PIN is read from its file, used once, wiped. */
static struct fg_token *token_get(const struct token_cfg *tc, unsigned int i, char *err,
				  size_t errlen)
{
	struct list *pos, *tmp;
	struct fg_token *t;
	struct p11_module *mod;
	struct p11_token *tok;
	struct p11_uri uri;
	char pin[256], e[512];

	list_for_each_safe(pos, tmp, &T.tokens)
	{
		t = container_of(pos, struct fg_token, link);
		if (same_token(t, tc))
			return token_pin_still(t, tc, i, err, errlen) ? t : NULL;
	}
	/* the same token under another name or pinFile: a login there would
	 * be taken without checking the PIN (PKCS#11 logs in per process) */
	list_for_each_safe(pos, tmp, &T.tokens)
	{
		t = container_of(pos, struct fg_token, link);
		if (!strcmp(t->module, tc->module) && !strcmp(t->uri, tc->uri) &&
		    !token_pin_still(t, tc, i, err, errlen))
			return NULL;
	}
	if (p11_uri_parse(tc->uri, &uri, e, sizeof(e)) == -1) {
		snprintf(err, errlen, "$.tokens[%u].uri: %s", i, e);
		return NULL;
	}
	if (tc->pin_file && p11_pin_file_read(tc->pin_file, pin, sizeof(pin), e, sizeof(e)) == -1) {
		snprintf(err, errlen, "$.tokens[%u].pinFile: %s", i, e);
		return NULL;
	}
	mod = module_get(tc->module, e, sizeof(e));
	if (!mod) {
		OPENSSL_cleanse(pin, sizeof(pin));
		snprintf(err, errlen, "$.tokens[%u].module: %s", i, e);
		return NULL;
	}
	tok = p11_token_open(mod, &uri, e, sizeof(e));
	if (!tok) {
		OPENSSL_cleanse(pin, sizeof(pin));
		snprintf(err, errlen, "$.tokens[%u].uri: %s", i, e);
		return NULL;
	}
	if (tc->pin_file && p11_token_login(tok, pin, e, sizeof(e)) == -1) {
		OPENSSL_cleanse(pin, sizeof(pin));
		p11_token_close(tok);
		snprintf(err, errlen, "$.tokens[%u]: token %s: %s", i, tc->name, e);
		return NULL;
	}
	OPENSSL_cleanse(pin, sizeof(pin));
	t = calloc(1, sizeof(*t));
	if (!t || !(t->name = strdup(tc->name)) || !(t->module = strdup(tc->module)) ||
	    !(t->uri = strdup(tc->uri)) ||
	    (tc->pin_file && !(t->pin_file = strdup(tc->pin_file)))) {
		p11_token_close(tok);
		if (t)
			token_free(t);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	t->mod = mod;
	t->state_ev.fd = -1;
	t->signer = signer_new(tc->name, tok, e, sizeof(e));
	if (!t->signer) {
		p11_token_close(tok);
		token_free(t);
		snprintf(err, errlen, "$.tokens[%u]: %s", i, e);
		return NULL;
	}
	token_watch(t);
	list_add_tail(&T.tokens, &t->link);
	if (!tc->pin_file) {
		/* the PIN comes from the operator after boot (control socket, web
		 * UI) and is kept in memory only; until then the token is down */
		signer_await_pin(t->signer, 1);
		LOGW("token %s (%s) open, waiting for its PIN (web UI or farmgatectl): its "
		     "farms answer 502 until then",
		     tc->name, tc->uri);
		return t;
	}
	LOGI("token %s (%s) open and logged in", tc->name, tc->uri);
	return t;
}

/* ---- identity lookup, on the signer thread ---------------------------- */

/* ARR's clientCertFileName + clientCertPassword: the PFX is an import source,
 * never a key store. The key is written onto the token (sensitive, never
 * extractable) unless its certificate is there already; the copy in memory is
 * freed at once. Runs on the signer thread. */
struct pfx_job {
	EVP_PKEY *pkey;
	X509 *cert;
	unsigned char thumb[20];
	int imported;
	char err[512];
};

static int pfx_import(struct p11_token *tok, void *arg)
{
	struct pfx_job *j = arg;
	struct p11_cert c;
	unsigned char id[8];

	memset(&c, 0, sizeof(c));
	if (p11_cert_find(tok, j->thumb, sizeof(j->thumb), &c, j->err, sizeof(j->err)) == 0) {
		X509_free(c.x509);
		return 0; /* imported before */
	}
	memcpy(id, j->thumb, sizeof(id)); /* CKA_ID: derived from the thumbprint */
	if (tokop_import_key_cert(tok, j->pkey, j->cert, "farmgate-pfx", id, sizeof(id), j->err,
				  sizeof(j->err)) == -1)
		return -1;
	j->imported = 1;
	return 0;
}

/* Reads the farm's PFX, imports it onto the token if needed and returns its
 * certificate's SHA-1 thumbprint in thumb. */
static int farm_pfx(struct farm *f, struct fg_token *t, unsigned int fi, unsigned char *thumb,
		    char *err, size_t errlen)
{
	const char *pw = f->protocol.client_cert_password ? f->protocol.client_cert_password : "";
	struct pfx_job j;
	PKCS12 *p12 = NULL;
	STACK_OF(X509) *ca = NULL;
	unsigned int n = 0;
	BIO *bio;
	int rc = -1;

	memset(&j, 0, sizeof(j));
	bio = BIO_new_file(f->protocol.client_cert_file, "rb");
	if (!bio || !(p12 = d2i_PKCS12_bio(bio, NULL))) {
		snprintf(err, errlen,
			 "$.webFarms[%u].protocol.clientCertFileName: cannot read a PFX "
			 "from \"%s\"",
			 fi, f->protocol.client_cert_file);
		goto out;
	}
	if (!PKCS12_parse(p12, pw, &j.pkey, &j.cert, &ca) || !j.pkey || !j.cert) {
		snprintf(err, errlen,
			 "$.webFarms[%u].protocol.clientCertPassword: wrong PFX password "
			 "(or no key and certificate in \"%s\")",
			 fi, f->protocol.client_cert_file);
		goto out;
	}
	X509_digest(j.cert, EVP_sha1(), j.thumb, &n);
	if (signer_call(t->signer, pfx_import, &j) != 0) {
		snprintf(err, errlen,
			 "$.webFarms[%u].protocol.clientCertFileName: import onto token "
			 "%s failed: %s",
			 fi, t->name, j.err);
		goto out;
	}
	memcpy(thumb, j.thumb, 20);
	if (j.imported)
		LOGW("farm %s: imported the key and certificate of %s onto token %s "
		     "(non-extractable);"
		     " the file still holds the private key: delete it and use clientCertHash",
		     f->name, f->protocol.client_cert_file, t->name);
	else
		LOGW("farm %s: %s is already on token %s; the file still holds the private key: "
		     "delete it and use clientCertHash",
		     f->name, f->protocol.client_cert_file, t->name);
	rc = 0;
out:
	EVP_PKEY_free(j.pkey); /* the software copy goes now */
	X509_free(j.cert);
	sk_X509_pop_free(ca, X509_free);
	PKCS12_free(p12);
	BIO_free(bio);
	ERR_clear_error();
	return rc;
}

struct identity_job {
	const unsigned char *thumb;
	size_t thumb_len;
	X509 *cert;
	EVP_PKEY *pkey;
	int can_pss;
	char err[512];
};

static int identity_lookup(struct p11_token *tok, void *arg)
{
	struct identity_job *j = arg;
	struct p11_cert c;
	CK_OBJECT_HANDLE key;

	memset(&c, 0, sizeof(c));
	if (p11_cert_find(tok, j->thumb, j->thumb_len, &c, j->err, sizeof(j->err)) == -1)
		return -1;
	if (p11_key_find_for_cert(tok, &c, &key, j->err, sizeof(j->err)) == -1) {
		X509_free(c.x509);
		return -1;
	}
	j->pkey = hsm_key_new(tok, key, c.x509, j->err, sizeof(j->err));
	if (!j->pkey) {
		X509_free(c.x509);
		return -1;
	}
	j->cert = c.x509;
	j->can_pss = hsm_key_can_pss(hsm_key_of(j->pkey));
	return 0;
}

/* ---- sessions and verification ----------------------------------------- */

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	struct server_rt *rt = SSL_get_ex_data(ssl, T.idx_rt);

	if (!rt)
		return 0;
	if (rt->tls_session)
		SSL_SESSION_free(rt->tls_session);
	rt->tls_session = sess; /* we keep the reference OpenSSL gives us */
	rt->tls_session_ident = (uint64_t)(uintptr_t)SSL_get_ex_data(ssl, T.idx_ident);
	return 1;
}

void tls_session_free(void *sess)
{
	SSL_SESSION_free(sess);
}

/* With a pin, the backend's exact certificate is trusted instead of the CA
 * chain and the name: the leaf's SHA-256 must equal the pin. */
static int verify_cb(int ok, X509_STORE_CTX *xs)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
	const struct server *srv = ssl ? SSL_get_ex_data(ssl, T.idx_srv) : NULL;
	unsigned char md[32];
	unsigned int mdlen = 0;
	X509 *leaf;

	if (!srv || !srv->has_cert_pin)
		return ok;
	if (X509_STORE_CTX_get_error_depth(xs) > 0)
		return 1;
	leaf = X509_STORE_CTX_get_current_cert(xs);
	if (!leaf || !X509_digest(leaf, EVP_sha256(), md, &mdlen) || mdlen != 32 ||
	    memcmp(md, srv->cert_pin, 32)) {
		X509_STORE_CTX_set_error(xs, X509_V_ERR_CERT_REJECTED);
		return 0;
	}
	X509_STORE_CTX_set_error(xs, X509_V_OK);
	return 1;
}

static uint64_t ident_of(const char *token, const unsigned char *thumb, size_t n)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a: a tag, not a secret */
	size_t i;

	for (i = 0; token && token[i]; i++)
		h = (h ^ (unsigned char)token[i]) * 1099511628211ULL;
	for (i = 0; i < n; i++)
		h = (h ^ thumb[i]) * 1099511628211ULL;
	return h ? h : 1;
}

/* ---- farms' contexts -------------------------------------------------- */

static void farm_tls_free(struct farm_tls *ft)
{
	if (!ft)
		return;
	tls_token_identity_free(&ft->id);
	SSL_CTX_free(ft->ctx);
	free(ft);
}

/* The token called name (NULL: the only one), opened on first use. */
static struct fg_token *token_by_name(struct config *cfg, const char *name, char *err,
				      size_t errlen)
{
	unsigned int i;

	for (i = 0; i < cfg->ntokens; i++)
		if (!name || !strcmp(cfg->tokens[i].name, name))
			return token_get(&cfg->tokens[i], i, err, errlen);
	snprintf(err, errlen, "no such token"); /* cfg_load checked: not reached */
	return NULL;
}

int tls_token_identity(struct config *cfg, const char *token, const unsigned char *thumb,
		       size_t thumb_len, const char *path, struct token_identity *id,
		       struct sign_stats *stats, char *err, size_t errlen)
{
	struct identity_job job;

	memset(id, 0, sizeof(*id));
	id->token = token_by_name(cfg, token, err, errlen);
	if (!id->token)
		return -1;
	if (signer_awaiting_pin(id->token->signer))
		return 0; /* pending: found at the reload that follows the PIN */
	memset(&job, 0, sizeof(job));
	job.thumb = thumb;
	job.thumb_len = thumb_len;
	if (signer_call(id->token->signer, identity_lookup, &job) != 0) {
		snprintf(err, errlen, "%s: %s", path,
			 job.err[0] ? job.err : "the token is not available");
		return -1;
	}
	id->pkey = job.pkey;
	id->cert = job.cert;
	id->can_pss = job.can_pss;
	if (signer_bind_key(id->token->signer, id->pkey, stats) == -1) {
		snprintf(err, errlen, "%s: not a token key", path);
		tls_token_identity_free(id);
		return -1;
	}
	id->bound = 1;
	return 0;
}

void tls_token_identity_free(struct token_identity *id)
{
	if (id->token && id->pkey && id->bound)
		signer_unbind_key(id->token->signer, id->pkey);
	EVP_PKEY_free(id->pkey);
	X509_free(id->cert);
	memset(id, 0, sizeof(*id));
}

static int farm_prepare(struct config *cfg, struct farm *f, unsigned int fi, char *err,
			size_t errlen)
{
	const char *ca =
		f->protocol.backend_ca_file ? f->protocol.backend_ca_file : DEFAULT_CA_FILE;
	struct farm_tls *ft = calloc(1, sizeof(*ft));
	unsigned char thumb[32];
	size_t thumb_len = 0;
	char e[512];

	if (!ft) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	f->tls = ft;
	ft->ctx = SSL_CTX_new(TLS_client_method());
	if (!ft->ctx) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	SSL_CTX_set_min_proto_version(ft->ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(ft->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
					  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
					  SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_verify(ft->ctx, SSL_VERIFY_PEER, verify_cb);
	if (SSL_CTX_load_verify_locations(ft->ctx, ca, NULL) != 1) {
		snprintf(err, errlen, "$.webFarms[%u].protocol.backendCaFile: cannot load \"%s\"",
			 fi, ca);
		ERR_clear_error();
		return -1;
	}
	SSL_CTX_set_session_cache_mode(ft->ctx,
				       SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(ft->ctx, new_session_cb);

	if (f->protocol.client_cert_hash || f->protocol.client_cert_file) {
		char path[64];
		unsigned int i;

		if (f->protocol.client_cert_hash &&
		    p11_thumbprint_parse(f->protocol.client_cert_hash, thumb, &thumb_len, e,
					 sizeof(e)) == -1) {
			snprintf(err, errlen, "$.webFarms[%u].protocol.clientCertHash: %s", fi, e);
			return -1;
		}
		if (f->protocol.client_cert_file) {
			unsigned char pfx_thumb[20];
			struct fg_token *t =
				token_by_name(cfg, f->protocol.client_cert_token, err, errlen);

			if (!t)
				return -1;
			if (signer_awaiting_pin(t->signer)) {
				snprintf(err, errlen,
					 "$.webFarms[%u].protocol.clientCertFileName: token %s "
					 "waits for its PIN: a PFX import needs it logged in",
					 fi, t->name);
				return -1;
			}
			if (farm_pfx(f, t, fi, pfx_thumb, err, errlen) == -1)
				return -1;
			if (f->protocol.client_cert_hash &&
			    (thumb_len != 20 || memcmp(thumb, pfx_thumb, 20))) {
				snprintf(err, errlen,
					 "$.webFarms[%u].protocol.clientCertHash: does not match "
					 "the "
					 "certificate in clientCertFileName",
					 fi);
				return -1;
			}
			memcpy(thumb, pfx_thumb, 20);
			thumb_len = 20;
		}
		snprintf(path, sizeof(path), "$.webFarms[%u].protocol.clientCertHash", fi);
		if (tls_token_identity(cfg, f->protocol.client_cert_token, thumb, thumb_len, path,
				       &ft->id, &ft->stats, err, errlen) == -1)
			return -1;
		ft->token = ft->id.token;
		ft->pkey = ft->id.pkey;
		ft->cert = ft->id.cert;
		if (!ft->pkey) {
			/* its token waits for the PIN: the farm fails closed till then */
			ft->ident = ident_of(ft->token->name, thumb, thumb_len);
			return 0;
		}
		{
			unsigned char md[20];
			unsigned int n = 0;

			X509_digest(ft->cert, EVP_sha1(), md, &n);
			for (i = 0; i < n && i < 20; i++)
				snprintf(ft->sha1 + 2 * i, 3, "%02X", md[i]);
		}
		if (SSL_CTX_use_certificate(ft->ctx, ft->cert) != 1 ||
		    SSL_CTX_use_PrivateKey(ft->ctx, ft->pkey) != 1) {
			snprintf(err, errlen,
				 "$.webFarms[%u].protocol.clientCertHash: OpenSSL refused the "
				 "certificate or its token key: %s",
				 fi, ERR_reason_error_string(ERR_peek_last_error()));
			ERR_clear_error();
			return -1;
		}
		if (EVP_PKEY_get_base_id(ft->pkey) == EVP_PKEY_RSA && !ft->id.can_pss) {
			/* TLS 1.3 needs RSA-PSS signatures; this token cannot make them */
			ft->tls12_only = 1;
			SSL_CTX_set_max_proto_version(ft->ctx, TLS1_2_VERSION);
			/* and in TLS 1.2 sign with PKCS#1 v1.5, never PSS */
			SSL_CTX_set1_client_sigalgs_list(ft->ctx,
							 "RSA+SHA256:RSA+SHA384:RSA+SHA512");
			LOGI("farm %s: token %s cannot make RSA-PSS signatures: TLS 1.2 only",
			     f->name, ft->token->name);
		}
	}
	ft->ident = ident_of(ft->token ? ft->token->name : "", thumb, thumb_len);
	return 0;
}

/* Puts a token's state eventfd in the loop, so the proxy hears of faults. */
static void token_watch(struct fg_token *t)
{
	if (!T.loop || t->state_ev.fd >= 0)
		return;
	t->state_ev.fd = signer_event_fd(t->signer);
	t->state_ev.cb = token_state_cb;
	if (ev_fd_add(T.loop, &t->state_ev, EPOLLIN) == -1)
		LOGE("token %s: cannot watch its state: %s", t->name, strerror(errno));
}

void tls_init(struct ev_loop *loop, tls_token_cb cb)
{
	struct list *pos, *tmp;

	tls_once();
	T.loop = loop;
	T.cb = cb;
	/* tokens opened by the first tls_prepare, before the loop existed */
	list_for_each_safe(pos, tmp, &T.tokens)
		token_watch(container_of(pos, struct fg_token, link));
}

int tls_prepare(struct config *cfg, char *err, size_t errlen)
{
	unsigned int i;

	tls_once();
	for (i = 0; i < cfg->nfarms; i++)
		if (farm_prepare(cfg, &cfg->farms[i], i, err, errlen) == -1)
			return -1; /* the caller frees cfg, and with it what was built */
	if (tls_front_prepare(cfg, err, errlen) == -1)
		return -1;
	/* every configured token, used or not yet: the operator picks its
	 * certificates (and makes keys on it) through the control socket */
	for (i = 0; i < cfg->ntokens; i++)
		if (!token_get(&cfg->tokens[i], i, err, errlen))
			return -1;
	cfg->tls_prepared = 1;
	return 0;
}

void tls_config_free(struct config *cfg)
{
	unsigned int i;

	for (i = 0; i < cfg->nfarms; i++) {
		farm_tls_free(cfg->farms[i].tls);
		cfg->farms[i].tls = NULL;
	}
	tls_front_free(cfg);
}

void tls_shutdown(void)
{
	struct list *pos, *tmp;

	if (!T.inited)
		return;
	list_for_each_safe(pos, tmp, &T.tokens)
	{
		struct fg_token *t = container_of(pos, struct fg_token, link);

		list_del(&t->link);
		token_free(t);
	}
	list_for_each_safe(pos, tmp, &T.modules)
	{
		struct module_ref *m = container_of(pos, struct module_ref, link);

		list_del(&m->link);
		p11_module_unload(m->mod);
		free(m->path);
		free(m);
	}
}

int tls_identity_up(const struct farm *f)
{
	return !f->tls || !f->tls->token || (f->tls->pkey && signer_is_up(f->tls->token->signer));
}

SSL *tls_conn_new(struct farm *f, struct server *srv, int fd)
{
	struct farm_tls *ft = f->tls;
	struct server_rt *rt = srv->rt;
	const char *name = srv->host_name ? srv->host_name : srv->address;
	unsigned char ip[16];
	SSL *ssl = SSL_new(ft->ctx);

	if (!ssl)
		return NULL;
	SSL_set_fd(ssl, fd);
	SSL_set_connect_state(ssl);
	SSL_set_ex_data(ssl, T.idx_srv, srv);
	SSL_set_ex_data(ssl, T.idx_rt, rt);
	SSL_set_ex_data(ssl, T.idx_ident, (void *)(uintptr_t)ft->ident);
	if (inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1) {
		X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name);
	} else {
		SSL_set_tlsext_host_name(ssl, name);
		SSL_set1_host(ssl, name);
	}
	if (rt->tls_session && rt->tls_session_ident == ft->ident)
		SSL_set_session(ssl, rt->tls_session);
	if (ft->token)
		SSL_set_mode(ssl, SSL_MODE_ASYNC); /* signatures run on the signer */
	return ssl;
}

const char *tls_handshake_failure(SSL *ssl, const char *peer)
{
	static char buf[256];
	long v = SSL_get_verify_result(ssl);
	unsigned long e = ERR_peek_last_error();
	const char *data;
	char token[128] = "";
	int flags;

	/* a failed token signature says why deep in the queue ("PKCS#11
	 * signature on the token: CKR_..."), under OpenSSL's "EVP lib"; the
	 * text is copied before the entry leaves the queue */
	while (ERR_get_error_all(NULL, NULL, NULL, &data, &flags) != 0)
		if (!token[0] && (flags & ERR_TXT_STRING) && data && !strncmp(data, "PKCS#11", 7))
			snprintf(token, sizeof(token), "%s", data);
	if (v != X509_V_OK) {
		snprintf(buf, sizeof(buf), "%s certificate rejected: %s", peer,
			 X509_verify_cert_error_string(v));
	} else if (token[0]) {
		snprintf(buf, sizeof(buf), "TLS handshake failed: %s", token);
	} else if (e) {
		snprintf(buf, sizeof(buf), "TLS handshake failed: %s",
			 ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "unknown");
	} else {
		snprintf(buf, sizeof(buf), "TLS handshake failed: connection closed");
	}
	ERR_clear_error();
	return buf;
}

const char *tls_failure_reason(SSL *ssl, const struct farm *f)
{
	if (f->tls && f->tls->token && !signer_is_up(f->tls->token->signer)) {
		ERR_clear_error();
		return "client identity unavailable";
	}
	return tls_handshake_failure(ssl, "backend");
}

void tls_forget_sessions(struct config *cfg, struct fg_token *tok)
{
	unsigned int i, j;

	for (i = 0; i < cfg->nfarms; i++) {
		struct farm *f = &cfg->farms[i];

		if (!f->tls || f->tls->token != tok)
			continue;
		for (j = 0; j < f->nservers; j++) {
			struct server_rt *rt = f->servers[j].rt;

			if (rt && rt->tls_session) {
				SSL_SESSION_free(rt->tls_session);
				rt->tls_session = NULL;
			}
		}
	}
}

void tls_log_stats(const struct config *cfg)
{
	struct list *pos, *tmp;
	unsigned int i;

	if (!T.inited)
		return;
	list_for_each_safe(pos, tmp, &T.tokens)
	{
		struct fg_token *t = container_of(pos, struct fg_token, link);
		const struct sign_stats *st = signer_stats(t->signer);
		unsigned long long n = atomic_load(&st->count);

		LOGI("token %s: %llu signatures, %llu failed, average %llu us, max %llu us, %s",
		     t->name, n, (unsigned long long)atomic_load(&st->errors),
		     n ? (unsigned long long)atomic_load(&st->total_us) / n : 0ULL,
		     (unsigned long long)atomic_load(&st->max_us),
		     signer_is_up(t->signer) ? "up" : "DOWN");
	}
	for (i = 0; cfg && i < cfg->nfarms; i++) {
		const struct farm_tls *ft = cfg->farms[i].tls;
		unsigned long long n;

		if (!ft || !ft->token)
			continue;
		n = atomic_load(&ft->stats.count);
		LOGI("farm %s: %llu token signatures, average %llu us, max %llu us (certificate "
		     "%s on token %s)",
		     cfg->farms[i].name, n,
		     n ? (unsigned long long)atomic_load(&ft->stats.total_us) / n : 0ULL,
		     (unsigned long long)atomic_load(&ft->stats.max_us), ft->sha1, ft->token->name);
	}
	tls_front_log_stats(cfg);
}

/* ---- ASYNC jobs paused on a token signature ------------------------------- */

void tls_async_forget(SSL *ssl, struct ev_fd *aev)
{
	if (aev->fd >= 0 && !SSL_waiting_for_async(ssl))
		aev->fd = -1;
}

void tls_async_watch(struct ev_loop *loop, SSL *ssl, struct ev_fd *aev,
		     void (*cb)(struct ev_loop *, struct ev_fd *, uint32_t))
{
	OSSL_ASYNC_FD fd;
	size_t n = 0;

	if (!SSL_get_all_async_fds(ssl, NULL, &n) || n != 1 || !SSL_get_all_async_fds(ssl, &fd, &n))
		return;
	if (fd == aev->fd)
		return;
	aev->fd = fd;
	aev->cb = cb;
	ev_fd_add(loop, aev, EPOLLIN);
}

/* ---- the open tokens, for the control socket -------------------------------- */

struct fg_token *tls_token_of(const struct token_cfg *tc)
{
	struct list *pos, *tmp;

	if (!T.inited)
		return NULL;
	list_for_each_safe(pos, tmp, &T.tokens)
	{
		struct fg_token *t = container_of(pos, struct fg_token, link);

		if (same_token(t, tc))
			return t;
	}
	return NULL;
}

struct fg_token *tls_token_find(const struct config *cfg, const char *name)
{
	unsigned int i;

	for (i = 0; cfg && i < cfg->ntokens; i++)
		if (!strcmp(cfg->tokens[i].name, name))
			return tls_token_of(&cfg->tokens[i]);
	return NULL;
}
