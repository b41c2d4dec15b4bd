/* farmgatectl: the operator's tool; `farmgatectl token ...` manages PKCS#11 tokens, keys and certificates,
 * `farmgatectl status|server|farm|health ...` talks to a running farmgated (ctlclient.c). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ctlclient.h"
#include "key.h"
#include "tokenops.h"
#include "p11.h"

#define DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define EXIT_OK	       0
#define EXIT_FAIL      1
#define EXIT_USAGE     2
#define MAX_FILE       (4 << 20)

static const char usage_text[] =
	"usage: farmgatectl status|server|farm|health ... [--socket PATH] [--timeout SECONDS] "
	"[--json]\n"
	"       farmgatectl token <command> [options]\n"
	"\n" CTL_USAGE "\n"
	"token commands (PKCS#11 tokens, keys and certificates):\n"
	"  slots                             every slot and token of the module\n"
	"  init --label L --so-pin-env V --pin-env V2\n"
	"                                    initialise a free SoftHSM token (demo, tests)\n"
	"  keygen --type rsa2048|rsa3072|ec256|ec384 --label L [--id HEX]\n"
	"                                    generate a key pair on the token; prints its id\n"
	"  csr (--key-label L | --id HEX) --subject /CN=x/O=y [--san DNS:a,IP:1.2.3.4] --out FILE\n"
	"                                    write a PEM CSR signed by the token key (SHA-256)\n"
	"  import-cert FILE [--label L] [--allow-invalid-dates]\n"
	"                                    store a PEM/DER certificate beside its key\n"
	"  import-pfx FILE --password-env VAR [--label L] [--id HEX] [--allow-invalid-dates]\n"
	"                                    write a PFX's key (non-extractable) and certificate\n"
	"  certs (or list) [--thumbprint T]  certificates with SHA-1/SHA-256 thumbprints\n"
	"  delete (--id HEX | --label L | --thumbprint T) [--type cert|private|public|all]\n"
	"  selftest --thumbprint T           sign and run TLS 1.2/1.3 handshakes with the key\n"
	"  bench (--thumbprint T | --key-label L) [--seconds N]\n"
	"                                    the token's raw signature rate (one thread, N s per\n"
	"                                    mechanism, default 5): \"<mech> <N> signatures/s\"\n"
	"  help\n"
	"\n"
	"token options:\n"
	"  --module PATH     PKCS#11 module (default " DEFAULT_MODULE ")\n"
	"  --token URI       pkcs11:token=LABEL (RFC 7512); default: the only token present\n"
	"  --pin-file FILE   the user PIN, from a file owned by root with mode 0600\n"
	"  --pin-env VAR     the user PIN from an environment variable (tests)\n"
	"PINs are never taken from the command line.\n"
	"exit status: 0 ok, 1 operational error, 2 usage\n";

/* Options: every command accepts the common ones, plus its own (mask). */
enum {
	O_MODULE,
	O_TOKEN,
	O_PIN_FILE,
	O_PIN_ENV,
	O_SO_PIN_ENV,
	O_LABEL,
	O_ID,
	O_TYPE,
	O_KEY_LABEL,
	O_SUBJECT,
	O_SAN,
	O_OUT,
	O_PASSWORD_ENV,
	O_THUMBPRINT,
	O_ALLOW_INVALID_DATES,
	O_SECONDS,
	O_COUNT,
};

static const struct {
	const char *name;
	int has_arg;
} optdefs[O_COUNT] = {
	[O_MODULE] = {"module", 1},
	[O_TOKEN] = {"token", 1},
	[O_PIN_FILE] = {"pin-file", 1},
	[O_PIN_ENV] = {"pin-env", 1},
	[O_SO_PIN_ENV] = {"so-pin-env", 1},
	[O_LABEL] = {"label", 1},
	[O_ID] = {"id", 1},
	[O_TYPE] = {"type", 1},
	[O_KEY_LABEL] = {"key-label", 1},
	[O_SUBJECT] = {"subject", 1},
	[O_SAN] = {"san", 1},
	[O_OUT] = {"out", 1},
	[O_PASSWORD_ENV] = {"password-env", 1},
	[O_THUMBPRINT] = {"thumbprint", 1},
	[O_ALLOW_INVALID_DATES] = {"allow-invalid-dates", 0},
	[O_SECONDS] = {"seconds", 1},
};

#define B(o)   (1u << (o))
#define COMMON (B(O_MODULE) | B(O_TOKEN) | B(O_PIN_FILE) | B(O_PIN_ENV))

struct ctl {
	const char *cmd;
	const char *opt[O_COUNT]; /* value, or "" for flags */
	const char *pos[4];	  /* positional arguments */
	int npos;
	struct p11_module *m;
	struct p11_token *t;
	int logged_in;
};

