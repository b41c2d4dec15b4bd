/* Upstream TLS: each farm's client context (token identity, backend verification), session
 * resumption per server, and the tokens with their signer threads. */
#ifndef FG_TLS_H
#define FG_TLS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "cfg-t.h"
#include "ev.h"
#include "list.h"
#include "signer.h"

struct p11_module;

/* An open token: opened once, kept for the life of the process (tokens
 * lock after a few failed logins: farmgated logs in once per token). */
struct fg_token {
	struct list link;
	char *name;
	char *module;
	char *uri;
	char *pin_file;
	struct p11_module *mod; /* shared by tokens of the same module */
	struct signer *signer;
	struct ev_fd state_ev; /* the signer's state eventfd, in the loop */
};

/* A certificate on a token and its key, whose signatures run on the token's
 * signer (and count in the stats given to tls_token_identity). */
struct token_identity {
	struct fg_token *token;
	EVP_PKEY *pkey; /* private operations on the token */
	X509 *cert;
	int can_pss; /* the token can make RSA-PSS signatures (TLS 1.3) */
	int bound;   /* bound to the signer */
};

/* Opens the token called token (NULL: the only one) if needed and finds the
 * certificate with this thumbprint and its key. Lookup errors read
 * "<path>: <reason>"; token errors name $.tokens[i]. Blocks on the token's
 * signer (configuration time only). Returns 0 or -1. */
int tls_token_identity(struct config *cfg, const char *token, const unsigned char *thumb,
		       size_t thumb_len, const char *path, struct token_identity *id,
		       struct sign_stats *stats, char *err, size_t errlen);
void tls_token_identity_free(struct token_identity *id);

/* A farm's upstream TLS context, one per configuration generation. */
struct farm_tls {
	SSL_CTX *ctx;
	struct token_identity id;
	struct fg_token *token; /* id.token; NULL: no client certificate */
	EVP_PKEY *pkey;		/* id.pkey */
	X509 *cert;		/* id.cert */
	uint64_t ident;		/* identity: pooled connections and sessions carry it */
	int tls12_only;		/* the token cannot do RSA-PSS */
	char sha1[41];		/* the certificate's thumbprint, upper-case hex */
	struct sign_stats stats;
};

/* Called in the loop when a token goes down or comes back. */
typedef void (*tls_token_cb)(struct fg_token *tok, int up);

/* Sets up the daemon side: token state changes reach cb through loop.
 * Without it (farmgated -t), tokens are opened and checked only. */
void tls_init(struct ev_loop *loop, tls_token_cb cb);

/* Opens the tokens cfg names (reusing those already open), finds each
 * farm's certificate by thumbprint and its key on the token, and builds the
 * farms' TLS contexts. Errors name the JSON path, e.g.
 * "$.webFarms[0].protocol.clientCertHash: no certificate with thumbprint
 * ... on token hsm". Returns 0 or -1. */
int tls_prepare(struct config *cfg, char *err, size_t errlen);

/* Frees what tls_prepare built for cfg (called when a generation dies). */
void tls_config_free(struct config *cfg);

/* Closes every token (at exit). */
void tls_shutdown(void);

/* 1 if the farm's client identity can be used now (or it has none). */
int tls_identity_up(const struct farm *f);

/* A new client-side TLS connection on a connected socket to srv, with SNI,
 * host-name or pin verification, and the server's last session when it was
 * made with the same identity. NULL on allocation failure. */
SSL *tls_conn_new(struct farm *f, struct server *srv, int fd);

/* After a failed handshake, either side: why, in one line ("<peer>
 * certificate rejected: ..." or "TLS handshake failed: ..."). Clears
 * OpenSSL's error queue. The text lives until the next call. */
const char *tls_handshake_failure(SSL *ssl, const char *peer);

/* After a failed handshake: why, in one line (for the log and 502 reason). */
const char *tls_failure_reason(SSL *ssl, const struct farm *f);

/* Drops a cached session (lb.c frees a server's state with it). */
void tls_session_free(void *sess);

/* Forgets the cached sessions of servers whose farms use tok. */
void tls_forget_sessions(struct config *cfg, struct fg_token *tok);

/* Logs signature counters per token and per farm. */
void tls_log_stats(const struct config *cfg);

/* The open token of one configured in cfg (by name), or of a token_cfg.
 * Tokens stay open for the life of the process; these see only those the
 * configuration names now. */
struct fg_token *tls_token_find(const struct config *cfg, const char *name);
struct fg_token *tls_token_of(const struct token_cfg *tc);

/* A handshake paused in an ASYNC job on a token signature: the signer's
 * wait fd goes into the loop (tls_async_watch, after SSL_ERROR_WANT_ASYNC);
 * the signer closes it once the signature is done, which also takes it out
 * of epoll, so after each resumption tls_async_forget drops it, and nobody
 * closes it. */
void tls_async_watch(struct ev_loop *loop, SSL *ssl, struct ev_fd *aev,
		     void (*cb)(struct ev_loop *, struct ev_fd *, uint32_t));
void tls_async_forget(SSL *ssl, struct ev_fd *aev);

#endif
