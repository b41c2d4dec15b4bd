/* farmgate-mgmt: the administrator's password (scrypt), the first-start setup code,
 * sessions and login throttling. No default password: until one is set, only the setup
 * code printed on the console (and kept in a root-only file) lets someone set it. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "log.h"
#include "mgmt.h"

#define SCRYPT_N	32768
#define SCRYPT_R	8
#define SCRYPT_P	1
#define SALT_LEN	16
#define HASH_LEN	32
#define MAX_SESSIONS	64
#define SESSION_IDLE_S	900   /* 15 minutes */
#define SESSION_MAX_S	28800 /* 8 hours */
#define PASSWORD_MIN	10
#define THROTTLE_SLOTS	256
#define THROTTLE_FREE_N 5 /* failures before delays start */

struct session {
	char id[33];
	char csrf[33];
	time_t created, last;
};

struct throttle {
	char ip[46];
	unsigned int failures;
	uint64_t until_ms; /* monotonic */
};

static struct {
	pthread_mutex_t lock;
	char hash_line[256]; /* "scrypt$N$r$p$salt$hash", "" = no password yet */
	char setup_code[32];
	struct session sessions[MAX_SESSIONS];
	struct throttle thr[THROTTLE_SLOTS];
} A = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void hex(char *out, const unsigned char *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", p[i]);
}

static int unhex(unsigned char *out, const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned int v;

		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (unsigned char)v;
	}
	return 0;
}

static int random_hex(char *out, size_t bytes)
{
	unsigned char b[32];

	if (bytes > sizeof(b) || RAND_bytes(b, (int)bytes) != 1)
		return -1;
	hex(out, b, bytes);
	OPENSSL_cleanse(b, sizeof(b));
	return 0;
}

static void path_of(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", M.data_dir, name);
}

/* Writes a root-only file atomically (temporary file, fsync, rename). */
static int write_secret(const char *name, const char *text)
{
	char path[512], tmp[540];
	int fd;

	path_of(path, sizeof(path), name);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd == -1)
		return -1;
	if (write(fd, text, strlen(text)) != (ssize_t)strlen(text) || fsync(fd) == -1) {
		close(fd);
		unlink(tmp);
		return -1;
	}
	close(fd);
	return rename(tmp, path);
}

static int read_secret(const char *name, char *out, size_t n)
{
	char path[512];
	ssize_t k;
	int fd;

	path_of(path, sizeof(path), name);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd == -1)
		return -1;
	k = read(fd, out, n - 1);
	close(fd);
	if (k < 0)
		return -1;
	out[k] = 0;
	out[strcspn(out, "\r\n")] = 0;
	return 0;
}

static int scrypt_hash(const char *pw, const unsigned char *salt, unsigned long long N,
		       unsigned long long r, unsigned long long p, unsigned char *out)
{
	return EVP_PBE_scrypt(pw, strlen(pw), salt, SALT_LEN, N, r, p, 64ull << 20, out,
			      HASH_LEN) == 1
		       ? 0
		       : -1;
}

int auth_init(char *err, size_t errlen)
{
	if (read_secret("password", A.hash_line, sizeof(A.hash_line)) == 0 && A.hash_line[0])
		return 0;
	A.hash_line[0] = 0;
	if (read_secret("setup-code", A.setup_code, sizeof(A.setup_code)) == -1 ||
	    strlen(A.setup_code) < 12) {
		char code[16];

		if (random_hex(code, 6) == -1) {
			snprintf(err, errlen, "no randomness for the setup code");
			return -1;
		}
		snprintf(A.setup_code, sizeof(A.setup_code), "%.4s-%.4s-%.4s", code, code + 4,
			 code + 8);
		if (write_secret("setup-code", A.setup_code) == -1) {
			snprintf(err, errlen, "%s/setup-code: %s", M.data_dir, strerror(errno));
			return -1;
		}
	}
	/* the console is where a new appliance's owner looks */
	fprintf(stderr,
		"farmgate-mgmt: no administrator password yet: open the web UI and enter the setup "
		"code %s (also in %s/setup-code)\n",
		A.setup_code, M.data_dir);
	return 0;
}

int auth_password_set(void)
{
	int set;

	pthread_mutex_lock(&A.lock);
	set = A.hash_line[0] != 0;
	pthread_mutex_unlock(&A.lock);
	return set;
}

