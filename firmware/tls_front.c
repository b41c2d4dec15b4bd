/* Front-end TLS: the server side of HTTPS listeners.
 *
 * Each certificate of a listener gets its own SSL_CTX (OpenSSL picks one
 * certificate per key type and context, so SNI switches contexts); the
 * first is the default. They share one X509_STORE (client CAs and CRLs),
 * one session-id context and the process's ticket keys. A certificate on a
 * token signs every full handshake there, paused in an ASYNC job like the
 * upstream side's client certificates. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "p11.h"
#include "tls.h"
#include "tls_front.h"

/* Mozilla's "intermediate" profile (TLS 1.2 part; TLS 1.3 suites are
 * OpenSSL's defaults, all AEAD). No DHE: no parameters to manage. */
#define FRONT_CIPHERS                                                                              \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                               \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                               \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define FRONT_GROUPS "X25519:P-256:P-384"
/* for a token that cannot make RSA-PSS signatures (TLS 1.2 only) */
#define SIGALGS_NO_PSS	   "RSA+SHA256:RSA+SHA384:RSA+SHA512:ECDSA+SHA256:ECDSA+SHA384:ECDSA+SHA512"
#define SESSION_CACHE_SIZE 20480

struct front_cert {
	SSL_CTX *ctx;
	X509 *leaf; /* owned by ctx */
	struct token_identity id;
	struct sign_stats stats;
};

struct front_tls {
	struct front_cert *certs; /* [0] is the default */
	unsigned int ncerts;
	int mode;      /* enum client_cert_mode */
	int forbidden; /* refuse with 403 instead of during the handshake */
	int async;     /* a certificate's key is on a token */
	uint32_t rotation_ms;
};

/* ---- session ticket keys ------------------------------------------------
 * In memory only, shared by every listener (session-id contexts keep one
 * listener's sessions from resuming on another). The current key encrypts;
 * the previous one still decrypts (and the ticket is renewed), so a ticket
 * lives at most one rotation period after its key was replaced. */

struct ticket_key {
	unsigned char name[16];
	unsigned char aes[32];
	unsigned char hmac[32];
	uint64_t born_ms;
};

static struct {
	struct ticket_key k[2]; /* [0] current, [1] previous */
	unsigned int n;
} TK;

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int ticket_rotate(uint64_t now, uint32_t period_ms)
{
	struct ticket_key k;

	if (TK.n && now - TK.k[0].born_ms < period_ms)
		return 0;
	if (RAND_bytes(k.name, sizeof(k.name)) != 1 || RAND_bytes(k.aes, sizeof(k.aes)) != 1 ||
	    RAND_bytes(k.hmac, sizeof(k.hmac)) != 1)
		return -1;
	k.born_ms = now;
	OPENSSL_cleanse(&TK.k[1], sizeof(TK.k[1]));
	if (TK.n)
		TK.k[1] = TK.k[0];
	TK.k[0] = k;
	TK.n = TK.n ? 2 : 1;
	OPENSSL_cleanse(&k, sizeof(k));
	return 0;
}

static int ticket_mac_init(EVP_MAC_CTX *hctx, const struct ticket_key *k)
{
	OSSL_PARAM p[2];

	p[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
	p[1] = OSSL_PARAM_construct_end();
	return EVP_MAC_init(hctx, k->hmac, sizeof(k->hmac), p);
}

static int ticket_cb(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
		     EVP_MAC_CTX *hctx, int enc)
{
	const struct front_tls *ft = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	uint64_t now = mono_ms();
	unsigned int i;

	if (!ft || ticket_rotate(now, ft->rotation_ms) == -1)
		return enc ? -1 : 0;
	if (enc) {
		const struct ticket_key *k = &TK.k[0];

		if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1)
			return -1;
		memcpy(name, k->name, sizeof(k->name));
		if (!EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) ||
		    !ticket_mac_init(hctx, k))
			return -1;
		return 1;
	}
	for (i = 0; i < TK.n; i++) {
		const struct ticket_key *k = &TK.k[i];

		if (memcmp(name, k->name, sizeof(k->name)))
			continue;
		if (!EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) ||
		    !ticket_mac_init(hctx, k))
			return -1;
		return i == 0 ? 1 : 2; /* 2: renew the ticket under the current key */
	}
	return 0; /* unknown key: a full handshake */
}

