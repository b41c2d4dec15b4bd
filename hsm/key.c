/* OpenSSL RSA/EC keys backed by a token: custom methods whose private operations call C_Sign. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#include "key.h"

static pthread_once_t methods_once = PTHREAD_ONCE_INIT;
static RSA_METHOD *rsa_meth;
static EC_KEY_METHOD *ec_meth;
static int rsa_idx = -1, ec_idx = -1;

static void seterr(char *err, size_t errlen, const char *msg)
{
	if (err && errlen)
		snprintf(err, errlen, "%s", msg);
}

/* ex_data free: the struct hsm_key goes with its RSA / EC_KEY. */
static void key_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	(void)parent;
	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	free(ptr);
}

/* ex_data dup: a duplicated RSA / EC_KEY gets its own copy of the state,
 * so that each is freed exactly once. */
static int key_ex_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int idx,
		      long argl, void *argp)
{
	struct hsm_key *k = *from_d, *copy;

	(void)to;
	(void)from;
	(void)idx;
	(void)argl;
	(void)argp;
	if (!k)
		return 1;
	copy = malloc(sizeof(*copy));
	if (!copy)
		return 0;
	*copy = *k;
	*from_d = copy;
	return 1;
}

/* Runs one private-key operation: the hook, else p11_sign. Returns 0 and
 * sets *outlen, or -1 with an OpenSSL error queued (lib is ERR_LIB_RSA or
 * ERR_LIB_EC). */
static int key_sign(struct hsm_key *k, int lib, CK_MECHANISM_TYPE mech, const unsigned char *in,
		    size_t inlen, unsigned char *out, size_t *outlen)
{
	int r;

	k->last_rv = CKR_OK;
	if (k->sign_hook) {
		r = k->sign_hook(k, mech, in, inlen, out, outlen);
		if (r != 0 && k->last_rv == CKR_OK)
			k->last_rv = CKR_FUNCTION_FAILED;
	} else {
		k->last_rv = p11_sign(k->token, k->handle, mech, in, inlen, out, outlen);
		r = k->last_rv == CKR_OK ? 0 : -1;
	}
	if (r != 0) {
		ERR_raise_data(lib, ERR_R_OPERATION_FAIL, "PKCS#11 signature on the token: %s",
			       p11_rv_name(k->last_rv));
		return -1;
	}
	return 0;
}

/* RSA private "encryption" (signing): PKCS#1 v1.5 -> CKM_RSA_PKCS on the
 * DigestInfo; no padding -> CKM_RSA_X_509 (OpenSSL applied PSS padding).
 * Returns the signature length (RSA_size) or -1. */
/* The token mechanism for an OpenSSL RSA padding: PKCS#1 v1.5, or raw RSA
 * (which is how OpenSSL's legacy path asks for PSS: it pads itself). */
static int rsa_mech(int padding, CK_MECHANISM_TYPE *mech)
{
	switch (padding) {
	case RSA_PKCS1_PADDING:
		*mech = CKM_RSA_PKCS;
		return 0;
	case RSA_NO_PADDING:
		*mech = CKM_RSA_X_509;
		return 0;
	}
	ERR_raise(ERR_LIB_RSA, RSA_R_UNKNOWN_PADDING_TYPE);
	return -1;
}

static int rsa_priv_enc(int flen, const unsigned char *from, unsigned char *to, RSA *rsa,
			int padding)
{
	struct hsm_key *k = RSA_get_ex_data(rsa, rsa_idx);
	size_t size = (size_t)RSA_size(rsa), outlen = size;
	CK_MECHANISM_TYPE mech;

	if (!k || flen < 0) {
		ERR_raise(ERR_LIB_RSA, ERR_R_PASSED_INVALID_ARGUMENT);
		return -1;
	}
	if (rsa_mech(padding, &mech) == -1)
		return -1;
	if (key_sign(k, ERR_LIB_RSA, mech, from, (size_t)flen, to, &outlen))
		return -1;
	if (outlen > size) {
		ERR_raise(ERR_LIB_RSA, RSA_R_DATA_TOO_LARGE);
		return -1;
	}
	if (outlen < size) {
		/* some tokens drop leading zero bytes; TLS peers want the full length */
		memmove(to + (size - outlen), to, outlen);
		memset(to, 0, size - outlen);
	}
	return (int)size;
}

