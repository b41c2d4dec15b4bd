/* Test-only PKCS#11 module over SoftHSM that injects slow signing, faults, removal, PIN lockout. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define DEFAULT_MODULE	  "/usr/lib/softhsm/libsofthsm2.so"
#define DEFAULT_PIN_TRIES 3
/* The stats file is rewritten at most this often: a write per C_Sign would slow the signer. */
#define STATS_INTERVAL_MS 100
#define CONTROL_MAX	  (64 * 1024)
/* Big enough for any RSA-8192 or ECDSA signature; only used to finish abandoned operations. */
#define DRAIN_BUF 2048

/*
 * Object handles carry the removal generation they were issued in, in their top bits, so a
 * handle cached across a simulated removal is refused like a real re-inserted token would.
 * SoftHSM's handles are small counters, far below 2^48.
 */
#define OBJ_SHIFT    48
#define OBJ_GEN_MASK 0x7fffUL
_Static_assert(sizeof(CK_OBJECT_HANDLE) >= 8, "object handle tagging needs 64-bit handles");

/* Every PKCS#11 2.40 entry point, in CK_FUNCTION_LIST order. */
#define SHIM_FUNCS(X)                                                                              \
	X(C_Initialize)                                                                            \
	X(C_Finalize)                                                                              \
	X(C_GetInfo)                                                                               \
	X(C_GetFunctionList)                                                                       \
	X(C_GetSlotList)                                                                           \
	X(C_GetSlotInfo)                                                                           \
	X(C_GetTokenInfo)                                                                          \
	X(C_GetMechanismList)                                                                      \
	X(C_GetMechanismInfo)                                                                      \
	X(C_InitToken)                                                                             \
	X(C_InitPIN)                                                                               \
	X(C_SetPIN)                                                                                \
	X(C_OpenSession)                                                                           \
	X(C_CloseSession)                                                                          \
	X(C_CloseAllSessions)                                                                      \
	X(C_GetSessionInfo)                                                                        \
	X(C_GetOperationState)                                                                     \
	X(C_SetOperationState)                                                                     \
	X(C_Login)                                                                                 \
	X(C_Logout)                                                                                \
	X(C_CreateObject)                                                                          \
	X(C_CopyObject)                                                                            \
	X(C_DestroyObject)                                                                         \
	X(C_GetObjectSize)                                                                         \
	X(C_GetAttributeValue)                                                                     \
	X(C_SetAttributeValue)                                                                     \
	X(C_FindObjectsInit)                                                                       \
	X(C_FindObjects)                                                                           \
	X(C_FindObjectsFinal)                                                                      \
	X(C_EncryptInit)                                                                           \
	X(C_Encrypt)                                                                               \
	X(C_EncryptUpdate)                                                                         \
	X(C_EncryptFinal)                                                                          \
	X(C_DecryptInit)                                                                           \
	X(C_Decrypt)                                                                               \
	X(C_DecryptUpdate)                                                                         \
	X(C_DecryptFinal)                                                                          \
	X(C_DigestInit)                                                                            \
	X(C_Digest)                                                                                \
	X(C_DigestUpdate)                                                                          \
	X(C_DigestKey)                                                                             \
	X(C_DigestFinal)                                                                           \
	X(C_SignInit)                                                                              \
	X(C_Sign)                                                                                  \
	X(C_SignUpdate)                                                                            \
	X(C_SignFinal)                                                                             \
	X(C_SignRecoverInit)                                                                       \
	X(C_SignRecover)                                                                           \
	X(C_VerifyInit)                                                                            \
	X(C_Verify)                                                                                \
	X(C_VerifyUpdate)                                                                          \
	X(C_VerifyFinal)                                                                           \
	X(C_VerifyRecoverInit)                                                                     \
	X(C_VerifyRecover)                                                                         \
	X(C_DigestEncryptUpdate)                                                                   \
	X(C_DecryptDigestUpdate)                                                                   \
	X(C_SignEncryptUpdate)                                                                     \
	X(C_DecryptVerifyUpdate)                                                                   \
	X(C_GenerateKey)                                                                           \
	X(C_GenerateKeyPair)                                                                       \
	X(C_WrapKey)                                                                               \
	X(C_UnwrapKey)                                                                             \
	X(C_DeriveKey)                                                                             \
	X(C_SeedRandom)                                                                            \
	X(C_GenerateRandom)                                                                        \
	X(C_GetFunctionStatus)                                                                     \
	X(C_CancelFunction)                                                                        \
	X(C_WaitForSlotEvent)

enum fn_id {
#define X(n) FN_##n,
	SHIM_FUNCS(X)
#undef X
	FN_COUNT
};

static const char *const fn_names[FN_COUNT] = {
#define X(n) [FN_##n] = #n,
	SHIM_FUNCS(X)
#undef X
};

/* What the control file asks for; all-zero plus pin_tries is "behave like the real module". */
struct control {
	unsigned long sign_delay_ms;
	CK_RV fail_rv; /* CKR_OK: nothing injected */
	bool fail_only_set;
	bool fail_only[FN_COUNT];
	bool removed;
	long pin_tries; /* <= 0: no lockout simulation */
	bool reset_pin;
	CK_MECHANISM_TYPE hidden[8]; /* mechanisms the token pretends not to have */
	size_t nhidden;
};

/* Identity of one version of the control file, to skip re-reading an unchanged file. */
struct file_sig {
	bool exists;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
	struct timespec ctime;
};

/*
 * The caller sees shim session handles that are never reused, so a handle from before a
 * removal stays invalid even after the real module hands the same number out again.
 */
struct session {
	CK_SESSION_HANDLE shim;
	CK_SESSION_HANDLE real;
	CK_SLOT_ID slot;
	unsigned long gen; /* removal generation it was opened in */
	unsigned int busy; /* calls in flight: the real session must outlive them */
	bool real_open;
	bool closed; /* closed by the caller while busy: the last call closes the real one */
};

/* One session call in flight, from session_enter() to session_leave(). */
struct call {
	CK_SESSION_HANDLE shim;
	CK_SESSION_HANDLE real;
	unsigned long gen;
	unsigned long sign_delay_ms;
	long pin_tries;
};

static CK_FUNCTION_LIST shim_list; /* filled in at the end, once every wrapper exists */
static CK_FUNCTION_LIST_PTR real;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static CK_RV load_rv = CKR_GENERAL_ERROR;
static char *control_path;
static char *state_path;
static char *stats_template;

/* Guards everything below; never held while sleeping, doing file I/O or calling the real module. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct control ctl = {.pin_tries = DEFAULT_PIN_TRIES};
static struct file_sig ctl_sig;
static unsigned long generation;
static struct session *sessions;
static size_t nsessions, session_cap;
static CK_SESSION_HANDLE next_session = 1;
static long mem_pin_failures; /* the counter when there is no control file to put it next to */

static struct {
	unsigned long sign_calls, login_calls, signatures;
	char *path; /* FGSHIM_STATS with %p expanded, NULL: no stats */
	bool dirty, stop, running, sync;
	pthread_t thread;
	pthread_cond_t cond;
	uint64_t last_ms;
} stats;
/* Serialises writers of the stats file so an older snapshot never lands after a newer one. */
static pthread_mutex_t stats_io = PTHREAD_MUTEX_INITIALIZER;

