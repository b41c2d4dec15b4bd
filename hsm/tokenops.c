/* Token operations an operator asks for (tokenops.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "key.h"
#include "tokenops.h"

static const char *ossl_reason(const char *fallback)
{
	static __thread char buf[256];
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	snprintf(buf, sizeof(buf), "%s", r ? r : fallback);
	ERR_clear_error();
	return buf;
}

int tokop_key_kind(const char *type, enum p11_key_kind *kind)
{
	static const struct {
		const char *a, *b;
		enum p11_key_kind kind;
	} kinds[] = {
		{"rsa2048", "RSA-2048", P11_KEY_RSA2048},
		{"rsa3072", "RSA-3072", P11_KEY_RSA3072},
		{"ec256", "EC-P256", P11_KEY_EC256},
		{"ec384", "EC-P384", P11_KEY_EC384},
	};
	size_t i;

	for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (!strcasecmp(type, kinds[i].a) || !strcasecmp(type, kinds[i].b)) {
			*kind = kinds[i].kind;
			return 0;
		}
	return -1;
}

int tokop_keygen(struct p11_token *t, enum p11_key_kind kind, const char *label,
		 const unsigned char *id, size_t id_len, unsigned char *id_out, size_t *id_out_len,
		 char *err, size_t errlen)
{
	CK_OBJECT_HANDLE h;
	char hex[257];

	if (id_len && p11_key_find(t, id, id_len, NULL, &h, NULL, 0) == 0) {
		snprintf(err, errlen, "a private key with id %s already exists on token %s",
			 p11_hex_lower(id, id_len, hex), p11_token_label(t));
		return -1;
	}
	if (p11_key_find(t, NULL, 0, label, &h, NULL, 0) == 0) {
		snprintf(err, errlen,
			 "a private key labelled %s already exists on token %s; choose another "
			 "label or delete it",
			 label, p11_token_label(t));
		return -1;
	}
	if (id_len)
		memcpy(id_out, id, id_len);
	return p11_keygen(t, kind, label, id_out, id_len, id_out_len, &h, err, errlen) ? -1 : 0;
}

X509_NAME *tokop_parse_subject(const char *s, char *err, size_t errlen)
{
	X509_NAME *name = X509_NAME_new();
	char *buf = malloc(strlen(s) + 1);
	const char *p = s;

	if (!name || !buf) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (*p != '/') {
		snprintf(err, errlen, "subject \"%.200s\": expected /CN=name/O=org...", s);
		goto fail;
	}
	while (*p == '/') {
		char *typ, *val, *eq;
		size_t n = 0;
		int nid;

		p++;
		while (*p && *p != '/') {
			if (*p == '\\' && p[1])
				p++;
			buf[n++] = *p++;
		}
		buf[n] = '\0';
		if (n == 0 && !*p)
			break; /* trailing '/' */
		eq = strchr(buf, '=');
		if (!eq || eq == buf) {
			snprintf(err, errlen, "subject \"%.200s\": each part is TYPE=value", s);
			goto fail;
		}
		*eq = '\0';
		typ = buf;
		val = eq + 1;
		nid = OBJ_txt2nid(typ);
		if (nid == NID_undef) {
			snprintf(err, errlen, "subject: unknown attribute type %.64s", typ);
			goto fail;
		}
		if (!*val) {
			snprintf(err, errlen, "subject: %.64s has an empty value", typ);
			goto fail;
		}
		if (!X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8, (unsigned char *)val, -1,
						-1, 0)) {
			snprintf(err, errlen, "subject: %.64s=%.128s: %s", typ, val,
				 ossl_reason("invalid value"));
			goto fail;
		}
	}
	if (X509_NAME_entry_count(name) == 0) {
		snprintf(err, errlen, "subject \"%.200s\": no attributes", s);
		goto fail;
	}
	free(buf);
	return name;
fail:
	free(buf);
	X509_NAME_free(name);
	return NULL;
}

