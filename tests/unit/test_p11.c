/* Unit tests of hsm/p11.c and hsm/key.c: URIs, thumbprints, PIN files, and token recovery on SoftHSM. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "key.h"
#include "p11.h"

#define SOFTHSM "/usr/lib/softhsm/libsofthsm2.so"
#define PIN	"1234"
#define SO_PIN	"12345678"

/* ---- URIs ------------------------------------------------------------- */

static void test_uri_valid(void **state)
{
	struct p11_uri u;
	char err[256];

	(void)state;
	assert_int_equal(p11_uri_parse("pkcs11:token=demo;object=web;type=private;id=%01%a0", &u,
				       err, sizeof(err)),
			 0);
	assert_int_equal(u.have, P11_URI_TOKEN | P11_URI_OBJECT | P11_URI_TYPE | P11_URI_ID);
	assert_string_equal(u.token, "demo");
	assert_string_equal(u.object, "web");
	assert_int_equal(u.type, CKO_PRIVATE_KEY);
	assert_int_equal(u.id_len, 2);
	assert_int_equal(u.id[0], 0x01);
	assert_int_equal(u.id[1], 0xa0);

	assert_int_equal(p11_uri_parse("PKCS11:serial=abc;slot-id=42;library-version=2.6;"
				       "model=SoftHSM%20v2;type=cert",
				       &u, err, sizeof(err)),
			 0);
	assert_string_equal(u.serial, "abc");
	assert_int_equal(u.slot_id, 42);
	assert_int_equal(u.library_version_major, 2);
	assert_int_equal(u.library_version_minor, 6);
	assert_string_equal(u.model, "SoftHSM v2");
	assert_int_equal(u.type, CKO_CERTIFICATE);

	/* empty: matches any token */
	assert_int_equal(p11_uri_parse("pkcs11:", &u, err, sizeof(err)), 0);
	assert_int_equal(u.have, 0);
}

static void test_uri_percent_encoding(void **state)
{
	struct p11_uri u, u2;
	char err[256], buf[512];

	(void)state;
	assert_int_equal(p11_uri_parse("pkcs11:token=My%20Token%3b%3D;manufacturer=A%25B;"
				       "library-manufacturer=SoftHSM%20project",
				       &u, err, sizeof(err)),
			 0);
	assert_string_equal(u.token, "My Token;=");
	assert_string_equal(u.manufacturer, "A%B");
	assert_string_equal(u.library_manufacturer, "SoftHSM project");
	/* a 32-byte label fits exactly, 33 bytes do not */
	assert_int_equal(p11_uri_parse("pkcs11:token=0123456789abcdef0123456789abcdef", &u, err,
				       sizeof(err)),
			 0);
	assert_int_equal(strlen(u.token), 32);
	assert_int_equal(p11_uri_parse("pkcs11:token=0123456789abcdef0123456789abcdefX", &u, err,
				       sizeof(err)),
			 -1);
	assert_non_null(strstr(err, "at most 32"));
	/* bad escapes */
	assert_int_equal(p11_uri_parse("pkcs11:token=%zz", &u, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "percent"));
	assert_int_equal(p11_uri_parse("pkcs11:token=ab%4", &u, err, sizeof(err)), -1);
	assert_int_equal(p11_uri_parse("pkcs11:token=ab%00cd", &u, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "NUL"));

	/* format and parse again: the same selection */
	assert_int_equal(p11_uri_parse("pkcs11:token=My%20Token%3b;serial=1;id=%00%ff;type=cert;"
				       "slot-id=7",
				       &u, err, sizeof(err)),
			 0);
	p11_uri_format(&u, buf, sizeof(buf));
	assert_string_equal(buf,
			    "pkcs11:token=My%20Token%3B;serial=1;slot-id=7;id=%00%FF;type=cert");
	assert_int_equal(p11_uri_parse(buf, &u2, err, sizeof(err)), 0);
	assert_memory_equal(&u, &u2, sizeof(u));
}

static void test_uri_pin_value_refused(void **state)
{
	static const char *const bad[] = {
		"pkcs11:token=demo?pin-value=4321",
		"pkcs11:token=demo;pin-value=4321",
		"pkcs11:token=demo?pin-source=file:/etc/pin",
	};
	struct p11_uri u;
	char err[256];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		assert_int_equal(p11_uri_parse(bad[i], &u, err, sizeof(err)), -1);
		assert_non_null(strstr(err, "pin file"));
		assert_null(strstr(err, "4321")); /* never echo a PIN */
	}
}