static void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("fgshim: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned long ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/* ---- return-value names ------------------------------------------------ */

#define R(x)                                                                                       \
	{                                                                                          \
#x, x                                                                              \
	}
static const struct {
	const char *name;
	CK_RV rv;
} rv_names[] = {
	R(CKR_OK),
	R(CKR_CANCEL),
	R(CKR_HOST_MEMORY),
	R(CKR_SLOT_ID_INVALID),
	R(CKR_GENERAL_ERROR),
	R(CKR_FUNCTION_FAILED),
	R(CKR_ARGUMENTS_BAD),
	R(CKR_NO_EVENT),
	R(CKR_NEED_TO_CREATE_THREADS),
	R(CKR_CANT_LOCK),
	R(CKR_ATTRIBUTE_READ_ONLY),
	R(CKR_ATTRIBUTE_SENSITIVE),
	R(CKR_ATTRIBUTE_TYPE_INVALID),
	R(CKR_ATTRIBUTE_VALUE_INVALID),
	R(CKR_ACTION_PROHIBITED),
	R(CKR_DATA_INVALID),
	R(CKR_DATA_LEN_RANGE),
	R(CKR_DEVICE_ERROR),
	R(CKR_DEVICE_MEMORY),
	R(CKR_DEVICE_REMOVED),
	R(CKR_ENCRYPTED_DATA_INVALID),
	R(CKR_ENCRYPTED_DATA_LEN_RANGE),
	R(CKR_FUNCTION_CANCELED),
	R(CKR_FUNCTION_NOT_PARALLEL),
	R(CKR_FUNCTION_NOT_SUPPORTED),
	R(CKR_KEY_HANDLE_INVALID),
	R(CKR_KEY_SIZE_RANGE),
	R(CKR_KEY_TYPE_INCONSISTENT),
	R(CKR_KEY_NOT_NEEDED),
	R(CKR_KEY_CHANGED),
	R(CKR_KEY_NEEDED),
	R(CKR_KEY_INDIGESTIBLE),
	R(CKR_KEY_FUNCTION_NOT_PERMITTED),
	R(CKR_KEY_NOT_WRAPPABLE),
	R(CKR_KEY_UNEXTRACTABLE),
	R(CKR_MECHANISM_INVALID),
	R(CKR_MECHANISM_PARAM_INVALID),
	R(CKR_OBJECT_HANDLE_INVALID),
	R(CKR_OPERATION_ACTIVE),
	R(CKR_OPERATION_NOT_INITIALIZED),
	R(CKR_PIN_INCORRECT),
	R(CKR_PIN_INVALID),
	R(CKR_PIN_LEN_RANGE),
	R(CKR_PIN_EXPIRED),
	R(CKR_PIN_LOCKED),
	R(CKR_SESSION_CLOSED),
	R(CKR_SESSION_COUNT),
	R(CKR_SESSION_HANDLE_INVALID),
	R(CKR_SESSION_PARALLEL_NOT_SUPPORTED),
	R(CKR_SESSION_READ_ONLY),
	R(CKR_SESSION_EXISTS),
	R(CKR_SESSION_READ_ONLY_EXISTS),
	R(CKR_SESSION_READ_WRITE_SO_EXISTS),
	R(CKR_SIGNATURE_INVALID),
	R(CKR_SIGNATURE_LEN_RANGE),
	R(CKR_TEMPLATE_INCOMPLETE),
	R(CKR_TEMPLATE_INCONSISTENT),
	R(CKR_TOKEN_NOT_PRESENT),
	R(CKR_TOKEN_NOT_RECOGNIZED),
	R(CKR_TOKEN_WRITE_PROTECTED),
	R(CKR_UNWRAPPING_KEY_HANDLE_INVALID),
	R(CKR_UNWRAPPING_KEY_SIZE_RANGE),
	R(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
	R(CKR_USER_ALREADY_LOGGED_IN),
	R(CKR_USER_NOT_LOGGED_IN),
	R(CKR_USER_PIN_NOT_INITIALIZED),
	R(CKR_USER_TYPE_INVALID),
	R(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
	R(CKR_USER_TOO_MANY_TYPES),
	R(CKR_WRAPPED_KEY_INVALID),
	R(CKR_WRAPPED_KEY_LEN_RANGE),
	R(CKR_WRAPPING_KEY_HANDLE_INVALID),
	R(CKR_WRAPPING_KEY_SIZE_RANGE),
	R(CKR_WRAPPING_KEY_TYPE_INCONSISTENT),
	R(CKR_RANDOM_SEED_NOT_SUPPORTED),
	R(CKR_RANDOM_NO_RNG),
	R(CKR_DOMAIN_PARAMS_INVALID),
	R(CKR_CURVE_NOT_SUPPORTED),
	R(CKR_BUFFER_TOO_SMALL),
	R(CKR_SAVED_STATE_INVALID),
	R(CKR_INFORMATION_SENSITIVE),
	R(CKR_STATE_UNSAVEABLE),
	R(CKR_CRYPTOKI_NOT_INITIALIZED),
	R(CKR_CRYPTOKI_ALREADY_INITIALIZED),
	R(CKR_MUTEX_BAD),
	R(CKR_MUTEX_NOT_LOCKED),
	R(CKR_FUNCTION_REJECTED),
};
#undef R

/* "CKR_DEVICE_ERROR", "DEVICE_ERROR", "0x30" or "48"; false when it is none of those. */
static bool parse_rv(const char *s, CK_RV *rv)
{
	char *end;
	unsigned long v;

	for (size_t i = 0; i < sizeof(rv_names) / sizeof(rv_names[0]); i++) {
		const char *n = rv_names[i].name;

		if (!strcasecmp(s, n) || !strcasecmp(s, n + 4)) {
			*rv = rv_names[i].rv;
			return true;
		}
	}
	errno = 0;
	v = strtoul(s, &end, 0);
	if (errno || end == s || *end)
		return false;
	*rv = v;
	return true;
}

/* hide_mechanisms=CKM_RSA_X_509,CKM_RSA_PKCS_PSS (names or numbers): a token
 * without raw RSA / PSS, as some smart cards and TPMs are. */
static void parse_hidden(char *v, struct control *c)
{
	static const struct {
		const char *name;
		CK_MECHANISM_TYPE m;
	} mechs[] = {
		{"CKM_RSA_PKCS", CKM_RSA_PKCS},
		{"CKM_RSA_X_509", CKM_RSA_X_509},
		{"CKM_RSA_PKCS_PSS", CKM_RSA_PKCS_PSS},
		{"CKM_ECDSA", CKM_ECDSA},
	};
	char *save = NULL;

	c->nhidden = 0;
	for (char *t = strtok_r(v, ", \t", &save); t && c->nhidden < 8;
	     t = strtok_r(NULL, ", \t", &save)) {
		size_t i;
		char *end;
		unsigned long n;

		for (i = 0; i < sizeof(mechs) / sizeof(mechs[0]); i++)
			if (!strcasecmp(t, mechs[i].name))
				break;
		if (i < sizeof(mechs) / sizeof(mechs[0])) {
			c->hidden[c->nhidden++] = mechs[i].m;
			continue;
		}
		errno = 0;
		n = strtoul(t, &end, 0);
		if (errno || end == t || *end)
			warn("hide_mechanisms: unknown mechanism '%s' ignored", t);
		else
			c->hidden[c->nhidden++] = n;
	}
}

static bool mech_hidden(CK_MECHANISM_TYPE m)
{
	bool hidden = false;

	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < ctl.nhidden; i++)
		if (ctl.hidden[i] == m)
			hidden = true;
	pthread_mutex_unlock(&lock);
	return hidden;
}

static int find_fn(const char *name)
{
	for (int i = 0; i < FN_COUNT; i++)
		if (!strcmp(name, fn_names[i]) || !strcmp(name, fn_names[i] + 2))
			return i;
	return -1;
}

/* ---- control file ------------------------------------------------------ */

static void file_sig_get(const char *path, struct file_sig *sig)
{
	struct stat st;

	memset(sig, 0, sizeof(*sig));
	if (stat(path, &st) == -1)
		return;
	sig->exists = true;
	sig->dev = st.st_dev;
	sig->ino = st.st_ino;
	sig->size = st.st_size;
	sig->mtime = st.st_mtim;
	sig->ctime = st.st_ctim;
}

static bool file_sig_equal(const struct file_sig *a, const struct file_sig *b)
{
	if (a->exists != b->exists)
		return false;
	if (!a->exists)
		return true;
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
	       a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
		*--e = '\0';
	return s;
}

static bool parse_ulong(const char *s, unsigned long *out)
{
	char *end;

	errno = 0;
	*out = strtoul(s, &end, 10);
	return !errno && end != s && !*end && *s != '-';
}

static void parse_fail_calls(char *v, struct control *c)
{
	char *save = NULL;

	for (char *t = strtok_r(v, ", \t", &save); t; t = strtok_r(NULL, ", \t", &save)) {
		int fn = find_fn(t);

		if (fn < 0) {
			warn("fail_calls: unknown function '%s' ignored", t);
			continue;
		}
		c->fail_only[fn] = true;
		c->fail_only_set = true;
	}
}

/*
 * Bad lines are reported on stderr and skipped rather than fatal: a test that typoes a key
 * sees the warning in the log of the process under test.
 */
static void parse_line(char *line, struct control *c, const char *path, int lineno)
{
	char *eq, *k, *v;
	unsigned long n;

	line = trim(line);
	if (!*line || *line == '#')
		return;
	eq = strchr(line, '=');
	if (!eq) {
		warn("%s:%d: not key=value: '%s'", path, lineno, line);
		return;
	}
	*eq = '\0';
	k = trim(line);
	v = trim(eq + 1);
	if (!strcmp(k, "sign_delay_ms")) {
		if (parse_ulong(v, &n))
			c->sign_delay_ms = n;
		else
			warn("%s:%d: bad sign_delay_ms '%s'", path, lineno, v);
	} else if (!strcmp(k, "fail")) {
		if (!*v)
			c->fail_rv = CKR_OK;
		else if (!parse_rv(v, &c->fail_rv))
			warn("%s:%d: unknown return value '%s'", path, lineno, v);
	} else if (!strcmp(k, "fail_calls")) {
		parse_fail_calls(v, c);
	} else if (!strcmp(k, "removed")) {
		c->removed = *v && strcmp(v, "0");
	} else if (!strcmp(k, "pin_tries")) {
		if (parse_ulong(v, &n))
			c->pin_tries = (long)n;
		else
			warn("%s:%d: bad pin_tries '%s'", path, lineno, v);
	} else if (!strcmp(k, "hide_mechanisms")) {
		parse_hidden(v, c);
	} else if (!strcmp(k, "reset_pin")) {
		c->reset_pin = *v && strcmp(v, "0");
	} else {
		warn("%s:%d: unknown key '%s'", path, lineno, k);
	}
}

static void control_read(const char *path, struct control *c)
{
	char line[1024];
	int lineno = 0;
	long total = 0;
	FILE *f = fopen(path, "re");

	if (!f)
		return;
	while (fgets(line, sizeof(line), f) && total < CONTROL_MAX) {
		total += (long)strlen(line);
		parse_line(line, c, path, ++lineno);
	}
	fclose(f);
}

/* ---- PIN failure counter (state file) ---------------------------------- */

static long state_parse(int fd)
{
	char buf[128];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	char *p;

	if (n <= 0)
		return 0;
	buf[n] = '\0';
	p = strstr(buf, "pin_failures=");
	return p ? strtol(p + strlen("pin_failures="), NULL, 10) : 0;
}

/*
 * The counter lives in a file so that it survives the process, as a real token's does; flock()
 * keeps two processes (or threads) that fail at the same time from losing a count.
 * delta > 0 adds, delta < 0 resets, 0 only reads.
 */
static long pin_failures_update(int delta)
{
	long v;
	int fd;

	if (!state_path) {
		pthread_mutex_lock(&lock);
		if (delta > 0)
			mem_pin_failures += delta;
		else if (delta < 0)
			mem_pin_failures = 0;
		v = mem_pin_failures;
		pthread_mutex_unlock(&lock);
		return v;
	}
	if (delta == 0) {
		fd = open(state_path, O_RDONLY | O_CLOEXEC);
		if (fd == -1)
			return 0; /* no file: a fresh counter */
		flock(fd, LOCK_SH);
		v = state_parse(fd);
		close(fd);
		return v;
	}
	fd = open(state_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd == -1) {
		warn("%s: %s", state_path, strerror(errno));
		return 0;
	}
	flock(fd, LOCK_EX);
	v = delta > 0 ? state_parse(fd) + delta : 0;
	{
		char buf[64];
		int len = snprintf(buf, sizeof(buf), "pin_failures=%ld\n", v);

		if (ftruncate(fd, 0) == -1 || pwrite(fd, buf, (size_t)len, 0) != len)
			warn("%s: %s", state_path, strerror(errno));
	}
	close(fd);
	return v;
}

/* ---- sessions ---------------------------------------------------------- */

/* Caller holds lock. closed: also find sessions the caller closed while a call was running. */
static struct session *session_lookup(CK_SESSION_HANDLE h, bool closed)
{
	for (size_t i = 0; i < nsessions; i++)
		if (sessions[i].shim == h && (closed || !sessions[i].closed))
			return &sessions[i];
	return NULL;
}

static struct session *session_find(CK_SESSION_HANDLE h)
{
	return session_lookup(h, false);
}

/* Caller holds lock. */
static void session_drop(struct session *s)
{
	*s = sessions[--nsessions];
}

/*
 * A real removal closes every session and logs the token out. SoftHSM only logs out when its
 * last session closes, so the real sessions of a past generation are closed here (those with
 * a call in flight are closed by session_leave() when the call returns, so SoftHSM never frees
 * a session under a running call).
 */
static void close_stale_sessions(void)
{
	CK_SESSION_HANDLE *todo;
	size_t n = 0;

	pthread_mutex_lock(&lock);
	todo = nsessions ? malloc(nsessions * sizeof(*todo)) : NULL;
	for (size_t i = 0; todo && i < nsessions; i++) {
		struct session *s = &sessions[i];

		if (s->gen != generation && s->real_open && !s->busy) {
			s->real_open = false;
			todo[n++] = s->real;
		}
	}
	pthread_mutex_unlock(&lock);
	for (size_t i = 0; i < n; i++)
		real->C_CloseSession(todo[i]);
	free(todo);
}

/*
 * Re-reads the control file when it changed (a stat per call, which is cheap). The file is
 * stat()ed again after reading so a read that raced with a writer is retried, not applied.
 */
static void control_refresh(void)
{
	struct file_sig before, after;
	struct control c;
	bool removal = false, same;

	if (!control_path)
		return;
	for (int attempt = 0; attempt < 3; attempt++) {
		file_sig_get(control_path, &before);
		pthread_mutex_lock(&lock);
		same = file_sig_equal(&before, &ctl_sig);
		pthread_mutex_unlock(&lock);
		if (same)
			return;
		memset(&c, 0, sizeof(c));
		c.pin_tries = DEFAULT_PIN_TRIES;
		if (before.exists)
			control_read(control_path, &c);
		file_sig_get(control_path, &after);
		if (file_sig_equal(&before, &after))
			break;
	}
	pthread_mutex_lock(&lock);
	if (!file_sig_equal(&before, &ctl_sig)) {
		if (c.removed && !ctl.removed) {
			generation++;
			removal = true;
		}
		ctl = c;
		ctl_sig = before;
	} else {
		c.reset_pin = false; /* another thread applied this version */
	}
	pthread_mutex_unlock(&lock);
	if (removal)
		close_stale_sessions();
	if (c.reset_pin)
		pin_failures_update(-1);
}

/*
 * Calls that a plain fail= leaves alone: loading and unloading the library and asking about
 * it involve no token. They fail only when fail_calls names them.
 */
static bool fail_by_default(enum fn_id fn)
{
	switch (fn) {
	case FN_C_Initialize:
	case FN_C_Finalize:
	case FN_C_GetInfo:
	case FN_C_GetFunctionList:
	case FN_C_WaitForSlotEvent:
		return false;
	default:
		return true;
	}
}

/* Caller holds lock. Whether the control file injects a failure into fn, and which. */
static bool fail_hits(enum fn_id fn, CK_RV *rv)
{
	if (ctl.fail_rv == CKR_OK)
		return false;
	if (ctl.fail_only_set ? !ctl.fail_only[fn] : !fail_by_default(fn))
		return false;
	*rv = ctl.fail_rv;
	return true;
}

/*
 * Caller holds lock. The error a session call gets before it reaches the real module;
 * *injected tells a fail= fault (the session itself is fine) from a dead session.
 */
static CK_RV session_check(enum fn_id fn, const struct session *s, unsigned long gen,
			   bool *injected)
{
	CK_RV rv;

	*injected = false;
	if (!s)
		return CKR_SESSION_HANDLE_INVALID;
	/* Sessions from before a removal are gone for good, as on a real token. */
	if (s->gen != generation || gen != generation)
		return ctl.removed ? CKR_DEVICE_REMOVED : CKR_SESSION_HANDLE_INVALID;
	if (ctl.removed)
		return CKR_DEVICE_REMOVED;
	if (fail_hits(fn, &rv)) {
		*injected = true;
		return rv;
	}
	return CKR_OK;
}

/*
 * Starts a call on session h: checks it, maps the handle and marks the session busy. The
 * session is also entered on an injected fault (rv != CKR_OK, *injected), for callers that
 * must tidy up the real module's state before failing; they call session_leave() too.
 */
static CK_RV session_enter_fault(enum fn_id fn, CK_SESSION_HANDLE h, struct call *c, bool *injected)
{
	struct session *s;
	CK_RV rv;

	control_refresh();
	pthread_mutex_lock(&lock);
	s = session_find(h);
	rv = session_check(fn, s, generation, injected);
	if (rv == CKR_OK || *injected) {
		s->busy++;
		c->shim = h;
		c->real = s->real;
		c->gen = s->gen;
		c->sign_delay_ms = ctl.sign_delay_ms;
		c->pin_tries = ctl.pin_tries;
	}
	pthread_mutex_unlock(&lock);
	return rv;
}

static void session_leave(const struct call *c)
{
	struct session *s;
	bool close_real = false;

	pthread_mutex_lock(&lock);
	s = session_lookup(c->shim, true);
	if (s && !--s->busy && s->real_open && (s->closed || s->gen != generation)) {
		s->real_open = false;
		close_real = true;
	}
	if (s && !s->busy && s->closed)
		session_drop(s);
	pthread_mutex_unlock(&lock);
	if (close_real)
		real->C_CloseSession(c->real);
}

/* Starts a call on session h; on any error the session is left alone. */
static CK_RV session_enter(enum fn_id fn, CK_SESSION_HANDLE h, struct call *c)
{
	bool injected;
	CK_RV rv = session_enter_fault(fn, h, c, &injected);

	if (injected)
		session_leave(c);
	return rv;
}

/* Checks a busy session again (after a sleep: the token may have gone meanwhile). */
static CK_RV session_recheck(enum fn_id fn, const struct call *c, bool *injected)
{
	CK_RV rv;

	control_refresh();
	pthread_mutex_lock(&lock);
	rv = session_check(fn, session_find(c->shim), c->gen, injected);
	pthread_mutex_unlock(&lock);
	return rv;
}

/* Checks a call that names a slot or token rather than a session. */
static CK_RV slot_enter(enum fn_id fn, unsigned long *gen)
{
	CK_RV rv = CKR_OK;

	control_refresh();
	pthread_mutex_lock(&lock);
	if (ctl.removed)
		rv = CKR_TOKEN_NOT_PRESENT;
	else
		fail_hits(fn, &rv);
	if (gen)
		*gen = generation;
	pthread_mutex_unlock(&lock);
	return rv;
}

/* Checks a call that involves no token: only an explicit fail_calls entry breaks it. */
static CK_RV library_enter(enum fn_id fn)
{
	CK_RV rv = CKR_OK;

	control_refresh();
	pthread_mutex_lock(&lock);
	fail_hits(fn, &rv);
	pthread_mutex_unlock(&lock);
	return rv;
}

/* ---- object handles ---------------------------------------------------- */

static CK_OBJECT_HANDLE obj_out(const struct call *c, CK_OBJECT_HANDLE h)
{
	static bool warned;

	if (h == CK_INVALID_HANDLE)
		return h;
	if (h >> OBJ_SHIFT) {
		if (!warned)
			warn("real object handle 0x%lx too large to tag; passed through", h);
		warned = true;
		return h;
	}
	return h | ((c->gen & OBJ_GEN_MASK) + 1) << OBJ_SHIFT;
}

static bool obj_in(const struct call *c, CK_OBJECT_HANDLE h, CK_OBJECT_HANDLE *real_h)
{
	if (h == CK_INVALID_HANDLE) {
		*real_h = h;
		return true;
	}
	if (h >> OBJ_SHIFT != (c->gen & OBJ_GEN_MASK) + 1)
		return false;
	*real_h = h & ((1UL << OBJ_SHIFT) - 1);
	return true;
}

/* ---- stats ------------------------------------------------------------- */

static void stats_write(void)
{
	unsigned long sc, lc, sg;
	char dst[4096], tmp[4200], buf[128];
	int len, fd;

	pthread_mutex_lock(&stats_io);
	pthread_mutex_lock(&lock);
	if (!stats.path) {
		pthread_mutex_unlock(&lock);
		pthread_mutex_unlock(&stats_io);
		return;
	}
	sc = stats.sign_calls;
	lc = stats.login_calls;
	sg = stats.signatures;
	stats.dirty = false;
	stats.last_ms = now_ms();
	snprintf(dst, sizeof(dst), "%s", stats.path);
	pthread_mutex_unlock(&lock);
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", dst, (int)getpid());

	/* Written aside and renamed so a reader never sees a half-written file. */
	len = snprintf(buf, sizeof(buf), "sign_calls=%lu\nlogin_calls=%lu\nsignatures=%lu\n", sc,
		       lc, sg);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd == -1 || write(fd, buf, (size_t)len) != len || close(fd) == -1 ||
	    rename(tmp, dst) == -1) {
		warn("stats %s: %s", dst, strerror(errno));
		unlink(tmp);
	}
	pthread_mutex_unlock(&stats_io);
}

/* Writes the file when it is dirty, no more often than every STATS_INTERVAL_MS. */
static void *stats_thread(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	while (!stats.stop) {
		uint64_t due = stats.last_ms + STATS_INTERVAL_MS, now = now_ms();
		struct timespec ts;

		if (!stats.dirty) {
			pthread_cond_wait(&stats.cond, &lock);
			continue;
		}
		if (now < due) {
			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_sec += (time_t)((due - now) / 1000);
			ts.tv_nsec += (long)((due - now) % 1000) * 1000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&stats.cond, &lock, &ts);
			continue;
		}
		pthread_mutex_unlock(&lock);
		stats_write();
		pthread_mutex_lock(&lock);
	}
	pthread_mutex_unlock(&lock);
	return NULL;
}