/* RSA private decryption on the token (for completeness; TLS client
 * authentication never decrypts). Returns the plaintext length or -1. */
static int rsa_priv_dec(int flen, const unsigned char *from, unsigned char *to, RSA *rsa,
			int padding)
{
	struct hsm_key *k = RSA_get_ex_data(rsa, rsa_idx);
	size_t outlen = (size_t)RSA_size(rsa);
	CK_MECHANISM_TYPE mech;

	if (!k || flen < 0) {
		ERR_raise(ERR_LIB_RSA, ERR_R_PASSED_INVALID_ARGUMENT);
		return -1;
	}
	if (rsa_mech(padding, &mech) == -1)
		return -1;
	k->last_rv = p11_decrypt(k->token, k->handle, mech, from, (size_t)flen, to, &outlen);
	if (k->last_rv != CKR_OK) {
		ERR_raise_data(ERR_LIB_RSA, ERR_R_OPERATION_FAIL, "PKCS#11 decryption: %s",
			       p11_rv_name(k->last_rv));
		return -1;
	}
	return (int)outlen;
}

/* ECDSA on the token: CKM_ECDSA over the digest (truncated to the order's
 * length, as X9.62 does), raw r||s converted to an ECDSA_SIG. Returns a
 * new ECDSA_SIG or NULL. kinv/r (precomputation) cannot apply to a token. */
static ECDSA_SIG *ec_sign_sig(const unsigned char *dgst, int dlen, const BIGNUM *kinv,
			      const BIGNUM *rp, EC_KEY *ec)
{
	struct hsm_key *k = EC_KEY_get_ex_data(ec, ec_idx);
	unsigned char sig[2 * 66 + 8];
	size_t slen = sizeof(sig), obytes;
	BIGNUM *r = NULL, *s = NULL;
	ECDSA_SIG *es;

	(void)kinv;
	(void)rp;
	if (!k || dlen < 0) {
		ERR_raise(ERR_LIB_EC, ERR_R_PASSED_INVALID_ARGUMENT);
		return NULL;
	}
	obytes = (size_t)(k->bits + 7) / 8;
	if (obytes && (size_t)dlen > obytes && k->bits % 8 == 0)
		dlen = (int)obytes;
	if (key_sign(k, ERR_LIB_EC, CKM_ECDSA, dgst, (size_t)dlen, sig, &slen))
		return NULL;
	if (slen == 0 || slen % 2) {
		ERR_raise_data(ERR_LIB_EC, ERR_R_OPERATION_FAIL,
			       "token returned an ECDSA signature of odd length %zu", slen);
		return NULL;
	}
	r = BN_bin2bn(sig, (int)(slen / 2), NULL);
	s = BN_bin2bn(sig + slen / 2, (int)(slen / 2), NULL);
	es = ECDSA_SIG_new();
	if (!r || !s || !es || !ECDSA_SIG_set0(es, r, s)) {
		BN_free(r);
		BN_free(s);
		ECDSA_SIG_free(es);
		ERR_raise(ERR_LIB_EC, ERR_R_MALLOC_FAILURE);
		return NULL;
	}
	return es;
}

/* ECDSA_sign entry: DER signature into sig (ECDSA_size bytes). 1 or 0. */
static int ec_sign(int type, const unsigned char *dgst, int dlen, unsigned char *sig,
		   unsigned int *siglen, const BIGNUM *kinv, const BIGNUM *r, EC_KEY *ec)
{
	ECDSA_SIG *es;
	int n;

	(void)type;
	*siglen = 0;
	es = ec_sign_sig(dgst, dlen, kinv, r, ec);
	if (!es)
		return 0;
	n = i2d_ECDSA_SIG(es, &sig);
	ECDSA_SIG_free(es);
	if (n <= 0)
		return 0;
	*siglen = (unsigned int)n;
	return 1;
}