/* ---- SNI and ALPN ---------------------------------------------------------- */

static int servername_cb(SSL *ssl, int *alert, void *arg)
{
	const struct front_tls *ft = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	unsigned int i;

	(void)alert;
	if (!name || ft->ncerts < 2)
		return SSL_TLSEXT_ERR_OK;
	for (i = 0; i < ft->ncerts; i++) {
		if (X509_check_host(ft->certs[i].leaf, name, 0, 0, NULL) == 1) {
			if (i)
				SSL_set_SSL_CTX(ssl, ft->certs[i].ctx);
			break;
		}
	}
	return SSL_TLSEXT_ERR_OK; /* no match: the default certificate */
}

/* We speak HTTP/1.1 only: select it when offered; a client offering only
 * other protocols goes on without ALPN (as nginx does). */
static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
		   const unsigned char *in, unsigned int inlen, void *arg)
{
	static const unsigned char h11[] = "\x08http/1.1";
	unsigned char *sel = NULL;
	unsigned char sellen = 0;

	(void)ssl;
	(void)arg;
	if (SSL_select_next_proto(&sel, &sellen, h11, sizeof(h11) - 1, in, inlen) !=
	    OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;
	*out = sel;
	*outlen = sellen;
	return SSL_TLSEXT_ERR_OK;
}

/* clientCertFailure Forbidden: the handshake goes on whatever the chain;
 * SSL_get_verify_result keeps the error and the request gets a 403. */
static int verify_accept_cb(int ok, X509_STORE_CTX *xs)
{
	(void)ok;
	(void)xs;
	return 1;
}

/* ---- building -------------------------------------------------------------- */

/* A private key file must not be readable by anyone but its owner. */
static int key_file_check(const char *path, const char *jpath, char *err, size_t errlen)
{
	struct stat st;

	if (stat(path, &st) == -1) {
		snprintf(err, errlen, "%s: cannot read \"%s\": %s", jpath, path, strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s: \"%s\" is not a regular file", jpath, path);
		return -1;
	}
	if (st.st_mode & (S_IRWXG | S_IRWXO)) {
		snprintf(err, errlen,
			 "%s: \"%s\" is readable by group or others (mode %03o): a private key "
			 "must be mode 0600 or stricter",
			 jpath, path, (unsigned int)(st.st_mode & 0777));
		return -1;
	}
	return 0;
}

static const char *ossl_reason(void)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	return r ? r : "unknown error";
}

/* PEM certificates of a chain file, added after the leaf. */
static int add_chain_file(SSL_CTX *ctx, const char *path, const char *jpath, char *err,
			  size_t errlen)
{
	BIO *b = BIO_new_file(path, "r");
	X509 *x;
	int n = 0;

	if (!b) {
		snprintf(err, errlen, "%s: cannot read \"%s\"", jpath, path);
		return -1;
	}
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
		if (!SSL_CTX_add0_chain_cert(ctx, x)) {
			X509_free(x);
			BIO_free(b);
			snprintf(err, errlen, "%s: %s", jpath, ossl_reason());
			return -1;
		}
		n++;
	}
	BIO_free(b);
	ERR_clear_error();
	if (!n) {
		snprintf(err, errlen, "%s: no PEM certificate in \"%s\"", jpath, path);
		return -1;
	}
	return 0;
}

