/* OpenSSL keys whose private operations run on a PKCS#11 token (custom RSA/EC methods). */
#ifndef FG_HSM_KEY_H
#define FG_HSM_KEY_H

#include <stddef.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "p11.h"

/*
 * Per-key state attached (ex_data) to the RSA / EC_KEY inside the EVP_PKEY
 * that hsm_key_new returns; it lives and dies with that key.
 *
 * sign_hook: when set, every private-key operation calls it instead of
 * p11_sign (the daemon's signer runs the signature off the event loop).
 * It gets the mechanism (CKM_RSA_PKCS, CKM_RSA_X_509 or CKM_ECDSA), the
 * input, and out with *outlen = its size; it returns 0 and sets *outlen on
 * success, non-zero on failure, and should store the PKCS#11 result in
 * k->last_rv (which is CKR_OK when the hook is called; a failure that
 * leaves it CKR_OK is recorded as CKR_FUNCTION_FAILED). Without a hook the
 * methods call p11_sign(k->token, k->handle, ...) on the calling thread.
 */
struct hsm_key {
	struct p11_token *token; /* not owned */
	CK_OBJECT_HANDLE handle; /* the private key; refresh after recovery */
	unsigned char id[128];	 /* its CKA_ID, for p11_key_refind */
	size_t id_len;
	int (*sign_hook)(struct hsm_key *k, CK_MECHANISM_TYPE mech, const unsigned char *in,
			 size_t inlen, unsigned char *out, size_t *outlen);
	void *hook_arg;
	int bits;      /* modulus / curve order bits */
	int is_ec;     /* else RSA */
	CK_RV last_rv; /* result of the last private-key operation */
};

/* An EVP_PKEY with cert's public key whose private operations run on the
 * token with private key `key` (RSA: PKCS#1 v1.5 via CKM_RSA_PKCS, raw via
 * CKM_RSA_X_509, which is how OpenSSL's legacy path does PSS; EC: ECDSA via
 * CKM_ECDSA). t must outlive the key. Returns a new EVP_PKEY owned by the
 * caller (EVP_PKEY_free also frees the struct hsm_key), or NULL with err. */
EVP_PKEY *hsm_key_new(struct p11_token *t, CK_OBJECT_HANDLE key, X509 *cert, char *err,
		      size_t errlen);

/* The same from a public key instead of a certificate (CSRs: no
 * certificate yet). pub is only read. */
EVP_PKEY *hsm_key_new_pub(struct p11_token *t, CK_OBJECT_HANDLE key, EVP_PKEY *pub, char *err,
			  size_t errlen);

/* The state of a key made by hsm_key_new, or NULL for any other key. */
struct hsm_key *hsm_key_of(EVP_PKEY *pkey);

/* 1 if RSA-PSS can be done with k: the token offers CKM_RSA_X_509 (OpenSSL
 * pads, the token does raw RSA). A token with only CKM_RSA_PKCS_PSS gives
 * 0, because OpenSSL's legacy key path cannot hand the token a PSS
 * operation. Always 0 for EC keys (no PSS there). */
int hsm_key_can_pss(struct hsm_key *k);

/* Frees the RSA/EC methods at process exit (optional; keys must be gone). */
void hsm_key_cleanup(void);

#endif