/* Prints "farmgatectl: msg" on stderr (one line). */
static void say_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say_err(const char *fmt, ...)
{
	va_list ap;

	fputs("farmgatectl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* The first OpenSSL error's reason text (or fallback), queue cleared. */
static const char *ssl_reason(const char *fallback)
{
	static char buf[256];
	unsigned long e = ERR_peek_last_error();

	if (!e) {
		snprintf(buf, sizeof(buf), "%s", fallback);
	} else {
		const char *r = ERR_reason_error_string(e);

		snprintf(buf, sizeof(buf), "%s", r ? r : fallback);
	}
	ERR_clear_error();
	return buf;
}

/* ---- small parsers ---------------------------------------------------- */

/* Hex (optionally with ':' or ' ') into out; returns the byte count or -1. */
static long parse_hex(const char *s, unsigned char *out, size_t outsize)
{
	size_t n = 0;
	int hi = -1;

	for (; *s; s++) {
		int v;

		if (*s == ':' || *s == ' ')
			continue;
		if (*s >= '0' && *s <= '9')
			v = *s - '0';
		else if (*s >= 'a' && *s <= 'f')
			v = *s - 'a' + 10;
		else if (*s >= 'A' && *s <= 'F')
			v = *s - 'A' + 10;
		else
			return -1;
		if (hi < 0) {
			hi = v;
			continue;
		}
		if (n >= outsize)
			return -1;
		out[n++] = (unsigned char)(hi << 4 | v);
		hi = -1;
	}
	return hi >= 0 || n == 0 ? -1 : (long)n;
}

/* A time as "2026-11-22 08:45:00 UTC". */
/* The name on one line, UTF-8 kept ("CN = x, O = y"); static buffer. */
static const char *name_text(const X509_NAME *n)
{
	static char buf[2][1024];
	static int which;
	BIO *b = BIO_new(BIO_s_mem());
	char *p = buf[which ^= 1];
	int len;

	p[0] = '\0';
	if (!b)
		return p;
	X509_NAME_print_ex(b, n, 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB);
	len = BIO_read(b, p, sizeof(buf[0]) - 1);
	p[len > 0 ? len : 0] = '\0';
	BIO_free(b);
	return p;
}

/* "RSA 2048", "EC P-256", ... of a public key. */
static char *key_text(EVP_PKEY *pk, char *buf, size_t len)
{
	char group[64];

	if (!pk) {
		snprintf(buf, len, "unknown");
	} else if (EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC) {
		if (EVP_PKEY_get_group_name(pk, group, sizeof(group), NULL) != 1)
			snprintf(group, sizeof(group), "?");
		const char *nist = EC_curve_nid2nist(OBJ_sn2nid(group));

		snprintf(buf, len, "EC %s (%s)", nist ? nist : "?", group);
	} else {
		snprintf(buf, len, "%s %d", EVP_PKEY_get0_type_name(pk), EVP_PKEY_get_bits(pk));
	}
	return buf;
}

/* Reads a whole (small) file. Returns 0 and a malloc()ed buffer, or -1
 * with a message printed. */
static int read_file(const char *path, unsigned char **buf, size_t *len)
{
	FILE *f = fopen(path, "rb");
	unsigned char *b;
	size_t n;

	*buf = NULL;
	if (!f) {
		say_err("cannot read %s: %s", path, strerror(errno));
		return -1;
	}
	b = malloc(MAX_FILE + 1);
	if (!b) {
		fclose(f);
		say_err("out of memory reading %s", path);
		return -1;
	}
	n = fread(b, 1, MAX_FILE + 1, f);
	if (ferror(f)) {
		say_err("cannot read %s: %s", path, strerror(errno));
		goto err;
	}
	if (n > MAX_FILE) {
		say_err("%s is too large (over %d bytes)", path, MAX_FILE);
		goto err;
	}
	if (n == 0) {
		say_err("%s is empty", path);
		goto err;
	}
	fclose(f);
	*buf = b;
	*len = n;
	return 0;
err:
	OPENSSL_cleanse(b, MAX_FILE + 1);
	free(b);
	fclose(f);
	return -1;
}

/* A certificate from PEM or DER bytes; NULL if neither. */
/* 0 when x is valid now (or allow), else -1 with the dates printed. */
static int check_dates(X509 *x, int allow)
{
	const ASN1_TIME *nb = X509_get0_notBefore(x), *na = X509_get0_notAfter(x);
	char b1[40], b2[40];

	tokop_fmt_time(nb, b1, sizeof(b1));
	tokop_fmt_time(na, b2, sizeof(b2));
	if (X509_cmp_current_time(nb) > 0) {
		if (allow)
			return 0;
		say_err("certificate is not yet valid: valid from %s to %s (use "
			"--allow-invalid-dates to import it anyway)",
			b1, b2);
		return -1;
	}
	if (X509_cmp_current_time(na) < 0) {
		if (allow)
			return 0;
		say_err("certificate expired on %s (valid from %s to %s; use "
			"--allow-invalid-dates to import it anyway)",
			b2, b1, b2);
		return -1;
	}
	return 0;
}

/* ---- module, token, PIN ----------------------------------------------- */

/* Loads the module (--module or the default). 0 or 1 (printed). */
static int load_module(struct ctl *c)
{
	char err[512];
	const char *path = c->opt[O_MODULE] ? c->opt[O_MODULE] : DEFAULT_MODULE;

	c->m = p11_module_load(path, err, sizeof(err));
	if (!c->m) {
		say_err("%s", err);
		return EXIT_FAIL;
	}
	return EXIT_OK;
}

/* The PIN from --pin-file or --pin-env into pin. Returns 0, 1 (error
 * printed) or 2 (no PIN source and required). *have tells if one was read. */
static int get_pin(struct ctl *c, char *pin, size_t len, int required, int *have)
{
	char err[512];

	*have = 0;
	if (c->opt[O_PIN_FILE] && c->opt[O_PIN_ENV]) {
		say_err("give either --pin-file or --pin-env, not both");
		return EXIT_USAGE;
	}
	if (c->opt[O_PIN_FILE]) {
		if (p11_pin_file_read(c->opt[O_PIN_FILE], pin, len, err, sizeof(err))) {
			say_err("%s", err);
			return EXIT_FAIL;
		}
		*have = 1;
		return EXIT_OK;
	}
	if (c->opt[O_PIN_ENV]) {
		const char *v = getenv(c->opt[O_PIN_ENV]);

		if (!v || !*v) {
			say_err("environment variable %s (--pin-env) is not set or empty",
				c->opt[O_PIN_ENV]);
			return EXIT_FAIL;
		}
		if (strlen(v) >= len) {
			say_err("the PIN in %s is too long", c->opt[O_PIN_ENV]);
			return EXIT_FAIL;
		}
		memcpy(pin, v, strlen(v) + 1);
		*have = 1;
		return EXIT_OK;
	}
	if (required) {
		say_err("%s needs a log-in on the token: give --pin-file FILE or --pin-env VAR",
			c->cmd);
		return EXIT_USAGE;
	}
	return EXIT_OK;
}

/* Opens the token (--token, or the only initialised one) and logs in when
 * a PIN source is given (required: must be). Returns an exit code. */
static int open_token(struct ctl *c, int login_required)
{
	struct p11_uri sel;
	char err[1024], pin[257];
	int r, have;

	r = load_module(c);
	if (r)
		return r;
	if (c->opt[O_TOKEN]) {
		if (p11_uri_parse(c->opt[O_TOKEN], &sel, err, sizeof(err))) {
			say_err("bad --token: %s", err);
			return EXIT_USAGE;
		}
	} else {
		struct p11_slot_info *s;
		size_t n, i, found = 0;
		char names[512] = "";

		if (p11_slots_list(c->m, &s, &n, err, sizeof(err))) {
			say_err("%s", err);
			return EXIT_FAIL;
		}
		memset(&sel, 0, sizeof(sel));
		for (i = 0; i < n; i++) {
			if (!s[i].token_present || !(s[i].token_flags & CKF_TOKEN_INITIALIZED))
				continue;
			if (!found++) {
				snprintf(sel.token, sizeof(sel.token), "%s", s[i].label);
				sel.have = P11_URI_TOKEN;
			}
			snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
				 found > 1 ? ", " : "", s[i].label);
		}
		free(s);
		if (found == 0) {
			say_err("no initialised token in %s", p11_module_path(c->m));
			return EXIT_FAIL;
		}
		if (found > 1) {
			say_err("several tokens present (%s): choose one with --token "
				"pkcs11:token=LABEL",
				names);
			return EXIT_USAGE;
		}
	}
	c->t = p11_token_open(c->m, &sel, err, sizeof(err));
	if (!c->t) {
		say_err("%s", err);
		return EXIT_FAIL;
	}
	r = get_pin(c, pin, sizeof(pin), login_required, &have);
	if (r == EXIT_OK && have) {
		if (p11_token_login(c->t, pin, err, sizeof(err))) {
			say_err("%s", err);
			r = EXIT_FAIL;
		} else {
			c->logged_in = 1;
		}
	}
	OPENSSL_cleanse(pin, sizeof(pin));
	return r;
}

/* --id HEX into id (usage error printed on a bad value). -1 if bad, else
 * the length (0 when not given). */
static long opt_id(struct ctl *c, unsigned char *id, size_t size)
{
	long n;

	if (!c->opt[O_ID])
		return 0;
	n = parse_hex(c->opt[O_ID], id, size);
	if (n < 0)
		say_err("bad --id %s: expected 1 to %zu bytes of hex", c->opt[O_ID], size);
	return n;
}

/* --thumbprint into out. 0, or 2 with the problem printed. */
static int opt_thumbprint(struct ctl *c, unsigned char *out, size_t *len)
{
	char err[256];

	if (p11_thumbprint_parse(c->opt[O_THUMBPRINT], out, len, err, sizeof(err))) {
		say_err("bad --thumbprint: %s", err);
		return EXIT_USAGE;
	}
	return EXIT_OK;
}

/* ---- commands ----------------------------------------------------------- */

static void flags_text(CK_FLAGS f, char *buf, size_t len)
{
	static const struct {
		CK_FLAGS bit;
		const char *name;
	} names[] = {
		{CKF_TOKEN_INITIALIZED, "initialized"},
		{CKF_LOGIN_REQUIRED, "login required"},
		{CKF_USER_PIN_INITIALIZED, "user PIN set"},
		{CKF_PROTECTED_AUTHENTICATION_PATH, "PIN pad"},
		{CKF_WRITE_PROTECTED, "write-protected"},
		{CKF_RNG, "RNG"},
		{CKF_SO_PIN_LOCKED, "SO PIN locked"},
	};
	size_t i;

	buf[0] = '\0';
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (f & names[i].bit)
			snprintf(buf + strlen(buf), len - strlen(buf), "%s%s", *buf ? ", " : "",
				 names[i].name);
}

static int cmd_slots(struct ctl *c)
{
	struct p11_slot_info *s;
	char err[512], fl[256];
	size_t n, i;
	int r = load_module(c);

	if (r)
		return r;
	if (p11_slots_list(c->m, &s, &n, err, sizeof(err))) {
		say_err("%s", err);
		return EXIT_FAIL;
	}
	printf("module %s: %zu slot%s\n", p11_module_path(c->m), n, n == 1 ? "" : "s");
	for (i = 0; i < n; i++) {
		printf("slot %lu: %s%s\n", (unsigned long)s[i].id, s[i].description,
		       (s[i].slot_flags & CKF_REMOVABLE_DEVICE) ? " (removable)" : "");
		if (!s[i].token_present) {
			printf("  token:        (none)\n");
			continue;
		}
		if (!(s[i].token_flags & CKF_TOKEN_INITIALIZED)) {
			printf("  token:        (not initialised)\n");
			continue;
		}
		flags_text(s[i].token_flags, fl, sizeof(fl));
		printf("  token:        %s\n", s[i].label);
		printf("  manufacturer: %s\n", s[i].manufacturer);
		printf("  model:        %s\n", s[i].model);
		printf("  serial:       %s\n", s[i].serial);
		printf("  flags:        %s\n", fl);
		printf("  PIN flags:    %s\n", *p11_pin_flags_text(s[i].token_flags)
						       ? p11_pin_flags_text(s[i].token_flags)
						       : "none");
	}
	free(s);
	return EXIT_OK;
}

static int cmd_init(struct ctl *c)
{
	const char *so, *user;
	char err[512];
	CK_SLOT_ID slot;
	int r;

	if (!c->opt[O_LABEL] || !c->opt[O_SO_PIN_ENV] || !c->opt[O_PIN_ENV]) {
		say_err("init needs --label L --so-pin-env VAR --pin-env VAR");
		return EXIT_USAGE;
	}
	so = getenv(c->opt[O_SO_PIN_ENV]);
	user = getenv(c->opt[O_PIN_ENV]);
	if (!so || !*so || !user || !*user) {
		say_err("environment variable %s is not set or empty",
			(!so || !*so) ? c->opt[O_SO_PIN_ENV] : c->opt[O_PIN_ENV]);
		return EXIT_FAIL;
	}
	r = load_module(c);
	if (r)
		return r;
	if (p11_token_init(c->m, c->opt[O_LABEL], so, user, &slot, err, sizeof(err))) {
		say_err("%s", err);
		return EXIT_FAIL;
	}
	printf("initialised token %s in slot %lu\n", c->opt[O_LABEL], (unsigned long)slot);
	return EXIT_OK;
}

static int cmd_keygen(struct ctl *c)
{
	enum p11_key_kind kind;
	unsigned char id[128], out[128];
	char err[512], hex[257];
	size_t idlen;
	long n;
	int r;

	if (!c->opt[O_TYPE] || !c->opt[O_LABEL]) {
		say_err("keygen needs --type rsa2048|rsa3072|ec256|ec384 and --label L");
		return EXIT_USAGE;
	}
	if (tokop_key_kind(c->opt[O_TYPE], &kind) == -1) {
		say_err("bad --type %s: use rsa2048, rsa3072, ec256 or ec384", c->opt[O_TYPE]);
		return EXIT_USAGE;
	}
	n = opt_id(c, id, sizeof(id));
	if (n < 0)
		return EXIT_USAGE;
	r = open_token(c, 1);
	if (r)
		return r;
	if (tokop_keygen(c->t, kind, c->opt[O_LABEL], id, (size_t)n, out, &idlen, err,
			 sizeof(err))) {
		say_err("%s", err);
		return EXIT_FAIL;
	}
	printf("id=%s label=%s type=%s\n", p11_hex_lower(out, idlen, hex), c->opt[O_LABEL],
	       c->opt[O_TYPE]);
	return EXIT_OK;
}

static int cmd_csr(struct ctl *c)
{
	unsigned char id[128];
	char err[512];
	X509_REQ *req;
	FILE *f;
	long n;
	int r;

	if ((!c->opt[O_KEY_LABEL]) == (!c->opt[O_ID])) {
		say_err("csr needs exactly one of --key-label L or --id HEX");
		return EXIT_USAGE;
	}
	if (!c->opt[O_SUBJECT] || !c->opt[O_OUT]) {
		say_err("csr needs --subject /CN=... and --out FILE");
		return EXIT_USAGE;
	}
	n = opt_id(c, id, sizeof(id));
	if (n < 0)
		return EXIT_USAGE;
	{
		X509_NAME *name = tokop_parse_subject(c->opt[O_SUBJECT], err, sizeof(err));

		if (!name) {
			say_err("bad --subject: %s", err);
			return EXIT_USAGE;
		}
		X509_NAME_free(name);
	}
	r = open_token(c, 1);
	if (r)
		return r;
	req = tokop_csr(c->t, id, (size_t)n, c->opt[O_KEY_LABEL], c->opt[O_SUBJECT], c->opt[O_SAN],
			err, sizeof(err));
	if (!req) {
		say_err("%s", err);
		return strstr(err, "subjectAltName") ? EXIT_USAGE : EXIT_FAIL;
	}
	f = fopen(c->opt[O_OUT], "w");
	if (!f) {
		say_err("cannot write %s: %s", c->opt[O_OUT], strerror(errno));
		X509_REQ_free(req);
		return EXIT_FAIL;
	}
	if (!PEM_write_X509_REQ(f, req) | (fclose(f) != 0)) {
		say_err("cannot write %s", c->opt[O_OUT]);
		X509_REQ_free(req);
		return EXIT_FAIL;
	}
	printf("wrote %s: %s\n", c->opt[O_OUT], name_text(X509_REQ_get_subject_name(req)));
	X509_REQ_free(req);
	return EXIT_OK;
}

static void print_thumbprints(X509 *x)
{
	unsigned char d[32];
	char hex[65];

	X509_digest(x, EVP_sha1(), d, NULL);
	printf("SHA-1:   %s\n", p11_hex_upper(d, 20, hex));
	X509_digest(x, EVP_sha256(), d, NULL);
	printf("SHA-256: %s\n", p11_hex_upper(d, 32, hex));
}

static int cmd_import_cert(struct ctl *c)
{
	unsigned char *buf;
	char err[512], label[128];
	size_t len;
	X509 *x;
	int r;

	if (c->npos != 1) {
		say_err("import-cert needs one FILE (PEM or DER certificate)");
		return EXIT_USAGE;
	}
	if (read_file(c->pos[0], &buf, &len))
		return EXIT_FAIL;
	x = tokop_parse_cert(buf, len);
	free(buf);
	if (!x) {
		say_err("%s is neither a PEM nor a DER X.509 certificate", c->pos[0]);
		return EXIT_FAIL;
	}
	r = open_token(c, 1);
	if (r)
		goto out;
	r = EXIT_FAIL;
	if (tokop_import_cert(c->t, x, c->opt[O_LABEL], c->opt[O_ALLOW_INVALID_DATES] != NULL,
			      label, err, sizeof(err))) {
		say_err("%s%s", err,
			strstr(err, "valid") ? " (use --allow-invalid-dates to import it anyway)"
					     : "");
		goto out;
	}
	printf("imported certificate into token %s: label %s\n", p11_token_label(c->t), label);
	print_thumbprints(x);
	r = EXIT_OK;
out:
	X509_free(x);
	return r;
}

/* Reads the PFX password from --password-env into pass. Exit code. */
static int pfx_password(struct ctl *c, char *pass, size_t len)
{
	const char *v;

	if (!c->opt[O_PASSWORD_ENV]) {
		say_err("import-pfx needs --password-env VAR (the PFX password)");
		return EXIT_USAGE;
	}
	v = getenv(c->opt[O_PASSWORD_ENV]);
	if (!v) {
		say_err("environment variable %s (--password-env) is not set",
			c->opt[O_PASSWORD_ENV]);
		return EXIT_FAIL;
	}
	if (strlen(v) >= len) {
		say_err("the PFX password is too long");
		return EXIT_FAIL;
	}
	memcpy(pass, v, strlen(v) + 1);
	return EXIT_OK;
}

static int cmd_import_pfx(struct ctl *c)
{
	OSSL_PROVIDER *legacy = NULL, *deflt = NULL;
	STACK_OF(X509) *ca = NULL;
	unsigned char *buf = NULL, id[128];
	char pass[1024], err[512], label[128], hex[257];
	const unsigned char *p;
	EVP_PKEY *pkey = NULL;
	PKCS12 *p12 = NULL;
	X509 *x = NULL;
	size_t len = 0;
	long n;
	int r, ncas;

	if (c->npos != 1) {
		say_err("import-pfx needs one FILE (.pfx / .p12)");
		return EXIT_USAGE;
	}
	n = opt_id(c, id, sizeof(id));
	if (n < 0)
		return EXIT_USAGE;
	r = pfx_password(c, pass, sizeof(pass));
	if (r)
		goto out;
	r = EXIT_FAIL;
	if (read_file(c->pos[0], &buf, &len))
		goto out;
	p = buf;
	p12 = d2i_PKCS12(NULL, &p, (long)len);
	if (!p12) {
		say_err("%s is not a PFX/PKCS#12 file", c->pos[0]);
		goto out;
	}
	/* Windows exports may use RC2/3DES: make the legacy algorithms available */
	legacy = OSSL_PROVIDER_try_load(NULL, "legacy", 1);
	deflt = OSSL_PROVIDER_try_load(NULL, "default", 1);
	ERR_clear_error();
	if (PKCS12_mac_present(p12) && !PKCS12_verify_mac(p12, pass, -1) &&
	    !(*pass == '\0' && PKCS12_verify_mac(p12, NULL, 0))) {
		say_err("wrong PFX password for %s", c->pos[0]);
		goto out;
	}
	if (!PKCS12_parse(p12, pass, &pkey, &x, &ca)) {
		say_err("cannot decrypt %s: %s", c->pos[0], ssl_reason("PKCS12_parse failed"));
		goto out;
	}
	OPENSSL_cleanse(pass, sizeof(pass));
	if (!pkey || !x) {
		say_err("%s holds no %s", c->pos[0], !pkey ? "private key" : "certificate");
		goto out;
	}
	if (X509_check_private_key(x, pkey) != 1) {
		ERR_clear_error();
		say_err("in %s the private key does not belong to the certificate", c->pos[0]);
		goto out;
	}
	if (check_dates(x, c->opt[O_ALLOW_INVALID_DATES] != NULL))
		goto out;
	r = open_token(c, 1);
	if (r)
		goto out;
	r = EXIT_FAIL;
	if (tokop_cert_stored(c->t, x, err, sizeof(err))) {
		say_err("%s", err);
		goto out;
	}
	if (n == 0) {
		if (RAND_bytes(id, 8) != 1) {
			say_err("no random bytes for a key id");
			goto out;
		}
		n = 8;
	}
	tokop_pick_label(x, c->opt[O_LABEL], (const char *)X509_alias_get0(x, NULL), label);
	if (tokop_import_key_cert(c->t, pkey, x, label, id, (size_t)n, err, sizeof(err))) {
		say_err("%s", err);
		goto out;
	}
	/* the token has it now: drop the software copy at once */
	EVP_PKEY_free(pkey);
	pkey = NULL;
	printf("imported key (sensitive, not extractable) and certificate into token %s: "
	       "label %s, id %s\n",
	       p11_token_label(c->t), label, p11_hex_lower(id, (size_t)n, hex));
	print_thumbprints(x);
	ncas = ca ? sk_X509_num(ca) : 0;
	if (ncas > 0)
		printf("%d CA certificate%s in the PFX %s not stored\n", ncas, ncas == 1 ? "" : "s",
		       ncas == 1 ? "was" : "were");
	r = EXIT_OK;
out:
	OPENSSL_cleanse(pass, sizeof(pass));
	if (buf) {
		OPENSSL_cleanse(buf, len);
		free(buf);
	}
	EVP_PKEY_free(pkey);
	X509_free(x);
	sk_X509_pop_free(ca, X509_free);
	PKCS12_free(p12);
	OSSL_PROVIDER_unload(legacy);
	OSSL_PROVIDER_unload(deflt);
	return r;
}

static const char *tf(int v)
{
	return v == 1 ? "TRUE" : v == 0 ? "FALSE" : "unknown";
}

/* Prints one certificate block of `certs`. */
static void print_cert(struct ctl *c, const struct p11_cert *pc)
{
	char hex[257], b1[40], b2[40], kt[128], err[512];
	struct p11_key_info ki;
	CK_OBJECT_HANDLE key;
	const char *state = "";

	if (X509_cmp_current_time(X509_get0_notAfter(pc->x509)) < 0)
		state = " (EXPIRED)";
	else if (X509_cmp_current_time(X509_get0_notBefore(pc->x509)) > 0)
		state = " (NOT YET VALID)";
	printf("certificate %s\n", pc->label);
	printf("  id:          %s\n",
	       pc->id_len ? p11_hex_lower(pc->id, pc->id_len, hex) : "(none)");
	printf("  SHA-1:       %s\n", p11_hex_upper(pc->sha1, 20, hex));
	printf("  SHA-256:     %s\n", p11_hex_upper(pc->sha256, 32, hex));
	printf("  subject:     %s\n", name_text(X509_get_subject_name(pc->x509)));
	printf("  issuer:      %s\n", name_text(X509_get_issuer_name(pc->x509)));
	printf("  not before:  %s\n",
	       tokop_fmt_time(X509_get0_notBefore(pc->x509), b1, sizeof(b1)));
	printf("  not after:   %s%s\n",
	       tokop_fmt_time(X509_get0_notAfter(pc->x509), b2, sizeof(b2)), state);
	printf("  key:         %s\n", key_text(X509_get0_pubkey(pc->x509), kt, sizeof(kt)));
	if (!c->logged_in) {
		printf("  private key: unknown (not logged in: give --pin-file to check)\n");
	} else if (p11_key_find_for_cert(c->t, pc, &key, err, sizeof(err)) == 0 &&
		   p11_key_info(c->t, key, &ki, err, sizeof(err)) == 0) {
		printf("  private key: present (label %s, id %s, CKA_SENSITIVE=%s, "
		       "CKA_EXTRACTABLE=%s)\n",
		       ki.label, ki.id_len ? p11_hex_lower(ki.id, ki.id_len, hex) : "(none)",
		       tf(ki.sensitive), tf(ki.extractable));
	} else {
		printf("  private key: none on this token\n");
	}
}

static int cmd_certs(struct ctl *c)
{
	unsigned char thumb[32];
	struct p11_cert *v, one;
	size_t n, i, tlen = 0;
	char err[512];
	int r;

	if (c->opt[O_THUMBPRINT] && (r = opt_thumbprint(c, thumb, &tlen)))
		return r;
	r = open_token(c, 0);
	if (r)
		return r;
	if (tlen) {
		if (p11_cert_find(c->t, thumb, tlen, &one, err, sizeof(err))) {
			say_err("%s", err);
			return EXIT_FAIL;
		}
		print_cert(c, &one);
		X509_free(one.x509);
		return EXIT_OK;
	}
	if (p11_certs_list(c->t, &v, &n, err, sizeof(err))) {
		say_err("%s", err);
		return EXIT_FAIL;
	}
	if (n == 0)
		printf("no certificates on token %s\n", p11_token_label(c->t));
	for (i = 0; i < n; i++)
		print_cert(c, &v[i]);
	p11_certs_free(v, n);
	return EXIT_OK;
}

static int cmd_delete(struct ctl *c)
{
	static const struct {
		const char *name;
		CK_OBJECT_CLASS cls;
	} types[] = {
		{"cert", CKO_CERTIFICATE},
		{"private", CKO_PRIVATE_KEY},
		{"public", CKO_PUBLIC_KEY},
		{"all", P11_CLASS_ANY},
	};
	CK_OBJECT_CLASS cls = P11_CLASS_ANY;
	unsigned char id[128], thumb[32];
	size_t i, nd = 0, tlen = 0;
	char err[512];
	int r, nsel;
	long n;

	nsel = !!c->opt[O_ID] + !!c->opt[O_LABEL] + !!c->opt[O_THUMBPRINT];
	if (nsel == 0 || (c->opt[O_THUMBPRINT] && nsel > 1)) {
		say_err("delete needs --id HEX and/or --label L, or --thumbprint T alone");
		return EXIT_USAGE;
	}
	if (c->opt[O_TYPE]) {
		for (i = 0; i < sizeof(types) / sizeof(types[0]); i++)
			if (strcmp(types[i].name, c->opt[O_TYPE]) == 0)
				break;
		if (i == sizeof(types) / sizeof(types[0])) {
			say_err("bad --type %s: use cert, private, public or all", c->opt[O_TYPE]);
			return EXIT_USAGE;
		}
		cls = types[i].cls;
	}
	n = opt_id(c, id, sizeof(id));
	if (n < 0)
		return EXIT_USAGE;
	if (c->opt[O_THUMBPRINT]) {
		if (cls != P11_CLASS_ANY && cls != CKO_CERTIFICATE) {
			say_err("--thumbprint selects a certificate: --type must be cert");
			return EXIT_USAGE;
		}
		if ((r = opt_thumbprint(c, thumb, &tlen)))
			return r;
	}
	r = open_token(c, 1);
	if (r)
		return r;
	if (tlen) {
		struct p11_cert pc;

		if (p11_cert_find(c->t, thumb, tlen, &pc, err, sizeof(err)) ||
		    p11_object_destroy(c->t, pc.handle, err, sizeof(err))) {
			if (pc.x509)
				X509_free(pc.x509);
			say_err("%s", err);
			return EXIT_FAIL;
		}
		X509_free(pc.x509);
		nd = 1;
	} else if (p11_objects_delete(c->t, cls, id, (size_t)n, c->opt[O_LABEL], &nd, err,
				      sizeof(err))) {
		say_err("%s", err);
		return EXIT_FAIL;
	}
	if (nd == 0) {
		say_err("no object matches on token %s", p11_token_label(c->t));
		return EXIT_FAIL;
	}
	printf("deleted %zu object%s from token %s\n", nd, nd == 1 ? "" : "s",
	       p11_token_label(c->t));
	return EXIT_OK;
}

/* ---- selftest ------------------------------------------------------------ */

/* Signs "farmgate self-test" with pkey (PSS when pss) and verifies it with
 * the certificate's key. 0 ok, -1 with the reason printed. */
static int sign_verify(EVP_PKEY *pkey, EVP_PKEY *pub, int pss, const char *what)
{
	static const unsigned char msg[] = "farmgate self-test";
	unsigned char sig[1024];
	size_t slen = sizeof(sig);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pc = NULL;
	int ok = 0;

	if (md && EVP_DigestSignInit(md, &pc, EVP_sha256(), NULL, pkey) == 1 &&
	    (!pss || (EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) == 1 &&
		      EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST) == 1)) &&
	    EVP_DigestSign(md, sig, &slen, msg, sizeof(msg)) == 1) {
		EVP_MD_CTX_reset(md);
		pc = NULL;
		ok = EVP_DigestVerifyInit(md, &pc, EVP_sha256(), NULL, pub) == 1 &&
		     (!pss ||
		      (EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) == 1 &&
		       EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST) == 1)) &&
		     EVP_DigestVerify(md, sig, slen, msg, sizeof(msg)) == 1;
		if (!ok)
			printf("%-38s FAILED: the signature does not verify\n", what);
	} else {
		printf("%-38s FAILED: %s\n", what, ssl_reason("signing failed"));
	}
	EVP_MD_CTX_free(md);
	ERR_clear_error();
	if (ok)
		printf("%-38s ok (%zu bytes)\n", what, slen);
	return ok ? 0 : -1;
}