X509_REQ *tokop_csr(struct p11_token *t, const unsigned char *id, size_t id_len,
		    const char *key_label, const char *subject, const char *san, char *err,
		    size_t errlen)
{
	STACK_OF(X509_EXTENSION) *exts = NULL;
	X509_EXTENSION *ext;
	EVP_PKEY *pub = NULL, *pkey = NULL;
	X509_NAME *name;
	X509_REQ *req = NULL;
	CK_OBJECT_HANDLE h;

	name = tokop_parse_subject(subject, err, errlen);
	if (!name)
		return NULL;
	if (san && *san) {
		ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
		if (!ext) {
			snprintf(err, errlen,
				 "bad subjectAltName %.200s: %s (use DNS:name,IP:1.2.3.4,email:a@b,"
				 "URI:...)",
				 san, ossl_reason("invalid"));
			goto fail;
		}
		exts = sk_X509_EXTENSION_new_null();
		if (!exts || !sk_X509_EXTENSION_push(exts, ext)) {
			X509_EXTENSION_free(ext);
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
	}
	if (p11_key_find(t, id, id_len, key_label, &h, err, errlen))
		goto fail;
	pub = p11_key_public(t, h, err, errlen);
	if (!pub || !(pkey = hsm_key_new_pub(t, h, pub, err, errlen)))
		goto fail;
	req = X509_REQ_new();
	if (!req || !X509_REQ_set_version(req, 0) || !X509_REQ_set_subject_name(req, name) ||
	    !X509_REQ_set_pubkey(req, pub) || (exts && !X509_REQ_add_extensions(req, exts))) {
		snprintf(err, errlen, "cannot build the CSR: %s", ossl_reason("internal error"));
		goto fail;
	}
	if (X509_REQ_sign(req, pkey, EVP_sha256()) <= 0) {
		snprintf(err, errlen, "signing the CSR on token %s failed: %s", p11_token_label(t),
			 ossl_reason("signature failed"));
		goto fail;
	}
	if (X509_REQ_verify(req, pub) != 1) {
		snprintf(err, errlen, "the token's CSR signature does not verify");
		goto fail;
	}
	goto out;
fail:
	X509_REQ_free(req);
	req = NULL;
out:
	EVP_PKEY_free(pkey);
	EVP_PKEY_free(pub);
	X509_NAME_free(name);
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	return req;
}

X509 *tokop_parse_cert(const unsigned char *b, size_t len)
{
	const unsigned char *p = b;
	BIO *bio;
	X509 *x;

	bio = BIO_new_mem_buf(b, (int)len);
	x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
	BIO_free(bio);
	if (!x)
		x = d2i_X509(NULL, &p, (long)len);
	ERR_clear_error();
	return x;
}

char *tokop_fmt_time(const ASN1_TIME *t, char *buf, size_t len)
{
	struct tm tm;

	if (!t || !ASN1_TIME_to_tm(t, &tm))
		snprintf(buf, len, "(unreadable date)");
	else
		strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm);
	return buf;
}

int tokop_import_cert(struct p11_token *t, X509 *x, const char *label, int allow_dates,
		      char *label_out, char *err, size_t errlen)
{
	const ASN1_TIME *nb = X509_get0_notBefore(x), *na = X509_get0_notAfter(x);
	struct p11_key_info ki;
	struct p11_cert pc;
	CK_OBJECT_HANDLE key;
	char b1[40], b2[40];

	if (!allow_dates && X509_cmp_current_time(nb) > 0) {
		snprintf(err, errlen, "the certificate is not yet valid: valid from %s to %s",
			 tokop_fmt_time(nb, b1, sizeof(b1)), tokop_fmt_time(na, b2, sizeof(b2)));
		return -1;
	}
	if (!allow_dates && X509_cmp_current_time(na) < 0) {
		snprintf(err, errlen, "the certificate expired on %s (valid from %s)",
			 tokop_fmt_time(na, b2, sizeof(b2)), tokop_fmt_time(nb, b1, sizeof(b1)));
		return -1;
	}
	if (tokop_cert_stored(t, x, err, errlen))
		return -1;
	memset(&pc, 0, sizeof(pc));
	pc.x509 = x;
	if (p11_key_find_for_cert(t, &pc, &key, err, errlen) ||
	    p11_key_info(t, key, &ki, err, errlen))
		return -1;
	tokop_pick_label(x, label, ki.label, label_out);
	return p11_cert_import(t, x, label_out, ki.id, ki.id_len, NULL, err, errlen) ? -1 : 0;
}

int tokop_cert_stored(struct p11_token *t, X509 *x, char *err, size_t errlen)
{
	unsigned char sha1[20];
	struct p11_cert pc;
	char hex[41];

	X509_digest(x, EVP_sha1(), sha1, NULL);
	if (p11_cert_find(t, sha1, 20, &pc, NULL, 0) != 0)
		return 0;
	snprintf(err, errlen, "certificate %s is already on token %s (label %s)",
		 p11_hex_upper(sha1, 20, hex), p11_token_label(t), pc.label);
	X509_free(pc.x509);
	return 1;
}

void tokop_pick_label(X509 *x, const char *label, const char *fallback, char *out)
{
	if (label && *label)
		snprintf(out, 128, "%s", label);
	else if (fallback && *fallback)
		snprintf(out, 128, "%s", fallback);
	else if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out, 128) <= 0)
		snprintf(out, 128, "certificate");
}

int tokop_import_key_cert(struct p11_token *t, EVP_PKEY *pkey, X509 *x, const char *label,
			  const unsigned char *id, size_t id_len, char *err, size_t errlen)
{
	CK_OBJECT_HANDLE h;
	size_t nd = 0;

	if (p11_key_import(t, pkey, label, id, id_len, &h, err, errlen))
		return -1;
	if (p11_cert_import(t, x, label, id, id_len, &h, err, errlen)) {
		size_t n = strlen(err);

		/* no key without its certificate: take it off again */
		p11_objects_delete(t, CKO_PRIVATE_KEY, id, id_len, NULL, &nd, NULL, 0);
		p11_objects_delete(t, CKO_PUBLIC_KEY, id, id_len, NULL, &nd, NULL, 0);
		snprintf(err + n, errlen - n, " (the key written a moment ago was removed again)");
		return -1;
	}
	return 0;
}