/* Loads the CRLs of one file (PEM, several allowed, or one DER) into store. */
static int load_crl_file(X509_STORE *store, const char *path, const char *jpath, char *err,
			 size_t errlen)
{
	BIO *b = BIO_new_file(path, "rb");
	X509_CRL *crl;
	int n = 0;

	if (!b) {
		snprintf(err, errlen, "%s: cannot read \"%s\"", jpath, path);
		return -1;
	}
	while ((crl = PEM_read_bio_X509_CRL(b, NULL, NULL, NULL))) {
		const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);

		if (next && X509_cmp_current_time(next) < 0)
			LOGW("%s: the CRL in %s expired: clients it covers are refused until "
			     "it is renewed",
			     jpath, path);
		X509_STORE_add_crl(store, crl);
		X509_CRL_free(crl);
		n++;
	}
	if (!n) {
		ERR_clear_error();
		BIO_reset(b);
		crl = d2i_X509_CRL_bio(b, NULL);
		if (crl) {
			X509_STORE_add_crl(store, crl);
			X509_CRL_free(crl);
			n++;
		}
	}
	BIO_free(b);
	ERR_clear_error();
	if (!n) {
		snprintf(err, errlen, "%s: no CRL (PEM or DER) in \"%s\"", jpath, path);
		return -1;
	}
	return 0;
}

/* The session-id context: resumption only within one listener with the
 * same client-certificate policy (a changed policy forces full handshakes). */
static void sid_ctx_of(const struct listener_cfg *lc, unsigned char out[32])
{
	const struct listener_ssl_cfg *s = lc->ssl;
	EVP_MD_CTX *h = EVP_MD_CTX_new();
	unsigned int i;
	char buf[96];

	memset(out, 0, 32);
	if (!h)
		return;
	snprintf(buf, sizeof(buf), "farmgate|%s|%u|%d|%d|%u|", lc->address, lc->port,
		 s->client_certs, s->failure_forbidden, s->verify_depth);
	EVP_DigestInit_ex(h, EVP_sha256(), NULL);
	EVP_DigestUpdate(h, buf, strlen(buf));
	if (s->client_ca_file)
		EVP_DigestUpdate(h, s->client_ca_file, strlen(s->client_ca_file) + 1);
	for (i = 0; i < s->ncrl_files; i++)
		EVP_DigestUpdate(h, s->crl_files[i], strlen(s->crl_files[i]) + 1);
	EVP_DigestFinal_ex(h, out, NULL);
	EVP_MD_CTX_free(h);
}

static int cert_load(struct config *cfg, struct front_cert *fc, const struct listener_cert_cfg *cc,
		     const char *jp, char *err, size_t errlen)
{
	char jpath[96];

	if (cc->cert_file) {
		snprintf(jpath, sizeof(jpath), "%s.keyFile", jp);
		if (key_file_check(cc->key_file, jpath, err, errlen) == -1)
			return -1;
		if (SSL_CTX_use_certificate_chain_file(fc->ctx, cc->cert_file) != 1) {
			snprintf(err, errlen, "%s.certificateFile: cannot load \"%s\": %s", jp,
				 cc->cert_file, ossl_reason());
			return -1;
		}
		if (SSL_CTX_use_PrivateKey_file(fc->ctx, cc->key_file, SSL_FILETYPE_PEM) != 1) {
			snprintf(err, errlen, "%s: cannot load \"%s\": %s", jpath, cc->key_file,
				 ossl_reason());
			return -1;
		}
		if (SSL_CTX_check_private_key(fc->ctx) != 1) {
			snprintf(err, errlen, "%s: the key does not match certificateFile", jpath);
			return -1;
		}
	} else {
		unsigned char thumb[32];
		size_t thumb_len = 0;
		char e[256];

		snprintf(jpath, sizeof(jpath), "%s.certificateHash", jp);
		if (p11_thumbprint_parse(cc->cert_hash, thumb, &thumb_len, e, sizeof(e)) == -1) {
			snprintf(err, errlen, "%s: %s", jpath, e);
			return -1;
		}
		if (tls_token_identity(cfg, cc->cert_token, thumb, thumb_len, jpath, &fc->id,
				       &fc->stats, err, errlen) == -1)
			return -1;
		if (!fc->id.pkey) {
			snprintf(err, errlen,
				 "%s: token %s waits for its PIN; a listener's key needs a token "
				 "that logs in at start (tokens[].pinFile)",
				 jpath, fc->id.token->name);
			return -1;
		}
		if (SSL_CTX_use_certificate(fc->ctx, fc->id.cert) != 1 ||
		    SSL_CTX_use_PrivateKey(fc->ctx, fc->id.pkey) != 1) {
			snprintf(err, errlen, "%s: OpenSSL refused the certificate or its key: %s",
				 jpath, ossl_reason());
			return -1;
		}
		if (cc->chain_file) {
			snprintf(jpath, sizeof(jpath), "%s.chainFile", jp);
			if (add_chain_file(fc->ctx, cc->chain_file, jpath, err, errlen) == -1)
				return -1;
		}
	}
	fc->leaf = SSL_CTX_get0_certificate(fc->ctx);
	ERR_clear_error();
	return 0;
}