/* Server side of the in-memory handshake: a throw-away P-256 certificate. */
static int make_server_cert(EVP_PKEY **key, X509 **cert)
{
	X509_NAME *n;

	*key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	*cert = X509_new();
	if (!*key || !*cert)
		return -1;
	n = X509_get_subject_name(*cert);
	if (!X509_set_version(*cert, 2) || !ASN1_INTEGER_set(X509_get_serialNumber(*cert), 1) ||
	    !X509_gmtime_adj(X509_getm_notBefore(*cert), -60) ||
	    !X509_gmtime_adj(X509_getm_notAfter(*cert), 3600) ||
	    !X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (unsigned char *)"selftest", -1, -1,
					0) ||
	    !X509_set_issuer_name(*cert, n) || !X509_set_pubkey(*cert, *key) ||
	    !X509_sign(*cert, *key, EVP_sha256()))
		return -1;
	return 0;
}

static int accept_any(int ok, X509_STORE_CTX *ctx)
{
	(void)ok;
	(void)ctx;
	return 1;
}

/* One TLS handshake in memory (BIO pair) at version ver, the client
 * authenticating with cert + pkey (the token key). 0 ok, -1 printed. */
static int tls_handshake(int ver, X509 *cert, EVP_PKEY *pkey, int pss_ok, const char *what)
{
	SSL_CTX *cctx = SSL_CTX_new(TLS_client_method()), *sctx = SSL_CTX_new(TLS_server_method());
	EVP_PKEY *skey = NULL;
	X509 *scert = NULL, *peer = NULL;
	SSL *cs = NULL, *ss = NULL;
	BIO *cb = NULL, *sb = NULL;
	int i, cdone = 0, sdone = 0, ok = 0, nid = NID_undef, hnid = NID_undef;
	const char *why = "handshake failed";

	if (!cctx || !sctx || make_server_cert(&skey, &scert))
		goto out;
	SSL_CTX_set_min_proto_version(cctx, ver);
	SSL_CTX_set_max_proto_version(cctx, ver);
	SSL_CTX_set_min_proto_version(sctx, ver);
	SSL_CTX_set_max_proto_version(sctx, ver);
	if (!pss_ok && !SSL_CTX_set1_client_sigalgs_list(
			       cctx, "RSA+SHA256:RSA+SHA384:RSA+SHA512:ECDSA+SHA256:ECDSA+SHA384"))
		goto out;
	if (SSL_CTX_use_certificate(sctx, scert) != 1 || SSL_CTX_use_PrivateKey(sctx, skey) != 1)
		goto out;
	SSL_CTX_set_verify(sctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, accept_any);
	SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, accept_any);
	if (SSL_CTX_use_certificate(cctx, cert) != 1 || SSL_CTX_use_PrivateKey(cctx, pkey) != 1) {
		why = "the token key does not fit the certificate";
		goto out;
	}
	cs = SSL_new(cctx);
	ss = SSL_new(sctx);
	if (!cs || !ss || !BIO_new_bio_pair(&cb, 0, &sb, 0))
		goto out;
	SSL_set_bio(cs, cb, cb);
	SSL_set_bio(ss, sb, sb);
	cb = sb = NULL;
	SSL_set_connect_state(cs);
	SSL_set_accept_state(ss);
	for (i = 0; i < 64 && !(cdone && sdone); i++) {
		int rc, rs;

		if (!cdone) {
			rc = SSL_do_handshake(cs);
			if (rc == 1)
				cdone = 1;
			else if (SSL_get_error(cs, rc) != SSL_ERROR_WANT_READ)
				goto out;
		}
		if (!sdone) {
			rs = SSL_do_handshake(ss);
			if (rs == 1)
				sdone = 1;
			else if (SSL_get_error(ss, rs) != SSL_ERROR_WANT_READ)
				goto out;
		}
	}
	if (!cdone || !sdone)
		goto out;
	peer = SSL_get1_peer_certificate(ss);
	if (!peer || X509_cmp(peer, cert) != 0) {
		why = "the server did not get the client certificate";
		goto out;
	}
	SSL_get_peer_signature_type_nid(ss, &nid);
	SSL_get_peer_signature_nid(ss, &hnid);
	ok = 1;
