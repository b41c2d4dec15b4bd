/* farmgate-mgmt: HTTPS listener, connections and HTTP framing. The API lives in
 * mgmt_api.c, passwords and sessions in mgmt_auth.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "buildopts.h"
#include "fgversion.h"
#include "cfg.h"
#include "http1.h"
#include "key.h"
#include "log.h"
#include "mgmt.h"
#include "mgmt_config.h"
#include "p11.h"

#define MAX_CONNS	32
#define IO_TIMEOUT_S	15
#define HEAD_MAX	16384
#define MAX_HEADERS	64
#define KEEPALIVE_N	100
#define HEAD_DEADLINE_S 20 /* a request head (or the handshake) must come within it */

#if defined(SYS_close_range) && !defined(CLOSE_RANGE_CLOEXEC)
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

struct mgmt M;
static atomic_int nconns;
static SSL_CTX *ctx;

/* ---- the control socket ----------------------------------------------------- */

char *control_call(const char *req, int timeout_ms, char *err, size_t errlen)
{
	struct sockaddr_un un;
	struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
	struct jbuf out = {0};
	char buf[16384];
	int fd;

	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	snprintf(un.sun_path, sizeof(un.sun_path), "%s", M.control_socket);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1 || connect(fd, (struct sockaddr *)&un, sizeof(un)) == -1) {
		snprintf(err, errlen, "farmgated is not answering on %s: %s", M.control_socket,
			 strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (write(fd, req, strlen(req)) != (ssize_t)strlen(req) || write(fd, "\n", 1) != 1) {
		snprintf(err, errlen, "control socket: %s", strerror(errno));
		close(fd);
		return NULL;
	}
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));

		if (n == 0)
			break;
		if (n < 0) {
			snprintf(err, errlen, "control socket: %s",
				 errno == EAGAIN ? "no answer in time" : strerror(errno));
			close(fd);
			jb_free(&out);
			return NULL;
		}
		jb_put(&out, buf, (size_t)n);
		if (out.len > (8u << 20))
			break;
	}
	close(fd);
	if (out.oom || !out.len) {
		snprintf(err, errlen, "control socket: %s",
			 out.oom ? "out of memory" : "no answer");
		jb_free(&out);
		return NULL;
	}
	return out.p;
}

void audit(const char *ip, const char *action, const char *detail)
{
	char path[512], when[32];
	time_t t = time(NULL);
	struct tm tm;
	FILE *f;
	int fd;

	snprintf(path, sizeof(path), "%s/audit.log", M.data_dir);
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd == -1)
		return;
	f = fdopen(fd, "a");
	if (!f) {
		close(fd);
		return;
	}
	gmtime_r(&t, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	/* one line per event: control bytes in the detail cannot forge another */
	fprintf(f, "%s\t%s\t%s\t", when, ip, action);
	for (; detail && *detail; detail++)
		fputc((unsigned char)*detail < 0x20 ? '?' : *detail, f);
	fputc('\n', f);
	fclose(f);
	LOGI("audit: %s %s %s", ip, action, detail ? detail : "");
}

/* ---- the system-actions helper (-x) ------------------------------------------------ */

/* fd becomes fd target of the new program (dup2 would leave target's
 * close-on-exec set if they are the same). Async-signal-safe. */
static int fd_onto(int fd, int target)
{
	if (fd == target)
		return fcntl(fd, F_SETFD, 0);
	return dup2(fd, target);
}

/* The child of helper_run: this process is a copy of a threaded one, so only
 * async-signal-safe calls until execv. Signal dispositions back to their
 * defaults (SIGPIPE is ignored here), nothing blocked, its own session (a
 * signal to farmgate-mgmt's process group must not stop a factory reset
 * half-way), stdin and stdout on /dev/null, stderr kept (the log). On
 * failure, errno goes back through errfd. */
__attribute__((noreturn)) static void helper_child(char *const argv[], int null, int errfd)
{
	struct sigaction sa;
	sigset_t none;
	int sig, e;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	for (sig = 1; sig < NSIG; sig++)
		sigaction(sig, &sa, NULL); /* SIGKILL, SIGSTOP and libc's own refuse: fine */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	setsid();
	if (fd_onto(null, 0) == -1 || fd_onto(null, 1) == -1)
		goto fail;
#ifdef SYS_close_range
	/* whatever a library opened without O_CLOEXEC (a PKCS#11 module) */
	syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
#endif
	execv(argv[0], argv);
fail:
	e = errno;
	if (write(errfd, &e, sizeof(e)) != (ssize_t)sizeof(e))
		_exit(126);
	_exit(127);
}

