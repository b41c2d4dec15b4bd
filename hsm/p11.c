/* PKCS#11 client: dlopen()ed modules, URIs, PIN files, tokens, certificates, keys, signing. */
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "p11.h"

#define P11_PIN_MAX 256 /* longest PIN kept for recovery (bytes, NUL excluded) */

struct p11_module {
	struct p11_module *next; /* in the process-wide list (modules_lock) */
	int refs;
	char *path; /* as given */
	char *key;  /* realpath(), identity of the loaded file */
	void *dl;
	CK_FUNCTION_LIST *f;
	int finalize;		  /* we initialised it: C_Finalize at the last unload */
	pthread_rwlock_t lock;	  /* calls hold it shared, reinit exclusive */
	unsigned long generation; /* bumped by every reinit (under lock) */
	long long reinit_ms;	  /* CLOCK_MONOTONIC of the last reinit */
};

/* A token merely absent from a working slot list re-initialises the module
 * at most this often: the reinit ends the sessions of every other token of
 * the module too. */
#define REINIT_ABSENT_MIN_MS 5000

struct p11_token {
	struct p11_module *m;
	struct p11_uri uri;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE session;
	int has_session;
	unsigned long generation; /* module generation the session belongs to */
	char label[33];
	char serial[17];
	unsigned long flags; /* last known token flags */
	CK_RV last_rv;
	/* PIN policy: kept only for one log-in after recovery */
	char pin[P11_PIN_MAX + 1];
	size_t pin_len;
	int have_pin;
	int login_wanted; /* a log-in was asked for: recovery logs in again */
	int pin_failed;	  /* the token refused the PIN: never retried */
	/* mechanism cache, per session */
	CK_MECHANISM_TYPE *mechs;
	CK_ULONG nmechs;
	int mechs_valid;
};

static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
static struct p11_module *modules;

/* Formats a one-line error into err (if any). */
static void seterr(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* Copies a blank-padded PKCS#11 text field into dst as a C string without
 * the trailing blanks (and NULs some tokens use instead). */
static void field_copy(char *dst, size_t dstsize, const unsigned char *src, size_t srclen)
{
	size_t n = srclen < dstsize - 1 ? srclen : dstsize - 1;

	memcpy(dst, src, n);
	while (n > 0 && (dst[n - 1] == ' ' || dst[n - 1] == '\0'))
		n--;
	dst[n] = '\0';
}

/* strcmp ignoring trailing spaces on both sides; 1 when equal. */
static int eq_trim(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);

	while (la > 0 && a[la - 1] == ' ')
		la--;
	while (lb > 0 && b[lb - 1] == ' ')
		lb--;
	return la == lb && memcmp(a, b, la) == 0;
}

/* ---- CK_RV names and classes ------------------------------------------ */

#define RV(x)                                                                                      \
	{                                                                                          \
		x, #x                                                                              \
	}
static const struct {
	CK_RV rv;
	const char *name;
} rv_names[] = {
	RV(CKR_OK),
	RV(CKR_CANCEL),
	RV(CKR_HOST_MEMORY),
	RV(CKR_SLOT_ID_INVALID),
	RV(CKR_GENERAL_ERROR),
	RV(CKR_FUNCTION_FAILED),
	RV(CKR_ARGUMENTS_BAD),
	RV(CKR_NO_EVENT),
	RV(CKR_NEED_TO_CREATE_THREADS),
	RV(CKR_CANT_LOCK),
	RV(CKR_ATTRIBUTE_READ_ONLY),
	RV(CKR_ATTRIBUTE_SENSITIVE),
	RV(CKR_ATTRIBUTE_TYPE_INVALID),
	RV(CKR_ATTRIBUTE_VALUE_INVALID),
	RV(CKR_ACTION_PROHIBITED),
	RV(CKR_DATA_INVALID),
	RV(CKR_DATA_LEN_RANGE),
	RV(CKR_DEVICE_ERROR),
	RV(CKR_DEVICE_MEMORY),
	RV(CKR_DEVICE_REMOVED),
	RV(CKR_ENCRYPTED_DATA_INVALID),
	RV(CKR_ENCRYPTED_DATA_LEN_RANGE),
	RV(CKR_FUNCTION_CANCELED),
	RV(CKR_FUNCTION_NOT_PARALLEL),
	RV(CKR_FUNCTION_NOT_SUPPORTED),
	RV(CKR_KEY_HANDLE_INVALID),
	RV(CKR_KEY_SIZE_RANGE),
	RV(CKR_KEY_TYPE_INCONSISTENT),
	RV(CKR_KEY_FUNCTION_NOT_PERMITTED),
	RV(CKR_MECHANISM_INVALID),
	RV(CKR_MECHANISM_PARAM_INVALID),
	RV(CKR_OBJECT_HANDLE_INVALID),
	RV(CKR_OPERATION_ACTIVE),
	RV(CKR_OPERATION_NOT_INITIALIZED),
	RV(CKR_PIN_INCORRECT),
	RV(CKR_PIN_INVALID),
	RV(CKR_PIN_LEN_RANGE),
	RV(CKR_PIN_EXPIRED),
	RV(CKR_PIN_LOCKED),
	RV(CKR_SESSION_CLOSED),
	RV(CKR_SESSION_COUNT),
	RV(CKR_SESSION_HANDLE_INVALID),
	RV(CKR_SESSION_PARALLEL_NOT_SUPPORTED),
	RV(CKR_SESSION_READ_ONLY),
	RV(CKR_SESSION_EXISTS),
	RV(CKR_SESSION_READ_ONLY_EXISTS),
	RV(CKR_SESSION_READ_WRITE_SO_EXISTS),
	RV(CKR_SIGNATURE_INVALID),
	RV(CKR_SIGNATURE_LEN_RANGE),
	RV(CKR_TEMPLATE_INCOMPLETE),
	RV(CKR_TEMPLATE_INCONSISTENT),
	RV(CKR_TOKEN_NOT_PRESENT),
	RV(CKR_TOKEN_NOT_RECOGNIZED),
	RV(CKR_TOKEN_WRITE_PROTECTED),
	RV(CKR_USER_ALREADY_LOGGED_IN),
	RV(CKR_USER_NOT_LOGGED_IN),
	RV(CKR_USER_PIN_NOT_INITIALIZED),
	RV(CKR_USER_TYPE_INVALID),
	RV(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
	RV(CKR_USER_TOO_MANY_TYPES),
	RV(CKR_DOMAIN_PARAMS_INVALID),
	RV(CKR_CURVE_NOT_SUPPORTED),
	RV(CKR_BUFFER_TOO_SMALL),
	RV(CKR_RANDOM_NO_RNG),
	RV(CKR_CRYPTOKI_NOT_INITIALIZED),
	RV(CKR_CRYPTOKI_ALREADY_INITIALIZED),
	RV(CKR_MUTEX_BAD),
	RV(CKR_MUTEX_NOT_LOCKED),
	RV(CKR_FUNCTION_REJECTED),
};
#undef RV

const char *p11_rv_name(CK_RV rv)
{
	static __thread char buf[32];
	size_t i;

	for (i = 0; i < sizeof(rv_names) / sizeof(rv_names[0]); i++)
		if (rv_names[i].rv == rv)
			return rv_names[i].name;
	snprintf(buf, sizeof(buf), "CKR_0x%08lx", (unsigned long)rv);
	return buf;
}

int p11_rv_is_token_lost(CK_RV rv)
{
	switch (rv) {
	case CKR_DEVICE_ERROR:
	case CKR_DEVICE_REMOVED:
	case CKR_TOKEN_NOT_PRESENT:
	case CKR_SESSION_HANDLE_INVALID:
	case CKR_SESSION_CLOSED:
	case CKR_OBJECT_HANDLE_INVALID:
	case CKR_KEY_HANDLE_INVALID:
	case CKR_USER_NOT_LOGGED_IN:
	case CKR_TOKEN_NOT_RECOGNIZED:
	case CKR_CRYPTOKI_NOT_INITIALIZED:
	case CKR_DEVICE_MEMORY:
	case CKR_GENERAL_ERROR:
		return 1;
	default:
		return 0;
	}
}

const char *p11_pin_flags_text(unsigned long flags)
{
	if (flags & CKF_USER_PIN_LOCKED)
		return "PIN locked";
	if (flags & CKF_USER_PIN_FINAL_TRY)
		return "final PIN try";
	if (flags & CKF_USER_PIN_COUNT_LOW)
		return "PIN count low";
	return "";
}

/* ---- modules ---------------------------------------------------------- */

/* C_Initialize with OS locking; already-initialised counts as success.
 * *ours is set when this call did the initialisation. */
static CK_RV module_initialize(struct p11_module *m, int *ours)
{
	CK_C_INITIALIZE_ARGS args;
	CK_RV rv;

	memset(&args, 0, sizeof(args));
	args.flags = CKF_OS_LOCKING_OK;
	rv = m->f->C_Initialize(&args);
	if (ours)
		*ours = rv == CKR_OK;
	if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED)
		rv = CKR_OK;
	return rv;
}

struct p11_module *p11_module_load(const char *path, char *err, size_t errlen)
{
	struct p11_module *m;
	CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
	char real[PATH_MAX];
	const char *key;
	CK_RV rv;

	if (!path || !*path) {
		seterr(err, errlen, "no PKCS#11 module path given");
		return NULL;
	}
	key = realpath(path, real) ? real : path;

	pthread_mutex_lock(&modules_lock);
	for (m = modules; m; m = m->next) {
		if (strcmp(m->key, key) == 0) {
			m->refs++;
			pthread_mutex_unlock(&modules_lock);
			return m;
		}
	}

	m = calloc(1, sizeof(*m));
	if (!m)
		goto err_unlock;
	m->path = strdup(path);
	m->key = strdup(key);
	if (!m->path || !m->key)
		goto err_free;
	m->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!m->dl) {
		const char *why = dlerror();

		seterr(err, errlen, "cannot load PKCS#11 module %s: %s", path,
		       why ? why : "dlopen failed");
		goto err_free_quiet;
	}
	*(void **)&get_list = dlsym(m->dl, "C_GetFunctionList");
	if (!get_list) {
		seterr(err, errlen, "%s is not a PKCS#11 module (no C_GetFunctionList)", path);
		goto err_close;
	}
	rv = get_list(&m->f);
	if (rv != CKR_OK || !m->f) {
		seterr(err, errlen, "PKCS#11 module %s: C_GetFunctionList failed: %s", path,
		       p11_rv_name(rv));
		goto err_close;
	}
	rv = module_initialize(m, &m->finalize);
	if (rv != CKR_OK) {
		seterr(err, errlen, "PKCS#11 module %s: C_Initialize failed: %s", path,
		       p11_rv_name(rv));
		goto err_close;
	}
	if (pthread_rwlock_init(&m->lock, NULL) != 0) {
		seterr(err, errlen, "PKCS#11 module %s: cannot create a lock", path);
		goto err_finalize;
	}
	m->refs = 1;
	m->next = modules;
	modules = m;
	pthread_mutex_unlock(&modules_lock);
	return m;

err_finalize:
	if (m->finalize)
		m->f->C_Finalize(NULL);
err_close:
	dlclose(m->dl);
err_free_quiet:
	free(m->path);
	free(m->key);
	free(m);
	pthread_mutex_unlock(&modules_lock);
	return NULL;
err_free:
	free(m->path);
	free(m->key);
	free(m);
err_unlock:
	pthread_mutex_unlock(&modules_lock);
	seterr(err, errlen, "out of memory loading %s", path);
	return NULL;
}