static void test_uri_bad(void **state)
{
	static const struct {
		const char *uri;
		const char *msg;
	} cases[] = {
		{"pkcs11:token=demo;colour=red", "unknown pkcs11 URI attribute 'colour'"},
		{"pkcs11:token=demo?foo=bar", "unknown pkcs11 URI query attribute 'foo'"},
		{"pkcs11:token=a;token=b", "given twice"},
		{"pkcs11:type=secret", "type"},
		{"pkcs11:token", "has no value"},
		{"pkcs11:slot-id=abc", "decimal"},
		{"pkcs11:library-version=2.x", "version"},
		{"pkcs11:token=demo?module-path=/x.so", "module"},
		{"http://example.com/", "not a pkcs11 URI"},
		{"demo", "not a pkcs11 URI"},
	};
	struct p11_uri u;
	char err[256];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		err[0] = '\0';
		assert_int_equal(p11_uri_parse(cases[i].uri, &u, err, sizeof(err)), -1);
		if (!strstr(err, cases[i].msg))
			fail_msg("%s: error '%s' lacks '%s'", cases[i].uri, err, cases[i].msg);
	}
}

/* ---- thumbprints -------------------------------------------------------- */

static const unsigned char sha1_bytes[20] = {0x9b, 0xde, 0xed, 0x68, 0x01, 0x23, 0x45,
					     0x67, 0x89, 0xab, 0xcd, 0xef, 0x00, 0x11,
					     0x22, 0x33, 0x44, 0x55, 0x12, 0x91};

static void test_thumbprint_forms(void **state)
{
	static const char *const forms[] = {
		"9BDEED680123456789ABCDEF0011223344551291",
		"9bdeed680123456789abcdef0011223344551291",
		"9b de ed 68 01 23 45 67 89 ab cd ef 00 11 22 33 44 55 12 91",
		"9B:DE:ED:68:01:23:45:67:89:AB:CD:EF:00:11:22:33:44:55:12:91",
		"\xe2\x80\x8e"
		"9b de ed 68 01 23 45 67 89 ab cd ef 00 11 22 33 44 55 12 91",
		"  9bDEed68\t0123456789abcdef0011223344551291  ",
	};
	unsigned char out[32];
	char err[256], hex[65];
	size_t i, len;

	(void)state;
	for (i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
		len = 0;
		if (p11_thumbprint_parse(forms[i], out, &len, err, sizeof(err)))
			fail_msg("form %zu refused: %s", i, err);
		assert_int_equal(len, 20);
		assert_memory_equal(out, sha1_bytes, 20);
	}
	assert_int_equal(p11_thumbprint_parse("C2724DB3EBB6A63371E98C0DEAD7EF9F97611405908863989"
					      "5A7DA0826E748E5",
					      out, &len, err, sizeof(err)),
			 0);
	assert_int_equal(len, 32);
	assert_string_equal(p11_hex_upper(out, len, hex),
			    "C2724DB3EBB6A63371E98C0DEAD7EF9F976114059088639895A7DA0826E748E5");
}

static void test_thumbprint_bad(void **state)
{
	static const struct {
		const char *s;
		const char *msg;
	} cases[] = {
		{"9BDEED680123456789ABCDEF001122334455129", "39 hex digits"},
		{"9BDEED680123456789ABCDEF00112233445512910", "41 hex digits"},
		{"", "0 hex digits"},
		{"9BDEED680123456789ABCDEF00112233445512g1", "'g' at position 39"},
		{"9B-DE-ED-680123456789ABCDEF0011223344551291", "'-' at position 3"},
		{"\xc3\xa9"
		 "BDEED680123456789ABCDEF0011223344551291",
		 "non-ASCII"},
		{"9BDEED68\n0123456789ABCDEF0011223344551291", "control character"},
		{"\xe2\x80\x8f"
		 "9BDEED680123456789ABCDEF0011223344551291",
		 "non-ASCII"}, /* U+200F is not the mark Windows adds */
	};
	unsigned char out[32];
	char err[256];
	size_t i, len;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		err[0] = '\0';
		assert_int_equal(p11_thumbprint_parse(cases[i].s, out, &len, err, sizeof(err)), -1);
		if (!strstr(err, cases[i].msg))
			fail_msg("case %zu: error '%s' lacks '%s'", i, err, cases[i].msg);
	}
}

/* ---- PIN files ----------------------------------------------------------- */

