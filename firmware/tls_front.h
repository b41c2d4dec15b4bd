/* Front-end TLS: HTTPS listeners' server contexts (certificates from files or tokens,
 * SNI), IIS's client-certificate settings, session tickets, and what a verified client
 * certificate tells the farm. */
#ifndef FG_TLS_FRONT_H
#define FG_TLS_FRONT_H

#include <stddef.h>

#include <openssl/ssl.h>

#include "cfg-t.h"

/* Builds the contexts of every HTTPS listener of cfg (called by
 * tls_prepare). Errors name the JSON path. Returns 0 or -1. */
int tls_front_prepare(struct config *cfg, char *err, size_t errlen);

/* Frees what tls_front_prepare built for cfg. */
void tls_front_free(struct config *cfg);

/* A new server-side TLS connection on an accepted socket. NULL on
 * allocation failure. The listener's front_tls must live until the
 * handshake is over (the caller holds its configuration). */
SSL *tls_front_conn_new(struct front_tls *ft, int fd);

/* 1 if handshakes on ft may pause for a token signature (SSL_MODE_ASYNC). */
int tls_front_async(const struct front_tls *ft);

/* The name of a token holding one of ft's keys that is down now, or NULL. */
const char *tls_front_token_down(const struct front_tls *ft);

/* What a finished handshake established, kept by the client connection. */
struct tls_peer {
	int status;	    /* 0, or 403 when the listener refuses with HTTP */
	const char *reason; /* why (static text), for the 403 and the log */
	char *ssl_summary;  /* X-ARR-SSL: keybits|secretbits|issuer|subject */
	/* the client certificate; all NULL without one */
	char *cert_b64;	 /* base64 of its DER */
	char *chain_b64; /* RFC 9440 Client-Cert-Chain value, NULL if none sent */
	char *subject;	 /* {CERT_SUBJECT}, IIS form "C=US, O=..., CN=..." */
	char *issuer;	 /* {CERT_ISSUER} */
	char *serial;	 /* {CERT_SERIALNUMBER}, "0a-1b-..." */
};

/* Reads what the handshake of ssl established (on ft's listener), including
 * whether the listener refuses the client with 403. NULL on allocation
 * failure. */
struct tls_peer *tls_peer_new(SSL *ssl, const struct front_tls *ft);
void tls_peer_free(struct tls_peer *p);

/* Logs the token signature counters of listeners' certificates. */
void tls_front_log_stats(const struct config *cfg);

#endif