void p11_module_unload(struct p11_module *m)
{
	struct p11_module **pp;

	if (!m)
		return;
	pthread_mutex_lock(&modules_lock);
	if (--m->refs > 0) {
		pthread_mutex_unlock(&modules_lock);
		return;
	}
	for (pp = &modules; *pp; pp = &(*pp)->next) {
		if (*pp == m) {
			*pp = m->next;
			break;
		}
	}
	/* still under modules_lock: a concurrent load of the same file must
	 * not initialise it between our unlinking and C_Finalize */
	if (m->finalize)
		m->f->C_Finalize(NULL);
	pthread_mutex_unlock(&modules_lock);
	/* No dlclose(): modules that leave threads or atexit handlers behind
	 * crash when unmapped, and a mapped module's own caches stay reachable
	 * for leak checkers. A later load gets the same mapping back. */
	pthread_rwlock_destroy(&m->lock);
	free(m->path);
	free(m->key);
	free(m);
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int p11_module_reinit(struct p11_module *m)
{
	CK_RV rv;
	int ours = 0;

	pthread_rwlock_wrlock(&m->lock);
	m->f->C_Finalize(NULL);
	m->generation++;
	m->reinit_ms = now_ms();
	rv = module_initialize(m, &ours);
	if (rv == CKR_OK)
		m->finalize = 1; /* we own the initialisation now */
	pthread_rwlock_unlock(&m->lock);
	return rv == CKR_OK ? 0 : (int)rv;
}

const char *p11_module_path(const struct p11_module *m)
{
	return m->path;
}

static void rd_lock(struct p11_module *m)
{
	pthread_rwlock_rdlock(&m->lock);
}

static void rd_unlock(struct p11_module *m)
{
	pthread_rwlock_unlock(&m->lock);
}

/* ---- URIs ------------------------------------------------------------- */

enum uri_kind {
	UK_STR,
	UK_ID,
	UK_TYPE,
	UK_SLOT_ID,
	UK_LIBVER,
};

static const struct uri_attr {
	const char *name;
	unsigned int bit;
	enum uri_kind kind;
	size_t off;
	size_t size;
} uri_attrs[] = {
#define S(n, b, f)                                                                                 \
	{                                                                                          \
		n, b, UK_STR, offsetof(struct p11_uri, f), sizeof(((struct p11_uri *)0)->f)        \
	}
	S("token", P11_URI_TOKEN, token),
	S("manufacturer", P11_URI_MANUFACTURER, manufacturer),
	S("serial", P11_URI_SERIAL, serial),
	S("model", P11_URI_MODEL, model),
	S("library-manufacturer", P11_URI_LIBRARY_MANUFACTURER, library_manufacturer),
	S("library-description", P11_URI_LIBRARY_DESCRIPTION, library_description),
	{"library-version", P11_URI_LIBRARY_VERSION, UK_LIBVER, 0, 0},
	S("slot-description", P11_URI_SLOT_DESCRIPTION, slot_description),
	S("slot-manufacturer", P11_URI_SLOT_MANUFACTURER, slot_manufacturer),
	{"slot-id", P11_URI_SLOT_ID, UK_SLOT_ID, 0, 0},
	S("object", P11_URI_OBJECT, object),
	{"id", P11_URI_ID, UK_ID, 0, 0},
	{"type", P11_URI_TYPE, UK_TYPE, 0, 0},
#undef S
};

static const struct {
	const char *name;
	CK_OBJECT_CLASS cls;
} uri_types[] = {
	{"cert", CKO_CERTIFICATE},	{"private", CKO_PRIVATE_KEY}, {"public", CKO_PUBLIC_KEY},
	{"secret-key", CKO_SECRET_KEY}, {"data", CKO_DATA},
};

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decodes s[0..len) into out (at most outsize bytes). Returns the
 * decoded length, -1 on a bad escape, -2 when it does not fit. */
static long pct_decode(const char *s, size_t len, unsigned char *out, size_t outsize)
{
	size_t i, n = 0;

	for (i = 0; i < len; i++) {
		int c = (unsigned char)s[i];

		if (c == '%') {
			int hi, lo;

			if (i + 2 >= len)
				return -1;
			hi = hexval((unsigned char)s[i + 1]);
			lo = hexval((unsigned char)s[i + 2]);
			if (hi < 0 || lo < 0)
				return -1;
			c = hi << 4 | lo;
			i += 2;
		}
		if (n >= outsize)
			return -2;
		out[n++] = (unsigned char)c;
	}
	return (long)n;
}

/* Stores one attribute "name=value" (value still percent-encoded). */
static int uri_set(struct p11_uri *u, const char *name, size_t nlen, const char *val, size_t vlen,
		   char *err, size_t errlen)
{
	unsigned char buf[256];
	const struct uri_attr *a = NULL;
	size_t i;
	long n;

	for (i = 0; i < sizeof(uri_attrs) / sizeof(uri_attrs[0]); i++) {
		if (strlen(uri_attrs[i].name) == nlen &&
		    memcmp(uri_attrs[i].name, name, nlen) == 0) {
			a = &uri_attrs[i];
			break;
		}
	}
	if (!a) {
		seterr(err, errlen, "unknown pkcs11 URI attribute '%.*s'",
		       (int)(nlen > 40 ? 40 : nlen), name);
		return -1;
	}
	if (u->have & a->bit) {
		seterr(err, errlen, "pkcs11 URI attribute '%s' is given twice", a->name);
		return -1;
	}
	n = pct_decode(val, vlen, buf, sizeof(buf));
	if (n == -1) {
		seterr(err, errlen, "bad percent-escape in pkcs11 URI attribute '%s'", a->name);
		return -1;
	}
	if (n == -2) {
		seterr(err, errlen, "pkcs11 URI attribute '%s' is too long", a->name);
		return -1;
	}
	switch (a->kind) {
	case UK_STR:
		if ((size_t)n > a->size - 1) {
			seterr(err, errlen,
			       "pkcs11 URI attribute '%s' is %ld bytes; at most %zu fit", a->name,
			       n, a->size - 1);
			return -1;
		}
		if (memchr(buf, '\0', (size_t)n)) {
			seterr(err, errlen, "pkcs11 URI attribute '%s' contains a NUL byte",
			       a->name);
			return -1;
		}
		memcpy((char *)u + a->off, buf, (size_t)n);
		((char *)u + a->off)[n] = '\0';
		break;
	case UK_ID:
		if ((size_t)n > sizeof(u->id)) {
			seterr(err, errlen,
			       "pkcs11 URI attribute 'id' is %ld bytes; at most %zu fit", n,
			       sizeof(u->id));
			return -1;
		}
		memcpy(u->id, buf, (size_t)n);
		u->id_len = (size_t)n;
		break;
	case UK_TYPE:
		for (i = 0; i < sizeof(uri_types) / sizeof(uri_types[0]); i++) {
			if (strlen(uri_types[i].name) == (size_t)n &&
			    memcmp(uri_types[i].name, buf, (size_t)n) == 0)
				break;
		}
		if (i == sizeof(uri_types) / sizeof(uri_types[0])) {
			seterr(err, errlen,
			       "pkcs11 URI attribute 'type' must be cert, private, public, "
			       "secret-key or data");
			return -1;
		}
		u->type = uri_types[i].cls;
		break;
	case UK_SLOT_ID: {
		unsigned long v = 0;

		if (n == 0 || n > 19)
			goto bad_number;
		for (i = 0; i < (size_t)n; i++) {
			if (buf[i] < '0' || buf[i] > '9')
				goto bad_number;
			v = v * 10 + (buf[i] - '0');
		}
		u->slot_id = v;
		break;
	}
	case UK_LIBVER: {
		unsigned int *dst = &u->library_version_major;
		unsigned long v = 0;
		int digits = 0;

		u->library_version_minor = 0;
		for (i = 0; i <= (size_t)n; i++) {
			if (i < (size_t)n && buf[i] >= '0' && buf[i] <= '9') {
				v = v * 10 + (buf[i] - '0');
				if (v > 255 || ++digits > 3)
					goto bad_number;
				continue;
			}
			if (!digits)
				goto bad_number;
			*dst = (unsigned int)v;
			if (i == (size_t)n)
				break;
			if (buf[i] != '.' || dst != &u->library_version_major)
				goto bad_number;
			dst = &u->library_version_minor;
			v = 0;
			digits = 0;
		}
		break;
	}
	}
	u->have |= a->bit;
	OPENSSL_cleanse(buf, sizeof(buf));
	return 0;

bad_number:
	seterr(err, errlen, "pkcs11 URI attribute '%s' must be %s", a->name,
	       a->kind == UK_SLOT_ID ? "a decimal number" : "a version like 2 or 2.6");
	return -1;
}

/* Query and path attributes that carry or point at a PIN, or name the
 * module: refused with a reason instead of "unknown". */
static int uri_refused(const char *name, size_t nlen, char *err, size_t errlen)
{
	if ((nlen == 9 && memcmp(name, "pin-value", 9) == 0) ||
	    (nlen == 10 && memcmp(name, "pin-source", 10) == 0)) {
		seterr(err, errlen,
		       "PINs are not accepted in pkcs11 URIs (%.*s): put the PIN in a pin file "
		       "owned by root with mode 0600",
		       (int)nlen, name);
		return 1;
	}
	if ((nlen == 11 && memcmp(name, "module-name", 11) == 0) ||
	    (nlen == 11 && memcmp(name, "module-path", 11) == 0)) {
		seterr(err, errlen,
		       "pkcs11 URI attribute '%.*s' is not supported: the module path is "
		       "configured "
		       "separately",
		       (int)nlen, name);
		return 1;
	}
	return 0;
}

int p11_uri_parse(const char *uri, struct p11_uri *out, char *err, size_t errlen)
{
	const char *p, *end, *q;
	int in_query = 0;

	memset(out, 0, sizeof(*out));
	if (!uri || strncasecmp(uri, "pkcs11:", 7) != 0) {
		seterr(err, errlen, "not a pkcs11 URI (expected pkcs11:token=...)");
		return -1;
	}
	p = uri + 7;
	end = p + strlen(p);
	while (p < end) {
		const char *eq;
		size_t clen;

		/* one component: up to ';' in the path, '&' in the query, '?' ends the path */
		for (q = p; q < end; q++) {
			if (!in_query && (*q == ';' || *q == '?'))
				break;
			if (in_query && *q == '&')
				break;
		}
		clen = (size_t)(q - p);
		if (clen > 0) {
			eq = memchr(p, '=', clen);
			if (!eq) {
				if (uri_refused(p, clen, err, errlen))
					return -1;
				seterr(err, errlen,
				       "pkcs11 URI attribute '%.*s' has no value (expected "
				       "name=value)",
				       (int)(clen > 40 ? 40 : clen), p);
				return -1;
			}
			if (uri_refused(p, (size_t)(eq - p), err, errlen))
				return -1;
			if (in_query) {
				seterr(err, errlen, "unknown pkcs11 URI query attribute '%.*s'",
				       (int)(eq - p > 40 ? 40 : eq - p), p);
				return -1;
			}
			if (uri_set(out, p, (size_t)(eq - p), eq + 1, clen - (size_t)(eq - p) - 1,
				    err, errlen))
				return -1;
		}
		if (q < end && *q == '?') {
			if (in_query) {
				seterr(err, errlen, "pkcs11 URI has two '?'");
				return -1;
			}
			in_query = 1;
		}
		p = q + (q < end);
	}
	return 0;
}

/* Appends s[0..len) percent-encoded (everything but RFC 3986 unreserved
 * characters and a few harmless ones) to buf at *pos. */
static void pct_append(char *buf, size_t buflen, size_t *pos, const unsigned char *s, size_t len,
		       int all)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t i;

	for (i = 0; i < len; i++) {
		unsigned char c = s[i];
		int plain = !all && (isalnum(c) || strchr("-._~:[]@!$'()*+,", c)) && c;

		if (plain) {
			if (*pos + 1 < buflen)
				buf[(*pos)++] = (char)c;
		} else if (*pos + 3 < buflen) {
			buf[(*pos)++] = '%';
			buf[(*pos)++] = hex[c >> 4];
			buf[(*pos)++] = hex[c & 15];
		}
	}
	buf[*pos < buflen ? *pos : buflen - 1] = '\0';
}