/* Builds the two methods and the ex_data indexes, once per process. */
static void methods_init(void)
{
	int (*orig_sign)(int, const unsigned char *, int, unsigned char *, unsigned int *,
			 const BIGNUM *, const BIGNUM *, EC_KEY *) = NULL;
	int (*orig_setup)(EC_KEY *, BN_CTX *, BIGNUM **, BIGNUM **) = NULL;
	ECDSA_SIG *(*orig_sig)(const unsigned char *, int, const BIGNUM *, const BIGNUM *,
			       EC_KEY *) = NULL;

	rsa_idx = RSA_get_ex_new_index(0, NULL, NULL, key_ex_dup, key_ex_free);
	ec_idx = EC_KEY_get_ex_new_index(0, NULL, NULL, key_ex_dup, key_ex_free);
	rsa_meth = RSA_meth_dup(RSA_PKCS1_OpenSSL());
	if (rsa_meth) {
		RSA_meth_set1_name(rsa_meth, "farmgate PKCS#11 RSA");
		RSA_meth_set_priv_enc(rsa_meth, rsa_priv_enc);
		RSA_meth_set_priv_dec(rsa_meth, rsa_priv_dec);
	}
	ec_meth = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
	if (ec_meth) {
		EC_KEY_METHOD_get_sign(ec_meth, &orig_sign, &orig_setup, &orig_sig);
		EC_KEY_METHOD_set_sign(ec_meth, ec_sign, orig_setup, ec_sign_sig);
	}
}

void hsm_key_cleanup(void)
{
	/* EC_KEY_METHOD_free does not accept NULL */
	if (rsa_meth)
		RSA_meth_free(rsa_meth);
	rsa_meth = NULL;
	if (ec_meth)
		EC_KEY_METHOD_free(ec_meth);
	ec_meth = NULL;
}

/* An RSA EVP_PKEY with pub's n/e and our method, owning k. NULL on error
 * (k is then still the caller's). */
static EVP_PKEY *rsa_key(EVP_PKEY *pub, struct hsm_key *k)
{
	BIGNUM *n = NULL, *e = NULL;
	EVP_PKEY *pkey = NULL;
	RSA *rsa = NULL;

	if (EVP_PKEY_get_bn_param(pub, OSSL_PKEY_PARAM_RSA_N, &n) != 1 ||
	    EVP_PKEY_get_bn_param(pub, OSSL_PKEY_PARAM_RSA_E, &e) != 1)
		goto err;
	rsa = RSA_new();
	if (!rsa || !RSA_set_method(rsa, rsa_meth) || !RSA_set0_key(rsa, n, e, NULL))
		goto err;
	n = e = NULL; /* owned by rsa */
	RSA_set_flags(rsa, RSA_FLAG_EXT_PKEY);
	pkey = EVP_PKEY_new();
	if (!pkey || !RSA_set_ex_data(rsa, rsa_idx, k))
		goto err;
	if (!EVP_PKEY_assign_RSA(pkey, rsa)) {
		RSA_set_ex_data(rsa, rsa_idx, NULL); /* k stays the caller's */
		goto err;
	}
	return pkey;
err:
	BN_free(n);
	BN_free(e);
	RSA_free(rsa);
	EVP_PKEY_free(pkey);
	return NULL;
}

/* An EC EVP_PKEY with pub's group and point and our method, owning k.
 * NULL on error (k is then still the caller's). */