static int ctx_setup(SSL_CTX *ctx, struct front_tls *ft, const struct listener_cfg *lc,
		     X509_STORE *store, STACK_OF(X509_NAME) * cas, const unsigned char sid[32])
{
	const struct listener_ssl_cfg *s = lc->ssl;
	int vmode = SSL_VERIFY_NONE;

	SSL_CTX_set_app_data(ctx, ft);
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
	    !SSL_CTX_set_cipher_list(ctx, FRONT_CIPHERS) ||
	    !SSL_CTX_set1_groups_list(ctx, FRONT_GROUPS))
		return -1;
	/* every suite offered is strong, so our order costs nothing, and scanners
	 * (testssl: HIGH) want one; ChaCha20 first only for clients that put it
	 * first (phones without AES instructions) */
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
					 SSL_OP_IGNORE_UNEXPECTED_EOF |
					 SSL_OP_CIPHER_SERVER_PREFERENCE |
					 SSL_OP_PRIORITIZE_CHACHA |
					 (s->session_tickets ? 0 : SSL_OP_NO_TICKET));
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
				      SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	SSL_CTX_sess_set_cache_size(ctx, SESSION_CACHE_SIZE);
	SSL_CTX_set_timeout(ctx, s->ticket_rotation_ms / 1000 ? s->ticket_rotation_ms / 1000 : 1);
	if (!SSL_CTX_set_session_id_context(ctx, sid, 32))
		return -1;
	if (s->session_tickets && !SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb))
		return -1;
	SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
	SSL_CTX_set_tlsext_servername_arg(ctx, ft);
	SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
	if (s->client_certs != CLIENT_CERT_IGNORE) {
		STACK_OF(X509_NAME) *dup = SSL_dup_CA_list(cas);

		if (!dup)
			return -1;
		SSL_CTX_set1_cert_store(ctx, store);
		SSL_CTX_set_client_CA_list(ctx, dup);
		SSL_CTX_set_verify_depth(ctx, (int)s->verify_depth);
		vmode = SSL_VERIFY_PEER;
		if (s->client_certs == CLIENT_CERT_REQUIRE && !s->failure_forbidden)
			vmode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
	}
	SSL_CTX_set_verify(ctx, vmode, s->failure_forbidden ? verify_accept_cb : NULL);
	return 0;
}

static void front_free(struct front_tls *ft)
{
	unsigned int i;

	if (!ft)
		return;
	for (i = 0; i < ft->ncerts; i++) {
		tls_token_identity_free(&ft->certs[i].id);
		SSL_CTX_free(ft->certs[i].ctx);
	}
	free(ft->certs);
	free(ft);
}

/* The client CAs and CRLs of a listener: one store for all its contexts. */
static X509_STORE *store_new(const struct listener_ssl_cfg *s, unsigned int li,
			     STACK_OF(X509_NAME) * *cas, char *err, size_t errlen)
{
	X509_STORE *store = X509_STORE_new();
	char jpath[64];
	unsigned int i;

	if (!store) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	snprintf(jpath, sizeof(jpath), "$.listeners[%u].ssl.clientCaFile", li);
	*cas = SSL_load_client_CA_file(s->client_ca_file);
	if (X509_STORE_load_file(store, s->client_ca_file) != 1 || !*cas ||
	    !sk_X509_NAME_num(*cas)) {
		snprintf(err, errlen, "%s: no PEM CA certificate in \"%s\"", jpath,
			 s->client_ca_file);
		goto fail;
	}
	for (i = 0; i < s->ncrl_files; i++) {
		snprintf(jpath, sizeof(jpath), "$.listeners[%u].ssl.crlFiles[%u]", li, i);
		if (load_crl_file(store, s->crl_files[i], jpath, err, errlen) == -1)
			goto fail;
	}
	if (s->ncrl_files)
		X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
	ERR_clear_error();
	return store;
fail:
	ERR_clear_error();
	sk_X509_NAME_pop_free(*cas, X509_NAME_free);
	*cas = NULL;
	X509_STORE_free(store);
	return NULL;
}