char *p11_uri_format(const struct p11_uri *u, char *buf, size_t buflen)
{
	size_t pos = 0, i, j;
	int first = 1;
	char num[48];

	if (!buflen)
		return buf;
	snprintf(buf, buflen, "pkcs11:");
	pos = strlen(buf);
	for (i = 0; i < sizeof(uri_attrs) / sizeof(uri_attrs[0]); i++) {
		const struct uri_attr *a = &uri_attrs[i];
		const unsigned char *v = NULL;
		size_t vlen = 0;
		int all = 0;

		if (!(u->have & a->bit))
			continue;
		switch (a->kind) {
		case UK_STR:
			v = (const unsigned char *)u + a->off;
			vlen = strlen((const char *)v);
			break;
		case UK_ID:
			v = u->id;
			vlen = u->id_len;
			all = 1;
			break;
		case UK_TYPE:
			for (j = 0; j < sizeof(uri_types) / sizeof(uri_types[0]); j++)
				if (uri_types[j].cls == u->type)
					v = (const unsigned char *)uri_types[j].name;
			vlen = v ? strlen((const char *)v) : 0;
			break;
		case UK_SLOT_ID:
			snprintf(num, sizeof(num), "%lu", (unsigned long)u->slot_id);
			v = (const unsigned char *)num;
			vlen = strlen(num);
			break;
		case UK_LIBVER:
			snprintf(num, sizeof(num), "%u.%u", u->library_version_major,
				 u->library_version_minor);
			v = (const unsigned char *)num;
			vlen = strlen(num);
			break;
		}
		snprintf(buf + pos, buflen - pos, "%s%s=", first ? "" : ";", a->name);
		pos += strlen(buf + pos);
		pct_append(buf, buflen, &pos, v, vlen, all);
		first = 0;
	}
	return buf;
}

/* ---- PIN files -------------------------------------------------------- */

