/* PKCS#11 client: modules, tokens, PIN policy, certificates, keys and signing, spoken directly. */
#ifndef FG_P11_H
#define FG_P11_H

#include <stddef.h>
#include <p11-kit/pkcs11.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

/*
 * Error convention: functions returning int give 0 on success and -1 on
 * failure with a one-line reason in err (never containing a PIN); err may be
 * NULL. Functions on a token remember the last failing CK_RV
 * (p11_token_last_rv) so callers can tell "token lost" from other failures.
 */

/* A loaded PKCS#11 module. Loading the same file twice gives the same
 * object (reference counted): C_Initialize/C_Finalize are process-wide. */
struct p11_module;

/* One token in a slot with ONE session. Used by one thread at a time (the
 * caller serialises); different tokens may be used by different threads. */
struct p11_token;

/* ---- modules ---------------------------------------------------------- */

/* dlopen()s path (RTLD_NOW|RTLD_LOCAL), gets its function list and calls
 * C_Initialize with CKF_OS_LOCKING_OK (already initialised is fine).
 * Returns the module (release with p11_module_unload) or NULL with err. */
struct p11_module *p11_module_load(const char *path, char *err, size_t errlen);

/* Drops one reference; the last one calls C_Finalize (if this process's
 * load initialised it). The library itself stays mapped (no dlclose():
 * unsafe for modules that leave threads or atexit handlers, and it hides
 * the module's caches from leak checkers). NULL ok. */
void p11_module_unload(struct p11_module *m);

/* C_Finalize + C_Initialize (after a device error, when the module's view of
 * slots is stale). Waits for calls in progress on other threads; every
 * session of every token on this module becomes stale (their next call
 * reports CKR_SESSION_HANDLE_INVALID without reaching the module).
 * Returns 0, or the CK_RV of the failed C_Initialize. */
int p11_module_reinit(struct p11_module *m);

/* The module's file path as given to p11_module_load. */
const char *p11_module_path(const struct p11_module *m);

/* ---- PKCS#11 URIs (RFC 7512) ------------------------------------------- */

/* Bits of struct p11_uri.have: which attributes the URI gave. */
#define P11_URI_TOKEN		     (1u << 0)
#define P11_URI_MANUFACTURER	     (1u << 1)
#define P11_URI_SERIAL		     (1u << 2)
#define P11_URI_MODEL		     (1u << 3)
#define P11_URI_LIBRARY_MANUFACTURER (1u << 4)
#define P11_URI_LIBRARY_DESCRIPTION  (1u << 5)
#define P11_URI_LIBRARY_VERSION	     (1u << 6)
#define P11_URI_SLOT_DESCRIPTION     (1u << 7)
#define P11_URI_SLOT_MANUFACTURER    (1u << 8)
#define P11_URI_SLOT_ID		     (1u << 9)
#define P11_URI_OBJECT		     (1u << 10)
#define P11_URI_ID		     (1u << 11)
#define P11_URI_TYPE		     (1u << 12)

/* A parsed URI. Strings are percent-decoded and NUL-terminated; the sizes
 * are PKCS#11's field sizes (token label 32 bytes, space padded by tokens:
 * comparisons trim trailing spaces on both sides). */
struct p11_uri {
	unsigned int have; /* P11_URI_* bits */
	char token[33];
	char manufacturer[33];
	char serial[17];
	char model[17];
	char library_manufacturer[33];
	char library_description[33];
	unsigned int library_version_major;
	unsigned int library_version_minor; /* 0 when only "M" was given */
	char slot_description[65];
	char slot_manufacturer[33];
	CK_SLOT_ID slot_id;
	char object[129];      /* CKA_LABEL */
	unsigned char id[128]; /* CKA_ID, raw bytes */
	size_t id_len;
	CK_OBJECT_CLASS type; /* CKO_*; "cert", "private", "public", "secret-key", "data" */
};