/* Runs "PROGRAM ACTION" (-x; no shell, nothing from the configuration in its
 * arguments). Called by a connection's thread once the answer is out and the
 * connection closed: the thread waits for the helper, so it is reaped (no
 * zombie), and logs how it ended. */
static void helper_run(const char *action)
{
	char *const argv[] = {(char *)M.system_helper, (char *)action, NULL};
	int pfd[2], null, status, e = 0;
	ssize_t n;
	pid_t pid;

	null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null == -1 || pipe2(pfd, O_CLOEXEC) == -1) {
		LOGE("%s %s: not run: %s", M.system_helper, action, strerror(errno));
		if (null >= 0)
			close(null);
		return;
	}
	pid = fork();
	if (pid == 0)
		helper_child(argv, null, pfd[1]);
	e = errno;
	close(pfd[1]);
	close(null);
	if (pid == -1) {
		LOGE("%s %s: not run: fork: %s", M.system_helper, action, strerror(e));
		close(pfd[0]);
		return;
	}
	/* the pipe closes at a successful exec, or brings its errno */
	do
		n = read(pfd[0], &e, sizeof(e));
	while (n == -1 && errno == EINTR);
	close(pfd[0]);
	if (n == (ssize_t)sizeof(e))
		LOGE("%s %s: cannot run it: %s", M.system_helper, action, strerror(e));
	else
		LOGI("%s %s: started (pid %d)", M.system_helper, action, (int)pid);
	while (waitpid(pid, &status, 0) == -1)
		if (errno != EINTR)
			return;
	if (n == (ssize_t)sizeof(e))
		return;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		LOGI("%s %s: done", M.system_helper, action);
	else if (WIFEXITED(status))
		LOGE("%s %s: exited with status %d", M.system_helper, action, WEXITSTATUS(status));
	else
		LOGE("%s %s: killed by signal %d", M.system_helper, action, WTERMSIG(status));
}

/* ---- the certificate --------------------------------------------------------- */

/* A P-256 self-signed certificate for the management listener, made at
 * first start and kept in the data directory (key mode 0600). */
static int cert_generate(const char *crt, const char *key, char *err, size_t errlen)
{
	EVP_PKEY *pk = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	X509_NAME *nm;
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	unsigned char serial[16];
	BIGNUM *bn = NULL;
	char host[256] = "farmgate", san[600];
	FILE *f;
	int fd, rc = -1;

	if (!pk || !x)
		goto out;
	gethostname(host, sizeof(host) - 1);
	RAND_bytes(serial, sizeof(serial));
	serial[0] &= 0x7f;
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	X509_set_version(x, 2);
	BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 397L * 86400);
	X509_set_pubkey(x, pk);
	nm = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(nm, "O", MBSTRING_ASC, (const unsigned char *)"Farmgate", -1, -1,
				   0);
	X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)host, -1, -1, 0);
	X509_set_issuer_name(x, nm);
	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	snprintf(san, sizeof(san), "DNS:%s,DNS:localhost,IP:127.0.0.1,IP:::1", host);
	ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
	if (ext) {
		X509_add_ext(x, ext, -1);
		X509_EXTENSION_free(ext);
	}
	ext = X509V3_EXT_conf_nid(NULL, &v3, NID_ext_key_usage, "serverAuth");
	if (ext) {
		X509_add_ext(x, ext, -1);
		X509_EXTENSION_free(ext);
	}
	if (!X509_sign(x, pk, EVP_sha256()))
		goto out;
	fd = open(key, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	f = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (!f || !PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL)) {
		if (f)
			fclose(f);
		else if (fd >= 0)
			close(fd);
		goto out;
	}
	fclose(f);
	f = fopen(crt, "w");
	if (!f || !PEM_write_X509(f, x)) {
		if (f)
			fclose(f);
		goto out;
	}
	fclose(f);
	rc = 0;