static void stats_count(unsigned long *counter)
{
	bool write_now = false;

	pthread_mutex_lock(&lock);
	(*counter)++;
	if (stats.path) {
		if (stats.running && !stats.dirty)
			pthread_cond_signal(&stats.cond);
		stats.dirty = true;
		/* The caller forbade threads: write from here, still rate-limited. */
		write_now = stats.sync && now_ms() >= stats.last_ms + STATS_INTERVAL_MS;
	}
	pthread_mutex_unlock(&lock);
	if (write_now)
		stats_write();
}

static void stats_start(bool may_create_threads)
{
	char *path = NULL;
	const char *p;

	if (!stats_template)
		return;
	/* "%p" becomes the pid so forked workers can each keep their own file. */
	p = strstr(stats_template, "%p");
	if (p) {
		if (asprintf(&path, "%.*s%d%s", (int)(p - stats_template), stats_template,
			     (int)getpid(), p + 2) == -1)
			path = NULL;
	} else {
		path = strdup(stats_template);
	}
	if (!path)
		return;
	pthread_mutex_lock(&lock);
	free(stats.path);
	stats.path = path;
	stats.stop = false;
	stats.sync = !may_create_threads;
	if (!stats.running && may_create_threads) {
		if (pthread_create(&stats.thread, NULL, stats_thread, NULL) == 0)
			stats.running = true;
		else
			stats.sync = true;
	}
	stats.dirty = true; /* the file exists (with zeros) from C_Initialize on */
	if (stats.running)
		pthread_cond_signal(&stats.cond);
	pthread_mutex_unlock(&lock);
	if (stats.sync)
		stats_write();
}