out:
	if (ok)
		printf("%-38s ok (client signature %s with %s)\n", what,
		       nid != NID_undef ? OBJ_nid2sn(nid) : "?",
		       hnid != NID_undef ? OBJ_nid2sn(hnid) : "?");
	else
		printf("%-38s FAILED: %s (%s)\n", what, why, ssl_reason("no detail"));
	ERR_clear_error();
	X509_free(peer);
	BIO_free(cb);
	BIO_free(sb);
	SSL_free(cs);
	SSL_free(ss);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
	EVP_PKEY_free(skey);
	X509_free(scert);
	return ok ? 0 : -1;
}

static int cmd_selftest(struct ctl *c)
{
	unsigned char thumb[32];
	struct p11_cert pc;
	struct hsm_key *k;
	EVP_PKEY *pkey = NULL;
	CK_OBJECT_HANDLE key;
	char err[512], kt[128];
	size_t tlen;
	int r, fails = 0, pss;

	if (!c->opt[O_THUMBPRINT]) {
		say_err("selftest needs --thumbprint T (the certificate to test)");
		return EXIT_USAGE;
	}
	if ((r = opt_thumbprint(c, thumb, &tlen)))
		return r;
	r = open_token(c, 1);
	if (r)
		return r;
	if (p11_cert_find(c->t, thumb, tlen, &pc, err, sizeof(err))) {
		say_err("%s", err);
		return EXIT_FAIL;
	}
	r = EXIT_FAIL;
	if (p11_key_find_for_cert(c->t, &pc, &key, err, sizeof(err)) ||
	    !(pkey = hsm_key_new(c->t, key, pc.x509, err, sizeof(err)))) {
		say_err("%s", err);
		goto out;
	}
	k = hsm_key_of(pkey);
	if (!k) {
		say_err("internal error: the token key has no state");
		goto out;
	}
	pss = hsm_key_can_pss(k);
	printf("certificate %s, key %s on token %s%s\n", pc.label,
	       key_text(X509_get0_pubkey(pc.x509), kt, sizeof(kt)), p11_token_label(c->t),
	       k->is_ec ? ""
	       : pss	? " (RSA-PSS possible)"
			: " (no CKM_RSA_X_509: no RSA-PSS)");
	fails += sign_verify(pkey, X509_get0_pubkey(pc.x509), 0,
			     k->is_ec ? "ECDSA SHA-256" : "RSA PKCS#1 v1.5 SHA-256") != 0;
	if (!k->is_ec && pss)
		fails += sign_verify(pkey, X509_get0_pubkey(pc.x509), 1, "RSA-PSS SHA-256") != 0;
	fails += tls_handshake(TLS1_2_VERSION, pc.x509, pkey, pss || k->is_ec,
			       "TLS 1.2 client-certificate handshake") != 0;
	if (k->is_ec || pss)
		fails += tls_handshake(TLS1_3_VERSION, pc.x509, pkey, 1,
				       "TLS 1.3 client-certificate handshake") != 0;
	if (fails) {
		say_err("%d self-test%s failed", fails, fails == 1 ? "" : "s");
		goto out;
	}
	r = EXIT_OK;
out:
	EVP_PKEY_free(pkey);
	X509_free(pc.x509);
	return r;
}