/* Parses "pkcs11:attr=value;attr=value" (path attributes only). pin-value
 * and pin-source are refused (PINs come from a pin file), as are unknown or
 * repeated attributes, bad percent-escapes and values too long for their
 * PKCS#11 field. Fills *out (zeroed first). Returns 0 or -1 with err. */
int p11_uri_parse(const char *uri, struct p11_uri *out, char *err, size_t errlen);

/* Writes u back as a URI ("pkcs11:token=a%20b;id=%01") into buf (always
 * NUL-terminated, truncated if needed). Returns buf. */
char *p11_uri_format(const struct p11_uri *u, char *buf, size_t buflen);

/* ---- PIN files --------------------------------------------------------- */

/* Reads a PIN from path into pin (NUL-terminated). Refuses, naming the file
 * and the problem: a symbolic link, anything but a regular file, an owner
 * other than root, any group/other permission bit, an empty PIN, a PIN that
 * does not fit in pinlen-1 bytes or contains NUL. One trailing newline
 * ("\n" or "\r\n") is stripped. Every intermediate copy is wiped; on error
 * pin is wiped too. Returns 0 or -1 with err. */
int p11_pin_file_read(const char *path, char *pin, size_t pinlen, char *err, size_t errlen);

/* ---- slots and tokens --------------------------------------------------- */

/* One slot as C_GetSlotInfo/C_GetTokenInfo show it (strings trimmed). */
struct p11_slot_info {
	CK_SLOT_ID id;
	char description[65];
	char slot_manufacturer[33];
	CK_FLAGS slot_flags; /* CKF_TOKEN_PRESENT, CKF_REMOVABLE_DEVICE, CKF_HW_SLOT */
	int token_present;   /* token_* below are valid */
	char label[33];
	char manufacturer[33];
	char model[17];
	char serial[17];
	CK_FLAGS token_flags; /* CKF_TOKEN_INITIALIZED, CKF_USER_PIN_*, ... */
};

/* Every slot of the module (present token or not). *out is malloc()ed and
 * owned by the caller (free()). Returns 0 or -1 with err. */
int p11_slots_list(struct p11_module *m, struct p11_slot_info **out, size_t *n, char *err,
		   size_t errlen);

/* SoftHSM demo/test set-up: C_InitToken on the first slot holding an
 * uninitialised token, then C_InitPIN with user_pin (as SO). Refuses a label
 * that another token already has. *slot_out (may be NULL) gets the token's
 * slot after initialisation. PINs are only passed through, never kept.
 * Returns 0 or -1 with err. */
int p11_token_init(struct p11_module *m, const char *label, const char *so_pin,
		   const char *user_pin, CK_SLOT_ID *slot_out, char *err, size_t errlen);

/* Finds the first slot whose present, initialised token matches every
 * attribute of sel (token/slot/library ones; object/id/type are ignored)
 * and opens a R/W session (R/O if the token is write-protected). sel is
 * copied; the token holds a reference on m until p11_token_close. Error example: "no token matches pkcs11:token=x (tokens present:
 * a, b)". Returns the token (p11_token_close) or NULL. */
struct p11_token *p11_token_open(struct p11_module *m, const struct p11_uri *sel, char *err,
				 size_t errlen);

/* Closes the session (no C_Logout: that would log out every other session
 * of this process on the token), wipes the stored PIN, frees t and drops
 * its reference on the module. NULL ok. */
void p11_token_close(struct p11_token *t);

/* C_Login as CKU_USER; CKR_USER_ALREADY_LOGGED_IN is success (another
 * session of this process logged in: the token did not check this PIN
 * then; PKCS#11 log-in state is per token and process). pin may be
 * NULL only on a token with a protected authentication path (PIN pad). On
 * success the PIN is copied into t, only so that p11_token_recover can log
 * in once after the token comes back. A wrong/locked/expired PIN is never
 * retried: it gives "wrong PIN for token L (PIN count low)", "PIN locked on
 * token L", ..., wipes the stored copy and marks the PIN failed so recover
 * never tries it. An explicit new p11_token_login may still be attempted
 * (an operator typing a PIN). Returns 0 or -1 with err. */