static void stats_stop(void)
{
	bool join;

	pthread_mutex_lock(&lock);
	join = stats.running;
	stats.stop = true;
	stats.running = false;
	pthread_cond_signal(&stats.cond);
	pthread_mutex_unlock(&lock);
	if (join)
		pthread_join(stats.thread, NULL);
	stats_write();
}

/* ---- loading the real module ------------------------------------------- */

static void fork_prepare(void)
{
	pthread_mutex_lock(&stats_io);
	pthread_mutex_lock(&lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&lock);
	pthread_mutex_unlock(&stats_io);
}

/* A forked child has no stats thread and, per PKCS#11, none of the parent's sessions. */
static void fork_child(void)
{
	pthread_condattr_t ca;

	stats.running = false;
	nsessions = 0;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&stats.cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_unlock(&lock);
	pthread_mutex_unlock(&stats_io);
}

static void load_real(void)
{
	const char *module = getenv("FGSHIM_MODULE");
	const char *p;
	CK_C_GetFunctionList get;
	pthread_condattr_t ca;
	void *dl;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&stats.cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_atfork(fork_prepare, fork_parent, fork_child);

	p = getenv("FGSHIM_CONTROL");
	if (p && *p) {
		control_path = strdup(p);
		if (asprintf(&state_path, "%s.state", p) == -1)
			state_path = NULL;
	}
	p = getenv("FGSHIM_STATS");
	if (p && *p)
		stats_template = strdup(p);

	if (!module || !*module)
		module = DEFAULT_MODULE;
	dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
	if (!dl) {
		warn("cannot load %s: %s", module, dlerror());
		return;
	}
	get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
	if (!get || get == C_GetFunctionList) {
		warn("%s: no usable C_GetFunctionList", module);
		return;
	}
	if (get(&real) != CKR_OK || !real) {
		warn("%s: C_GetFunctionList failed", module);
		real = NULL;
		return;
	}
	/* The module stays loaded for the life of the process, as p11-kit does with most. */
	load_rv = CKR_OK;
}