/* ---- bench --------------------------------------------------------------- */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Signs SHA-256 digests with pkey on this thread for `seconds` (PSS when
 * pss: salt = digest length, as TLS 1.3 does) and prints the rate as
 * "<mech> <N> signatures/s (<count> in <t> s, <ms> ms each)". Each
 * message differs (a counter), so nothing can be cached. 0 or -1 printed. */
static int bench_mech(EVP_PKEY *pkey, int pss, const char *mech, double seconds)
{
	unsigned char msg[64], sig[1024];
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pc;
	double t0, t = 0;
	unsigned long n = 0;
	size_t slen;

	if (!md) {
		say_err("out of memory");
		return -1;
	}
	memset(msg, 0x5a, sizeof(msg));
	t0 = now_s();
	do {
		memcpy(msg, &n, sizeof(n));
		slen = sizeof(sig);
		pc = NULL;
		if (EVP_DigestSignInit(md, &pc, EVP_sha256(), NULL, pkey) != 1 ||
		    (pss && (EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) != 1 ||
			     EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST) != 1)) ||
		    EVP_DigestSign(md, sig, &slen, msg, sizeof(msg)) != 1) {
			say_err("%s signature %lu failed: %s", mech, n + 1,
				ssl_reason("signing failed"));
			EVP_MD_CTX_free(md);
			return -1;
		}
		EVP_MD_CTX_reset(md);
		n++;
		t = now_s() - t0;
	} while (t < seconds);
	EVP_MD_CTX_free(md);
	printf("%s %.1f signatures/s (%lu in %.2f s, %.3f ms each)\n", mech, (double)n / t, n, t,
	       t * 1e3 / (double)n);
	fflush(stdout);
	return 0;
}