int p11_pin_file_read(const char *path, char *pin, size_t pinlen, char *err, size_t errlen)
{
	unsigned char *buf;
	size_t cap, n = 0;
	struct stat st;
	ssize_t r;
	int fd, ret = -1;

	if (!pin || pinlen < 2) {
		seterr(err, errlen, "pin file %s: no room for the PIN", path);
		return -1;
	}
	pin[0] = '\0';
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
	if (fd == -1) {
		if (errno == ELOOP)
			seterr(err, errlen, "pin file %s is a symbolic link; refusing it", path);
		else
			seterr(err, errlen, "cannot open pin file %s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) == -1) {
		seterr(err, errlen, "cannot stat pin file %s: %s", path, strerror(errno));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		seterr(err, errlen, "pin file %s is not a regular file; refusing it", path);
		goto out_close;
	}
	if (st.st_uid != 0) {
		seterr(err, errlen,
		       "pin file %s is owned by uid %lu, not root; refusing it (chown root %s)",
		       path, (unsigned long)st.st_uid, path);
		goto out_close;
	}
	if (st.st_mode & 077) {
		seterr(err, errlen,
		       "pin file %s has mode %04o: group/other may access it; refusing it "
		       "(chmod 600 %s)",
		       path, (unsigned int)(st.st_mode & 07777), path);
		goto out_close;
	}
	/* room for the longest PIN, "\r\n" and one byte more to detect "too long" */
	cap = pinlen + 2;
	buf = malloc(cap);
	if (!buf) {
		seterr(err, errlen, "out of memory reading pin file %s", path);
		goto out_close;
	}
	while (n < cap) {
		r = read(fd, buf + n, cap - n);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			seterr(err, errlen, "cannot read pin file %s: %s", path, strerror(errno));
			goto out_wipe;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	if (n > 0 && buf[n - 1] == '\n') {
		n--;
		if (n > 0 && buf[n - 1] == '\r')
			n--;
	}
	if (n == 0) {
		seterr(err, errlen, "pin file %s is empty", path);
		goto out_wipe;
	}
	if (n > pinlen - 1) {
		seterr(err, errlen, "pin file %s is too long (at most %zu bytes)", path,
		       pinlen - 1);
		goto out_wipe;
	}
	if (memchr(buf, '\0', n)) {
		seterr(err, errlen, "pin file %s contains a NUL byte", path);
		goto out_wipe;
	}
	memcpy(pin, buf, n);
	pin[n] = '\0';
	ret = 0;
out_wipe:
	OPENSSL_cleanse(buf, cap);
	free(buf);
out_close:
	close(fd);
	return ret;
}

/* ---- attributes and object search (module read-locked) --------------- */

/* Reads one attribute into a new malloc()ed buffer (*val, *len; a zero
 * length gives a non-NULL 1-byte buffer). Returns the CK_RV. */
static CK_RV attr_get(struct p11_token *t, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type,
		      unsigned char **val, size_t *len)
{
	CK_ATTRIBUTE a = {type, NULL, 0};
	CK_RV rv;

	*val = NULL;
	*len = 0;
	rv = t->m->f->C_GetAttributeValue(t->session, obj, &a, 1);
	if (rv != CKR_OK)
		return rv;
	if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
		return CKR_ATTRIBUTE_SENSITIVE;
	a.pValue = malloc(a.ulValueLen ? a.ulValueLen : 1);
	if (!a.pValue)
		return CKR_HOST_MEMORY;
	rv = t->m->f->C_GetAttributeValue(t->session, obj, &a, 1);
	if (rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
		free(a.pValue);
		return rv != CKR_OK ? rv : CKR_ATTRIBUTE_SENSITIVE;
	}
	*val = a.pValue;
	*len = a.ulValueLen;
	return CKR_OK;
}

/* Copies an object's CKA_ID (truncated to idcap) and CKA_LABEL (truncated,
 * NUL-terminated) into the caller's buffers; a missing attribute leaves its
 * buffer as it was. */
static void attr_id_label(struct p11_token *t, CK_OBJECT_HANDLE obj, unsigned char *id,
			  size_t idcap, size_t *id_len, char *label, size_t labelcap)
{
	unsigned char *v;
	size_t l;

	if (attr_get(t, obj, CKA_ID, &v, &l) == CKR_OK) {
		*id_len = l < idcap ? l : idcap;
		memcpy(id, v, *id_len);
		free(v);
	}
	if (attr_get(t, obj, CKA_LABEL, &v, &l) == CKR_OK) {
		l = l < labelcap - 1 ? l : labelcap - 1;
		memcpy(label, v, l);
		label[l] = '\0';
		free(v);
	}
}

/* Reads a fixed-size attribute (CK_BBOOL, CK_ULONG). */
static CK_RV attr_get_fixed(struct p11_token *t, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type,
			    void *val, size_t len)
{
	CK_ATTRIBUTE a = {type, val, len};
	CK_RV rv;

	rv = t->m->f->C_GetAttributeValue(t->session, obj, &a, 1);
	if (rv == CKR_OK && a.ulValueLen != len)
		rv = CKR_ATTRIBUTE_VALUE_INVALID;
	return rv;
}

/* An attribute as 1/0, or -1 when the token does not give it. */
static int attr_bool(struct p11_token *t, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type)
{
	CK_BBOOL b = CK_FALSE;

	if (attr_get_fixed(t, obj, type, &b, sizeof(b)) != CKR_OK)
		return -1;
	return b ? 1 : 0;
}

/* Every object matching tmpl; *out malloc()ed (caller frees), *n count.
 * Returns the CK_RV (CKR_OK with *n == 0 when nothing matches). */
static CK_RV find_objects(struct p11_token *t, CK_ATTRIBUTE *tmpl, CK_ULONG ntmpl,
			  CK_OBJECT_HANDLE **out, size_t *n)
{
	CK_FUNCTION_LIST *f = t->m->f;
	CK_OBJECT_HANDLE *v = NULL, batch[32];
	size_t cap = 0, cnt = 0;
	CK_ULONG got;
	CK_RV rv, rv2;

	*out = NULL;
	*n = 0;
	rv = f->C_FindObjectsInit(t->session, tmpl, ntmpl);
	if (rv != CKR_OK)
		return rv;
	for (;;) {
		got = 0;
		rv = f->C_FindObjects(t->session, batch, 32, &got);
		if (rv != CKR_OK || got == 0)
			break;
		if (cnt + got > cap) {
			size_t ncap = (cap ? cap * 2 : 32) + got;
			CK_OBJECT_HANDLE *nv = realloc(v, ncap * sizeof(*nv));

			if (!nv) {
				rv = CKR_HOST_MEMORY;
				break;
			}
			v = nv;
			cap = ncap;
		}
		memcpy(v + cnt, batch, got * sizeof(*batch));
		cnt += got;
	}
	rv2 = f->C_FindObjectsFinal(t->session);
	if (rv == CKR_OK)
		rv = rv2;
	if (rv != CKR_OK) {
		free(v);
		return rv;
	}
	*out = v;
	*n = cnt;
	return CKR_OK;
}

/* 1 when t's session exists and belongs to the module's current generation. */
static int session_ok(const struct p11_token *t)
{
	return t->has_session && t->generation == t->m->generation;
}

/* Fails a call early on a stale session (module read-locked). */
static int need_session(struct p11_token *t, char *err, size_t errlen)
{
	if (session_ok(t))
		return 0;
	t->last_rv = CKR_SESSION_HANDLE_INVALID;
	seterr(err, errlen, "token %s: session lost (token removed or reset)", t->label);
	return -1;
}

/* Records a failed call and formats "what on token L: CKR_X". */
static int fail_rv(struct p11_token *t, CK_RV rv, char *err, size_t errlen, const char *what)
{
	t->last_rv = rv;
	seterr(err, errlen, "%s on token %s failed: %s", what, t->label, p11_rv_name(rv));
	return -1;
}

/* ---- slots and tokens ------------------------------------------------- */

/* The slot list (present tokens only if present_only); *out malloc()ed. */
static CK_RV slot_list(struct p11_module *m, int present_only, CK_SLOT_ID **out, CK_ULONG *n)
{
	CK_SLOT_ID *v = NULL;
	CK_ULONG cnt = 0;
	CK_RV rv;
	int tries;

	*out = NULL;
	*n = 0;
	for (tries = 0; tries < 4; tries++) {
		rv = m->f->C_GetSlotList(present_only ? CK_TRUE : CK_FALSE, NULL, &cnt);
		if (rv != CKR_OK)
			return rv;
		free(v);
		v = calloc(cnt ? cnt : 1, sizeof(*v));
		if (!v)
			return CKR_HOST_MEMORY;
		rv = m->f->C_GetSlotList(present_only ? CK_TRUE : CK_FALSE, v, &cnt);
		if (rv == CKR_BUFFER_TOO_SMALL)
			continue; /* a token arrived in between */
		if (rv != CKR_OK) {
			free(v);
			return rv;
		}
		*out = v;
		*n = cnt;
		return CKR_OK;
	}
	free(v);
	return CKR_BUFFER_TOO_SMALL;
}

/* Whether a slot/token pair matches the token-selecting attributes of u. */
static int token_matches(const struct p11_uri *u, CK_SLOT_ID slot, const CK_SLOT_INFO *si,
			 const CK_TOKEN_INFO *ti)
{
	char buf[65];

#define FIELD_EQ(bit, field, src)                                                                  \
	do {                                                                                       \
		if (u->have & (bit)) {                                                             \
			field_copy(buf, sizeof(buf), (src), sizeof(src));                          \
			if (!eq_trim(buf, u->field))                                               \
				return 0;                                                          \
		}                                                                                  \
	} while (0)
	FIELD_EQ(P11_URI_TOKEN, token, ti->label);
	FIELD_EQ(P11_URI_MANUFACTURER, manufacturer, ti->manufacturerID);
	FIELD_EQ(P11_URI_SERIAL, serial, ti->serialNumber);
	FIELD_EQ(P11_URI_MODEL, model, ti->model);
	FIELD_EQ(P11_URI_SLOT_DESCRIPTION, slot_description, si->slotDescription);
	FIELD_EQ(P11_URI_SLOT_MANUFACTURER, slot_manufacturer, si->manufacturerID);
#undef FIELD_EQ
	if ((u->have & P11_URI_SLOT_ID) && u->slot_id != slot)
		return 0;
	return 1;
}

/* Whether the module matches the library-* attributes of u. */
static int library_matches(struct p11_module *m, const struct p11_uri *u)
{
	CK_INFO info;
	char buf[33];

	if (!(u->have & (P11_URI_LIBRARY_MANUFACTURER | P11_URI_LIBRARY_DESCRIPTION |
			 P11_URI_LIBRARY_VERSION)))
		return 1;
	if (m->f->C_GetInfo(&info) != CKR_OK)
		return 0;
	if (u->have & P11_URI_LIBRARY_MANUFACTURER) {
		field_copy(buf, sizeof(buf), info.manufacturerID, sizeof(info.manufacturerID));
		if (!eq_trim(buf, u->library_manufacturer))
			return 0;
	}
	if (u->have & P11_URI_LIBRARY_DESCRIPTION) {
		field_copy(buf, sizeof(buf), info.libraryDescription,
			   sizeof(info.libraryDescription));
		if (!eq_trim(buf, u->library_description))
			return 0;
	}
	if ((u->have & P11_URI_LIBRARY_VERSION) &&
	    (info.libraryVersion.major != u->library_version_major ||
	     info.libraryVersion.minor != u->library_version_minor))
		return 0;
	return 1;
}

/* Finds the first present, initialised token matching u (module
 * read-locked). Fills *slot and *ti. Returns 0, or -1 with err listing the
 * tokens present; *rv gets the failing CK_RV (CKR_TOKEN_NOT_PRESENT when
 * simply nothing matches). */
static int find_token(struct p11_module *m, const struct p11_uri *u, CK_SLOT_ID *slot,
		      CK_TOKEN_INFO *ti, CK_RV *rv, char *err, size_t errlen)
{
	CK_SLOT_ID *slots = NULL;
	CK_ULONG n = 0, i;
	char present[512], lab[33], ubuf[400];
	size_t plen = 0;

	present[0] = '\0';
	*rv = slot_list(m, 1, &slots, &n);
	if (*rv != CKR_OK) {
		seterr(err, errlen, "cannot list the slots of %s: %s", m->path, p11_rv_name(*rv));
		return -1;
	}
	if (library_matches(m, u)) {
		for (i = 0; i < n; i++) {
			CK_SLOT_INFO si;

			if (m->f->C_GetSlotInfo(slots[i], &si) != CKR_OK ||
			    m->f->C_GetTokenInfo(slots[i], ti) != CKR_OK)
				continue;
			if (!(ti->flags & CKF_TOKEN_INITIALIZED))
				continue;
			if (token_matches(u, slots[i], &si, ti)) {
				*slot = slots[i];
				free(slots);
				*rv = CKR_OK;
				return 0;
			}
			field_copy(lab, sizeof(lab), ti->label, sizeof(ti->label));
			if (plen < sizeof(present) - 1) {
				int w = snprintf(present + plen, sizeof(present) - plen, "%s%s",
						 plen ? ", " : "", lab);
				plen += w > 0 ? (size_t)w : 0;
			}
		}
	}
	free(slots);
	*rv = CKR_TOKEN_NOT_PRESENT;
	seterr(err, errlen, "no token matches %s (tokens present: %s)",
	       p11_uri_format(u, ubuf, sizeof(ubuf)), plen ? present : "none");
	return -1;
}

/* Opens t's session on t->slot (R/W, else R/O on a write-protected token). */
static CK_RV open_session(struct p11_token *t)
{
	CK_FUNCTION_LIST *f = t->m->f;
	CK_RV rv;

	rv = f->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
			      &t->session);
	if (rv == CKR_TOKEN_WRITE_PROTECTED)
		rv = f->C_OpenSession(t->slot, CKF_SERIAL_SESSION, NULL, NULL, &t->session);
	if (rv == CKR_OK) {
		t->has_session = 1;
		t->generation = t->m->generation;
	}
	t->mechs_valid = 0;
	return rv;
}

/* Takes the label/serial/flags of a token info into t. */
static void token_info_take(struct p11_token *t, const CK_TOKEN_INFO *ti)
{
	field_copy(t->label, sizeof(t->label), ti->label, sizeof(ti->label));
	field_copy(t->serial, sizeof(t->serial), ti->serialNumber, sizeof(ti->serialNumber));
	t->flags = ti->flags;
}

struct p11_token *p11_token_open(struct p11_module *m, const struct p11_uri *sel, char *err,
				 size_t errlen)
{
	struct p11_token *t;
	CK_TOKEN_INFO ti;
	CK_RV rv;

	t = calloc(1, sizeof(*t));
	if (!t) {
		seterr(err, errlen, "out of memory");
		return NULL;
	}
	t->m = m;
	t->uri = *sel;
	rd_lock(m);
	if (find_token(m, sel, &t->slot, &ti, &rv, err, errlen))
		goto err_unlock;
	token_info_take(t, &ti);
	rv = open_session(t);
	if (rv != CKR_OK) {
		seterr(err, errlen, "cannot open a session on token %s: %s", t->label,
		       p11_rv_name(rv));
		goto err_unlock;
	}
	rd_unlock(m);
	pthread_mutex_lock(&modules_lock);
	m->refs++; /* the token keeps the module loaded */
	pthread_mutex_unlock(&modules_lock);
	return t;

err_unlock:
	rd_unlock(m);
	free(t);
	return NULL;
}

/* Wipes the stored PIN. */
static void forget_pin(struct p11_token *t)
{
	OPENSSL_cleanse(t->pin, sizeof(t->pin));
	t->pin_len = 0;
	t->have_pin = 0;
}

void p11_token_close(struct p11_token *t)
{
	if (!t)
		return;
	rd_lock(t->m);
	/* no C_Logout: the log-in state is shared by every session of this
	 * process on the token (another p11_token may use it); closing the last
	 * session ends it */
	if (session_ok(t))
		t->m->f->C_CloseSession(t->session);
	rd_unlock(t->m);
	forget_pin(t);
	free(t->mechs);
	p11_module_unload(t->m);
	free(t);
}

/* The token's current flags (module read-locked); last known on failure. */
static unsigned long fresh_flags(struct p11_token *t)
{
	CK_TOKEN_INFO ti;

	if (t->m->f->C_GetTokenInfo(t->slot, &ti) == CKR_OK)
		t->flags = ti.flags;
	return t->flags;
}

unsigned long p11_token_flags(struct p11_token *t)
{
	unsigned long fl;

	rd_lock(t->m);
	fl = fresh_flags(t);
	rd_unlock(t->m);
	return fl;
}

/* One C_Login with pin/len (module read-locked); stores the PIN on success
 * (pin may be t->pin itself), marks it failed when the token refuses it. */
static int do_login(struct p11_token *t, const char *pin, size_t len, char *err, size_t errlen)
{
	const char *ft;
	char fbuf[40];
	CK_RV rv;

	if (need_session(t, err, errlen))
		return -1;
	if (!pin && !(t->flags & CKF_PROTECTED_AUTHENTICATION_PATH)) {
		seterr(err, errlen, "token %s needs a PIN", t->label);
		return -1;
	}
	if (pin && len > P11_PIN_MAX) {
		seterr(err, errlen, "PIN for token %s is too long (at most %d bytes)", t->label,
		       P11_PIN_MAX);
		return -1;
	}
	t->login_wanted = 1;
	rv = t->m->f->C_Login(t->session, CKU_USER, (CK_UTF8CHAR *)pin, pin ? len : 0);
	if (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN) {
		if (pin && pin != t->pin) {
			forget_pin(t);
			memcpy(t->pin, pin, len);
			t->pin[len] = '\0';
			t->pin_len = len;
		}
		t->have_pin = pin != NULL;
		t->pin_failed = 0;
		return 0;
	}
	t->last_rv = rv;
	ft = p11_pin_flags_text(fresh_flags(t));
	snprintf(fbuf, sizeof(fbuf), *ft ? " (%s)" : "%s", ft);
	switch (rv) {
	case CKR_PIN_INCORRECT:
		seterr(err, errlen, "wrong PIN for token %s%s", t->label, fbuf);
		break;
	case CKR_PIN_LOCKED:
		seterr(err, errlen, "PIN locked on token %s (unlock it with the SO PIN)", t->label);
		break;
	case CKR_PIN_EXPIRED:
		seterr(err, errlen,
		       "PIN expired on token %s (set a new one with the token's tools)%s", t->label,
		       fbuf);
		break;
	case CKR_PIN_LEN_RANGE:
	case CKR_PIN_INVALID:
		seterr(err, errlen, "PIN for token %s has the wrong length or characters (%s)%s",
		       t->label, p11_rv_name(rv), fbuf);
		break;
	case CKR_USER_PIN_NOT_INITIALIZED:
		seterr(err, errlen, "token %s has no user PIN yet (initialise it first)", t->label);
		return -1;
	default:
		seterr(err, errlen, "log-in on token %s failed: %s%s", t->label, p11_rv_name(rv),
		       fbuf);
		if (p11_rv_is_token_lost(rv))
			return -1; /* not the PIN's fault: recovery may log in */
		break;
	}
	/* the token judged the PIN: never present it again automatically */
	t->pin_failed = 1;
	forget_pin(t);
	return -1;
}

int p11_token_login(struct p11_token *t, const char *pin, char *err, size_t errlen)
{
	int r;

	rd_lock(t->m);
	r = do_login(t, pin, pin ? strlen(pin) : 0, err, errlen);
	rd_unlock(t->m);
	return r;
}

int p11_token_pin_is(const struct p11_token *t, const char *pin)
{
	size_t n = strlen(pin);

	return t->have_pin && n == t->pin_len && CRYPTO_memcmp(pin, t->pin, n) == 0;
}

int p11_token_pin_failed(const struct p11_token *t)
{
	return t->pin_failed;
}

const char *p11_token_label(const struct p11_token *t)
{
	return t->label;
}

const char *p11_token_serial(const struct p11_token *t)
{
	return t->serial;
}

CK_SLOT_ID p11_token_slot(const struct p11_token *t)
{
	return t->slot;
}

struct p11_module *p11_token_module(const struct p11_token *t)
{
	return t->m;
}

CK_RV p11_token_last_rv(const struct p11_token *t)
{
	return t->last_rv;
}

/* 1 when t's session is in a user state already (another session of this
 * process logged in: the log-in state is per token, not per session). */
static int session_logged_in(struct p11_token *t)
{
	CK_SESSION_INFO si;

	return t->m->f->C_GetSessionInfo(t->session, &si) == CKR_OK &&
	       (si.state == CKS_RO_USER_FUNCTIONS || si.state == CKS_RW_USER_FUNCTIONS);
}

int p11_token_recover(struct p11_token *t, char *err, size_t errlen)
{
	struct p11_module *m = t->m;
	CK_TOKEN_INFO ti;
	int reinit = 0, r;
	CK_RV rv;

	rd_lock(m);
	if (session_ok(t))
		m->f->C_CloseSession(t->session); /* errors ignored: it is probably gone */
	t->has_session = 0;
	t->mechs_valid = 0;
	for (;;) {
		if (find_token(m, &t->uri, &t->slot, &ti, &rv, err, errlen) == 0) {
			token_info_take(t, &ti);
			rv = open_session(t);
			if (rv == CKR_OK)
				break;
			seterr(err, errlen, "cannot open a session on token %s: %s", t->label,
			       p11_rv_name(rv));
		}
		t->last_rv = rv;
		if (reinit || (rv != CKR_TOKEN_NOT_PRESENT && !p11_rv_is_token_lost(rv) &&
			       rv != CKR_SLOT_ID_INVALID)) {
			rd_unlock(m);
			return -1;
		}
		/* absent from a slot list that works: maybe the module's view is
		 * stale, but do not restart it (and end every other session) on
		 * each attempt */
		if (rv == CKR_TOKEN_NOT_PRESENT && m->reinit_ms &&
		    now_ms() - m->reinit_ms < REINIT_ABSENT_MIN_MS) {
			rd_unlock(m);
			return -1;
		}
		/* the module's view is stale (or it was finalised): start it again */
		rd_unlock(m);
		r = p11_module_reinit(m);
		rd_lock(m);
		reinit = 1;
		if (r != 0) {
			t->last_rv = (CK_RV)r;
			seterr(err, errlen, "re-initialising %s failed: %s", m->path,
			       p11_rv_name((CK_RV)r));
			rd_unlock(m);
			return -1;
		}
	}
	if (t->login_wanted && !session_logged_in(t)) {
		if (t->pin_failed ||
		    (!t->have_pin && !(t->flags & CKF_PROTECTED_AUTHENTICATION_PATH))) {
			seterr(err, errlen,
			       "token %s is back but its PIN was refused before; not retrying it "
			       "(log in again with a correct PIN)",
			       t->label);
			rd_unlock(m);
			return -1;
		}
		if (do_login(t, t->have_pin ? t->pin : NULL, t->pin_len, err, errlen)) {
			rd_unlock(m);
			return -1;
		}
	}
	t->last_rv = CKR_OK;
	rd_unlock(m);
	return 0;
}

CK_RV p11_token_probe(struct p11_token *t)
{
	CK_SESSION_INFO si;
	CK_RV rv;

	rd_lock(t->m);
	if (!session_ok(t)) {
		rv = CKR_SESSION_HANDLE_INVALID;
	} else {
		rv = t->m->f->C_GetSessionInfo(t->session, &si);
		if (rv == CKR_OK && t->login_wanted && si.state != CKS_RO_USER_FUNCTIONS &&
		    si.state != CKS_RW_USER_FUNCTIONS)
			rv = CKR_USER_NOT_LOGGED_IN;
	}
	rd_unlock(t->m);
	if (rv != CKR_OK)
		t->last_rv = rv;
	return rv;
}

int p11_slots_list(struct p11_module *m, struct p11_slot_info **out, size_t *n, char *err,
		   size_t errlen)
{
	struct p11_slot_info *v;
	CK_SLOT_ID *slots;
	CK_ULONG cnt, i;
	CK_RV rv;

	*out = NULL;
	*n = 0;
	rd_lock(m);
	rv = slot_list(m, 0, &slots, &cnt);
	if (rv != CKR_OK) {
		rd_unlock(m);
		seterr(err, errlen, "cannot list the slots of %s: %s", m->path, p11_rv_name(rv));
		return -1;
	}
	v = calloc(cnt ? cnt : 1, sizeof(*v));
	if (!v) {
		rd_unlock(m);
		free(slots);
		seterr(err, errlen, "out of memory");
		return -1;
	}
	for (i = 0; i < cnt; i++) {
		CK_SLOT_INFO si;
		CK_TOKEN_INFO ti;

		v[i].id = slots[i];
		if (m->f->C_GetSlotInfo(slots[i], &si) == CKR_OK) {
			field_copy(v[i].description, sizeof(v[i].description), si.slotDescription,
				   sizeof(si.slotDescription));
			field_copy(v[i].slot_manufacturer, sizeof(v[i].slot_manufacturer),
				   si.manufacturerID, sizeof(si.manufacturerID));
			v[i].slot_flags = si.flags;
		}
		if ((v[i].slot_flags & CKF_TOKEN_PRESENT) &&
		    m->f->C_GetTokenInfo(slots[i], &ti) == CKR_OK) {
			v[i].token_present = 1;
			field_copy(v[i].label, sizeof(v[i].label), ti.label, sizeof(ti.label));
			field_copy(v[i].manufacturer, sizeof(v[i].manufacturer), ti.manufacturerID,
				   sizeof(ti.manufacturerID));
			field_copy(v[i].model, sizeof(v[i].model), ti.model, sizeof(ti.model));
			field_copy(v[i].serial, sizeof(v[i].serial), ti.serialNumber,
				   sizeof(ti.serialNumber));
			v[i].token_flags = ti.flags;
		}
	}
	rd_unlock(m);
	free(slots);
	*out = v;
	*n = cnt;
	return 0;
}

int p11_token_init(struct p11_module *m, const char *label, const char *so_pin,
		   const char *user_pin, CK_SLOT_ID *slot_out, char *err, size_t errlen)
{
	CK_FUNCTION_LIST *f = m->f;
	CK_SLOT_ID *slots = NULL, free_slot = 0, slot = 0;
	CK_SESSION_HANDLE s;
	CK_TOKEN_INFO ti;
	unsigned char padded[32];
	char lab[33];
	CK_ULONG n, i;
	int found = 0, ret = -1;
	CK_RV rv;

	if (!label || !*label || strlen(label) > 32) {
		seterr(err, errlen, "token label must be 1 to 32 bytes");
		return -1;
	}
	if (!so_pin || !*so_pin || !user_pin || !*user_pin) {
		seterr(err, errlen, "initialising a token needs an SO PIN and a user PIN");
		return -1;
	}
	memset(padded, ' ', sizeof(padded));
	memcpy(padded, label, strlen(label));

	rd_lock(m);
	rv = slot_list(m, 1, &slots, &n);
	if (rv != CKR_OK) {
		seterr(err, errlen, "cannot list the slots of %s: %s", m->path, p11_rv_name(rv));
		goto out;
	}
	for (i = 0; i < n; i++) {
		if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		if (!(ti.flags & CKF_TOKEN_INITIALIZED)) {
			if (!found) {
				free_slot = slots[i];
				found = 1;
			}
			continue;
		}
		field_copy(lab, sizeof(lab), ti.label, sizeof(ti.label));
		if (eq_trim(lab, label)) {
			seterr(err, errlen, "a token labelled %s already exists (slot %lu)", label,
			       (unsigned long)slots[i]);
			goto out;
		}
	}
	if (!found) {
		seterr(err, errlen, "no slot of %s holds an uninitialised token", m->path);
		goto out;
	}
	rv = f->C_InitToken(free_slot, (CK_UTF8CHAR *)so_pin, strlen(so_pin), padded);
	if (rv != CKR_OK) {
		seterr(err, errlen, "C_InitToken on slot %lu failed: %s", (unsigned long)free_slot,
		       p11_rv_name(rv));
		goto out;
	}
	/* SoftHSM moves an initialised token to a new slot id: look it up again */
	free(slots);
	slots = NULL;
	rv = slot_list(m, 1, &slots, &n);
	found = 0;
	for (i = 0; rv == CKR_OK && i < n; i++) {
		if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK ||
		    !(ti.flags & CKF_TOKEN_INITIALIZED) || (ti.flags & CKF_USER_PIN_INITIALIZED))
			continue;
		field_copy(lab, sizeof(lab), ti.label, sizeof(ti.label));
		if (eq_trim(lab, label)) {
			slot = slots[i];
			found = 1;
			break;
		}
	}
	if (!found) {
		seterr(err, errlen, "token %s was initialised but cannot be found again", label);
		goto out;
	}
	rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
	if (rv != CKR_OK) {
		seterr(err, errlen, "cannot open a session on token %s: %s", label,
		       p11_rv_name(rv));
		goto out;
	}
	rv = f->C_Login(s, CKU_SO, (CK_UTF8CHAR *)so_pin, strlen(so_pin));
	if (rv != CKR_OK) {
		seterr(err, errlen, "SO log-in on token %s failed: %s", label, p11_rv_name(rv));
		goto close;
	}
	rv = f->C_InitPIN(s, (CK_UTF8CHAR *)user_pin, strlen(user_pin));
	if (rv != CKR_OK)
		seterr(err, errlen, "setting the user PIN of token %s failed: %s", label,
		       p11_rv_name(rv));
	else
		ret = 0;
	f->C_Logout(s);
close:
	f->C_CloseSession(s);
	if (ret == 0 && slot_out)
		*slot_out = slot;
out:
	rd_unlock(m);
	free(slots);
	return ret;
}