static EVP_PKEY *ec_key(EVP_PKEY *pub, struct hsm_key *k)
{
	const EC_KEY *src = EVP_PKEY_get0_EC_KEY(pub);
	EVP_PKEY *pkey = NULL;
	EC_KEY *ec = NULL;

	if (!src)
		return NULL;
	ec = EC_KEY_new();
	if (!ec || !EC_KEY_set_method(ec, ec_meth) ||
	    !EC_KEY_set_group(ec, EC_KEY_get0_group(src)) ||
	    !EC_KEY_set_public_key(ec, EC_KEY_get0_public_key(src)))
		goto err;
	pkey = EVP_PKEY_new();
	if (!pkey || !EC_KEY_set_ex_data(ec, ec_idx, k))
		goto err;
	if (!EVP_PKEY_assign_EC_KEY(pkey, ec)) {
		EC_KEY_set_ex_data(ec, ec_idx, NULL);
		goto err;
	}
	return pkey;
err:
	EC_KEY_free(ec);
	EVP_PKEY_free(pkey);
	return NULL;
}

EVP_PKEY *hsm_key_new_pub(struct p11_token *t, CK_OBJECT_HANDLE key, EVP_PKEY *pub, char *err,
			  size_t errlen)
{
	struct p11_key_info info;
	struct hsm_key *k;
	EVP_PKEY *pkey;
	int base;

	pthread_once(&methods_once, methods_init);
	if (!rsa_meth || !ec_meth || rsa_idx < 0 || ec_idx < 0) {
		seterr(err, errlen, "cannot set up the OpenSSL key methods");
		return NULL;
	}
	if (!pub) {
		seterr(err, errlen, "no public key");
		return NULL;
	}
	base = EVP_PKEY_get_base_id(pub);
	if (base != EVP_PKEY_RSA && base != EVP_PKEY_EC) {
		seterr(err, errlen, "only RSA and EC keys are supported");
		return NULL;
	}
	if (p11_key_info(t, key, &info, err, errlen))
		return NULL;
	if (info.cls != CKO_PRIVATE_KEY ||
	    info.key_type != (base == EVP_PKEY_RSA ? CKK_RSA : CKK_EC)) {
		seterr(err, errlen,
		       "the token object is not a private key of the certificate's type");
		return NULL;
	}
	k = calloc(1, sizeof(*k));
	if (!k) {
		seterr(err, errlen, "out of memory");
		return NULL;
	}
	k->token = t;
	k->handle = key;
	memcpy(k->id, info.id, info.id_len);
	k->id_len = info.id_len;
	k->bits = EVP_PKEY_get_bits(pub);
	k->is_ec = base == EVP_PKEY_EC;
	k->last_rv = CKR_OK;
	pkey = k->is_ec ? ec_key(pub, k) : rsa_key(pub, k);
	if (!pkey) {
		free(k);
		seterr(err, errlen, "cannot build the OpenSSL key");
		return NULL;
	}
	return pkey;
}

EVP_PKEY *hsm_key_new(struct p11_token *t, CK_OBJECT_HANDLE key, X509 *cert, char *err,
		      size_t errlen)
{
	EVP_PKEY *pub = cert ? X509_get0_pubkey(cert) : NULL;

	if (!pub) {
		seterr(err, errlen, "the certificate has no usable public key");
		return NULL;
	}
	return hsm_key_new_pub(t, key, pub, err, errlen);
}

struct hsm_key *hsm_key_of(EVP_PKEY *pkey)
{
	if (!pkey || !rsa_meth)
		return NULL;
	switch (EVP_PKEY_get_base_id(pkey)) {
	case EVP_PKEY_RSA: {
		const RSA *rsa = EVP_PKEY_get0_RSA(pkey);

		if (rsa && RSA_get_method(rsa) == rsa_meth)
			return RSA_get_ex_data(rsa, rsa_idx);
		return NULL;
	}
	case EVP_PKEY_EC: {
		const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(pkey);

		if (ec && EC_KEY_get_method(ec) == ec_meth)
			return EC_KEY_get_ex_data(ec, ec_idx);
		return NULL;
	}
	default:
		return NULL;
	}
}

int hsm_key_can_pss(struct hsm_key *k)
{
	if (!k || k->is_ec)
		return 0;
	return p11_token_has_mechanism(k->token, CKM_RSA_X_509);
}