static int cmd_bench(struct ctl *c)
{
	unsigned char thumb[32];
	struct p11_cert pc;
	struct hsm_key *k;
	EVP_PKEY *pkey = NULL, *pub = NULL;
	CK_OBJECT_HANDLE key;
	char err[512], kt[128], *end;
	double seconds = 5;
	size_t tlen;
	int r, fails = 0;

	if ((!c->opt[O_THUMBPRINT]) == (!c->opt[O_KEY_LABEL])) {
		say_err("bench needs exactly one of --thumbprint T or --key-label L");
		return EXIT_USAGE;
	}
	if (c->opt[O_SECONDS]) {
		errno = 0;
		seconds = strtod(c->opt[O_SECONDS], &end);
		if (errno || end == c->opt[O_SECONDS] || *end || !(seconds > 0) || seconds > 3600) {
			say_err("bad --seconds %s: expected a number of seconds (0 < N <= 3600)",
				c->opt[O_SECONDS]);
			return EXIT_USAGE;
		}
	}
	if (c->opt[O_THUMBPRINT] && (r = opt_thumbprint(c, thumb, &tlen)))
		return r;
	r = open_token(c, 1);
	if (r)
		return r;
	memset(&pc, 0, sizeof(pc));
	r = EXIT_FAIL;
	if (c->opt[O_THUMBPRINT]) {
		if (p11_cert_find(c->t, thumb, tlen, &pc, err, sizeof(err)) ||
		    p11_key_find_for_cert(c->t, &pc, &key, err, sizeof(err)) ||
		    !(pkey = hsm_key_new(c->t, key, pc.x509, err, sizeof(err)))) {
			say_err("%s", err);
			goto out;
		}
	} else if (p11_key_find(c->t, NULL, 0, c->opt[O_KEY_LABEL], &key, err, sizeof(err)) ||
		   !(pub = p11_key_public(c->t, key, err, sizeof(err))) ||
		   !(pkey = hsm_key_new_pub(c->t, key, pub, err, sizeof(err)))) {
		say_err("%s", err);
		goto out;
	}
	k = hsm_key_of(pkey);
	if (!k) {
		say_err("internal error: the token key has no state");
		goto out;
	}
	printf("key %s on token %s, %g s per mechanism, one thread\n",
	       key_text(pkey, kt, sizeof(kt)), p11_token_label(c->t), seconds);
	fflush(stdout);
	if (k->is_ec) {
		fails += bench_mech(pkey, 0, "ECDSA-SHA256", seconds) != 0;
	} else {
		fails += bench_mech(pkey, 0, "RSA-PKCS1-SHA256", seconds) != 0;
		if (hsm_key_can_pss(k))
			fails += bench_mech(pkey, 1, "RSA-PSS-SHA256", seconds) != 0;
		else
			printf("RSA-PSS-SHA256 unavailable (the token has no CKM_RSA_X_509)\n");
	}
	if (!fails)
		r = EXIT_OK;
out:
	EVP_PKEY_free(pkey);
	EVP_PKEY_free(pub);
	X509_free(pc.x509);
	return r;
}