/* ---- hex and thumbprints ---------------------------------------------- */

static char *hex_with(const char *digits, const unsigned char *b, size_t len, char *buf)
{
	size_t i;

	for (i = 0; i < len; i++) {
		buf[2 * i] = digits[b[i] >> 4];
		buf[2 * i + 1] = digits[b[i] & 15];
	}
	buf[2 * len] = '\0';
	return buf;
}

char *p11_hex_upper(const unsigned char *b, size_t len, char *buf)
{
	return hex_with("0123456789ABCDEF", b, len, buf);
}

char *p11_hex_lower(const unsigned char *b, size_t len, char *buf)
{
	return hex_with("0123456789abcdef", b, len, buf);
}

int p11_thumbprint_parse(const char *s, unsigned char *out, size_t *len, char *err, size_t errlen)
{
	unsigned char digits[64];
	size_t nd = 0, i, pos = 0;
	const unsigned char *p = (const unsigned char *)s;

	if (!s) {
		seterr(err, errlen, "no thumbprint given");
		return -1;
	}
	while (*p) {
		pos++;
		if (*p == ' ' || *p == '\t' || *p == ':') {
			p++;
			continue;
		}
		/* U+200E LEFT-TO-RIGHT MARK (Windows' certificate dialog copies one) */
		if (p[0] == 0xE2 && p[1] == 0x80 && p[2] == 0x8E) {
			p += 3;
			continue;
		}
		if (hexval(*p) < 0) {
			if (*p >= 0x80)
				seterr(err, errlen,
				       "thumbprint has a non-ASCII character at position %zu (only "
				       "hex "
				       "digits, spaces and colons are allowed)",
				       pos);
			else if (isprint(*p))
				seterr(err, errlen,
				       "thumbprint has '%c' at position %zu, which is not a hex "
				       "digit",
				       *p, pos);
			else
				seterr(err, errlen,
				       "thumbprint has a control character (0x%02x) at position "
				       "%zu",
				       *p, pos);
			return -1;
		}
		if (nd < sizeof(digits))
			digits[nd] = (unsigned char)hexval(*p);
		nd++;
		p++;
	}
	if (nd != 40 && nd != 64) {
		seterr(err, errlen,
		       "thumbprint has %zu hex digits; a SHA-1 thumbprint has 40 and a SHA-256 "
		       "one 64",
		       nd);
		return -1;
	}
	for (i = 0; i < nd / 2; i++)
		out[i] = (unsigned char)(digits[2 * i] << 4 | digits[2 * i + 1]);
	*len = nd / 2;
	return 0;
}

/* ---- certificates ------------------------------------------------------ */

/* Fills c from certificate object h (module read-locked). Returns CKR_OK,
 * CKR_DATA_INVALID when the value does not parse, or the failing CK_RV. */
static CK_RV cert_load(struct p11_token *t, CK_OBJECT_HANDLE h, struct p11_cert *c)
{
	unsigned char *val = NULL;
	const unsigned char *p;
	size_t len;
	CK_RV rv;

	memset(c, 0, sizeof(*c));
	c->handle = h;
	rv = attr_get(t, h, CKA_VALUE, &val, &len);
	if (rv != CKR_OK)
		return rv;
	p = val;
	c->x509 = d2i_X509(NULL, &p, (long)len);
	if (!c->x509) {
		free(val);
		return CKR_DATA_INVALID;
	}
	EVP_Digest(val, len, c->sha1, NULL, EVP_sha1(), NULL);
	EVP_Digest(val, len, c->sha256, NULL, EVP_sha256(), NULL);
	free(val);
	attr_id_label(t, h, c->id, sizeof(c->id), &c->id_len, c->label, sizeof(c->label));
	return CKR_OK;
}