out:
	if (rc)
		snprintf(err, errlen, "cannot make the management certificate in %s: %s",
			 M.data_dir, strerror(errno));
	BN_free(bn);
	X509_free(x);
	EVP_PKEY_free(pk);
	return rc;
}

/* TLS 1.2 and 1.3, ECDHE with AEAD only, the server's order, no renegotiation. */
static SSL_CTX *ctx_new(void)
{
	SSL_CTX *c = SSL_CTX_new(TLS_server_method());

	if (c && (!SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION) ||
		  !SSL_CTX_set_cipher_list(c, "ECDHE+AESGCM:ECDHE+CHACHA20"))) {
		SSL_CTX_free(c);
		return NULL;
	}
	if (c)
		SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
					       SSL_OP_CIPHER_SERVER_PREFERENCE |
					       SSL_OP_IGNORE_UNEXPECTED_EOF);
	return c;
}

/* A management certificate on a token: this process opens the token itself
 * (it needs the token's pinFile) and signs each full handshake on it, one
 * at a time (a PKCS#11 session does one operation at a time). */
static pthread_mutex_t token_sign_lock = PTHREAD_MUTEX_INITIALIZER;

static int token_sign(struct hsm_key *k, CK_MECHANISM_TYPE mech, const unsigned char *in,
		      size_t inlen, unsigned char *out, size_t *outlen)
{
	CK_RV rv;

	pthread_mutex_lock(&token_sign_lock);
	rv = p11_sign(k->token, k->handle, mech, in, inlen, out, outlen);
	pthread_mutex_unlock(&token_sign_lock);
	k->last_rv = rv;
	return rv == CKR_OK ? 0 : -1;
}

static int token_identity(const struct config *cfg, X509 **cert, EVP_PKEY **pkey, char *err,
			  size_t errlen)
{
	const struct token_cfg *tc = NULL;
	struct p11_module *mod;
	struct p11_token *tok;
	struct p11_uri uri;
	struct p11_cert c;
	CK_OBJECT_HANDLE key;
	unsigned char thumb[32];
	size_t tl = 0;
	char pin[256], e[512];
	unsigned int i;

	for (i = 0; i < cfg->ntokens; i++)
		if (!cfg->mgmt.cert_token || !strcmp(cfg->tokens[i].name, cfg->mgmt.cert_token))
			tc = &cfg->tokens[i];
	if (!tc || !tc->pin_file) {
		snprintf(err, errlen,
			 "$.management.certificateHash: the token needs a pinFile (this process "
			 "logs in at start)");
		return -1;
	}
	if (p11_thumbprint_parse(cfg->mgmt.cert_hash, thumb, &tl, e, sizeof(e)) == -1 ||
	    p11_uri_parse(tc->uri, &uri, e, sizeof(e)) == -1 ||
	    p11_pin_file_read(tc->pin_file, pin, sizeof(pin), e, sizeof(e)) == -1)
		goto fail;
	mod = p11_module_load(tc->module, e, sizeof(e));
	tok = mod ? p11_token_open(mod, &uri, e, sizeof(e)) : NULL;
	if (!tok || p11_token_login(tok, pin, e, sizeof(e)) == -1) {
		OPENSSL_cleanse(pin, sizeof(pin));
		goto fail;
	}
	OPENSSL_cleanse(pin, sizeof(pin));
	memset(&c, 0, sizeof(c));
	if (p11_cert_find(tok, thumb, tl, &c, e, sizeof(e)) == -1 ||
	    p11_key_find_for_cert(tok, &c, &key, e, sizeof(e)) == -1 ||
	    !(*pkey = hsm_key_new(tok, key, c.x509, e, sizeof(e)))) {
		X509_free(c.x509);
		goto fail;
	}
	hsm_key_of(*pkey)->sign_hook = token_sign;
	*cert = c.x509;
	return 0; /* the token stays open for the life of the process */
fail:
	snprintf(err, errlen, "$.management.certificateHash: %s", e);
	return -1;
}