/* ---- dispatch ------------------------------------------------------------ */

static const struct {
	const char *name;
	int (*fn)(struct ctl *c);
	unsigned int opts; /* allowed options besides COMMON */
	int npos;	   /* positional arguments */
} cmds[] = {
	{"slots", cmd_slots, 0, 0},
	{"init", cmd_init, B(O_LABEL) | B(O_SO_PIN_ENV), 0},
	{"keygen", cmd_keygen, B(O_TYPE) | B(O_LABEL) | B(O_ID), 0},
	{"csr", cmd_csr, B(O_KEY_LABEL) | B(O_ID) | B(O_SUBJECT) | B(O_SAN) | B(O_OUT), 0},
	{"import-cert", cmd_import_cert, B(O_LABEL) | B(O_ALLOW_INVALID_DATES), 1},
	{"import-pfx", cmd_import_pfx,
	 B(O_PASSWORD_ENV) | B(O_LABEL) | B(O_ID) | B(O_ALLOW_INVALID_DATES), 1},
	{"certs", cmd_certs, B(O_THUMBPRINT), 0},
	{"list", cmd_certs, B(O_THUMBPRINT), 0},
	{"delete", cmd_delete, B(O_ID) | B(O_LABEL) | B(O_TYPE) | B(O_THUMBPRINT), 0},
	{"selftest", cmd_selftest, B(O_THUMBPRINT), 0},
	{"bench", cmd_bench, B(O_THUMBPRINT) | B(O_KEY_LABEL) | B(O_SECONDS), 0},
};