/* Lists certificates (module read-locked). */
static int certs_list_locked(struct p11_token *t, struct p11_cert **out, size_t *n, char *err,
			     size_t errlen)
{
	CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
	CK_CERTIFICATE_TYPE ct = CKC_X_509;
	CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)},
			       {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)}};
	CK_OBJECT_HANDLE *hs;
	struct p11_cert *v;
	size_t nh, i, cnt = 0;
	CK_RV rv;

	*out = NULL;
	*n = 0;
	if (need_session(t, err, errlen))
		return -1;
	rv = find_objects(t, tmpl, 2, &hs, &nh);
	if (rv != CKR_OK)
		return fail_rv(t, rv, err, errlen, "listing certificates");
	v = calloc(nh ? nh : 1, sizeof(*v));
	if (!v) {
		free(hs);
		seterr(err, errlen, "out of memory");
		return -1;
	}
	for (i = 0; i < nh; i++) {
		rv = cert_load(t, hs[i], &v[cnt]);
		if (rv == CKR_OK) {
			cnt++;
		} else if (rv != CKR_DATA_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE &&
			   rv != CKR_ATTRIBUTE_TYPE_INVALID) {
			free(hs);
			p11_certs_free(v, cnt);
			return fail_rv(t, rv, err, errlen, "reading a certificate");
		}
	}
	free(hs);
	*out = v;
	*n = cnt;
	return 0;
}

int p11_certs_list(struct p11_token *t, struct p11_cert **out, size_t *n, char *err, size_t errlen)
{
	int r;

	rd_lock(t->m);
	r = certs_list_locked(t, out, n, err, errlen);
	rd_unlock(t->m);
	return r;
}

void p11_certs_free(struct p11_cert *certs, size_t n)
{
	size_t i;

	if (!certs)
		return;
	for (i = 0; i < n; i++)
		X509_free(certs[i].x509);
	free(certs);
}

int p11_cert_find(struct p11_token *t, const unsigned char *thumb, size_t thumb_len,
		  struct p11_cert *out, char *err, size_t errlen)
{
	struct p11_cert *v;
	char hex[65];
	size_t n, i;

	memset(out, 0, sizeof(*out));
	if (thumb_len != 20 && thumb_len != 32) {
		seterr(err, errlen, "a thumbprint is 20 (SHA-1) or 32 (SHA-256) bytes");
		return -1;
	}
	if (p11_certs_list(t, &v, &n, err, errlen))
		return -1;
	for (i = 0; i < n; i++) {
		if (memcmp(thumb_len == 20 ? v[i].sha1 : v[i].sha256, thumb, thumb_len) == 0) {
			*out = v[i];
			v[i].x509 = NULL; /* moved to the caller */
			p11_certs_free(v, n);
			return 0;
		}
	}
	p11_certs_free(v, n);
	seterr(err, errlen, "no certificate with %s thumbprint %s on token %s (%zu certificate%s)",
	       thumb_len == 20 ? "SHA-1" : "SHA-256", p11_hex_upper(thumb, thumb_len, hex),
	       t->label, n, n == 1 ? "" : "s");
	return -1;
}

/* i2d into a new OPENSSL_malloc()ed buffer; NULL on failure. */
#define I2D_ALLOC(fn, obj, lenp)                                                                   \
	({                                                                                         \
		unsigned char *_b = NULL;                                                          \
		int _l = fn((obj), &_b);                                                           \
		*(lenp) = _l > 0 ? (size_t)_l : 0;                                                 \
		_l > 0 ? _b : NULL;                                                                \
	})

int p11_cert_import(struct p11_token *t, X509 *x, const char *label, const unsigned char *id,
		    size_t id_len, CK_OBJECT_HANDLE *handle, char *err, size_t errlen)
{
	CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
	CK_CERTIFICATE_TYPE ct = CKC_X_509;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	unsigned char *der, *subj, *iss, *ser;
	size_t dlen, slen, ilen, serlen;
	CK_OBJECT_HANDLE h;
	CK_RV rv;
	int ret = -1;

	der = I2D_ALLOC(i2d_X509, x, &dlen);
	subj = I2D_ALLOC(i2d_X509_NAME, X509_get_subject_name(x), &slen);
	iss = I2D_ALLOC(i2d_X509_NAME, X509_get_issuer_name(x), &ilen);
	ser = I2D_ALLOC(i2d_ASN1_INTEGER, X509_get0_serialNumber(x), &serlen);
	if (!der || !subj || !iss || !ser) {
		seterr(err, errlen, "cannot encode the certificate");
		goto out;
	}
	{
		CK_ATTRIBUTE tmpl[] = {
			{CKA_CLASS, &cls, sizeof(cls)},
			{CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
			{CKA_TOKEN, &yes, sizeof(yes)},
			{CKA_PRIVATE, &no, sizeof(no)},
			{CKA_VALUE, der, dlen},
			{CKA_SUBJECT, subj, slen},
			{CKA_ISSUER, iss, ilen},
			{CKA_SERIAL_NUMBER, ser, serlen},
			{CKA_ID, (void *)id, id_len},
			{CKA_LABEL, (void *)label, label ? strlen(label) : 0},
		};
		CK_ULONG nt = sizeof(tmpl) / sizeof(tmpl[0]) - (label ? 0 : 1);

		rd_lock(t->m);
		if (need_session(t, err, errlen)) {
			rd_unlock(t->m);
			goto out;
		}
		rv = t->m->f->C_CreateObject(t->session, tmpl, nt, &h);
		if (rv != CKR_OK)
			fail_rv(t, rv, err, errlen, "writing the certificate");
		rd_unlock(t->m);
		if (rv != CKR_OK)
			goto out;
	}
	if (handle)
		*handle = h;
	ret = 0;
out:
	OPENSSL_free(der);
	OPENSSL_free(subj);
	OPENSSL_free(iss);
	OPENSSL_free(ser);
	return ret;
}

/* ---- public keys from token attributes -------------------------------- */

/* A provider-native RSA public key from big-endian n and e; NULL on error. */
static EVP_PKEY *pkey_rsa_pub(const unsigned char *n, size_t nlen, const unsigned char *e,
			      size_t elen)
{
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	BIGNUM *bn = BN_bin2bn(n, (int)nlen, NULL), *be = BN_bin2bn(e, (int)elen, NULL);
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pk = NULL;

	if (!bld || !bn || !be || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
		goto out;
	params = OSSL_PARAM_BLD_to_param(bld);
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
	if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
	    EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) <= 0)
		pk = NULL;
out:
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	BN_free(bn);
	BN_free(be);
	return pk;
}

/* The curve short name ("prime256v1") of DER CKA_EC_PARAMS (named curves
 * only), or NULL. */
static const char *ec_params_curve(const unsigned char *params, size_t plen)
{
	const unsigned char *p = params;
	ASN1_OBJECT *obj = d2i_ASN1_OBJECT(NULL, &p, (long)plen);
	int nid;

	if (!obj)
		return NULL;
	nid = OBJ_obj2nid(obj);
	ASN1_OBJECT_free(obj);
	return nid == NID_undef ? NULL : OBJ_nid2sn(nid);
}

/* An EC public key from curve name and an encoded point; NULL on error. */
static EVP_PKEY *pkey_ec_pub_raw(const char *curve, const unsigned char *pt, size_t ptlen)
{
	OSSL_PARAM params[3];
	EVP_PKEY_CTX *ctx;
	EVP_PKEY *pk = NULL;

	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)curve, 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)pt, ptlen);
	params[2] = OSSL_PARAM_construct_end();
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
	    EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) <= 0)
		pk = NULL;
	EVP_PKEY_CTX_free(ctx);
	return pk;
}

/* An EC public key from CKA_EC_PARAMS and CKA_EC_POINT (DER OCTET STRING
 * as the standard says, or the raw point some tokens give). */
static EVP_PKEY *pkey_ec_pub(const unsigned char *params, size_t plen, const unsigned char *pt,
			     size_t ptlen)
{
	const char *curve = ec_params_curve(params, plen);
	const unsigned char *p = pt;
	ASN1_OCTET_STRING *os;
	EVP_PKEY *pk = NULL;

	if (!curve)
		return NULL;
	os = d2i_ASN1_OCTET_STRING(NULL, &p, (long)ptlen);
	if (os && p == pt + ptlen)
		pk = pkey_ec_pub_raw(curve, ASN1_STRING_get0_data(os),
				     (size_t)ASN1_STRING_length(os));
	ASN1_OCTET_STRING_free(os);
	if (!pk)
		pk = pkey_ec_pub_raw(curve, pt, ptlen);
	return pk;
}

/* The public key stored in object h itself (RSA modulus+exponent, or EC
 * params+point), or NULL when h does not carry it (module read-locked). */
static EVP_PKEY *object_pub(struct p11_token *t, CK_OBJECT_HANDLE h, CK_KEY_TYPE kt)
{
	unsigned char *a = NULL, *b = NULL;
	size_t alen, blen;
	EVP_PKEY *pk = NULL;

	if (kt == CKK_RSA) {
		if (attr_get(t, h, CKA_MODULUS, &a, &alen) == CKR_OK && alen > 0 &&
		    attr_get(t, h, CKA_PUBLIC_EXPONENT, &b, &blen) == CKR_OK && blen > 0)
			pk = pkey_rsa_pub(a, alen, b, blen);
	} else if (kt == CKK_EC) {
		if (attr_get(t, h, CKA_EC_PARAMS, &a, &alen) == CKR_OK &&
		    attr_get(t, h, CKA_EC_POINT, &b, &blen) == CKR_OK && blen > 0)
			pk = pkey_ec_pub(a, alen, b, blen);
	}
	free(a);
	free(b);
	return pk;
}

/* The public half of private key h: its own attributes, else the
 * CKO_PUBLIC_KEY with the same CKA_ID and key type (module read-locked).
 * *rv (may be NULL) gets a failing CK_RV of a lost token. */
static EVP_PKEY *key_public_locked(struct p11_token *t, CK_OBJECT_HANDLE h, CK_RV *rvp)
{
	CK_OBJECT_CLASS pubcls = CKO_PUBLIC_KEY;
	CK_OBJECT_HANDLE *hs = NULL;
	unsigned char *id = NULL;
	size_t idlen, n, i;
	CK_KEY_TYPE kt;
	EVP_PKEY *pk;
	CK_RV rv;

	if (rvp)
		*rvp = CKR_OK;
	rv = attr_get_fixed(t, h, CKA_KEY_TYPE, &kt, sizeof(kt));
	if (rv != CKR_OK) {
		if (rvp)
			*rvp = rv;
		return NULL;
	}
	pk = object_pub(t, h, kt);
	if (pk)
		return pk;
	if (attr_get(t, h, CKA_ID, &id, &idlen) != CKR_OK || idlen == 0) {
		free(id);
		return NULL;
	}
	{
		CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &pubcls, sizeof(pubcls)},
				       {CKA_KEY_TYPE, &kt, sizeof(kt)},
				       {CKA_ID, id, idlen}};

		rv = find_objects(t, tmpl, 3, &hs, &n);
	}
	free(id);
	if (rv != CKR_OK) {
		if (rvp)
			*rvp = rv;
		return NULL;
	}
	for (i = 0; i < n && !pk; i++)
		pk = object_pub(t, hs[i], kt);
	free(hs);
	return pk;
}

EVP_PKEY *p11_key_public(struct p11_token *t, CK_OBJECT_HANDLE key, char *err, size_t errlen)
{
	EVP_PKEY *pk = NULL;
	CK_RV rv = CKR_OK;

	rd_lock(t->m);
	if (!need_session(t, err, errlen)) {
		pk = key_public_locked(t, key, &rv);
		if (!pk && rv != CKR_OK)
			fail_rv(t, rv, err, errlen, "reading a public key");
		else if (!pk)
			seterr(err, errlen,
			       "the public key of this key is not readable on token %s (no public "
			       "key object with its CKA_ID)",
			       t->label);
	}
	rd_unlock(t->m);
	return pk;
}