/* ---- general-purpose functions ----------------------------------------- */

static CK_RV shim_C_Initialize(CK_VOID_PTR pInitArgs)
{
	CK_C_INITIALIZE_ARGS *args = pInitArgs;
	CK_RV rv = library_enter(FN_C_Initialize);

	if (rv != CKR_OK)
		return rv;
	/* The arguments go through untouched, CKF_OS_LOCKING_OK included. */
	rv = real->C_Initialize(pInitArgs);
	if (rv == CKR_OK)
		stats_start(!(args && (args->flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS)));
	return rv;
}

static CK_RV shim_C_Finalize(CK_VOID_PTR pReserved)
{
	/* Never failed on purpose: a test must always be able to unload cleanly. */
	CK_RV rv = real->C_Finalize(pReserved);

	if (rv == CKR_OK) {
		pthread_mutex_lock(&lock);
		nsessions = 0;
		pthread_mutex_unlock(&lock);
	}
	stats_stop();
	return rv;
}

static CK_RV shim_C_GetInfo(CK_INFO_PTR pInfo)
{
	static const char manufacturer[] = "Farmgate test shim";
	CK_RV rv = library_enter(FN_C_GetInfo);

	if (rv != CKR_OK)
		return rv;
	rv = real->C_GetInfo(pInfo);
	if (rv == CKR_OK) {
		/* Blank-padded, not NUL-terminated, as PKCS#11 wants; the version stays the real one. */
		memset(pInfo->manufacturerID, ' ', sizeof(pInfo->manufacturerID));
		memcpy(pInfo->manufacturerID, manufacturer, sizeof(manufacturer) - 1);
	}
	return rv;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
	pthread_once(&load_once, load_real);
	if (load_rv != CKR_OK)
		return load_rv;
	if (!ppFunctionList)
		return CKR_ARGUMENTS_BAD;
	*ppFunctionList = &shim_list;
	return CKR_OK;
}

/* ---- slot and token management ----------------------------------------- */

static CK_RV shim_C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList,
				CK_ULONG_PTR pulCount)
{
	CK_RV rv = CKR_OK;
	bool removed;

	control_refresh();
	pthread_mutex_lock(&lock);
	/*
	 * Listing readers (tokenPresent=FALSE) does not touch the token, so a device fault only
	 * breaks it when fail_calls names C_GetSlotList explicitly.
	 */
	if (tokenPresent || ctl.fail_only_set)
		fail_hits(FN_C_GetSlotList, &rv);
	removed = ctl.removed;
	pthread_mutex_unlock(&lock);
	if (rv != CKR_OK)
		return rv;
	if (removed && tokenPresent) {
		if (!pulCount)
			return CKR_ARGUMENTS_BAD;
		*pulCount = 0;
		return CKR_OK;
	}
	return real->C_GetSlotList(tokenPresent, pSlotList, pulCount);
}

static CK_RV shim_C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
	CK_RV rv = slot_enter(FN_C_GetSlotInfo, NULL);
	bool removed = rv == CKR_TOKEN_NOT_PRESENT;

	/* The reader is still there when the token is removed: only the flag changes. */
	if (rv != CKR_OK && !removed)
		return rv;
	rv = real->C_GetSlotInfo(slotID, pInfo);
	if (rv == CKR_OK && removed)
		pInfo->flags &= ~CKF_TOKEN_PRESENT;
	return rv;
}

static CK_RV shim_C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
	long tries, failures, left;
	CK_RV rv = slot_enter(FN_C_GetTokenInfo, NULL);

	if (rv != CKR_OK)
		return rv;
	rv = real->C_GetTokenInfo(slotID, pInfo);
	if (rv != CKR_OK)
		return rv;
	pthread_mutex_lock(&lock);
	tries = ctl.pin_tries;
	pthread_mutex_unlock(&lock);
	if (tries <= 0 || !(pInfo->flags & CKF_USER_PIN_INITIALIZED))
		return rv;
	/* The shim owns the counter, so it owns these flags too. */
	failures = pin_failures_update(0);
	left = tries - failures;
	pInfo->flags &= ~(CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED);
	if (failures > 0)
		pInfo->flags |= CKF_USER_PIN_COUNT_LOW;
	if (left <= 0)
		pInfo->flags |= CKF_USER_PIN_LOCKED;
	else if (left == 1)
		pInfo->flags |= CKF_USER_PIN_FINAL_TRY;
	return rv;
}

static CK_RV shim_C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pRserved)
{
	CK_RV rv = library_enter(FN_C_WaitForSlotEvent);

	if (rv != CKR_OK)
		return rv;
	return real->C_WaitForSlotEvent(flags, pSlot, pRserved);
}

static CK_RV shim_C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList,
				     CK_ULONG_PTR pulCount)
{
	CK_RV rv = slot_enter(FN_C_GetMechanismList, NULL);

	if (rv != CKR_OK)
		return rv;
	rv = real->C_GetMechanismList(slotID, pMechanismList, pulCount);
	if (rv == CKR_OK && pMechanismList) {
		CK_ULONG i, n = 0;

		for (i = 0; i < *pulCount; i++)
			if (!mech_hidden(pMechanismList[i]))
				pMechanismList[n++] = pMechanismList[i];
		*pulCount = n;
	}
	return rv;
}

static CK_RV shim_C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type,
				     CK_MECHANISM_INFO_PTR pInfo)
{
	CK_RV rv = slot_enter(FN_C_GetMechanismInfo, NULL);

	if (rv != CKR_OK)
		return rv;
	if (mech_hidden(type))
		return CKR_MECHANISM_INVALID;
	return real->C_GetMechanismInfo(slotID, type, pInfo);
}