static int tls_setup(const struct config *cfg, char *err, size_t errlen)
{
	char crt[512], key[512];
	struct stat st;

	if (cfg->mgmt.cert_hash) {
		X509 *x = NULL;
		EVP_PKEY *pk = NULL;

		if (token_identity(cfg, &x, &pk, err, errlen) == -1)
			return -1;
		ctx = ctx_new();
		if (!ctx || SSL_CTX_use_certificate(ctx, x) != 1 ||
		    SSL_CTX_use_PrivateKey(ctx, pk) != 1) {
			snprintf(err, errlen, "$.management.certificateHash: OpenSSL refused it");
			X509_free(x);
			EVP_PKEY_free(pk);
			return -1;
		}
		X509_free(x);
		EVP_PKEY_free(pk); /* the context holds them */
		LOGI("management certificate: on token, thumbprint %s", cfg->mgmt.cert_hash);
		return 0;
	}
	if (cfg->mgmt.cert_file) {
		snprintf(crt, sizeof(crt), "%s", cfg->mgmt.cert_file);
		snprintf(key, sizeof(key), "%s", cfg->mgmt.key_file);
	} else {
		snprintf(crt, sizeof(crt), "%s/mgmt-cert.pem", M.data_dir);
		snprintf(key, sizeof(key), "%s/mgmt-key.pem", M.data_dir);
		if (stat(key, &st) == -1 || stat(crt, &st) == -1) {
			if (cert_generate(crt, key, err, errlen) == -1)
				return -1;
			LOGI("made the management certificate %s (self-signed, P-256)", crt);
		}
	}
	if (stat(key, &st) == 0 && (st.st_mode & 077)) {
		snprintf(err, errlen, "%.500s: a private key must be mode 0600 or stricter", key);
		return -1;
	}
	ctx = ctx_new();
	if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, crt) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		unsigned long e = ERR_peek_last_error();

		snprintf(err, errlen, "management TLS: %.200s (%.300s, %.300s)",
			 e ? ERR_reason_error_string(e) : "failed", crt, key);
		return -1;
	}
	return 0;
}

/* ---- one connection ----------------------------------------------------------- */

struct conn {
	int fd;
	SSL *ssl;
	char ip[INET6_ADDRSTRLEN];
	char in[HEAD_MAX];
	size_t in_len;
	time_t deadline;       /* for the request head (and the handshake before it) */
	const char *run_after; /* a system action, once the connection is closed */
};

/* Connections per client address: one address cannot take every slot. */
#define PER_IP_MAX 8
static struct {
	pthread_mutex_t lock;
	char ip[MAX_CONNS][INET6_ADDRSTRLEN];
} per_ip = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int per_ip_take(const char *ip)
{
	int i, n = 0, free_slot = -1;

	pthread_mutex_lock(&per_ip.lock);
	for (i = 0; i < MAX_CONNS; i++) {
		if (!per_ip.ip[i][0])
			free_slot = free_slot < 0 ? i : free_slot;
		else if (!strcmp(per_ip.ip[i], ip))
			n++;
	}
	if (n >= PER_IP_MAX || free_slot < 0) {
		pthread_mutex_unlock(&per_ip.lock);
		return -1;
	}
	snprintf(per_ip.ip[free_slot], INET6_ADDRSTRLEN, "%s", ip);
	pthread_mutex_unlock(&per_ip.lock);
	return 0;
}

static void per_ip_give(const char *ip)
{
	int i;

	pthread_mutex_lock(&per_ip.lock);
	for (i = 0; i < MAX_CONNS; i++)
		if (!strcmp(per_ip.ip[i], ip)) {
			per_ip.ip[i][0] = 0;
			break;
		}
	pthread_mutex_unlock(&per_ip.lock);
}

static int conn_write(struct conn *c, const void *p, size_t n)
{
	while (n) {
		int w = SSL_write(c->ssl, p, n > 65536 ? 65536 : (int)n);

		if (w <= 0)
			return -1;
		p = (const char *)p + w;
		n -= (size_t)w;
	}
	return 0;
}

static int conn_fill(struct conn *c)
{
	int n;

	if (c->in_len >= sizeof(c->in) || time(NULL) > c->deadline)
		return -1; /* full, or a client dripping its head (slowloris) */
	n = SSL_read(c->ssl, c->in + c->in_len, (int)(sizeof(c->in) - c->in_len));
	if (n <= 0)
		return -1;
	c->in_len += (size_t)n;
	return 0;
}