static char tmpdir[PATH_MAX];

/* Writes a file in tmpdir with the given content and mode; returns its path. */
static const char *pin_file(const char *name, const char *content, size_t len, mode_t mode)
{
	static char path[PATH_MAX + 64];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, len), (ssize_t)len);
	close(fd);
	assert_int_equal(chmod(path, mode), 0);
	return path;
}

static int setup_tmpdir(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_p11.XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmpdir(void **state)
{
	char cmd[PATH_MAX + 16];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static void test_pin_file_ok(void **state)
{
	char pin[64], err[256];

	(void)state;
	if (geteuid() != 0)
		skip(); /* the file must be owned by root */
	assert_int_equal(p11_pin_file_read(pin_file("p1", "1234\n", 5, 0600), pin, sizeof(pin), err,
					   sizeof(err)),
			 0);
	assert_string_equal(pin, "1234");
	assert_int_equal(p11_pin_file_read(pin_file("p2", "12 34\r\n", 7, 0400), pin, sizeof(pin),
					   err, sizeof(err)),
			 0);
	assert_string_equal(pin, "12 34");
	assert_int_equal(p11_pin_file_read(pin_file("p3", "abc", 3, 0600), pin, sizeof(pin), err,
					   sizeof(err)),
			 0);
	assert_string_equal(pin, "abc");
	/* only one newline is stripped */
	assert_int_equal(p11_pin_file_read(pin_file("p4", "ab\n\n", 4, 0600), pin, sizeof(pin), err,
					   sizeof(err)),
			 0);
	assert_string_equal(pin, "ab\n");
	/* exactly filling the buffer, with and without a newline */
	assert_int_equal(
		p11_pin_file_read(pin_file("p5", "1234567\n", 8, 0600), pin, 8, err, sizeof(err)),
		0);
	assert_string_equal(pin, "1234567");
}

static void test_pin_file_refused(void **state)
{
	static const struct {
		const char *content;
		size_t len;
		mode_t mode;
		const char *msg;
	} cases[] = {
		{"1234\n", 5, 0644, "mode 0644"},
		{"1234\n", 5, 0640, "mode 0640"},
		{"1234\n", 5, 0604, "mode 0604"},
		{"1234\n", 5, 0601, "mode 0601"},
		{"", 0, 0600, "is empty"},
		{"\n", 1, 0600, "is empty"},
		{"12\0"
		 "34",
		 5, 0600, "NUL"},
		{"123456789\n", 10, 0600, "too long"},
	};
	char pin[8], err[256], path[PATH_MAX + 64];
	size_t i;

	(void)state;
	if (geteuid() != 0)
		skip(); /* a file not owned by root is refused before its mode is looked at */
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char name[16];
		const char *p;

		snprintf(name, sizeof(name), "bad%zu", i);
		p = pin_file(name, cases[i].content, cases[i].len, cases[i].mode);
		err[0] = '\0';
		memset(pin, 'x', sizeof(pin));
		assert_int_equal(p11_pin_file_read(p, pin, sizeof(pin), err, sizeof(err)), -1);
		if (!strstr(err, cases[i].msg) || !strstr(err, p))
			fail_msg("case %zu: error '%s' lacks '%s' or the file name", i, err,
				 cases[i].msg);
		assert_int_equal(pin[0], '\0'); /* nothing of it is left in the buffer */
	}
	/* a symbolic link, a directory, a missing file */
	snprintf(path, sizeof(path), "%s/link", tmpdir);
	assert_int_equal(symlink(pin_file("target", "1234", 4, 0600), path), 0);
	assert_int_equal(p11_pin_file_read(path, pin, sizeof(pin), err, sizeof(err)), -1);
	assert_non_null(strstr(err, "symbolic link"));
	assert_int_equal(p11_pin_file_read(tmpdir, pin, sizeof(pin), err, sizeof(err)), -1);
	assert_non_null(strstr(err, "not a regular file"));
	snprintf(path, sizeof(path), "%s/missing", tmpdir);
	assert_int_equal(p11_pin_file_read(path, pin, sizeof(pin), err, sizeof(err)), -1);
	assert_non_null(strstr(err, "No such file"));
}

static void test_pin_file_owner(void **state)
{
	char pin[64], err[256];
	const char *p;

	(void)state;
	if (geteuid() != 0)
		skip(); /* only root can give a file away */
	p = pin_file("owned", "1234\n", 5, 0600);
	assert_int_equal(chown(p, 65534, 65534), 0);
	assert_int_equal(p11_pin_file_read(p, pin, sizeof(pin), err, sizeof(err)), -1);
	assert_non_null(strstr(err, "owned by uid 65534, not root"));
}

/* ---- result codes and flags ---------------------------------------------- */

static void test_rv_and_flags(void **state)
{
	static const CK_RV lost[] = {
		CKR_DEVICE_ERROR,	    CKR_DEVICE_REMOVED,	      CKR_TOKEN_NOT_PRESENT,
		CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED,	      CKR_OBJECT_HANDLE_INVALID,
		CKR_USER_NOT_LOGGED_IN,	    CKR_TOKEN_NOT_RECOGNIZED, CKR_CRYPTOKI_NOT_INITIALIZED,
		CKR_DEVICE_MEMORY,	    CKR_GENERAL_ERROR,
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(lost) / sizeof(lost[0]); i++)
		assert_true(p11_rv_is_token_lost(lost[i]));
	assert_false(p11_rv_is_token_lost(CKR_OK));
	assert_false(p11_rv_is_token_lost(CKR_PIN_INCORRECT));
	assert_false(p11_rv_is_token_lost(CKR_MECHANISM_INVALID));
	assert_string_equal(p11_rv_name(CKR_DEVICE_REMOVED), "CKR_DEVICE_REMOVED");
	assert_string_equal(p11_rv_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
	assert_string_equal(p11_rv_name(0x12345), "CKR_0x00012345");
	assert_string_equal(p11_pin_flags_text(0), "");
	assert_string_equal(p11_pin_flags_text(CKF_USER_PIN_COUNT_LOW), "PIN count low");
	assert_string_equal(p11_pin_flags_text(CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY),
			    "final PIN try");
	assert_string_equal(p11_pin_flags_text(CKF_USER_PIN_LOCKED | CKF_USER_PIN_COUNT_LOW),
			    "PIN locked");
}

/* ---- on a real token (SoftHSM, and the fault shim around it) ------------- */

static char shim_path[PATH_MAX];
static char ctl_path[PATH_MAX + 32];
static int have_softhsm;

/* A fresh SoftHSM token directory with token "unit" and an EC key (id 01). */
static int setup_token(void **state)
{
	char conf[PATH_MAX + 32], dir[PATH_MAX + 32], exe[PATH_MAX], err[256];
	unsigned char id[1] = {0x01};
	struct p11_module *m;
	struct p11_token *t;
	struct p11_uri u;
	ssize_t n;
	FILE *f;

	(void)state;
	if (setup_tmpdir(state))
		return -1;
	have_softhsm = access(SOFTHSM, R_OK) == 0;
	if (!have_softhsm)
		return 0;
	snprintf(dir, sizeof(dir), "%s/tokens", tmpdir);
	snprintf(conf, sizeof(conf), "%s/softhsm2.conf", tmpdir);
	if (mkdir(dir, 0700) == -1 || !(f = fopen(conf, "w")))
		return -1;
	fprintf(f, "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n",
		dir);
	fclose(f);
	setenv("SOFTHSM2_CONF", conf, 1);
	/* the shim is built next to this binary (make unit) */
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		snprintf(shim_path, sizeof(shim_path), "%s/libfgshim.so", dirname(exe));
	}
	snprintf(ctl_path, sizeof(ctl_path), "%s/shim.ctl", tmpdir);
	setenv("FGSHIM_CONTROL", ctl_path, 1);
	setenv("FGSHIM_MODULE", SOFTHSM, 1);

	m = p11_module_load(SOFTHSM, err, sizeof(err));
	if (!m || p11_token_init(m, "unit", SO_PIN, PIN, NULL, err, sizeof(err))) {
		fprintf(stderr, "setup: %s\n", err);
		return -1;
	}
	p11_uri_parse("pkcs11:token=unit", &u, NULL, 0);
	t = p11_token_open(m, &u, err, sizeof(err));
	if (!t || p11_token_login(t, PIN, err, sizeof(err)) ||
	    p11_keygen(t, P11_KEY_EC256, "k1", id, 1, NULL, NULL, err, sizeof(err))) {
		fprintf(stderr, "setup: %s\n", err);
		return -1;
	}
	p11_token_close(t);
	p11_module_unload(m); /* C_Finalize: the next test starts SoftHSM afresh */
	return 0;
}

/* Opens token "unit" through module path, logged in, with key id 01 as an
 * EVP_PKEY. */
static void open_unit(const char *path, struct p11_module **m, struct p11_token **t,
		      EVP_PKEY **pkey)
{
	unsigned char id[1] = {0x01};
	CK_OBJECT_HANDLE h;
	struct p11_uri u;
	EVP_PKEY *pub;
	char err[256];

	*m = p11_module_load(path, err, sizeof(err));
	if (!*m)
		fail_msg("%s", err);
	p11_uri_parse("pkcs11:token=unit", &u, NULL, 0);
	*t = p11_token_open(*m, &u, err, sizeof(err));
	if (!*t)
		fail_msg("%s", err);
	if (!pkey)
		return;
	if (p11_token_login(*t, PIN, err, sizeof(err)) ||
	    p11_key_find(*t, id, 1, NULL, &h, err, sizeof(err)))
		fail_msg("%s", err);
	pub = p11_key_public(*t, h, err, sizeof(err));
	assert_non_null(pub);
	*pkey = hsm_key_new_pub(*t, h, pub, err, sizeof(err));
	EVP_PKEY_free(pub);
	if (!*pkey)
		fail_msg("%s", err);
}

/* 1 when pkey signs (through the token) and the signature verifies. */
static int signs(EVP_PKEY *pkey)
{
	static const unsigned char msg[] = "unit";
	unsigned char sig[256];
	size_t slen = sizeof(sig);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int ok;

	ok = EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pkey) == 1 &&
	     EVP_DigestSign(md, sig, &slen, msg, sizeof(msg)) == 1;
	if (ok) {
		EVP_MD_CTX_reset(md);
		ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pkey) == 1 &&
		     EVP_DigestVerify(md, sig, slen, msg, sizeof(msg)) == 1;
	}
	EVP_MD_CTX_free(md);
	return ok;
}