int p11_key_info(struct p11_token *t, CK_OBJECT_HANDLE key, struct p11_key_info *out, char *err,
		 size_t errlen)
{
	EVP_PKEY *pk;
	CK_RV rv;

	memset(out, 0, sizeof(*out));
	out->handle = key;
	rd_lock(t->m);
	if (need_session(t, err, errlen)) {
		rd_unlock(t->m);
		return -1;
	}
	rv = attr_get_fixed(t, key, CKA_CLASS, &out->cls, sizeof(out->cls));
	if (rv != CKR_OK) {
		fail_rv(t, rv, err, errlen, "reading a key");
		rd_unlock(t->m);
		return -1;
	}
	if (attr_get_fixed(t, key, CKA_KEY_TYPE, &out->key_type, sizeof(out->key_type)) != CKR_OK)
		out->key_type = (CK_KEY_TYPE)-1;
	attr_id_label(t, key, out->id, sizeof(out->id), &out->id_len, out->label,
		      sizeof(out->label));
	out->sensitive = attr_bool(t, key, CKA_SENSITIVE);
	out->extractable = attr_bool(t, key, CKA_EXTRACTABLE);
	out->always_sensitive = attr_bool(t, key, CKA_ALWAYS_SENSITIVE);
	out->never_extractable = attr_bool(t, key, CKA_NEVER_EXTRACTABLE);
	pk = key_public_locked(t, key, NULL);
	if (pk) {
		out->bits = EVP_PKEY_get_bits(pk);
		EVP_PKEY_free(pk);
	}
	rd_unlock(t->m);
	return 0;
}

/* ---- finding private keys ---------------------------------------------- */

/* 1 when private key h's public half is pub, 0 when it differs, -1 when it
 * cannot be read (module read-locked). */
static int key_matches(struct p11_token *t, CK_OBJECT_HANDLE h, EVP_PKEY *pub)
{
	EVP_PKEY *pk = key_public_locked(t, h, NULL);
	int r;

	if (!pk)
		return -1;
	r = EVP_PKEY_eq(pk, pub) == 1;
	EVP_PKEY_free(pk);
	return r;
}

int p11_key_find_for_cert(struct p11_token *t, const struct p11_cert *c, CK_OBJECT_HANDLE *key,
			  char *err, size_t errlen)
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)c->id, c->id_len}};
	EVP_PKEY *pub = c->x509 ? X509_get0_pubkey(c->x509) : NULL;
	CK_OBJECT_HANDLE *hs;
	unsigned char sha1[20];
	char hex[41];
	size_t n, i;
	CK_RV rv;

	if (!pub) {
		seterr(err, errlen, "certificate has no usable public key");
		return -1;
	}
	rd_lock(t->m);
	if (need_session(t, err, errlen))
		goto fail;
	/* 1: same CKA_ID, and its public half (when readable) is the certificate's */
	if (c->id_len > 0) {
		rv = find_objects(t, tmpl, 2, &hs, &n);
		if (rv != CKR_OK) {
			fail_rv(t, rv, err, errlen, "looking for private keys");
			goto fail;
		}
		for (i = 0; i < n; i++) {
			if (key_matches(t, hs[i], pub) != 0) {
				*key = hs[i];
				free(hs);
				rd_unlock(t->m);
				return 0;
			}
		}
		free(hs);
	}
	/* 2: any private key whose public half is the certificate's */
	rv = find_objects(t, tmpl, 1, &hs, &n);
	if (rv != CKR_OK) {
		fail_rv(t, rv, err, errlen, "looking for private keys");
		goto fail;
	}
	for (i = 0; i < n; i++) {
		if (key_matches(t, hs[i], pub) == 1) {
			*key = hs[i];
			free(hs);
			rd_unlock(t->m);
			return 0;
		}
	}
	free(hs);
	if (c->x509)
		X509_digest(c->x509, EVP_sha1(), sha1, NULL);
	seterr(err, errlen, "certificate %s matches no private key on token %s",
	       p11_hex_upper(sha1, 20, hex), t->label);
fail:
	rd_unlock(t->m);
	return -1;
}

int p11_key_find(struct p11_token *t, const unsigned char *id, size_t id_len, const char *label,
		 CK_OBJECT_HANDLE *key, char *err, size_t errlen)
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE tmpl[3] = {{CKA_CLASS, &cls, sizeof(cls)}};
	CK_OBJECT_HANDLE *hs;
	CK_ULONG nt = 1;
	char what[300];
	size_t n;
	CK_RV rv;

	if (id_len > 0) {
		char hex[257];

		tmpl[nt].type = CKA_ID;
		tmpl[nt].pValue = (void *)id;
		tmpl[nt++].ulValueLen = id_len;
		snprintf(what, sizeof(what), "id %s",
			 p11_hex_upper(id, id_len > 128 ? 128 : id_len, hex));
	}
	if (label) {
		tmpl[nt].type = CKA_LABEL;
		tmpl[nt].pValue = (void *)label;
		tmpl[nt++].ulValueLen = strlen(label);
		snprintf(what, sizeof(what), "label %.100s", label);
	}
	if (nt == 1) {
		seterr(err, errlen, "a key is selected by id or label");
		return -1;
	}
	rd_lock(t->m);
	if (need_session(t, err, errlen)) {
		rd_unlock(t->m);
		return -1;
	}
	rv = find_objects(t, tmpl, nt, &hs, &n);
	rd_unlock(t->m);
	if (rv != CKR_OK)
		return fail_rv(t, rv, err, errlen, "looking for a private key");
	if (n != 1) {
		free(hs);
		if (n)
			seterr(err, errlen, "%zu private keys with %s on token %s; use the id", n,
			       what, t->label);
		else
			seterr(err, errlen, "no private key with %s on token %s", what, t->label);
		return -1;
	}
	*key = hs[0];
	free(hs);
	return 0;
}

int p11_key_refind(struct p11_token *t, const unsigned char *id, size_t id_len,
		   CK_OBJECT_HANDLE *key)
{
	if (id_len == 0)
		return -1;
	return p11_key_find(t, id, id_len, NULL, key, NULL, 0);
}

/* ---- signing ------------------------------------------------------------ */

/* One single-part operation (C_SignInit + C_Sign, or C_DecryptInit +
 * C_Decrypt): the two differ only in the functions called. A too-small
 * buffer leaves the operation active, so it is finished into a scratch
 * buffer, else the next init would get CKR_OPERATION_ACTIVE. */
static CK_RV one_shot(struct p11_token *t, CK_C_SignInit init, CK_C_Sign op, CK_OBJECT_HANDLE key,
		      CK_MECHANISM_TYPE mech, const unsigned char *in, size_t inlen,
		      unsigned char *out, size_t *outlen)
{
	CK_MECHANISM mm = {mech, NULL, 0};
	CK_ULONG ol = *outlen;
	CK_RV rv;

	rd_lock(t->m);
	if (!session_ok(t)) {
		rv = CKR_SESSION_HANDLE_INVALID;
	} else {
		rv = init(t->session, &mm, key);
		if (rv == CKR_OK)
			rv = op(t->session, (CK_BYTE *)in, inlen, out, &ol);
		if (rv == CKR_BUFFER_TOO_SMALL) {
			unsigned char scratch[1024];
			CK_ULONG sl = sizeof(scratch);

			op(t->session, (CK_BYTE *)in, inlen, scratch, &sl);
			OPENSSL_cleanse(scratch, sizeof(scratch));
		}
	}
	rd_unlock(t->m);
	if (rv == CKR_OK)
		*outlen = ol;
	else
		t->last_rv = rv;
	return rv;
}

CK_RV p11_sign(struct p11_token *t, CK_OBJECT_HANDLE key, CK_MECHANISM_TYPE mech,
	       const unsigned char *in, size_t inlen, unsigned char *out, size_t *outlen)
{
	return one_shot(t, t->m->f->C_SignInit, t->m->f->C_Sign, key, mech, in, inlen, out, outlen);
}

CK_RV p11_decrypt(struct p11_token *t, CK_OBJECT_HANDLE key, CK_MECHANISM_TYPE mech,
		  const unsigned char *in, size_t inlen, unsigned char *out, size_t *outlen)
{
	return one_shot(t, t->m->f->C_DecryptInit, t->m->f->C_Decrypt, key, mech, in, inlen, out,
			outlen);
}

int p11_token_has_mechanism(struct p11_token *t, CK_MECHANISM_TYPE mech)
{
	CK_ULONG i, n = 0;
	int found = 0;

	rd_lock(t->m);
	if (!t->mechs_valid) {
		free(t->mechs);
		t->mechs = NULL;
		t->nmechs = 0;
		if (t->m->f->C_GetMechanismList(t->slot, NULL, &n) == CKR_OK) {
			t->mechs = calloc(n ? n : 1, sizeof(*t->mechs));
			if (t->mechs &&
			    t->m->f->C_GetMechanismList(t->slot, t->mechs, &n) == CKR_OK) {
				t->nmechs = n;
				t->mechs_valid = 1;
			}
		}
	}
	for (i = 0; i < t->nmechs; i++)
		if (t->mechs[i] == mech)
			found = 1;
	rd_unlock(t->m);
	return found;
}

/* ---- key generation and import ---------------------------------------- */

static const unsigned char oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48,
					 0xce, 0x3d, 0x03, 0x01, 0x07};
static const unsigned char oid_p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};

/* After creating a private key: 0 if the token honoured SENSITIVE=TRUE and
 * EXTRACTABLE=FALSE, else -1 with err (module read-locked). */
static int check_protected(struct p11_token *t, CK_OBJECT_HANDLE h, char *err, size_t errlen)
{
	int s = attr_bool(t, h, CKA_SENSITIVE), x = attr_bool(t, h, CKA_EXTRACTABLE);

	if (s == 1 && x == 0)
		return 0;
	seterr(err, errlen,
	       "token %s did not keep the key sensitive and non-extractable (CKA_SENSITIVE=%d "
	       "CKA_EXTRACTABLE=%d); the key was removed",
	       t->label, s, x);
	return -1;
}