/* Parses argv[i..] (options and positional arguments) for command ci.
 * Returns 0 or 2 (printed). */
static int parse_args(struct ctl *c, int ci, int argc, char **argv, int i)
{
	unsigned int allowed = COMMON | cmds[ci].opts;

	for (; i < argc; i++) {
		const char *a = argv[i], *val = NULL, *eq;
		size_t nlen;
		int o;

		if (strncmp(a, "--", 2) != 0 || !a[2]) {
			if (c->npos >= cmds[ci].npos) {
				say_err("unexpected argument '%s' for %s", a, c->cmd);
				return EXIT_USAGE;
			}
			c->pos[c->npos++] = a;
			continue;
		}
		a += 2;
		eq = strchr(a, '=');
		nlen = eq ? (size_t)(eq - a) : strlen(a);
		for (o = 0; o < O_COUNT; o++)
			if (strlen(optdefs[o].name) == nlen &&
			    strncmp(optdefs[o].name, a, nlen) == 0)
				break;
		if (o == O_COUNT) {
			if (nlen == 3 && strncmp(a, "pin", 3) == 0)
				say_err("PINs are not taken from the command line (ps shows it): "
					"use "
					"--pin-file FILE or --pin-env VAR");
			else
				say_err("unknown option --%.*s", (int)nlen, a);
			return EXIT_USAGE;
		}
		if (!(allowed & B(o))) {
			say_err("option --%s does not apply to %s", optdefs[o].name, c->cmd);
			return EXIT_USAGE;
		}
		if (optdefs[o].has_arg) {
			if (eq)
				val = eq + 1;
			else if (i + 1 < argc)
				val = argv[++i];
			else {
				say_err("option --%s needs a value", optdefs[o].name);
				return EXIT_USAGE;
			}
		} else {
			if (eq) {
				say_err("option --%s takes no value", optdefs[o].name);
				return EXIT_USAGE;
			}
			val = "";
		}
		if (c->opt[o]) {
			say_err("option --%s is given twice", optdefs[o].name);
			return EXIT_USAGE;
		}
		c->opt[o] = val;
	}
	if (c->npos < cmds[ci].npos) {
		say_err("%s needs a FILE argument", c->cmd);
		return EXIT_USAGE;
	}
	return EXIT_OK;
}

int main(int argc, char **argv)
{
	struct ctl c;
	size_t i;
	int r;

	memset(&c, 0, sizeof(c));
	if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
		fputs(usage_text, argc < 2 ? stderr : stdout);
		return argc < 2 ? EXIT_USAGE : EXIT_OK;
	}
	if (strcmp(argv[1], "help") == 0) {
		fputs(usage_text, stdout);
		return EXIT_OK;
	}
	if (strcmp(argv[1], "status") == 0 || strcmp(argv[1], "server") == 0 ||
	    strcmp(argv[1], "farm") == 0 || strcmp(argv[1], "health") == 0 ||
	    strcmp(argv[1], "pin") == 0)
		return ctl_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "token") != 0) {
		say_err("unknown command '%s' (try: farmgatectl help)", argv[1]);
		return EXIT_USAGE;
	}
	if (argc < 3 || strcmp(argv[2], "help") == 0 || strcmp(argv[2], "-h") == 0 ||
	    strcmp(argv[2], "--help") == 0) {
		fputs(usage_text, argc < 3 ? stderr : stdout);
		return argc < 3 ? EXIT_USAGE : EXIT_OK;
	}
	c.cmd = argv[2];
	for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(cmds[i].name, c.cmd) == 0)
			break;
	if (i == sizeof(cmds) / sizeof(cmds[0])) {
		say_err("unknown token command '%s' (try: farmgatectl token help)", c.cmd);
		return EXIT_USAGE;
	}
	r = parse_args(&c, (int)i, argc, argv, 3);
	if (r == EXIT_OK)
		r = cmds[i].fn(&c);
	/* unwinds in order: session (wipes its PIN copy), then the module */
	p11_token_close(c.t);
	p11_module_unload(c.m);
	hsm_key_cleanup();
	fflush(stdout);
	return r;
}