static void test_module_shared(void **state)
{
	struct p11_module *a, *b;
	char err[256];

	(void)state;
	if (!have_softhsm)
		skip();
	a = p11_module_load(SOFTHSM, err, sizeof(err));
	b = p11_module_load(SOFTHSM, err, sizeof(err));
	assert_non_null(a);
	assert_ptr_equal(a, b);
	p11_module_unload(b);
	p11_module_unload(a);
	assert_null(p11_module_load("/nonexistent/module.so", err, sizeof(err)));
	assert_non_null(strstr(err, "cannot load PKCS#11 module /nonexistent/module.so"));
}

static void test_no_such_token(void **state)
{
	struct p11_module *m;
	struct p11_uri u;
	char err[512];

	(void)state;
	if (!have_softhsm)
		skip();
	m = p11_module_load(SOFTHSM, err, sizeof(err));
	assert_non_null(m);
	p11_uri_parse("pkcs11:token=nope", &u, NULL, 0);
	assert_null(p11_token_open(m, &u, err, sizeof(err)));
	assert_string_equal(err, "no token matches pkcs11:token=nope (tokens present: unit)");
	p11_module_unload(m);
}

/* A sign hook standing in for the daemon's signer: records and fails. */
static int hook_calls;
static int failing_hook(struct hsm_key *k, CK_MECHANISM_TYPE mech, const unsigned char *in,
			size_t inlen, unsigned char *out, size_t *outlen)
{
	(void)mech;
	(void)in;
	(void)inlen;
	(void)out;
	(void)outlen;
	hook_calls++;
	k->last_rv = CKR_DEVICE_ERROR;
	return -1;
}