int p11_keygen(struct p11_token *t, enum p11_key_kind kind, const char *label, unsigned char *id,
	       size_t id_len, size_t *id_len_out, CK_OBJECT_HANDLE *priv, char *err, size_t errlen)
{
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ULONG bits = kind == P11_KEY_RSA3072 ? 3072 : 2048;
	unsigned char e[] = {0x01, 0x00, 0x01};
	int is_ec = kind == P11_KEY_EC256 || kind == P11_KEY_EC384;
	const unsigned char *oid = kind == P11_KEY_EC384 ? oid_p384 : oid_p256;
	size_t oidlen = kind == P11_KEY_EC384 ? sizeof(oid_p384) : sizeof(oid_p256);
	CK_MECHANISM mech = {is_ec ? CKM_EC_KEY_PAIR_GEN : CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
	CK_ATTRIBUTE pub[8], prv[10];
	CK_ULONG np = 0, nv = 0;
	CK_OBJECT_HANDLE hpub, hprv;
	size_t llen = label ? strlen(label) : 0;
	CK_RV rv;

	if (kind < P11_KEY_RSA2048 || kind > P11_KEY_EC384) {
		seterr(err, errlen, "unknown key type");
		return -1;
	}
	if (id_len == 0) {
		if (RAND_bytes(id, 8) != 1) {
			seterr(err, errlen, "no random bytes for a key id");
			return -1;
		}
		id_len = 8;
	}
	if (id_len_out)
		*id_len_out = id_len;
#define ADD(arr, n, t_, p_, l_)                                                                    \
	do {                                                                                       \
		(arr)[(n)].type = (t_);                                                            \
		(arr)[(n)].pValue = (void *)(p_);                                                  \
		(arr)[(n)++].ulValueLen = (l_);                                                    \
	} while (0)
	ADD(pub, np, CKA_TOKEN, &yes, sizeof(yes));
	ADD(pub, np, CKA_PRIVATE, &no, sizeof(no));
	ADD(pub, np, CKA_VERIFY, &yes, sizeof(yes));
	ADD(pub, np, CKA_ID, id, id_len);
	if (label)
		ADD(pub, np, CKA_LABEL, label, llen);
	if (is_ec) {
		ADD(pub, np, CKA_EC_PARAMS, oid, oidlen);
	} else {
		ADD(pub, np, CKA_MODULUS_BITS, &bits, sizeof(bits));
		ADD(pub, np, CKA_PUBLIC_EXPONENT, e, sizeof(e));
		ADD(pub, np, CKA_ENCRYPT, &yes, sizeof(yes));
	}
	ADD(prv, nv, CKA_TOKEN, &yes, sizeof(yes));
	ADD(prv, nv, CKA_PRIVATE, &yes, sizeof(yes));
	ADD(prv, nv, CKA_SENSITIVE, &yes, sizeof(yes));
	ADD(prv, nv, CKA_EXTRACTABLE, &no, sizeof(no));
	ADD(prv, nv, CKA_SIGN, &yes, sizeof(yes));
	ADD(prv, nv, CKA_ID, id, id_len);
	if (label)
		ADD(prv, nv, CKA_LABEL, label, llen);
	if (!is_ec)
		ADD(prv, nv, CKA_DECRYPT, &yes, sizeof(yes));
#undef ADD

	rd_lock(t->m);
	if (need_session(t, err, errlen))
		goto fail;
	rv = t->m->f->C_GenerateKeyPair(t->session, &mech, pub, np, prv, nv, &hpub, &hprv);
	if (rv != CKR_OK) {
		fail_rv(t, rv, err, errlen, "generating a key pair");
		goto fail;
	}
	if (check_protected(t, hprv, err, errlen)) {
		t->m->f->C_DestroyObject(t->session, hprv);
		t->m->f->C_DestroyObject(t->session, hpub);
		goto fail;
	}
	rd_unlock(t->m);
	if (priv)
		*priv = hprv;
	return 0;
fail:
	rd_unlock(t->m);
	return -1;
}

/* A BIGNUM parameter of pkey as big-endian bytes (padded to pad bytes if
 * pad > 0) in a new buffer; *len gets its size. NULL if absent. The
 * caller wipes and frees it (wipe_free). */
static unsigned char *bn_param(EVP_PKEY *pkey, const char *name, int pad, size_t *len)
{
	BIGNUM *bn = NULL;
	unsigned char *buf;
	int n;

	if (EVP_PKEY_get_bn_param(pkey, name, &bn) != 1 || !bn)
		return NULL;
	n = pad > 0 ? pad : BN_num_bytes(bn);
	buf = malloc(n > 0 ? (size_t)n : 1);
	if (buf && BN_bn2binpad(bn, buf, n) < 0) {
		OPENSSL_cleanse(buf, (size_t)n);
		free(buf);
		buf = NULL;
	}
	BN_clear_free(bn);
	*len = buf ? (size_t)n : 0;
	return buf;
}

static void wipe_free(unsigned char *p, size_t len)
{
	if (!p)
		return;
	OPENSSL_cleanse(p, len);
	free(p);
}

int p11_key_import(struct p11_token *t, EVP_PKEY *pkey, const char *label, const unsigned char *id,
		   size_t id_len, CK_OBJECT_HANDLE *priv, char *err, size_t errlen)
{
	static const char *const rsa_names[8] = {
		OSSL_PKEY_PARAM_RSA_N,	       OSSL_PKEY_PARAM_RSA_E,
		OSSL_PKEY_PARAM_RSA_D,	       OSSL_PKEY_PARAM_RSA_FACTOR1,
		OSSL_PKEY_PARAM_RSA_FACTOR2,   OSSL_PKEY_PARAM_RSA_EXPONENT1,
		OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1,
	};
	static const CK_ATTRIBUTE_TYPE rsa_attrs[8] = {
		CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_PRIVATE_EXPONENT, CKA_PRIME_1,
		CKA_PRIME_2, CKA_EXPONENT_1,	  CKA_EXPONENT_2,	CKA_COEFFICIENT,
	};
	CK_OBJECT_CLASS pcls = CKO_PRIVATE_KEY, ucls = CKO_PUBLIC_KEY;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	unsigned char *v[8] = {NULL};
	size_t vl[8] = {0};
	unsigned char *params = NULL, *point = NULL;
	size_t plen = 0, ptlen = 0, llen = label ? strlen(label) : 0;
	CK_ATTRIBUTE prv[20], pub[10];
	CK_ULONG nv = 0, np = 0;
	CK_KEY_TYPE kt;
	CK_OBJECT_HANDLE hprv = CK_INVALID_HANDLE, hpub;
	int base = EVP_PKEY_get_base_id(pkey), ret = -1, i;
	BIGNUM *extra = NULL;
	CK_RV rv;

#define ADD(arr, n, t_, p_, l_)                                                                    \
	do {                                                                                       \
		(arr)[(n)].type = (t_);                                                            \
		(arr)[(n)].pValue = (void *)(p_);                                                  \
		(arr)[(n)++].ulValueLen = (l_);                                                    \
	} while (0)
	if (base == EVP_PKEY_RSA) {
		kt = CKK_RSA;
		/* PKCS#11 has no attributes for multi-prime RSA */
		if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_FACTOR3, &extra) == 1) {
			BN_clear_free(extra);
			seterr(err, errlen, "multi-prime RSA keys cannot be stored on a token");
			return -1;
		}
		for (i = 0; i < 8; i++) {
			v[i] = bn_param(pkey, rsa_names[i], 0, &vl[i]);
			if (!v[i]) {
				seterr(err, errlen,
				       "the RSA key lacks %s (CRT components are needed)",
				       rsa_names[i]);
				goto out;
			}
		}
	} else if (base == EVP_PKEY_EC) {
		char curve[64];
		int nid, obytes = (EVP_PKEY_get_bits(pkey) + 7) / 8;
		ASN1_OCTET_STRING *os = NULL;
		unsigned char pt[160];
		size_t rawlen = 0;

		kt = CKK_EC;
		if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, curve,
						   sizeof(curve), NULL) != 1 ||
		    (nid = OBJ_sn2nid(curve)) == NID_undef) {
			seterr(err, errlen, "the EC key does not use a named curve");
			goto out;
		}
		params = I2D_ALLOC(i2d_ASN1_OBJECT, OBJ_nid2obj(nid), &plen);
		v[0] = bn_param(pkey, OSSL_PKEY_PARAM_PRIV_KEY, obytes, &vl[0]);
		if (EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, pt,
						    sizeof(pt), &rawlen) == 1 &&
		    (os = ASN1_OCTET_STRING_new()) && ASN1_OCTET_STRING_set(os, pt, (int)rawlen))
			point = I2D_ALLOC(i2d_ASN1_OCTET_STRING, os, &ptlen);
		ASN1_OCTET_STRING_free(os);
		if (!params || !v[0] || !point) {
			seterr(err, errlen, "cannot encode the EC key");
			goto out;
		}
	} else {
		seterr(err, errlen, "only RSA and EC keys can be imported");
		return -1;
	}

	ADD(prv, nv, CKA_CLASS, &pcls, sizeof(pcls));
	ADD(prv, nv, CKA_KEY_TYPE, &kt, sizeof(kt));
	ADD(prv, nv, CKA_TOKEN, &yes, sizeof(yes));
	ADD(prv, nv, CKA_PRIVATE, &yes, sizeof(yes));
	ADD(prv, nv, CKA_SENSITIVE, &yes, sizeof(yes));
	ADD(prv, nv, CKA_EXTRACTABLE, &no, sizeof(no));
	ADD(prv, nv, CKA_SIGN, &yes, sizeof(yes));
	ADD(prv, nv, CKA_ID, id, id_len);
	if (label)
		ADD(prv, nv, CKA_LABEL, label, llen);
	ADD(pub, np, CKA_CLASS, &ucls, sizeof(ucls));
	ADD(pub, np, CKA_KEY_TYPE, &kt, sizeof(kt));
	ADD(pub, np, CKA_TOKEN, &yes, sizeof(yes));
	ADD(pub, np, CKA_PRIVATE, &no, sizeof(no));
	ADD(pub, np, CKA_VERIFY, &yes, sizeof(yes));
	ADD(pub, np, CKA_ID, id, id_len);
	if (label)
		ADD(pub, np, CKA_LABEL, label, llen);
	if (kt == CKK_RSA) {
		ADD(prv, nv, CKA_DECRYPT, &yes, sizeof(yes));
		for (i = 0; i < 8; i++)
			ADD(prv, nv, rsa_attrs[i], v[i], vl[i]);
		ADD(pub, np, CKA_MODULUS, v[0], vl[0]);
		ADD(pub, np, CKA_PUBLIC_EXPONENT, v[1], vl[1]);
	} else {
		ADD(prv, nv, CKA_EC_PARAMS, params, plen);
		ADD(prv, nv, CKA_VALUE, v[0], vl[0]);
		ADD(pub, np, CKA_EC_PARAMS, params, plen);
		ADD(pub, np, CKA_EC_POINT, point, ptlen);
	}
#undef ADD

	rd_lock(t->m);
	if (need_session(t, err, errlen)) {
		rd_unlock(t->m);
		goto out;
	}
	rv = t->m->f->C_CreateObject(t->session, prv, nv, &hprv);
	if (rv != CKR_OK) {
		fail_rv(t, rv, err, errlen, "writing the private key");
		rd_unlock(t->m);
		goto out;
	}
	if (check_protected(t, hprv, err, errlen)) {
		t->m->f->C_DestroyObject(t->session, hprv);
		rd_unlock(t->m);
		goto out;
	}
	rv = t->m->f->C_CreateObject(t->session, pub, np, &hpub);
	if (rv != CKR_OK) {
		fail_rv(t, rv, err, errlen, "writing the public key");
		t->m->f->C_DestroyObject(t->session, hprv);
		rd_unlock(t->m);
		goto out;
	}
	rd_unlock(t->m);
	if (priv)
		*priv = hprv;
	ret = 0;
out:
	for (i = 0; i < 8; i++)
		wipe_free(v[i], vl[i]);
	OPENSSL_free(params);
	OPENSSL_free(point);
	OPENSSL_cleanse(prv, sizeof(prv));
	return ret;
}

int p11_objects_delete(struct p11_token *t, CK_OBJECT_CLASS cls, const unsigned char *id,
		       size_t id_len, const char *label, size_t *ndeleted, char *err, size_t errlen)
{
	CK_ATTRIBUTE tmpl[3];
	CK_OBJECT_HANDLE *hs;
	CK_ULONG nt = 0;
	size_t n, i;
	CK_RV rv;

	*ndeleted = 0;
	if (cls != P11_CLASS_ANY) {
		tmpl[nt].type = CKA_CLASS;
		tmpl[nt].pValue = &cls;
		tmpl[nt++].ulValueLen = sizeof(cls);
	}
	if (id_len > 0) {
		tmpl[nt].type = CKA_ID;
		tmpl[nt].pValue = (void *)id;
		tmpl[nt++].ulValueLen = id_len;
	}
	if (label) {
		tmpl[nt].type = CKA_LABEL;
		tmpl[nt].pValue = (void *)label;
		tmpl[nt++].ulValueLen = strlen(label);
	}
	if (id_len == 0 && !label) {
		seterr(err, errlen, "deleting needs an id or a label");
		return -1;
	}
	rd_lock(t->m);
	if (need_session(t, err, errlen)) {
		rd_unlock(t->m);
		return -1;
	}
	rv = find_objects(t, tmpl, nt, &hs, &n);
	if (rv != CKR_OK) {
		rd_unlock(t->m);
		return fail_rv(t, rv, err, errlen, "looking for objects");
	}
	for (i = 0; i < n; i++) {
		rv = t->m->f->C_DestroyObject(t->session, hs[i]);
		if (rv != CKR_OK) {
			free(hs);
			rd_unlock(t->m);
			return fail_rv(t, rv, err, errlen, "deleting an object");
		}
		(*ndeleted)++;
	}
	free(hs);
	rd_unlock(t->m);
	return 0;
}

int p11_object_destroy(struct p11_token *t, CK_OBJECT_HANDLE h, char *err, size_t errlen)
{
	CK_RV rv;

	rd_lock(t->m);
	if (need_session(t, err, errlen)) {
		rd_unlock(t->m);
		return -1;
	}
	rv = t->m->f->C_DestroyObject(t->session, h);
	rd_unlock(t->m);
	if (rv != CKR_OK)
		return fail_rv(t, rv, err, errlen, "deleting an object");
	return 0;
}