static const char SEC_HEADERS[] =
	"Content-Security-Policy: default-src 'self'; script-src 'self'; style-src 'self'; "
	"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
	"form-action 'self'\r\n"
	"X-Content-Type-Options: nosniff\r\n"
	"Referrer-Policy: no-referrer\r\n"
	"X-Frame-Options: DENY\r\n"
	"Cross-Origin-Opener-Policy: same-origin\r\n"
	"Cross-Origin-Resource-Policy: same-origin\r\n"
	"Strict-Transport-Security: max-age=31536000\r\n";

static int send_response(struct conn *c, struct mgmt_resp *rs, int head_only, int keep)
{
	const void *body = rs->static_body ? (const void *)rs->static_body : rs->body.p;
	size_t blen = rs->static_body ? rs->static_len : rs->body.len;
	char head[4096];
	int n;

	n = snprintf(head, sizeof(head),
		     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s%s%s\r\n",
		     rs->status, http1_reason(rs->status), rs->type ? rs->type : "text/plain", blen,
		     SEC_HEADERS, rs->api ? "Cache-Control: no-store\r\n" : "", rs->headers,
		     keep ? "" : "Connection: close\r\n");
	if (n < 0 || (size_t)n >= sizeof(head))
		return -1;
	if (conn_write(c, head, (size_t)n) == -1)
		return -1;
	if (!head_only && blen && conn_write(c, body, blen) == -1)
		return -1;
	return 0;
}

static void simple_error(struct conn *c, int status, const char *msg)
{
	struct mgmt_resp rs;

	memset(&rs, 0, sizeof(rs));
	rs.status = status;
	rs.type = "application/json";
	rs.api = 1;
	jb_lit(&rs.body, "{\"error\":");
	jb_str(&rs.body, msg);
	jb_lit(&rs.body, "}\n");
	send_response(c, &rs, 0, 0);
	jb_free(&rs.body);
}

static char *hdr_dup(const struct http_req *r, const char *name)
{
	const struct http_hdr *h = http1_find(r->hdrs, r->nhdrs, name);

	return h ? strndup(h->value, h->value_len) : NULL;
}