static void test_sign_hook_and_reinit_recovery(void **state)
{
	unsigned char id[1] = {0x01};
	struct p11_module *m;
	struct p11_token *t;
	struct hsm_key *k;
	EVP_PKEY *pkey;
	char err[256];

	(void)state;
	if (!have_softhsm)
		skip();
	open_unit(SOFTHSM, &m, &t, &pkey);
	k = hsm_key_of(pkey);
	assert_non_null(k);
	assert_true(k->is_ec);
	assert_int_equal(k->bits, 256);
	assert_int_equal(k->id_len, 1);
	assert_true(signs(pkey));
	assert_int_equal(p11_token_probe(t), CKR_OK);

	k->sign_hook = failing_hook;
	assert_false(signs(pkey));
	assert_int_equal(hook_calls, 1);
	assert_int_equal(k->last_rv, CKR_DEVICE_ERROR);
	k->sign_hook = NULL;

	/* the module restarts under us: every session is stale, recover brings it back */
	assert_int_equal(p11_module_reinit(m), 0);
	assert_false(signs(pkey));
	assert_true(p11_rv_is_token_lost(k->last_rv));
	assert_true(p11_rv_is_token_lost(p11_token_probe(t)));
	if (p11_token_recover(t, err, sizeof(err)))
		fail_msg("recover: %s", err);
	assert_int_equal(p11_token_probe(t), CKR_OK);
	assert_int_equal(p11_key_refind(t, id, 1, &k->handle), 0);
	assert_true(signs(pkey));

	EVP_PKEY_free(pkey);
	p11_token_close(t);
	p11_module_unload(m);
}