static CK_RV shim_C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
			      CK_UTF8CHAR_PTR pLabel)
{
	CK_RV rv = slot_enter(FN_C_InitToken, NULL);

	if (rv != CKR_OK)
		return rv;
	rv = real->C_InitToken(slotID, pPin, ulPinLen, pLabel);
	if (rv == CKR_OK)
		pin_failures_update(-1); /* a new token has a fresh user PIN */
	return rv;
}

/* ---- the plain session calls: checked, mapped and forwarded ------------ */

#define FWD(name, params, args)                                                                    \
	static CK_RV shim_##name params                                                            \
	{                                                                                          \
		struct call c;                                                                     \
		CK_RV rv = session_enter(FN_##name, hSession, &c);                                 \
                                                                                                   \
		if (rv != CKR_OK)                                                                  \
			return rv;                                                                 \
		rv = real->name args;                                                              \
		session_leave(&c);                                                                 \
		return rv;                                                                         \
	}

/* The same for calls that take one object handle, which must be from this generation. */
#define FWD_OBJ(name, params, obj, stale_rv, args)                                                 \
	static CK_RV shim_##name params                                                            \
	{                                                                                          \
		struct call c;                                                                     \
		CK_OBJECT_HANDLE real_obj;                                                         \
		CK_RV rv = session_enter(FN_##name, hSession, &c);                                 \
                                                                                                   \
		if (rv != CKR_OK)                                                                  \
			return rv;                                                                 \
		if (obj_in(&c, obj, &real_obj))                                                    \
			rv = real->name args;                                                      \
		else                                                                               \
			rv = stale_rv;                                                             \
		session_leave(&c);                                                                 \
		return rv;                                                                         \
	}

FWD(C_SetPIN,
    (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen,
     CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen),
    (c.real, pOldPin, ulOldLen, pNewPin, ulNewLen))
FWD(C_GetSessionInfo, (CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo), (c.real, pInfo))
FWD(C_GetOperationState,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, CK_ULONG_PTR pulOperationStateLen),
    (c.real, pOperationState, pulOperationStateLen))
FWD(C_Logout, (CK_SESSION_HANDLE hSession), (c.real))
FWD_OBJ(C_DestroyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject), hObject,
	CKR_OBJECT_HANDLE_INVALID, (c.real, real_obj))
FWD_OBJ(C_GetObjectSize,
	(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize), hObject,
	CKR_OBJECT_HANDLE_INVALID, (c.real, real_obj, pulSize))
FWD_OBJ(C_GetAttributeValue,
	(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
	 CK_ULONG ulCount),
	hObject, CKR_OBJECT_HANDLE_INVALID, (c.real, real_obj, pTemplate, ulCount))
FWD_OBJ(C_SetAttributeValue,
	(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
	 CK_ULONG ulCount),
	hObject, CKR_OBJECT_HANDLE_INVALID, (c.real, real_obj, pTemplate, ulCount))
FWD(C_FindObjectsInit, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount),
    (c.real, pTemplate, ulCount))
FWD_OBJ(C_EncryptInit,
	(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), hKey,
	CKR_KEY_HANDLE_INVALID, (c.real, pMechanism, real_obj))
FWD(C_Encrypt,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pEncryptedData,
     CK_ULONG_PTR pulEncryptedDataLen),
    (c.real, pData, ulDataLen, pEncryptedData, pulEncryptedDataLen))
FWD(C_EncryptUpdate,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart,
     CK_ULONG_PTR pulEncryptedPartLen),
    (c.real, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen))
FWD(C_EncryptFinal,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastEncryptedPart,
     CK_ULONG_PTR pulLastEncryptedPartLen),
    (c.real, pLastEncryptedPart, pulLastEncryptedPartLen))
FWD_OBJ(C_DecryptInit,
	(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), hKey,
	CKR_KEY_HANDLE_INVALID, (c.real, pMechanism, real_obj))
FWD(C_Decrypt,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen,
     CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen),
    (c.real, pEncryptedData, ulEncryptedDataLen, pData, pulDataLen))
FWD(C_DecryptUpdate,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen,
     CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen),
    (c.real, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen))
FWD(C_DecryptFinal,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastPart, CK_ULONG_PTR pulLastPartLen),
    (c.real, pLastPart, pulLastPartLen))
FWD(C_DigestInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism), (c.real, pMechanism))
FWD(C_Digest,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest,
     CK_ULONG_PTR pulDigestLen),
    (c.real, pData, ulDataLen, pDigest, pulDigestLen))
FWD(C_DigestUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),
    (c.real, pPart, ulPartLen))
FWD_OBJ(C_DigestKey, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey), hKey,
	CKR_KEY_HANDLE_INVALID, (c.real, real_obj))
FWD(C_DigestFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen),
    (c.real, pDigest, pulDigestLen))
/* Written out (not FWD_OBJ): a hidden mechanism is refused here too. */
static CK_RV shim_C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
			     CK_OBJECT_HANDLE hKey)
{
	struct call c;
	CK_OBJECT_HANDLE real_obj;
	CK_RV rv = session_enter(FN_C_SignInit, hSession, &c);

	if (rv != CKR_OK)
		return rv;
	if (pMechanism && mech_hidden(pMechanism->mechanism))
		rv = CKR_MECHANISM_INVALID;
	else if (obj_in(&c, hKey, &real_obj))
		rv = real->C_SignInit(c.real, pMechanism, real_obj);
	else
		rv = CKR_KEY_HANDLE_INVALID;
	session_leave(&c);
	return rv;
}
FWD_OBJ(C_SignRecoverInit,
	(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), hKey,
	CKR_KEY_HANDLE_INVALID, (c.real, pMechanism, real_obj))
FWD(C_SignRecover,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
     CK_ULONG_PTR pulSignatureLen),
    (c.real, pData, ulDataLen, pSignature, pulSignatureLen))
FWD_OBJ(C_VerifyInit,
	(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), hKey,
	CKR_KEY_HANDLE_INVALID, (c.real, pMechanism, real_obj))
FWD(C_Verify,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
     CK_ULONG ulSignatureLen),
    (c.real, pData, ulDataLen, pSignature, ulSignatureLen))
FWD(C_VerifyUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),
    (c.real, pPart, ulPartLen))
FWD(C_VerifyFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen),
    (c.real, pSignature, ulSignatureLen))
FWD_OBJ(C_VerifyRecoverInit,
	(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), hKey,
	CKR_KEY_HANDLE_INVALID, (c.real, pMechanism, real_obj))
FWD(C_VerifyRecover,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen, CK_BYTE_PTR pData,
     CK_ULONG_PTR pulDataLen),
    (c.real, pSignature, ulSignatureLen, pData, pulDataLen))
FWD(C_DigestEncryptUpdate,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart,
     CK_ULONG_PTR pulEncryptedPartLen),
    (c.real, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen))
FWD(C_DecryptDigestUpdate,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen,
     CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen),
    (c.real, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen))
FWD(C_SignEncryptUpdate,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart,
     CK_ULONG_PTR pulEncryptedPartLen),
    (c.real, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen))
FWD(C_DecryptVerifyUpdate,
    (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen,
     CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen),
    (c.real, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen))
FWD(C_SeedRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen),
    (c.real, pSeed, ulSeedLen))
FWD(C_GenerateRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR RandomData, CK_ULONG ulRandomLen),
    (c.real, RandomData, ulRandomLen))
FWD(C_GetFunctionStatus, (CK_SESSION_HANDLE hSession), (c.real))
FWD(C_CancelFunction, (CK_SESSION_HANDLE hSession), (c.real))

/* ---- session management ------------------------------------------------ */