/* One request on c. Returns 1 to keep the connection, 0 to close it. */
static int serve_one(struct conn *c)
{
	static const struct http_limits lim = {8192, HEAD_MAX, MAX_HEADERS};
	struct http_hdr hdrs[MAX_HEADERS];
	struct http_req r;
	struct mgmt_req rq;
	struct mgmt_resp rs;
	char *path = NULL, *query = NULL, *host = NULL, *origin = NULL, *site = NULL;
	char *csrf = NULL, *cookie = NULL, *authz = NULL, *body = NULL, *method = NULL;
	const char *q;
	int n, keep;

	c->deadline = time(NULL) + HEAD_DEADLINE_S;
	for (;;) {
		n = http1_parse_request(c->in, c->in_len, &lim, &r, hdrs);
		if (n > 0)
			break;
		if (n != HTTP1_INCOMPLETE) {
			simple_error(c, -n, "malformed request");
			return 0;
		}
		if (conn_fill(c) == -1) {
			if (c->in_len == sizeof(c->in))
				simple_error(c, 431, "request head too large");
			return 0;
		}
	}
	if (r.body == HTTP_BODY_CHUNKED) {
		simple_error(c, 411, "send a Content-Length");
		return 0;
	}
	if (r.content_length > MGMT_BODY_MAX) {
		simple_error(c, 413, "request body too large");
		return 0;
	}
	body = malloc((size_t)r.content_length + 1);
	method = strndup(r.method_s, r.method_len);
	q = memchr(r.target, '?', r.target_len);
	path = strndup(r.target, q ? (size_t)(q - r.target) : r.target_len);
	query = q ? strndup(q + 1, r.target_len - (size_t)(q + 1 - r.target)) : strdup("");
	host = hdr_dup(&r, "host");
	origin = hdr_dup(&r, "origin");
	site = hdr_dup(&r, "sec-fetch-site");
	csrf = hdr_dup(&r, "x-csrf-token");
	cookie = hdr_dup(&r, "cookie");
	authz = hdr_dup(&r, "authorization");
	keep = r.minor == 1 && !(r.flags & HTTP_F_CONN_CLOSE);
	if (!body || !method || !path || !query) {
		simple_error(c, 503, "out of memory");
		keep = 0;
		goto out;
	}
	{
		/* the body: what followed the head, then the rest */
		size_t have = c->in_len - (size_t)n, len = (size_t)r.content_length;
		size_t take = have < len ? have : len;

		memcpy(body, c->in + n, take);
		memmove(c->in, c->in + n + take, c->in_len - (size_t)n - take);
		c->in_len -= (size_t)n + take;
		/* the body has its deadline too: 20 s, plus 1 s per 64 KB */
		c->deadline = time(NULL) + HEAD_DEADLINE_S + (time_t)(len >> 16);
		while (take < len) {
			int k = time(NULL) > c->deadline
					? 0
					: SSL_read(c->ssl, body + take, (int)(len - take));

			if (k <= 0) {
				keep = 0;
				goto out;
			}
			take += (size_t)k;
		}
		body[len] = 0;
	}
	memset(&rq, 0, sizeof(rq));
	rq.method = method;
	rq.path = path;
	rq.query = query;
	rq.body = body;
	rq.body_len = (size_t)r.content_length;
	rq.host = host ? host : "";
	rq.origin = origin;
	rq.fetch_site = site;
	rq.csrf = csrf;
	rq.cookie = cookie;
	rq.authz = authz;
	rq.ip = c->ip;
	memset(&rs, 0, sizeof(rs));
	mgmt_handle(&rq, &rs);
	if (rs.body.oom) {
		jb_free(&rs.body);
		simple_error(c, 503, "out of memory");
		keep = 0;
		goto out;
	}
	if (rs.run_after)
		keep = 0; /* the last answer of this connection, then the action */
	if (send_response(c, &rs, r.method == HTTP_M_HEAD, keep) == -1) {
		keep = 0;
		if (rs.run_after)
			LOGW("%s accepted, but the answer could not be sent: not run",
			     rs.run_after);
	} else {
		c->run_after = rs.run_after;
	}
	jb_free(&rs.body);
out:
	if (body)
		OPENSSL_cleanse(body, (size_t)r.content_length); /* passwords, PINs */
	/* what was read and used (a pipelined next request stays) */
	OPENSSL_cleanse(c->in + c->in_len, sizeof(c->in) - c->in_len);
	free(body);
	free(method);
	free(path);
	free(query);
	free(host);
	free(origin);
	free(site);
	free(csrf);
	free(cookie);
	free(authz);
	return keep;
}

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	const char *action;
	int i;

	struct timeval hs = {HEAD_DEADLINE_S / 4, 0}, io = {IO_TIMEOUT_S, 0};

	/* the handshake gets a shorter read timeout: no slot held by a crawl */
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &hs, sizeof(hs));
	if (SSL_accept(c->ssl) == 1) {
		setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &io, sizeof(io));
		for (i = 0; i < KEEPALIVE_N; i++)
			if (!serve_one(c))
				break;
		SSL_shutdown(c->ssl);
	}
	SSL_free(c->ssl);
	close(c->fd);
	per_ip_give(c->ip);
	action = c->run_after;
	free(c);
	OPENSSL_thread_stop();
	atomic_fetch_sub(&nconns, 1);
	/* the answer is out and the connection closed: no slot is held while the
	 * helper runs, and this thread waits for it */
	if (action)
		helper_run(action);
	return NULL;
}

static int listen_on(const struct config *cfg, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	int fd, one = 1;

	memset(&ss, 0, sizeof(ss));
	if (strchr(cfg->mgmt.address, ':')) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(cfg->mgmt.port);
		inet_pton(AF_INET6, cfg->mgmt.address, &s6->sin6_addr);
		sl = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		s4->sin_family = AF_INET;
		s4->sin_port = htons(cfg->mgmt.port);
		inet_pton(AF_INET, cfg->mgmt.address, &s4->sin_addr);
		sl = sizeof(*s4);
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) == -1 || listen(fd, 64) == -1) {
		close(fd);
		goto fail;
	}
	return fd;
fail:
	snprintf(err, errlen, "management listener %s:%u: %s", cfg->mgmt.address, cfg->mgmt.port,
		 strerror(errno));
	return -1;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: farmgate-mgmt -c FILE [-d DATADIR] [-s SOCKET] [-x PROGRAM]\n"
		"  -c FILE     farmgated's configuration (its \"management\" section: address, "
		"port)\n"
		"  -d DIR      data directory: certificate, password hash, audit log "
		"(default /var/lib/farmgate)\n"
		"  -s SOCKET   farmgated's control socket (default: the configuration's)\n"
		"  -x PROGRAM  the system-actions helper (absolute path): the API's reboot and\n"
		"              factory reset run \"PROGRAM reboot\" / \"PROGRAM factory-reset\";\n"
		"              without it they are not available\n");
}