int p11_token_login(struct p11_token *t, const char *pin, char *err, size_t errlen);

/* 1 when the last PIN given to t was refused (recover will not log in). */
int p11_token_pin_failed(const struct p11_token *t);

/* 1 if t logged in with exactly this PIN (constant time). */
int p11_token_pin_is(const struct p11_token *t, const char *pin);

/* Fresh C_GetTokenInfo flags (test with CKF_USER_PIN_COUNT_LOW,
 * CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED...); the last known flags
 * when the token cannot be asked. */
unsigned long p11_token_flags(struct p11_token *t);

/* "PIN locked", "final PIN try", "PIN count low" (most severe first) or "". */
const char *p11_pin_flags_text(unsigned long flags);

/* The token's label / serial (trailing spaces trimmed) and slot. */
const char *p11_token_label(const struct p11_token *t);
const char *p11_token_serial(const struct p11_token *t);
CK_SLOT_ID p11_token_slot(const struct p11_token *t);
struct p11_module *p11_token_module(const struct p11_token *t);

/* The CK_RV of the last failing PKCS#11 call made for t (CKR_OK if none
 * since the last success of p11_token_open/recover). */
CK_RV p11_token_last_rv(const struct p11_token *t);

/* ---- faults and recovery ----------------------------------------------- */

/* True for the results that mean the token, the session or the login is
 * gone (removal, reset, device error...): the caller should fail closed
 * and call p11_token_recover later. */
int p11_rv_is_token_lost(CK_RV rv);

/* "CKR_DEVICE_REMOVED", ...; "CKR_0x%08lx" (thread-local buffer) if unknown. */
const char *p11_rv_name(CK_RV rv);

/* After a lost token: closes the old session (errors ignored), re-initialises
 * the module when the slot list fails or no longer has the token (the
 * latter at most every 5 s: a reinit ends every session of the module),
 * finds the token again by the same URI, opens a session and,
 * if t had logged in and the new session is not logged in already (by
 * another session of this process), logs in ONCE with the stored PIN
 * (never when the token refused that PIN before).
 * Object handles from before must be looked up again (p11_key_refind).
 * Returns 0, or -1 (token still absent, login failed...) with err. */
int p11_token_recover(struct p11_token *t, char *err, size_t errlen);

/* Cheap health check (no signature): C_GetSessionInfo on t's session, and
 * CKR_USER_NOT_LOGGED_IN when a log-in was done but the session has lost
 * it (token reset). Returns CKR_OK or the CK_RV to classify with
 * p11_rv_is_token_lost; a stale session gives CKR_SESSION_HANDLE_INVALID. */
CK_RV p11_token_probe(struct p11_token *t);

/* ---- certificates ------------------------------------------------------- */

struct p11_cert {
	X509 *x509;
	unsigned char id[128]; /* CKA_ID */
	size_t id_len;
	char label[128]; /* CKA_LABEL, NUL-terminated (truncated if longer) */
	unsigned char sha1[20];
	unsigned char sha256[32];
	CK_OBJECT_HANDLE handle;
};

/* Every X.509 certificate object on the token (unparseable ones are
 * skipped). *out is owned by the caller: p11_certs_free(*out, *n).
 * Returns 0 or -1 with err. */
int p11_certs_list(struct p11_token *t, struct p11_cert **out, size_t *n, char *err, size_t errlen);
void p11_certs_free(struct p11_cert *certs, size_t n);

/* Parses a thumbprint as people paste it: 40 (SHA-1) or 64 (SHA-256) hex
 * digits, either case, with any spaces, tabs and colons, and U+200E marks
 * (Windows' certificate dialog puts one in front). out must hold 32 bytes;
 * *len gets 20 or 32. Returns 0 or -1 with err naming the problem. */