static CK_RV shim_C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication,
				CK_NOTIFY Notify, CK_SESSION_HANDLE_PTR phSession)
{
	CK_SESSION_HANDLE real_h;
	unsigned long gen;
	bool stale = false;
	CK_RV rv = slot_enter(FN_C_OpenSession, &gen);

	if (rv != CKR_OK)
		return rv;
	if (!phSession)
		return CKR_ARGUMENTS_BAD;
	rv = real->C_OpenSession(slotID, flags, pApplication, Notify, &real_h);
	if (rv != CKR_OK)
		return rv;
	pthread_mutex_lock(&lock);
	if (nsessions == session_cap) {
		size_t cap = session_cap ? session_cap * 2 : 16;
		struct session *n = realloc(sessions, cap * sizeof(*n));

		if (!n) {
			pthread_mutex_unlock(&lock);
			real->C_CloseSession(real_h);
			return CKR_HOST_MEMORY;
		}
		sessions = n;
		session_cap = cap;
	}
	/* Opened with the generation seen before the real call: a removal meanwhile makes it stale. */
	sessions[nsessions++] = (struct session){
		.shim = next_session,
		.real = real_h,
		.slot = slotID,
		.gen = gen,
		.real_open = gen == generation,
	};
	stale = gen != generation;
	*phSession = next_session++;
	pthread_mutex_unlock(&lock);
	if (stale)
		real->C_CloseSession(real_h);
	return CKR_OK;
}

static CK_RV shim_C_CloseSession(CK_SESSION_HANDLE hSession)
{
	struct session *s;
	CK_SESSION_HANDLE real_h = 0;
	bool forward = false, injected;
	CK_RV rv;

	control_refresh();
	pthread_mutex_lock(&lock);
	s = session_find(hSession);
	rv = session_check(FN_C_CloseSession, s, generation, &injected);
	if (s) {
		/*
		 * The real session is closed even when the caller is told otherwise (an injected
		 * fault must not leak sessions into the next test step), but not under a call
		 * still running in another thread: the last one closes it in session_leave().
		 */
		if (s->busy) {
			s->closed = true;
		} else {
			forward = s->real_open;
			real_h = s->real;
			session_drop(s);
		}
	}
	pthread_mutex_unlock(&lock);
	if (forward) {
		CK_RV real_rv = real->C_CloseSession(real_h);

		if (rv == CKR_OK)
			rv = real_rv;
	}
	return rv;
}

static CK_RV shim_C_CloseAllSessions(CK_SLOT_ID slotID)
{
	CK_RV rv = CKR_OK, real_rv;

	control_refresh();
	pthread_mutex_lock(&lock);
	fail_hits(FN_C_CloseAllSessions, &rv);
	pthread_mutex_unlock(&lock);
	/* Forwarded even on an injected failure, for the same reason as C_CloseSession. */
	real_rv = real->C_CloseAllSessions(slotID);
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < nsessions;) {
		if (sessions[i].slot == slotID)
			session_drop(&sessions[i]);
		else
			i++;
	}
	pthread_mutex_unlock(&lock);
	return rv != CKR_OK ? rv : real_rv;
}

static CK_RV shim_C_SetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState,
				      CK_ULONG ulOperationStateLen, CK_OBJECT_HANDLE hEncryptionKey,
				      CK_OBJECT_HANDLE hAuthenticationKey)
{
	CK_OBJECT_HANDLE ek, ak;
	struct call c;
	CK_RV rv = session_enter(FN_C_SetOperationState, hSession, &c);

	if (rv != CKR_OK)
		return rv;
	if (!obj_in(&c, hEncryptionKey, &ek) || !obj_in(&c, hAuthenticationKey, &ak))
		rv = CKR_KEY_HANDLE_INVALID;
	else
		rv = real->C_SetOperationState(c.real, pOperationState, ulOperationStateLen, ek,
					       ak);
	session_leave(&c);
	return rv;
}

/* ---- login and the PIN counter ----------------------------------------- */

static CK_RV shim_C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin,
			  CK_ULONG ulPinLen)
{
	struct call c;
	bool counted;
	CK_RV rv;

	stats_count(&stats.login_calls);
	rv = session_enter(FN_C_Login, hSession, &c);
	if (rv != CKR_OK)
		return rv;
	/* The SO PIN has its own counter on real tokens; only the user PIN is simulated. */
	counted = c.pin_tries > 0 && (userType == CKU_USER || userType == CKU_CONTEXT_SPECIFIC);
	if (counted && pin_failures_update(0) >= c.pin_tries) {
		/* Locked: the real module never sees the PIN, right or wrong. */
		rv = CKR_PIN_LOCKED;
	} else {
		rv = real->C_Login(c.real, userType, pPin, ulPinLen);
		if (counted && rv == CKR_PIN_INCORRECT)
			pin_failures_update(1);
		else if (counted && rv == CKR_OK)
			pin_failures_update(-1);
	}
	session_leave(&c);
	return rv;
}

static CK_RV shim_C_InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
	struct call c;
	CK_RV rv = session_enter(FN_C_InitPIN, hSession, &c);

	if (rv != CKR_OK)
		return rv;
	rv = real->C_InitPIN(c.real, pPin, ulPinLen);
	/* The SO setting a new user PIN is how a real token is unlocked. */
	if (rv == CKR_OK)
		pin_failures_update(-1);
	session_leave(&c);
	return rv;
}

/* ---- objects ----------------------------------------------------------- */

static CK_RV shim_C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate,
				 CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phObject)
{
	struct call c;
	CK_RV rv = session_enter(FN_C_CreateObject, hSession, &c);

	if (rv != CKR_OK)
		return rv;
	rv = real->C_CreateObject(c.real, pTemplate, ulCount, phObject);
	if (rv == CKR_OK && phObject)
		*phObject = obj_out(&c, *phObject);
	session_leave(&c);
	return rv;
}

static CK_RV shim_C_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
			       CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
			       CK_OBJECT_HANDLE_PTR phNewObject)
{
	CK_OBJECT_HANDLE obj;
	struct call c;
	CK_RV rv = session_enter(FN_C_CopyObject, hSession, &c);

	if (rv != CKR_OK)
		return rv;
	if (!obj_in(&c, hObject, &obj)) {
		rv = CKR_OBJECT_HANDLE_INVALID;
	} else {
		rv = real->C_CopyObject(c.real, obj, pTemplate, ulCount, phNewObject);
		if (rv == CKR_OK && phNewObject)
			*phNewObject = obj_out(&c, *phNewObject);
	}
	session_leave(&c);
	return rv;
}

static CK_RV shim_C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject,
				CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount)
{
	struct call c;
	CK_RV rv = session_enter(FN_C_FindObjects, hSession, &c);

	if (rv != CKR_OK)
		return rv;
	rv = real->C_FindObjects(c.real, phObject, ulMaxObjectCount, pulObjectCount);
	if (rv == CKR_OK && phObject && pulObjectCount)
		for (CK_ULONG i = 0; i < *pulObjectCount && i < ulMaxObjectCount; i++)
			phObject[i] = obj_out(&c, phObject[i]);
	session_leave(&c);
	return rv;
}

static CK_RV shim_C_FindObjectsFinal(CK_SESSION_HANDLE hSession)
{
	struct call c;
	bool injected;
	CK_RV rv = session_enter_fault(FN_C_FindObjectsFinal, hSession, &c, &injected);
	CK_RV real_rv;

	if (rv != CKR_OK && !injected)
		return rv;
	/*
	 * An injected failure still ends the real search: otherwise, once the fault is cleared,
	 * the next C_FindObjectsInit would get CKR_OPERATION_ACTIVE, which no real token does.
	 */
	real_rv = real->C_FindObjectsFinal(c.real);
	session_leave(&c);
	return injected ? rv : real_rv;
}

/* ---- keys -------------------------------------------------------------- */

static CK_RV shim_C_GenerateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
				CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
				CK_OBJECT_HANDLE_PTR phKey)
{
	struct call c;
	CK_RV rv = session_enter(FN_C_GenerateKey, hSession, &c);

	if (rv != CKR_OK)
		return rv;
	rv = real->C_GenerateKey(c.real, pMechanism, pTemplate, ulCount, phKey);
	if (rv == CKR_OK && phKey)
		*phKey = obj_out(&c, *phKey);
	session_leave(&c);
	return rv;
}