static int listener_prepare(struct config *cfg, struct listener_cfg *lc, unsigned int li, char *err,
			    size_t errlen)
{
	const struct listener_ssl_cfg *s = lc->ssl;
	struct front_tls *ft = calloc(1, sizeof(*ft));
	STACK_OF(X509_NAME) *cas = NULL;
	X509_STORE *store = NULL;
	unsigned char sid[32];
	int tls12_only = 0, rc = -1;
	unsigned int i;
	char jp[64];

	if (!ft || !(ft->certs = calloc(s->ncerts, sizeof(*ft->certs)))) {
		free(ft);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	lc->tls = ft;
	ft->ncerts = s->ncerts;
	ft->mode = s->client_certs;
	ft->forbidden = s->failure_forbidden;
	ft->rotation_ms = s->ticket_rotation_ms;
	sid_ctx_of(lc, sid);
	if (s->client_certs != CLIENT_CERT_IGNORE && !(store = store_new(s, li, &cas, err, errlen)))
		return -1;
	for (i = 0; i < s->ncerts; i++) {
		struct front_cert *fc = &ft->certs[i];

		snprintf(jp, sizeof(jp), "$.listeners[%u].ssl.certificates[%u]", li, i);
		fc->ctx = SSL_CTX_new(TLS_server_method());
		if (!fc->ctx || ctx_setup(fc->ctx, ft, lc, store, cas, sid) == -1) {
			snprintf(err, errlen, "%s: cannot set up TLS: %s", jp, ossl_reason());
			goto out;
		}
		if (cert_load(cfg, fc, &s->certs[i], jp, err, errlen) == -1)
			goto out;
		if (fc->id.token) {
			ft->async = 1;
			if (EVP_PKEY_get_base_id(fc->id.pkey) == EVP_PKEY_RSA && !fc->id.can_pss)
				tls12_only = 1;
		}
	}
	if (tls12_only) {
		/* TLS 1.3 needs RSA-PSS, which this token cannot do: the whole
		 * listener (SNI picks a context after the version is chosen) */
		LOGW("listener %s:%u: a token here cannot make RSA-PSS signatures: TLS 1.2 only",
		     lc->address, lc->port);
		for (i = 0; i < ft->ncerts; i++)
			if (!SSL_CTX_set_max_proto_version(ft->certs[i].ctx, TLS1_2_VERSION) ||
			    !SSL_CTX_set1_sigalgs_list(ft->certs[i].ctx, SIGALGS_NO_PSS)) {
				snprintf(err, errlen, "$.listeners[%u].ssl: %s", li, ossl_reason());
				goto out;
			}
	}
	rc = 0;
out:
	ERR_clear_error();
	sk_X509_NAME_pop_free(cas, X509_NAME_free);
	X509_STORE_free(store); /* the contexts hold their references */
	return rc;
}

int tls_front_prepare(struct config *cfg, char *err, size_t errlen)
{
	unsigned int i;

	for (i = 0; i < cfg->nlisteners; i++)
		if (cfg->listeners[i].ssl &&
		    listener_prepare(cfg, &cfg->listeners[i], i, err, errlen) == -1)
			return -1;
	return 0;
}

void tls_front_free(struct config *cfg)
{
	unsigned int i;

	for (i = 0; i < cfg->nlisteners; i++) {
		front_free(cfg->listeners[i].tls);
		cfg->listeners[i].tls = NULL;
	}
}

SSL *tls_front_conn_new(struct front_tls *ft, int fd)
{
	SSL *ssl = SSL_new(ft->certs[0].ctx);

	if (!ssl)
		return NULL;
	if (!SSL_set_fd(ssl, fd)) {
		SSL_free(ssl);
		return NULL;
	}
	SSL_set_accept_state(ssl);
	if (ft->async)
		SSL_set_mode(ssl, SSL_MODE_ASYNC); /* token signatures run on the signer */
	return ssl;
}

int tls_front_async(const struct front_tls *ft)
{
	return ft->async;
}

const char *tls_front_token_down(const struct front_tls *ft)
{
	unsigned int i;

	for (i = 0; ft && i < ft->ncerts; i++)
		if (ft->certs[i].id.token && !signer_is_up(ft->certs[i].id.token->signer))
			return ft->certs[i].id.token->name;
	return NULL;
}

/* ---- what the handshake established ----------------------------------------- */

/* A distinguished name as IIS shows it: "C=US, S=WA, O=Example, CN=Jane",
 * in certificate order, RFC 2253 escaping, UTF-8 kept, no control bytes. */
static char *name_iis(const X509_NAME *nm)
{
	unsigned long fl = (ASN1_STRFLGS_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) | XN_FLAG_SEP_CPLUS_SPC |
			   XN_FLAG_FN_SN | XN_FLAG_DUMP_UNKNOWN_FIELDS;
	BIO *b = BIO_new(BIO_s_mem());
	char *data, *out, *o;
	long n, i;

	if (!b)
		return NULL;
	if (X509_NAME_print_ex(b, nm, 0, fl) < 0) {
		BIO_free(b);
		return NULL;
	}
	n = BIO_get_mem_data(b, &data);
	out = malloc((size_t)n + 1);
	if (out) {
		for (i = 0, o = out; i < n; i++) {
			unsigned char ch = (unsigned char)data[i];

			/* IIS says S= where OpenSSL says ST= */
			if (ch == 'S' && i + 2 < n && data[i + 1] == 'T' && data[i + 2] == '=' &&
			    (i == 0 || (i >= 2 && data[i - 1] == ' ' && data[i - 2] == ','))) {
				*o++ = 'S';
				i++;
				continue;
			}
			*o++ = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
		}
		*o = 0;
	}
	BIO_free(b);
	return out;
}

static char *serial_iis(const X509 *x)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	unsigned char bytes[64];
	char *out;
	int n, i;

	if (!bn)
		return NULL;
	n = BN_num_bytes(bn);
	if (n > (int)sizeof(bytes)) {
		BN_free(bn);
		return NULL;
	}
	BN_bn2bin(bn, bytes);
	BN_free(bn);
	if (!n)
		bytes[n++] = 0;
	out = malloc((size_t)n * 3);
	if (!out)
		return NULL;
	for (i = 0; i < n; i++)
		snprintf(out + 3 * i, 4, i + 1 < n ? "%02x-" : "%02x", bytes[i]);
	return out;
}