int p11_thumbprint_parse(const char *s, unsigned char *out, size_t *len, char *err, size_t errlen);

/* Upper-case hex without separators (as Windows lists thumbprints) of
 * len bytes into buf (2*len+1 bytes). Returns buf. */
char *p11_hex_upper(const unsigned char *b, size_t len, char *buf);
/* The same in lower case (CKA_IDs, as pkcs11-tool shows them). */
char *p11_hex_lower(const unsigned char *b, size_t len, char *buf);

/* The certificate whose SHA-1 (thumb_len 20) or SHA-256 (32) thumbprint is
 * thumb. *out is filled; out->x509 is owned by the caller (X509_free).
 * Returns 0 or -1 with err ("no certificate with thumbprint ... on token L"). */
int p11_cert_find(struct p11_token *t, const unsigned char *thumb, size_t thumb_len,
		  struct p11_cert *out, char *err, size_t errlen);

/* Writes x as a token certificate object (CKC_X_509, CKA_VALUE, CKA_SUBJECT,
 * CKA_ISSUER, CKA_SERIAL_NUMBER, CKA_ID = id, CKA_LABEL = label).
 * *handle may be NULL. Returns 0 or -1 with err. */
int p11_cert_import(struct p11_token *t, X509 *x, const char *label, const unsigned char *id,
		    size_t id_len, CK_OBJECT_HANDLE *handle, char *err, size_t errlen);

/* ---- keys --------------------------------------------------------------- */

/* What the token says about one key object (attributes it refuses to give
 * are -1 / 0 / empty). */
struct p11_key_info {
	CK_OBJECT_HANDLE handle;
	CK_OBJECT_CLASS cls;
	CK_KEY_TYPE key_type; /* CKK_RSA, CKK_EC, ... */
	unsigned char id[128];
	size_t id_len;
	char label[128];
	int sensitive; /* CKA_SENSITIVE: 1, 0, or -1 when unknown */
	int extractable;
	int always_sensitive;
	int never_extractable;
	int bits; /* RSA modulus bits or EC field bits, 0 if unknown */
};

/* Reads the attributes above for key. Returns 0 or -1 with err. */
int p11_key_info(struct p11_token *t, CK_OBJECT_HANDLE key, struct p11_key_info *out, char *err,
		 size_t errlen);

/* The private key belonging to certificate c: the CKO_PRIVATE_KEY with the
 * same CKA_ID (when its public half can be read it must match), else the
 * one whose public key (CKA_MODULUS + CKA_PUBLIC_EXPONENT, or the matching
 * CKO_PUBLIC_KEY's CKA_EC_POINT/CKA_MODULUS) is the certificate's. Error:
 * "certificate <SHA-1> matches no private key on token <label>".
 * Returns 0 or -1 with err. */
int p11_key_find_for_cert(struct p11_token *t, const struct p11_cert *c, CK_OBJECT_HANDLE *key,
			  char *err, size_t errlen);

/* A private key by CKA_ID (id_len > 0) and/or CKA_LABEL (label non-NULL);
 * exactly one must match. Returns 0 or -1 with err. */
int p11_key_find(struct p11_token *t, const unsigned char *id, size_t id_len, const char *label,
		 CK_OBJECT_HANDLE *key, char *err, size_t errlen);

/* The private key with CKA_ID id again (after recovery). Returns 0 or -1. */
int p11_key_refind(struct p11_token *t, const unsigned char *id, size_t id_len,
		   CK_OBJECT_HANDLE *key);

/* The public half of private key `key` as an EVP_PKEY (from the key's own
 * CKA_MODULUS/CKA_PUBLIC_EXPONENT, or from the CKO_PUBLIC_KEY with the same
 * CKA_ID). Returns a new EVP_PKEY owned by the caller, or NULL with err. */