static int password_ok(const char *pw, const char **why)
{
	size_t n = strlen(pw);

	if (n < PASSWORD_MIN) {
		*why = "the password must have at least 10 characters";
		return 0;
	}
	if (n > 256) {
		*why = "the password must have at most 256 characters";
		return 0;
	}
	return 1;
}

static int auth_setup_one(const char *code, const char *password, const char **why);

static int store_password(const char *pw)
{
	unsigned char salt[SALT_LEN], h[HASH_LEN];
	char line[256], s_hex[2 * SALT_LEN + 1], h_hex[2 * HASH_LEN + 1];

	if (RAND_bytes(salt, sizeof(salt)) != 1 ||
	    scrypt_hash(pw, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, h) == -1)
		return -1;
	hex(s_hex, salt, sizeof(salt));
	hex(h_hex, h, sizeof(h));
	snprintf(line, sizeof(line), "scrypt$%d$%d$%d$%s$%s", SCRYPT_N, SCRYPT_R, SCRYPT_P, s_hex,
		 h_hex);
	if (write_secret("password", line) == -1)
		return -1;
	pthread_mutex_lock(&A.lock);
	snprintf(A.hash_line, sizeof(A.hash_line), "%s", line);
	pthread_mutex_unlock(&A.lock);
	return 0;
}

int auth_setup(const char *code, const char *password, const char **why)
{
	static pthread_mutex_t setup_lock = PTHREAD_MUTEX_INITIALIZER;
	int rc;

	/* one at a time: two racing setups must not both win */
	pthread_mutex_lock(&setup_lock);
	rc = auth_setup_one(code, password, why);
	pthread_mutex_unlock(&setup_lock);
	return rc;
}

static int auth_setup_one(const char *code, const char *password, const char **why)
{
	char path[512];
	int match;

	pthread_mutex_lock(&A.lock);
	if (A.hash_line[0]) {
		pthread_mutex_unlock(&A.lock);
		*why = "a password is already set";
		return -1;
	}
	match = strlen(code) == strlen(A.setup_code) &&
		CRYPTO_memcmp(code, A.setup_code, strlen(A.setup_code)) == 0;
	pthread_mutex_unlock(&A.lock);
	if (!match) {
		*why = "wrong setup code (it is on the console and in the data directory)";
		return -1;
	}
	if (!password_ok(password, why))
		return -1;
	if (store_password(password) == -1) {
		*why = "cannot store the password";
		return -1;
	}
	path_of(path, sizeof(path), "setup-code");
	unlink(path);
	return 0;
}

int auth_check_password(const char *pw)
{
	unsigned long long N, r, p;
	unsigned char salt[SALT_LEN], want[HASH_LEN], got[HASH_LEN];
	char line[256], s_hex[2 * SALT_LEN + 1], h_hex[2 * HASH_LEN + 1];
	int ok;

	pthread_mutex_lock(&A.lock);
	snprintf(line, sizeof(line), "%s", A.hash_line);
	pthread_mutex_unlock(&A.lock);
	if (sscanf(line, "scrypt$%llu$%llu$%llu$%32[0-9a-f]$%64[0-9a-f]", &N, &r, &p, s_hex,
		   h_hex) != 5 ||
	    unhex(salt, s_hex, SALT_LEN) == -1 || unhex(want, h_hex, HASH_LEN) == -1)
		return 0;
	if (strlen(pw) > 256 || scrypt_hash(pw, salt, N, r, p, got) == -1)
		return 0;
	ok = CRYPTO_memcmp(got, want, HASH_LEN) == 0;
	OPENSSL_cleanse(got, sizeof(got));
	return ok;
}

int auth_change_password(const char *current, const char *password, const char **why)
{
	if (!auth_check_password(current)) {
		*why = "the current password is wrong";
		return -1;
	}
	if (!password_ok(password, why))
		return -1;
	if (store_password(password) == -1) {
		*why = "cannot store the password";
		return -1;
	}
	session_drop_all();
	return 0;
}

/* ---- sessions ---------------------------------------------------------------- */

/* The value of cookie __Host-fgsid in a Cookie header, or NULL. */
static const char *cookie_sid(const char *cookie, char *out)
{
	const char *p = cookie;

	while (p && *p) {
		while (*p == ' ' || *p == ';')
			p++;
		if (!strncmp(p, "__Host-fgsid=", 13)) {
			size_t n = strcspn(p + 13, "; ");

			if (n != 32)
				return NULL;
			memcpy(out, p + 13, 32);
			out[32] = 0;
			return out;
		}
		p = strchr(p, ';');
	}
	return NULL;
}