/* The file, or NULL after saying why on stderr. */
static struct config *load_config(void)
{
	char err[1024];
	struct config *cfg = cfg_load_file(M.cfg_path, err, sizeof(err));

	if (!cfg)
		fprintf(stderr, "farmgate-mgmt: %s\n", err);
	return cfg;
}

int main(int argc, char **argv)
{
	struct config *cfg;
	char err[1024];
	int opt, lfd;

	M.data_dir = "/var/lib/farmgate";
	while ((opt = getopt(argc, argv, "c:d:s:x:h")) != -1) {
		switch (opt) {
		case 'c':
			M.cfg_path = optarg;
			break;
		case 'd':
			M.data_dir = optarg;
			break;
		case 's':
			M.control_socket = optarg;
			break;
		case 'x':
			M.system_helper = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!M.cfg_path || optind != argc) {
		usage(stderr);
		return 2;
	}
	/* found now, not when the administrator needs it */
	if (M.system_helper && (M.system_helper[0] != '/' || access(M.system_helper, X_OK) == -1)) {
		fprintf(stderr, "farmgate-mgmt: -x %s: %s\n", M.system_helper,
			M.system_helper[0] != '/' ? "must be an absolute path" : strerror(errno));
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	cfg = load_config();
	if (!cfg)
		return 1;
	log_configure(cfg->log.access, cfg->log.error, cfg->log.debug);
	if (!M.control_socket)
		M.control_socket =
			cfg->control_socket ? strdup(cfg->control_socket) : CFG_CONTROL_SOCKET;
	/* before serving: a save left unapplied is applied (or undone) first,
	 * and what is served is the file as it then is */
	config_reconcile();
	cfg_put(cfg);
	cfg = load_config();
	if (!cfg)
		return 1;
	if (mkdir(M.data_dir, 0700) == -1 && errno != EEXIST) {
		fprintf(stderr, "farmgate-mgmt: %s: %s\n", M.data_dir, strerror(errno));
		return 1;
	}
	if (auth_init(err, sizeof(err)) == -1 || tls_setup(cfg, err, sizeof(err)) == -1 ||
	    (lfd = listen_on(cfg, err, sizeof(err))) == -1) {
		fprintf(stderr, "farmgate-mgmt: %s\n", err);
		return 1;
	}
	M.started = (int64_t)time(NULL);
	LOGI("farmgate-mgmt %s: https://%s:%u/ (control socket %s; system actions: %s)", FG_VERSION,
	     cfg->mgmt.address, cfg->mgmt.port, M.control_socket,
	     M.system_helper ? M.system_helper : "none");
	cfg_put(cfg);
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		struct timeval tv = {IO_TIMEOUT_S, 0};
		int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC), one = 1;
		struct conn *c;
		pthread_attr_t at;
		pthread_t th;

		if (fd == -1) {
			if (errno == EMFILE || errno == ENFILE)
				sleep(1);
			continue;
		}
		if (atomic_load(&nconns) >= MAX_CONNS || !(c = calloc(1, sizeof(*c)))) {
			close(fd);
			continue;
		}
		c->fd = fd;
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (ss.ss_family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->ip,
				  sizeof(c->ip));
		else
			inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->ip,
				  sizeof(c->ip));
		if (per_ip_take(c->ip) == -1) {
			close(fd);
			free(c);
			continue;
		}
		c->ssl = SSL_new(ctx);
		if (!c->ssl || !SSL_set_fd(c->ssl, fd)) {
			per_ip_give(c->ip);
			SSL_free(c->ssl);
			close(fd);
			free(c);
			continue;
		}
		atomic_fetch_add(&nconns, 1);
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		pthread_attr_setstacksize(&at, 256 * 1024);
		if (pthread_create(&th, &at, conn_main, c) != 0) {
			atomic_fetch_sub(&nconns, 1);
			per_ip_give(c->ip);
			SSL_free(c->ssl);
			close(fd);
			free(c);
		}
		pthread_attr_destroy(&at);
	}
}
