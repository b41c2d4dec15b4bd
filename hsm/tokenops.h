/* Token operations an operator asks for: key generation, a CSR signed on the token, and a
 * certificate stored beside its key. Shared by `farmgatectl token` and farmgated's control
 * socket (which runs them on the token's signer thread). */
#ifndef FG_TOKENOPS_H
#define FG_TOKENOPS_H

#include <stddef.h>

#include <openssl/x509.h>

#include "p11.h"

/* "rsa2048", "rsa3072", "ec256", "ec384" (also RSA-2048, EC-P256, ...):
 * 0 with *kind set, or -1. */
int tokop_key_kind(const char *type, enum p11_key_kind *kind);

/* A key pair generated on t (sensitive, never extractable) labelled label,
 * with CKA_ID id (id_len 0: a random one). Refuses a label or id already
 * used by a private key. The id goes to id_out (128 bytes). */
int tokop_keygen(struct p11_token *t, enum p11_key_kind kind, const char *label,
		 const unsigned char *id, size_t id_len, unsigned char *id_out, size_t *id_out_len,
		 char *err, size_t errlen);

/* "/CN=a/O=b" (openssl -subj syntax, '\' escapes) into a new X509_NAME. */
X509_NAME *tokop_parse_subject(const char *s, char *err, size_t errlen);

/* A CSR for the key with CKA_ID id or label key_label, signed on the token
 * (SHA-256), subject as tokop_parse_subject reads it, san as OpenSSL's
 * subjectAltName syntax ("DNS:a,IP:1.2.3.4") or NULL. */
X509_REQ *tokop_csr(struct p11_token *t, const unsigned char *id, size_t id_len,
		    const char *key_label, const char *subject, const char *san, char *err,
		    size_t errlen);

/* A PEM or DER certificate, or NULL. */
X509 *tokop_parse_cert(const unsigned char *b, size_t len);

/* Stores x beside its private key (found by public key; the key's CKA_ID
 * becomes the certificate's). label NULL: the key's label, else the CN. The
 * label used goes to label_out (128 bytes). Refuses a certificate already
 * stored and one outside its validity unless allow_dates. */
int tokop_import_cert(struct p11_token *t, X509 *x, const char *label, int allow_dates,
		      char *label_out, char *err, size_t errlen);

/* 1 (with err saying so) when a certificate with x's SHA-1 is on t. */
int tokop_cert_stored(struct p11_token *t, X509 *x, char *err, size_t errlen);

/* The label to store x under (out: 128 bytes): label, else fallback, else
 * its CN, else "certificate". */
void tokop_pick_label(X509 *x, const char *label, const char *fallback, char *out);

/* A software key and its certificate written onto t (the key sensitive and
 * never extractable) with label and CKA_ID id; if the certificate cannot be
 * stored, the key is removed again. The caller frees pkey at once after. */
int tokop_import_key_cert(struct p11_token *t, EVP_PKEY *pkey, X509 *x, const char *label,
			  const unsigned char *id, size_t id_len, char *err, size_t errlen);

/* "2026-11-22 10:00:00 UTC" (or "(unreadable date)") into buf. */
char *tokop_fmt_time(const ASN1_TIME *t, char *buf, size_t len);

#endif