int session_new(char *id, char *csrf)
{
	time_t now = time(NULL);
	struct session *s = NULL;
	int i;

	if (random_hex(id, 16) == -1 || random_hex(csrf, 16) == -1)
		return -1;
	pthread_mutex_lock(&A.lock);
	for (i = 0; i < MAX_SESSIONS; i++) {
		struct session *x = &A.sessions[i];

		if (!x->id[0] || now - x->last > SESSION_IDLE_S ||
		    now - x->created > SESSION_MAX_S) {
			s = x;
			break;
		}
		if (!s || x->last < s->last)
			s = x; /* full: the least recently used goes */
	}
	memcpy(s->id, id, 33);
	memcpy(s->csrf, csrf, 33);
	s->created = s->last = now;
	pthread_mutex_unlock(&A.lock);
	return 0;
}

int session_find(const char *cookie, char *csrf)
{
	time_t now = time(NULL);
	char sid[33];
	int i, found = 0;

	if (!cookie_sid(cookie, sid))
		return 0;
	pthread_mutex_lock(&A.lock);
	for (i = 0; i < MAX_SESSIONS; i++) {
		struct session *s = &A.sessions[i];

		if (!s->id[0] || CRYPTO_memcmp(s->id, sid, 32))
			continue;
		if (now - s->last > SESSION_IDLE_S || now - s->created > SESSION_MAX_S) {
			memset(s, 0, sizeof(*s));
			break;
		}
		s->last = now;
		if (csrf)
			memcpy(csrf, s->csrf, 33);
		found = 1;
		break;
	}
	pthread_mutex_unlock(&A.lock);
	return found;
}

void session_drop(const char *cookie)
{
	char sid[33];
	int i;

	if (!cookie_sid(cookie, sid))
		return;
	pthread_mutex_lock(&A.lock);
	for (i = 0; i < MAX_SESSIONS; i++)
		if (A.sessions[i].id[0] && !CRYPTO_memcmp(A.sessions[i].id, sid, 32))
			memset(&A.sessions[i], 0, sizeof(A.sessions[i]));
	pthread_mutex_unlock(&A.lock);
}

void session_drop_all(void)
{
	pthread_mutex_lock(&A.lock);
	memset(A.sessions, 0, sizeof(A.sessions));
	pthread_mutex_unlock(&A.lock);
}

/* ---- throttling ------------------------------------------------------------------ */

static struct throttle *thr_slot(const char *ip, int create)
{
	struct throttle *free_slot = NULL, *oldest = NULL;
	int i;

	for (i = 0; i < THROTTLE_SLOTS; i++) {
		struct throttle *t = &A.thr[i];

		if (t->ip[0] && !strcmp(t->ip, ip))
			return t;
		if (!t->ip[0] && !free_slot)
			free_slot = t;
		if (!oldest || t->until_ms < oldest->until_ms)
			oldest = t;
	}
	if (!create)
		return NULL;
	free_slot = free_slot ? free_slot : oldest;
	memset(free_slot, 0, sizeof(*free_slot));
	snprintf(free_slot->ip, sizeof(free_slot->ip), "%s", ip);
	return free_slot;
}

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

unsigned int throttle_wait(const char *ip)
{
	uint64_t now = mono_ms();
	struct throttle *t;
	unsigned int w = 0;

	pthread_mutex_lock(&A.lock);
	t = thr_slot(ip, 0);
	if (t && t->until_ms > now)
		w = (unsigned int)((t->until_ms - now + 999) /
				   1000); /* whole seconds, rounded up */
	pthread_mutex_unlock(&A.lock);
	return w;
}

void throttle_result(const char *ip, int ok)
{
	struct throttle *t;

	pthread_mutex_lock(&A.lock);
	t = thr_slot(ip, !ok);
	if (t && ok) {
		memset(t, 0, sizeof(*t));
	} else if (t) {
		t->failures++;
		if (t->failures >= THROTTLE_FREE_N) {
			unsigned int k = t->failures - THROTTLE_FREE_N;
			unsigned int delay = k < 10 ? 1u << k : 900;

			t->until_ms = mono_ms() + 1000ull * (delay > 900 ? 900 : delay);
		}
	}
	pthread_mutex_unlock(&A.lock);
}