/* Replaces the shim's control file atomically. */
static void shim_control(const char *text)
{
	char tmp[PATH_MAX + 48];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.new", ctl_path);
	f = fopen(tmp, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(rename(tmp, ctl_path), 0);
}

static void test_removal_recovery_through_shim(void **state)
{
	unsigned char id[1] = {0x01};
	struct p11_module *m;
	struct p11_token *t, *t2;
	struct hsm_key *k;
	EVP_PKEY *pkey;
	char err[512];

	(void)state;
	if (!have_softhsm || access(shim_path, R_OK) != 0)
		skip(); /* make unit builds the shim */
	shim_control("");
	/* a user of the token whose PIN was wrong (before anyone logged in:
	 * afterwards C_Login would answer CKR_USER_ALREADY_LOGGED_IN) */
	open_unit(shim_path, &m, &t2, NULL);
	assert_int_equal(p11_token_login(t2, "0000", err, sizeof(err)), -1);
	assert_non_null(strstr(err, "wrong PIN for token unit (PIN count low)"));
	assert_true(p11_token_pin_failed(t2));
	assert_true(p11_token_flags(t2) & CKF_USER_PIN_COUNT_LOW);
	p11_module_unload(m); /* t2 keeps its own reference */

	open_unit(shim_path, &m, &t, &pkey);
	k = hsm_key_of(pkey);
	assert_true(signs(pkey));
	assert_false(p11_token_flags(t) & CKF_USER_PIN_COUNT_LOW); /* a good log-in resets it */

	/* pulled out */
	shim_control("removed=1\n");
	assert_false(signs(pkey));
	assert_true(p11_rv_is_token_lost(k->last_rv));
	assert_true(p11_rv_is_token_lost(p11_token_probe(t2)));
	assert_int_equal(p11_token_recover(t, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "no token matches pkcs11:token=unit"));

	shim_control("removed=0\n");
	/* the refused PIN is never presented again */
	assert_int_equal(p11_token_recover(t2, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "PIN was refused before"));
	/* one log-in with the stored PIN, keys found again */
	if (p11_token_recover(t, err, sizeof(err)))
		fail_msg("recover: %s", err);
	assert_int_equal(p11_token_probe(t), CKR_OK);
	assert_false(signs(pkey)); /* the old key handle is dead */
	assert_int_equal(p11_key_refind(t, id, 1, &k->handle), 0);
	assert_true(signs(pkey));
	/* now that the token is logged in again, t2's session shares it */
	assert_int_equal(p11_token_recover(t2, err, sizeof(err)), 0);

	EVP_PKEY_free(pkey);
	p11_token_close(t2);
	p11_token_close(t);
	p11_module_unload(m);
	shim_control("");
}

int main(void)
{
	const struct CMUnitTest pure[] = {
		cmocka_unit_test(test_uri_valid),
		cmocka_unit_test(test_uri_percent_encoding),
		cmocka_unit_test(test_uri_pin_value_refused),
		cmocka_unit_test(test_uri_bad),
		cmocka_unit_test(test_thumbprint_forms),
		cmocka_unit_test(test_thumbprint_bad),
		cmocka_unit_test(test_pin_file_ok),
		cmocka_unit_test(test_pin_file_refused),
		cmocka_unit_test(test_pin_file_owner),
		cmocka_unit_test(test_rv_and_flags),
	};
	const struct CMUnitTest token[] = {
		cmocka_unit_test(test_module_shared),
		cmocka_unit_test(test_no_such_token),
		cmocka_unit_test(test_sign_hook_and_reinit_recovery),
		cmocka_unit_test(test_removal_recovery_through_shim),
	};
	int fails;

	fails = cmocka_run_group_tests_name("p11_pure", pure, setup_tmpdir, teardown_tmpdir);
	fails += cmocka_run_group_tests_name("p11_token", token, setup_token, teardown_tmpdir);
	hsm_key_cleanup();
	return fails;
}