static char *b64_of(const X509 *x, int rfc9440)
{
	unsigned char *der = NULL;
	int len = i2d_X509(x, &der);
	char *out;
	int n;

	if (len <= 0)
		return NULL;
	out = malloc(4 * (((size_t)len + 2) / 3) + 3);
	if (out) {
		n = EVP_EncodeBlock((unsigned char *)out + (rfc9440 ? 1 : 0), der, len);
		if (rfc9440) {
			out[0] = ':';
			out[n + 1] = ':';
			out[n + 2] = 0;
		}
	}
	OPENSSL_free(der);
	return out;
}

/* RFC 9440 Client-Cert-Chain: the intermediates the client sent, as a list
 * of byte sequences. NULL when there are none (or after resumption). */
static char *chain_9440(SSL *ssl)
{
	STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
	size_t len = 0, cap = 0;
	char *out = NULL;
	int i;

	for (i = 0; chain && i < sk_X509_num(chain); i++) {
		char *one = b64_of(sk_X509_value(chain, i), 1);
		size_t n;

		if (!one)
			break;
		n = strlen(one);
		if (len + n + 3 > cap) {
			char *p;

			cap = (len + n + 3) * 2;
			p = realloc(out, cap);
			if (!p) {
				free(one);
				break;
			}
			out = p;
		}
		if (len) {
			memcpy(out + len, ", ", 2);
			len += 2;
		}
		memcpy(out + len, one, n + 1);
		len += n;
		free(one);
	}
	return out;
}