static CK_RV
shim_C_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
		       CK_ATTRIBUTE_PTR pPublicKeyTemplate, CK_ULONG ulPublicKeyAttributeCount,
		       CK_ATTRIBUTE_PTR pPrivateKeyTemplate, CK_ULONG ulPrivateKeyAttributeCount,
		       CK_OBJECT_HANDLE_PTR phPublicKey, CK_OBJECT_HANDLE_PTR phPrivateKey)
{
	struct call c;
	CK_RV rv = session_enter(FN_C_GenerateKeyPair, hSession, &c);

	if (rv != CKR_OK)
		return rv;
	rv = real->C_GenerateKeyPair(c.real, pMechanism, pPublicKeyTemplate,
				     ulPublicKeyAttributeCount, pPrivateKeyTemplate,
				     ulPrivateKeyAttributeCount, phPublicKey, phPrivateKey);
	if (rv == CKR_OK && phPublicKey)
		*phPublicKey = obj_out(&c, *phPublicKey);
	if (rv == CKR_OK && phPrivateKey)
		*phPrivateKey = obj_out(&c, *phPrivateKey);
	session_leave(&c);
	return rv;
}

static CK_RV shim_C_WrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
			    CK_OBJECT_HANDLE hWrappingKey, CK_OBJECT_HANDLE hKey,
			    CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen)
{
	CK_OBJECT_HANDLE wk, k;
	struct call c;
	CK_RV rv = session_enter(FN_C_WrapKey, hSession, &c);

	if (rv != CKR_OK)
		return rv;
	if (!obj_in(&c, hWrappingKey, &wk))
		rv = CKR_WRAPPING_KEY_HANDLE_INVALID;
	else if (!obj_in(&c, hKey, &k))
		rv = CKR_KEY_HANDLE_INVALID;
	else
		rv = real->C_WrapKey(c.real, pMechanism, wk, k, pWrappedKey, pulWrappedKeyLen);
	session_leave(&c);
	return rv;
}

static CK_RV shim_C_UnwrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
			      CK_OBJECT_HANDLE hUnwrappingKey, CK_BYTE_PTR pWrappedKey,
			      CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate,
			      CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)
{
	CK_OBJECT_HANDLE uk;
	struct call c;
	CK_RV rv = session_enter(FN_C_UnwrapKey, hSession, &c);

	if (rv != CKR_OK)
		return rv;
	if (!obj_in(&c, hUnwrappingKey, &uk)) {
		rv = CKR_UNWRAPPING_KEY_HANDLE_INVALID;
	} else {
		rv = real->C_UnwrapKey(c.real, pMechanism, uk, pWrappedKey, ulWrappedKeyLen,
				       pTemplate, ulAttributeCount, phKey);
		if (rv == CKR_OK && phKey)
			*phKey = obj_out(&c, *phKey);
	}
	session_leave(&c);
	return rv;
}

static CK_RV shim_C_DeriveKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
			      CK_OBJECT_HANDLE hBaseKey, CK_ATTRIBUTE_PTR pTemplate,
			      CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)
{
	CK_OBJECT_HANDLE bk;
	struct call c;
	CK_RV rv = session_enter(FN_C_DeriveKey, hSession, &c);

	if (rv != CKR_OK)
		return rv;
	if (!obj_in(&c, hBaseKey, &bk)) {
		rv = CKR_KEY_HANDLE_INVALID;
	} else {
		rv = real->C_DeriveKey(c.real, pMechanism, bk, pTemplate, ulAttributeCount, phKey);
		if (rv == CKR_OK && phKey)
			*phKey = obj_out(&c, *phKey);
	}
	session_leave(&c);
	return rv;
}

/* ---- signing: delay, counters, and clean-up after injected failures ---- */

/*
 * PKCS#11 says a failed C_Sign/C_SignUpdate/C_SignFinal ends the operation. When the shim
 * invents the failure the real module's operation is still active, so it is finished here
 * with a scratch buffer; otherwise the next C_SignInit would get CKR_OPERATION_ACTIVE.
 */
static void drain_sign(CK_SESSION_HANDLE real_h, bool single, CK_BYTE_PTR data, CK_ULONG len)
{
	CK_BYTE buf[DRAIN_BUF];
	CK_ULONG n = sizeof(buf);
	CK_RV rv;

	rv = single ? real->C_Sign(real_h, data, len, buf, &n) : real->C_SignFinal(real_h, buf, &n);
	if (rv == CKR_BUFFER_TOO_SMALL) {
		CK_BYTE_PTR big = malloc(n);

		if (big) {
			if (single)
				real->C_Sign(real_h, data, len, big, &n);
			else
				real->C_SignFinal(real_h, big, &n);
		}
		free(big);
	}
}

/*
 * Runs the checks common to C_Sign and C_SignFinal: the sleep of a slow token, then a second
 * look at the control file, since the token may have been removed or broken during the sleep.
 * A size query (no output buffer) is not delayed: middleware answers it without the card, and
 * this way a signature costs one delay whichever calling convention the caller uses.
 * Returns CKR_OK with the session busy (caller forwards, then session_leave()), or an error
 * with the session already left.
 */
static CK_RV sign_enter(enum fn_id fn, CK_SESSION_HANDLE h, struct call *c, bool query, bool single,
			CK_BYTE_PTR data, CK_ULONG len)
{
	bool injected;
	CK_RV rv;

	stats_count(&stats.sign_calls);
	rv = session_enter_fault(fn, h, c, &injected);
	if (rv != CKR_OK && !injected)
		return rv;
	/* The lock is not held here: other threads carry on while this "token" is busy. */
	if (rv == CKR_OK && c->sign_delay_ms && !query) {
		sleep_ms(c->sign_delay_ms);
		rv = session_recheck(fn, c, &injected);
	}
	if (rv == CKR_OK)
		return rv;
	if (injected)
		drain_sign(c->real, single, data, len);
	session_leave(c);
	return rv;
}

static void count_signature(CK_RV rv, CK_BYTE_PTR sig)
{
	if (rv == CKR_OK && sig)
		stats_count(&stats.signatures);
}

static CK_RV shim_C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
			 CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
	struct call c;
	CK_RV rv = sign_enter(FN_C_Sign, hSession, &c, !pSignature, true, pData, ulDataLen);

	if (rv != CKR_OK)
		return rv;
	rv = real->C_Sign(c.real, pData, ulDataLen, pSignature, pulSignatureLen);
	session_leave(&c);
	count_signature(rv, pSignature);
	return rv;
}

static CK_RV shim_C_SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature,
			      CK_ULONG_PTR pulSignatureLen)
{
	struct call c;
	CK_RV rv = sign_enter(FN_C_SignFinal, hSession, &c, !pSignature, false, NULL, 0);

	if (rv != CKR_OK)
		return rv;
	rv = real->C_SignFinal(c.real, pSignature, pulSignatureLen);
	session_leave(&c);
	count_signature(rv, pSignature);
	return rv;
}

static CK_RV shim_C_SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
	struct call c;
	bool injected;
	CK_RV rv = session_enter_fault(FN_C_SignUpdate, hSession, &c, &injected);

	if (rv != CKR_OK && !injected)
		return rv;
	if (injected)
		drain_sign(c.real, false, NULL, 0);
	else
		rv = real->C_SignUpdate(c.real, pPart, ulPartLen);
	session_leave(&c);
	return rv;
}

/* ---- the function list ------------------------------------------------- */

/* C_GetFunctionList is the one entry point that is the same in the list and the library. */
#define shim_C_GetFunctionList C_GetFunctionList

static CK_FUNCTION_LIST shim_list = {.version = {CRYPTOKI_VERSION_MAJOR, CRYPTOKI_VERSION_MINOR},
#define X(n) .n = shim_##n,
				     SHIM_FUNCS(X)
#undef X
};

/* Joins the stats thread before the code it runs is unmapped (dlclose() or exit). */
__attribute__((destructor)) static void shim_unload(void)
{
	bool running;

	pthread_mutex_lock(&lock);
	running = stats.running;
	pthread_mutex_unlock(&lock);
	if (running)
		stats_stop();
}