EVP_PKEY *p11_key_public(struct p11_token *t, CK_OBJECT_HANDLE key, char *err, size_t errlen);

/* C_SignInit + C_Sign with mech (no parameters: CKM_RSA_PKCS, CKM_RSA_X_509,
 * CKM_ECDSA). *outlen is the size of out on entry, the signature length on
 * return. Returns the raw CK_RV (classify with p11_rv_is_token_lost); a
 * stale session (module re-initialised) gives CKR_SESSION_HANDLE_INVALID. */
CK_RV p11_sign(struct p11_token *t, CK_OBJECT_HANDLE key, CK_MECHANISM_TYPE mech,
	       const unsigned char *in, size_t inlen, unsigned char *out, size_t *outlen);

/* C_DecryptInit + C_Decrypt, as p11_sign (for completeness: TLS client
 * authentication never decrypts). */
CK_RV p11_decrypt(struct p11_token *t, CK_OBJECT_HANDLE key, CK_MECHANISM_TYPE mech,
		  const unsigned char *in, size_t inlen, unsigned char *out, size_t *outlen);

/* 1 if the token's mechanism list has mech (cached per session), else 0. */
int p11_token_has_mechanism(struct p11_token *t, CK_MECHANISM_TYPE mech);

/* ---- key generation, import, deletion (farmgatectl) --------------------- */

enum p11_key_kind {
	P11_KEY_RSA2048 = 0,
	P11_KEY_RSA3072 = 1,
	P11_KEY_EC256 = 2,
	P11_KEY_EC384 = 3,
};

/* Generates a key pair on the token: private CKA_TOKEN, CKA_PRIVATE,
 * CKA_SENSITIVE=TRUE, CKA_EXTRACTABLE=FALSE, CKA_SIGN (RSA also
 * CKA_DECRYPT); public CKA_TOKEN, CKA_VERIFY. Both get label and CKA_ID id;
 * if id_len is 0, 8 random bytes are used and written back to id (which
 * must then hold 8 bytes) with *id_len_out = 8. The result is read back and
 * destroyed if the token did not honour SENSITIVE/EXTRACTABLE. *priv may be
 * NULL. Returns 0 or -1 with err. */
int p11_keygen(struct p11_token *t, enum p11_key_kind kind, const char *label, unsigned char *id,
	       size_t id_len, size_t *id_len_out, CK_OBJECT_HANDLE *priv, char *err, size_t errlen);

/* Writes a software private key (RSA with every CRT component, or EC with
 * CKA_EC_PARAMS + CKA_VALUE) into the token as CKA_SENSITIVE=TRUE,
 * CKA_EXTRACTABLE=FALSE, plus its public key object, both with label and
 * id. The intermediate copies of the secret are wiped; the caller still
 * owns pkey and should free it at once. Returns 0 or -1 with err. */
int p11_key_import(struct p11_token *t, EVP_PKEY *pkey, const char *label, const unsigned char *id,
		   size_t id_len, CK_OBJECT_HANDLE *priv, char *err, size_t errlen);

/* Destroys every object matching all of: class cls (P11_CLASS_ANY for any),
 * CKA_ID id (if id_len > 0), CKA_LABEL label (if non-NULL). At least one of
 * id/label is required. *ndeleted gets the count (0 is not an error).
 * Returns 0 or -1 with err. */
#define P11_CLASS_ANY ((CK_OBJECT_CLASS)-1)
int p11_objects_delete(struct p11_token *t, CK_OBJECT_CLASS cls, const unsigned char *id,
		       size_t id_len, const char *label, size_t *ndeleted, char *err,
		       size_t errlen);

/* Destroys one object by handle. Returns 0 or -1 with err. */
int p11_object_destroy(struct p11_token *t, CK_OBJECT_HANDLE h, char *err, size_t errlen);

#endif