static const char *refusal_of(long vr, int *status)
{
	*status = 403;
	switch (vr) {
	case X509_V_ERR_CERT_REVOKED:
		return "403.13 client certificate revoked";
	case X509_V_ERR_CERT_HAS_EXPIRED:
	case X509_V_ERR_CERT_NOT_YET_VALID:
		return "403.17 client certificate has expired or is not yet valid";
	default:
		return "403.16 client certificate untrusted or invalid";
	}
}

struct tls_peer *tls_peer_new(SSL *ssl, const struct front_tls *ft)
{
	struct tls_peer *p = calloc(1, sizeof(*p));
	X509 *peer = SSL_get0_peer_certificate(ssl);
	X509 *own = SSL_get_certificate(ssl);
	long vr = SSL_get_verify_result(ssl);
	char *iss = NULL, *sub = NULL;
	int bits = 0;
	size_t n;

	if (!p)
		return NULL;
	if (ft->forbidden) {
		if (!peer && ft->mode == CLIENT_CERT_REQUIRE) {
			p->status = 403;
			p->reason = "403.7 client certificate required";
		} else if (peer && vr != X509_V_OK) {
			p->reason = refusal_of(vr, &p->status);
		}
	}
	/* X-ARR-SSL: server key bits | cipher secret bits | issuer | subject */
	if (own) {
		iss = name_iis(X509_get_issuer_name(own));
		sub = name_iis(X509_get_subject_name(own));
	}
	SSL_CIPHER_get_bits(SSL_get_current_cipher(ssl), &bits);
	n = 32 + (iss ? strlen(iss) : 0) + (sub ? strlen(sub) : 0);
	p->ssl_summary = malloc(n);
	if (p->ssl_summary)
		snprintf(p->ssl_summary, n, "%d|%d|%s|%s",
			 own ? EVP_PKEY_get_bits(X509_get0_pubkey(own)) : 0, bits, iss ? iss : "",
			 sub ? sub : "");
	free(iss);
	free(sub);
	if (peer && !p->status && vr == X509_V_OK) {
		p->cert_b64 = b64_of(peer, 0);
		p->chain_b64 = chain_9440(ssl);
		p->subject = name_iis(X509_get_subject_name(peer));
		p->issuer = name_iis(X509_get_issuer_name(peer));
		p->serial = serial_iis(peer);
		if (!p->cert_b64 || !p->subject || !p->issuer || !p->serial) {
			tls_peer_free(p);
			return NULL;
		}
	}
	if (!p->ssl_summary) {
		tls_peer_free(p);
		return NULL;
	}
	ERR_clear_error();
	return p;
}

void tls_peer_free(struct tls_peer *p)
{
	if (!p)
		return;
	free(p->ssl_summary);
	free(p->cert_b64);
	free(p->chain_b64);
	free(p->subject);
	free(p->issuer);
	free(p->serial);
	free(p);
}

void tls_front_log_stats(const struct config *cfg)
{
	unsigned int i, j;

	for (i = 0; cfg && i < cfg->nlisteners; i++) {
		const struct front_tls *ft = cfg->listeners[i].tls;

		for (j = 0; ft && j < ft->ncerts; j++) {
			const struct front_cert *fc = &ft->certs[j];
			unsigned long long n;

			if (!fc->id.token)
				continue;
			n = atomic_load(&fc->stats.count);
			LOGI("listener %s:%u certificate %u: %llu token signatures, average %llu "
			     "us, max %llu us (token %s)",
			     cfg->listeners[i].address, cfg->listeners[i].port, j, n,
			     n ? (unsigned long long)atomic_load(&fc->stats.total_us) / n : 0ULL,
			     (unsigned long long)atomic_load(&fc->stats.max_us),
			     fc->id.token->name);
		}
	}
}
