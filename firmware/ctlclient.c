/* farmgatectl status / server / farm / health: the client side of farmgated's control socket
 * (docs/control.md). One request per connection: one JSON line out, one JSON answer back,
 * then the daemon closes. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <termios.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <openssl/crypto.h>

#include "ctlclient.h"
#include "json.h"

#define CTL_EXIT_OK	     0
#define CTL_EXIT_FAIL	     1
#define CTL_EXIT_USAGE	     2
#define CTL_MAX_REQUEST	     (64 << 10) /* the daemon's limit, newline included */
#define CTL_MAX_ANSWER	     (4 << 20)
#define CTL_TIMEOUT_S	     30.0
#define CTL_VERIFY_TIMEOUT_S 60.0 /* verify waits for a probe of every server */
#define CTL_MAX_TIMEOUT_S    86400.0
#define CTL_MAX_POS	     4

struct ctl_opts {
	const char *cmd;
	const char *socket;
	const char *server; /* farm reset --server */
	double timeout;	    /* seconds; 0 = the command's default */
	int json;
	const char *pos[CTL_MAX_POS];
	int npos;
};

/* A growing string (the request, the answer). */
struct sbuf {
	char *p;
	size_t len;
	size_t cap;
};

static void ctl_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ctl_err(const char *fmt, ...)
{
	va_list ap;

	fputs("farmgatectl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n);

	if (!q) {
		ctl_err("out of memory");
		exit(CTL_EXIT_FAIL);
	}
	return q;
}

static void sbuf_reserve(struct sbuf *b, size_t more)
{
	size_t cap = b->cap ? b->cap : 256;

	if (b->len + more + 1 <= b->cap)
		return;
	while (cap < b->len + more + 1)
		cap *= 2;
	b->p = xrealloc(b->p, cap);
	b->cap = cap;
}

static void sbuf_add(struct sbuf *b, const char *s, size_t n)
{
	sbuf_reserve(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sbuf_puts(struct sbuf *b, const char *s)
{
	sbuf_add(b, s, strlen(s));
}

/* ---- request ------------------------------------------------------------ */

/* 1 when s is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF). */
static int utf8_valid(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;

	while (*s) {
		unsigned int c = *s, cp, n, i;

		if (c < 0x80) {
			s++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			n = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			cp = c & 0x07;
		} else {
			return 0;
		}
		for (i = 1; i <= n; i++) {
			if ((s[i] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i] & 0x3f);
		}
		if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
		    (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
			return 0;
		s += n + 1;
	}
	return 1;
}

/* Appends "key":"value" (after a comma) with value escaped as a JSON string. */
static void req_str(struct sbuf *b, const char *key, const char *val)
{
	const unsigned char *s = (const unsigned char *)val;
	char esc[8];

	sbuf_puts(b, ",\"");
	sbuf_puts(b, key);
	sbuf_puts(b, "\":\"");
	for (; *s; s++) {
		switch (*s) {
		case '"':
			sbuf_puts(b, "\\\"");
			break;
		case '\\':
			sbuf_puts(b, "\\\\");
			break;
		case '\b':
			sbuf_puts(b, "\\b");
			break;
		case '\f':
			sbuf_puts(b, "\\f");
			break;
		case '\n':
			sbuf_puts(b, "\\n");
			break;
		case '\r':
			sbuf_puts(b, "\\r");
			break;
		case '\t':
			sbuf_puts(b, "\\t");
			break;
		default:
			if (*s < 0x20 || *s == 0x7f) {
				snprintf(esc, sizeof(esc), "\\u%04x", *s);
				sbuf_puts(b, esc);
			} else {
				sbuf_add(b, (const char *)s, 1);
			}
		}
	}
	sbuf_puts(b, "\"");
}

/* A command-line word and the ARR word it stands for. */
struct word {
	const char *cli;
	const char *arr;
};

static const struct word server_states[] = {
	{"available", "Available"},
	{"drain", "DisallowNewConnections"},
	{"stop-graceful", "UnavailableGracefully"},
	{"stop-immediate", "UnavailableImmediately"},
};

static const struct word farm_actions[] = {
	{"online", "Online"},
	{"offline", "Offline"},
	{"verify", NULL},
	{"reset", NULL},
};

static const struct word health_words[] = {
	{"healthy", "true"},
	{"unhealthy", "false"},
};

/* The entry whose CLI word (or ARR word, any case) is w; NULL if none. */
static const struct word *word_find(const struct word *t, size_t n, const char *w)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcasecmp(t[i].cli, w) == 0 || (t[i].arr && strcasecmp(t[i].arr, w) == 0))
			return &t[i];
	return NULL;
}

#define WORD_FIND(t, w) word_find(t, sizeof(t) / sizeof(t[0]), w)

/* Builds the request line (no newline) into b and sets *op to the operation. Returns 0 or 2
 * (printed). */
/* The PIN: $FARMGATE_PIN, else one line from the terminal without echo
 * (or from stdin when it is not a terminal). */
static int read_pin(char *pin, size_t len)
{
	const char *env = getenv("FARMGATE_PIN");
	struct termios old, quiet;
	int tty = isatty(STDIN_FILENO);
	size_t n;

	if (env && *env) {
		if (strlen(env) >= len) {
			ctl_err("$FARMGATE_PIN is too long");
			return -1;
		}
		snprintf(pin, len, "%s", env);
		return 0;
	}
	if (tty) {
		fputs("PIN: ", stderr);
		tcgetattr(STDIN_FILENO, &old);
		quiet = old;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
	}
	if (!fgets(pin, (int)len, stdin))
		pin[0] = 0;
	if (tty) {
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
		fputs("\n", stderr);
	}
	n = strcspn(pin, "\r\n");
	pin[n] = 0;
	if (!n) {
		ctl_err("no PIN given");
		return -1;
	}
	return 0;
}

static int build_request(const struct ctl_opts *o, struct sbuf *b, const char **op)
{
	const struct word *w;
	int i, want;

	for (i = 0; i < o->npos; i++) {
		if (!o->pos[i][0]) {
			ctl_err("%s: empty argument", o->cmd);
			return CTL_EXIT_USAGE;
		}
		if (!utf8_valid(o->pos[i])) {
			ctl_err("%s: argument %d is not valid UTF-8", o->cmd, i + 1);
			return CTL_EXIT_USAGE;
		}
	}
	if (o->server && (!o->server[0] || !utf8_valid(o->server))) {
		ctl_err("bad --server: empty or not valid UTF-8");
		return CTL_EXIT_USAGE;
	}
	if (o->server && (strcmp(o->cmd, "farm") || o->npos != 2 || strcmp(o->pos[1], "reset"))) {
		ctl_err("option --server applies only to farm FARM reset");
		return CTL_EXIT_USAGE;
	}

	if (strcmp(o->cmd, "status") == 0) {
		if (o->npos > 1) {
			ctl_err("unexpected argument '%s' for status (usage: farmgatectl status "
				"[FARM])",
				o->pos[1]);
			return CTL_EXIT_USAGE;
		}
		*op = "status";
		sbuf_puts(b, "{\"op\":\"status\"");
		if (o->npos == 1)
			req_str(b, "farm", o->pos[0]);
	} else if (strcmp(o->cmd, "server") == 0) {
		want = 3;
		if (o->npos != want) {
			ctl_err("usage: farmgatectl server FARM SERVER "
				"available|drain|stop-graceful|stop-immediate");
			return CTL_EXIT_USAGE;
		}
		w = WORD_FIND(server_states, o->pos[2]);
		if (!w) {
			ctl_err("bad server state '%s': use available, drain, stop-graceful or "
				"stop-immediate",
				o->pos[2]);
			return CTL_EXIT_USAGE;
		}
		*op = "server";
		sbuf_puts(b, "{\"op\":\"server\"");
		req_str(b, "farm", o->pos[0]);
		req_str(b, "server", o->pos[1]);
		req_str(b, "state", w->arr);
	} else if (strcmp(o->cmd, "farm") == 0) {
		want = 2;
		if (o->npos != want) {
			ctl_err("usage: farmgatectl farm FARM online|offline|verify|reset "
				"[--server "
				"SERVER]");
			return CTL_EXIT_USAGE;
		}
		w = WORD_FIND(farm_actions, o->pos[1]);
		if (!w) {
			ctl_err("bad farm action '%s': use online, offline, verify or reset",
				o->pos[1]);
			return CTL_EXIT_USAGE;
		}
		if (w->arr) {
			*op = "farm";
			sbuf_puts(b, "{\"op\":\"farm\"");
			req_str(b, "farm", o->pos[0]);
			req_str(b, "state", w->arr);
		} else {
			*op = w->cli;
			sbuf_puts(b, "{\"op\":\"");
			sbuf_puts(b, w->cli);
			sbuf_puts(b, "\"");
			req_str(b, "farm", o->pos[0]);
			if (o->server)
				req_str(b, "server", o->server);
		}
	} else if (strcmp(o->cmd, "health") == 0) {
		want = 3;
		if (o->npos != want) {
			ctl_err("usage: farmgatectl health FARM SERVER healthy|unhealthy");
			return CTL_EXIT_USAGE;
		}
		w = WORD_FIND(health_words, o->pos[2]);
		if (!w) {
			ctl_err("bad health '%s': use healthy or unhealthy", o->pos[2]);
			return CTL_EXIT_USAGE;
		}
		*op = "health";
		sbuf_puts(b, "{\"op\":\"health\"");
		req_str(b, "farm", o->pos[0]);
		req_str(b, "server", o->pos[1]);
		sbuf_puts(b, ",\"healthy\":");
		sbuf_puts(b, w->arr);
	} else if (strcmp(o->cmd, "pin") == 0) {
		char pin[256];

		if (o->npos != 1) {
			ctl_err("usage: farmgatectl pin TOKEN (the PIN from $FARMGATE_PIN or the "
				"terminal, never the command line)");
			return CTL_EXIT_USAGE;
		}
		if (read_pin(pin, sizeof(pin)) == -1)
			return CTL_EXIT_USAGE;
		*op = "token-login";
		sbuf_puts(b, "{\"op\":\"token-login\"");
		req_str(b, "token", o->pos[0]);
		req_str(b, "pin", pin);
		OPENSSL_cleanse(pin, sizeof(pin));
	} else {
		ctl_err("unknown command '%s' (try: farmgatectl --help)", o->cmd);
		return CTL_EXIT_USAGE;
	}
	sbuf_puts(b, "}");
	if (b->len + 1 > CTL_MAX_REQUEST) {
		ctl_err("the request is too long (%zu bytes; the control socket takes at most %d)",
			b->len + 1, CTL_MAX_REQUEST);
		return CTL_EXIT_USAGE;
	}
	return CTL_EXIT_OK;
}

/* ---- transport ---------------------------------------------------------- */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Milliseconds left until deadline, rounded up (0 when past). */
static int ms_left(double deadline)
{
	double left = deadline - now_s();

	return left <= 0 ? 0 : (int)(left * 1000.0) + 1;
}

/* Waits until fd is ready for events or deadline. 1 ready, 0 timed out, -1 error (errno). */
static int wait_fd(int fd, short events, double deadline)
{
	struct pollfd pfd = {.fd = fd, .events = events};
	int r, ms;

	for (;;) {
		ms = ms_left(deadline);
		if (ms == 0)
			return 0;
		r = poll(&pfd, 1, ms);
		if (r > 0)
			return 1;
		if (r == 0)
			continue; /* rounding: check the clock again */
		if (errno != EINTR)
			return -1;
	}
}

static const char *connect_hint(int e)
{
	switch (e) {
	case ENOENT:
	case ECONNREFUSED:
		return " (is farmgated running?)";
	case EACCES:
	case EPERM:
		return " (the control socket is for root and farmgated's user)";
	default:
		return "";
	}
}

/* Connects to the socket, sends the request line and reads the answer until the daemon
 * closes, all within timeout seconds. Returns 0 with the answer in ans, or 1 (printed). */
static int exchange(const char *path, double timeout, const struct sbuf *req, struct sbuf *ans)
{
	struct sockaddr_un sa;
	struct timeval tv;
	double deadline = now_s() + timeout;
	size_t off = 0;
	int fd, r, send_errno = 0;
	ssize_t n;

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		ctl_err("cannot connect to %s: the path is too long for a unix socket", path);
		return CTL_EXIT_FAIL;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		ctl_err("cannot create a unix socket: %s", strerror(errno));
		return CTL_EXIT_FAIL;
	}
	/* a blocking unix connect waits while the daemon's backlog is full; bound it */
	tv.tv_sec = (time_t)timeout;
	tv.tv_usec = (suseconds_t)((timeout - (double)tv.tv_sec) * 1e6);
	if (tv.tv_sec == 0 && tv.tv_usec == 0)
		tv.tv_usec = 1; /* 0 would mean no limit */
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	while ((r = connect(fd, (struct sockaddr *)&sa, sizeof(sa))) < 0 && errno == EINTR)
		;
	if (r < 0) {
		int e = errno;

		if (e == EAGAIN || e == EINPROGRESS)
			ctl_err("cannot connect to %s: farmgated did not accept the connection "
				"within %g s",
				path, timeout);
		else
			ctl_err("cannot connect to %s: %s%s", path, strerror(e), connect_hint(e));
		close(fd);
		return CTL_EXIT_FAIL;
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
		ctl_err("cannot set up the connection to %s: %s", path, strerror(errno));
		close(fd);
		return CTL_EXIT_FAIL;
	}

	/* the request and its newline */
	while (off < req->len + 1 && !send_errno) {
		const char *p = off < req->len ? req->p + off : "\n";
		size_t len = off < req->len ? req->len - off : 1;

		n = send(fd, p, len, MSG_NOSIGNAL);
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			/* the daemon may have answered (refused) before closing: read it */
			send_errno = errno;
			break;
		}
		r = wait_fd(fd, POLLOUT, deadline);
		if (r <= 0) {
			if (r == 0)
				ctl_err("no answer from %s within %g s (use --timeout to wait "
					"longer)",
					path, timeout);
			else
				ctl_err("cannot send the request to %s: %s", path, strerror(errno));
			close(fd);
			return CTL_EXIT_FAIL;
		}
	}

	/* the answer: everything until the daemon closes */
	for (;;) {
		sbuf_reserve(ans, 65536);
		n = recv(fd, ans->p + ans->len, ans->cap - ans->len - 1, 0);
		if (n > 0) {
			ans->len += (size_t)n;
			ans->p[ans->len] = '\0';
			if (ans->len > CTL_MAX_ANSWER) {
				ctl_err("the answer from %s is larger than %d MB", path,
					CTL_MAX_ANSWER >> 20);
				close(fd);
				return CTL_EXIT_FAIL;
			}
			continue;
		}
		if (n == 0 || (n < 0 && errno == ECONNRESET && (ans->len || !send_errno)))
			break;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			if (send_errno)
				ctl_err("cannot send the request to %s: %s", path,
					strerror(send_errno));
			else
				ctl_err("cannot read the answer from %s: %s", path,
					strerror(errno));
			close(fd);
			return CTL_EXIT_FAIL;
		}
		r = wait_fd(fd, POLLIN, deadline);
		if (r <= 0) {
			if (r == 0)
				ctl_err("no answer from %s within %g s (use --timeout to wait "
					"longer)",
					path, timeout);
			else
				ctl_err("cannot read the answer from %s: %s", path,
					strerror(errno));
			close(fd);
			return CTL_EXIT_FAIL;
		}
	}
	close(fd);
	if (ans->len == 0) {
		if (send_errno)
			ctl_err("cannot send the request to %s: %s", path, strerror(send_errno));
		else
			ctl_err("no answer from %s: farmgated closed the connection", path);
		return CTL_EXIT_FAIL;
	}
	return CTL_EXIT_OK;
}

/* ---- output ------------------------------------------------------------- */

/* A copy of s fit for a terminal: C0/C1 control characters and DEL become '?'. */
static char *clean_dup(const char *s)
{
	size_t n = strlen(s), i, j = 0;
	char *d = xrealloc(NULL, n + 1);

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == 0xc2 && i + 1 < n && (unsigned char)s[i + 1] >= 0x80 &&
		    (unsigned char)s[i + 1] <= 0x9f) {
			d[j++] = '?';
			i++;
		} else {
			d[j++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
		}
	}
	d[j] = '\0';
	return d;
}

/* Prints s cleaned (clean_dup). */
static void put_clean(FILE *f, const char *s)
{
	char *c = clean_dup(s);

	fputs(c, f);
	free(c);
}

/* Columns on the screen a UTF-8 string takes (code points; wide characters are rare here). */
static size_t text_width(const char *s)
{
	size_t w = 0;

	for (; *s; s++)
		if (((unsigned char)*s & 0xc0) != 0x80)
			w++;
	return w;
}

static const char *str_of(const struct json_value *v, const char *dflt)
{
	return v && v->type == JSON_STRING ? v->u.str.s : dflt;
}

/* A number as text: integers as they are, decimals with one digit after the point (always
 * with one when decimal is set); "-" when v is not a number. */
static const char *num_of(const struct json_value *v, int decimal, char *buf, size_t len)
{
	if (!v || v->type != JSON_NUMBER)
		return "-";
	if (v->u.num.is_int && !decimal)
		snprintf(buf, len, "%" PRId64, v->u.num.i);
	else
		snprintf(buf, len, "%.1f", strtod(v->u.num.text, NULL));
	return buf;
}

/* -1 when v is not a boolean, else 0 or 1. */
static int bool_of(const struct json_value *v)
{
	if (!v || (v->type != JSON_TRUE && v->type != JSON_FALSE))
		return -1;
	return v->type == JSON_TRUE;
}

/* A text table: a heading row, then rows; numeric columns are right-aligned; no trailing
 * blanks. */
#define TABLE_MAX_COLS 12

struct table {
	size_t ncols;
	const char *const *heads;
	const char *right; /* per column, '1' when right-aligned */
	char **cells;	   /* nrows * ncols, cleaned copies */
	size_t nrows;
};

static void table_row(struct table *t, const char *const *cells)
{
	size_t i;

	t->cells = xrealloc(t->cells, (t->nrows + 1) * t->ncols * sizeof(*t->cells));
	for (i = 0; i < t->ncols; i++)
		t->cells[t->nrows * t->ncols + i] = clean_dup(cells[i] ? cells[i] : "");
	t->nrows++;
}

static void table_print(struct table *t)
{
	size_t w[TABLE_MAX_COLS], r, i, k;

	for (i = 0; i < t->ncols; i++) {
		w[i] = text_width(t->heads[i]);
		for (r = 0; r < t->nrows; r++) {
			size_t cw = text_width(t->cells[r * t->ncols + i]);

			if (cw > w[i])
				w[i] = cw;
		}
	}
	for (r = 0; r <= t->nrows; r++) {
		size_t pending = 0; /* spaces owed before the next non-empty cell */

		for (i = 0; i < t->ncols; i++) {
			const char *c = r == 0 ? t->heads[i] : t->cells[(r - 1) * t->ncols + i];
			size_t pad = w[i] - text_width(c);
			int right = t->right[i] == '1';

			if (!c[0]) {
				pending += pad + 2;
				continue;
			}
			pending += right ? pad : 0;
			for (k = 0; k < pending; k++)
				putchar(' ');
			fputs(c, stdout);
			pending = (right ? 0 : pad) + 2;
		}
		putchar('\n');
	}
	for (r = 0; r < t->nrows * t->ncols; r++)
		free(t->cells[r]);
	free(t->cells);
	t->cells = NULL;
	t->nrows = 0;
}

/* "Success 200 in 2 ms: reason" for a server's last probe; "-" when there was none
 * (lastResult "None" or empty). */
static void probe_text(const struct json_value *h, char *buf, size_t len)
{
	const char *res = str_of(json_get(h, "lastResult"), "");
	const char *reason = str_of(json_get(h, "lastReason"), "");
	const struct json_value *st = json_get(h, "lastStatus");
	char n1[32], n2[32];
	int o;

	if (!res[0] || strcmp(res, "None") == 0) {
		snprintf(buf, len, "-");
		return;
	}
	o = snprintf(buf, len, "%s", res);
	if (st && st->type == JSON_NUMBER && !(st->u.num.is_int && st->u.num.i == 0) && o >= 0 &&
	    (size_t)o < len)
		o += snprintf(buf + o, len - (size_t)o, " %s", num_of(st, 0, n1, sizeof(n1)));
	if (json_get(h, "lastTimeMs") && o >= 0 && (size_t)o < len)
		o += snprintf(buf + o, len - (size_t)o, " in %s ms",
			      num_of(json_get(h, "lastTimeMs"), 0, n2, sizeof(n2)));
	if (reason[0] && o >= 0 && (size_t)o < len)
		snprintf(buf + o, len - (size_t)o, ": %s", reason);
}

/* The counter columns (CUR .. RECV) of a counters object into cells[0..6]. */
static void counter_cells(const struct json_value *c, char (*num)[32], const char **cells)
{
	static const char *const keys[] = {"currentRequests",	"totalRequests",  "failedRequests",
					   "requestsPerSecond", "responseTimeMs", "bytesSent",
					   "bytesReceived"};
	size_t i;

	for (i = 0; i < 7; i++)
		cells[i] = num_of(json_get(c, keys[i]), i == 3, num[i], sizeof(num[i]));
}

static const char *const status_heads[] = {"SERVER", "STATE",  "HEALTH",    "CUR",
					   "TOTAL",  "FAILED", "RPS",	    "RESP(ms)",
					   "SENT",   "RECV",   "LAST PROBE"};

static void print_farm(const struct json_value *f)
{
	const struct json_value *hc = json_get(f, "healthCheck"), *servers = json_get(f, "servers");
	const char *url = str_of(json_get(hc, "url"), "");
	struct table t = {.ncols = 11, .heads = status_heads, .right = "00011111110"};
	char num[7][32], st[128], probe[1024], iv[32];
	const char *cells[11];
	size_t i;

	fputs("farm ", stdout);
	put_clean(stdout, str_of(json_get(f, "name"), "?"));
	fputs(": ", stdout);
	put_clean(stdout, str_of(json_get(f, "state"), "?"));
	if (bool_of(json_get(f, "enabled")) == 0)
		fputs(" (disabled in the configuration)", stdout);
	if (url[0]) {
		fputs(", health check ", stdout);
		put_clean(stdout, url);
		if (json_get(hc, "intervalMs"))
			printf(" every %s ms",
			       num_of(json_get(hc, "intervalMs"), 0, iv, sizeof(iv)));
	} else {
		fputs(", no health check URL", stdout);
	}
	putchar('\n');

	for (i = 0; i < json_len(servers); i++) {
		const struct json_value *s = json_at(servers, i), *h = json_get(s, "health");
		int healthy = bool_of(json_get(s, "healthy"));

		snprintf(st, sizeof(st), "%s%s", str_of(json_get(s, "state"), "-"),
			 bool_of(json_get(s, "enabled")) == 0 ? " (disabled)" : "");
		probe_text(h, probe, sizeof(probe));
		cells[0] = str_of(json_get(s, "server"), "?");
		cells[1] = st;
		cells[2] = healthy < 0 ? "-" : healthy ? "healthy" : "unhealthy";
		counter_cells(json_get(s, "counters"), num, cells + 3);
		cells[10] = probe;
		table_row(&t, cells);
	}
	if (json_get(f, "counters")) {
		cells[0] = "(farm)";
		cells[1] = cells[2] = cells[10] = "";
		counter_cells(json_get(f, "counters"), num, cells + 3);
		table_row(&t, cells);
	}
	table_print(&t);
}

static int print_status(const struct json_value *root)
{
	const struct json_value *farms = json_get(root, "farms");
	size_t i;

	if (!farms || farms->type != JSON_ARRAY) {
		ctl_err("the answer has no farms array");
		return CTL_EXIT_FAIL;
	}
	if (json_len(farms) == 0)
		puts("no farms");
	for (i = 0; i < json_len(farms); i++) {
		if (i)
			putchar('\n');
		print_farm(json_at(farms, i));
	}
	return CTL_EXIT_OK;
}

static const char *const verify_heads[] = {"SERVER", "RESULT", "STATUS", "TIME(ms)", "REASON"};

static int print_verify(const struct json_value *root, const char *farm)
{
	const struct json_value *res = json_get(root, "results");
	struct table t = {.ncols = 5, .heads = verify_heads, .right = "00110"};
	char n1[32], n2[32];
	const char *cells[5];
	size_t i;

	if (!res || res->type != JSON_ARRAY) {
		ctl_err("the answer has no results array");
		return CTL_EXIT_FAIL;
	}
	if (json_len(res) == 0) {
		fputs("farm ", stdout);
		put_clean(stdout, farm);
		puts(": no servers to verify");
		return CTL_EXIT_OK;
	}
	for (i = 0; i < json_len(res); i++) {
		const struct json_value *r = json_at(res, i), *st = json_get(r, "status");

		cells[0] = str_of(json_get(r, "server"), "?");
		cells[1] = str_of(json_get(r, "result"), "?");
		cells[2] = st && st->type == JSON_NUMBER && st->u.num.is_int && st->u.num.i == 0
				   ? "-"
				   : num_of(st, 0, n1, sizeof(n1));
		cells[3] = num_of(json_get(r, "timeMs"), 0, n2, sizeof(n2));
		cells[4] = str_of(json_get(r, "reason"), "");
		table_row(&t, cells);
	}
	table_print(&t);
	return CTL_EXIT_OK;
}

/* The object an answer describes the farm or server in: answer[key] when that is an object,
 * else the answer itself (its fields at the top level). */
static const struct json_value *subject_of(const struct json_value *root, const char *key)
{
	const struct json_value *v = json_get(root, key);

	return v && v->type == JSON_OBJECT ? v : root;
}

/* The server in a server or health answer: farmgated sends {"farm":NAME,"status":SERVER}. */
static const struct json_value *server_of(const struct json_value *root)
{
	const struct json_value *v = json_get(root, "status");

	return v && v->type == JSON_OBJECT ? v : subject_of(root, "server");
}

/* "farm web server 127.0.0.1:8081: what" (server NULL: "farm web: what"). */
static void confirm(const char *farm, const char *server, const char *what)
{
	fputs("farm ", stdout);
	put_clean(stdout, farm);
	if (server) {
		fputs(" server ", stdout);
		put_clean(stdout, server);
	}
	fputs(": ", stdout);
	put_clean(stdout, what);
	putchar('\n');
}

static int print_answer(const struct ctl_opts *o, const char *op, const struct json_value *root)
{
	const struct json_value *s;
	const char *farm = o->pos[0];

	if (strcmp(op, "status") == 0)
		return print_status(root);
	if (strcmp(op, "verify") == 0)
		return print_verify(root, farm);
	if (strcmp(op, "server") == 0) {
		s = server_of(root);
		confirm(str_of(json_get(root, "farm"), farm),
			str_of(json_get(s, "server"), o->pos[1]),
			str_of(json_get(s, "state"), WORD_FIND(server_states, o->pos[2])->arr));
	} else if (strcmp(op, "health") == 0) {
		int h;

		s = server_of(root);
		h = bool_of(json_get(s, "healthy"));
		if (h < 0)
			h = strcmp(WORD_FIND(health_words, o->pos[2])->arr, "true") == 0;
		confirm(str_of(json_get(root, "farm"), farm),
			str_of(json_get(s, "server"), o->pos[1]), h ? "healthy" : "unhealthy");
	} else if (strcmp(op, "token-login") == 0) {
		printf("token %s: logged in (the PIN is kept in farmgated's memory only)\n",
		       str_of(json_get(root, "token"), o->pos[0]));
	} else if (strcmp(op, "farm") == 0) {
		const struct json_value *farms = json_get(root, "farms");

		s = json_len(farms) == 1 ? json_at(farms, 0) : subject_of(root, "farm");
		confirm(str_of(json_get(s, "name"), farm), NULL,
			str_of(json_get(s, "state"), WORD_FIND(farm_actions, o->pos[1])->arr));
	} else {
		s = subject_of(root, "farm");
		confirm(str_of(json_get(s, "name"), farm), o->server, "counters reset");
	}
	return CTL_EXIT_OK;
}

/* ---- main --------------------------------------------------------------- */

static void ctl_usage(FILE *f)
{
	fputs("usage: farmgatectl status|server|farm|health ... [--socket PATH] [--timeout "
	      "SECONDS] [--json]\n\n" CTL_USAGE "exit status: 0 ok, 1 the daemon refused or is "
	      "not running, 2 usage\n",
	      f);
}

/* Parses argv[1..] into o. Returns -1 to go on, else an exit status (printed). */
static int parse_args(struct ctl_opts *o, int argc, char **argv)
{
	const char *timeout = NULL;
	char *end;
	int i, only_pos = 0;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *val, *eq, **dst;
		size_t nlen;

		if (only_pos || a[0] != '-' || !a[1]) {
			if (o->npos >= CTL_MAX_POS) {
				ctl_err("unexpected argument '%s' for %s", a, o->cmd);
				return CTL_EXIT_USAGE;
			}
			o->pos[o->npos++] = a;
			continue;
		}
		if (strcmp(a, "--") == 0) {
			only_pos = 1;
			continue;
		}
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			ctl_usage(stdout);
			return CTL_EXIT_OK;
		}
		if (a[1] != '-') {
			ctl_err("unknown option %s", a);
			return CTL_EXIT_USAGE;
		}
		a += 2;
		eq = strchr(a, '=');
		nlen = eq ? (size_t)(eq - a) : strlen(a);
		if (nlen == 4 && strncmp(a, "json", 4) == 0) {
			if (eq) {
				ctl_err("option --json takes no value");
				return CTL_EXIT_USAGE;
			}
			o->json = 1;
			continue;
		}
		if (nlen == 6 && strncmp(a, "socket", 6) == 0) {
			dst = &o->socket;
		} else if (nlen == 6 && strncmp(a, "server", 6) == 0) {
			dst = &o->server;
		} else if (nlen == 7 && strncmp(a, "timeout", 7) == 0) {
			dst = &timeout;
		} else {
			ctl_err("unknown option --%.*s", (int)nlen, a);
			return CTL_EXIT_USAGE;
		}
		if (eq) {
			val = eq + 1;
		} else if (i + 1 < argc) {
			val = argv[++i];
		} else {
			ctl_err("option --%.*s needs a value", (int)nlen, a);
			return CTL_EXIT_USAGE;
		}
		if (*dst) {
			ctl_err("option --%.*s is given twice", (int)nlen, a);
			return CTL_EXIT_USAGE;
		}
		*dst = val;
	}
	if (o->socket && !o->socket[0]) {
		ctl_err("bad --socket: empty path");
		return CTL_EXIT_USAGE;
	}
	if (timeout) {
		errno = 0;
		o->timeout = strtod(timeout, &end);
		if (errno || end == timeout || *end || !(o->timeout > 0) ||
		    o->timeout > CTL_MAX_TIMEOUT_S) {
			ctl_err("bad --timeout %s: expected seconds (0 < N <= %g)", timeout,
				CTL_MAX_TIMEOUT_S);
			return CTL_EXIT_USAGE;
		}
	}
	return -1;
}

int ctl_main(int argc, char **argv)
{
	struct ctl_opts o;
	struct sbuf req = {0}, ans = {0};
	struct json_doc *doc = NULL;
	const struct json_value *root, *ok;
	const char *op = NULL, *env;
	char err[256];
	int r;

	memset(&o, 0, sizeof(o));
	o.cmd = argv[0];
	r = parse_args(&o, argc, argv);
	if (r >= 0)
		return r;
	env = getenv("FARMGATE_SOCKET");
	if (!o.socket)
		o.socket = env && env[0] ? env : CTL_DEFAULT_SOCKET;
	r = build_request(&o, &req, &op);
	if (r)
		goto out;
	if (o.timeout == 0)
		o.timeout = strcmp(op, "verify") == 0 ? CTL_VERIFY_TIMEOUT_S : CTL_TIMEOUT_S;

	r = exchange(o.socket, o.timeout, &req, &ans);
	if (r)
		goto out;
	r = CTL_EXIT_FAIL;
	doc = json_parse(ans.p, ans.len, err, sizeof(err));
	if (!doc) {
		ctl_err("bad answer from %s: %s", o.socket, err);
		goto out;
	}
	root = doc->root;
	ok = json_get(root, "ok");
	if (bool_of(ok) < 0) {
		ctl_err("bad answer from %s: no \"ok\": true or false", o.socket);
		goto out;
	}
	if (o.json) {
		while (ans.len && (ans.p[ans.len - 1] == '\n' || ans.p[ans.len - 1] == '\r' ||
				   ans.p[ans.len - 1] == ' ' || ans.p[ans.len - 1] == '\t'))
			ans.p[--ans.len] = '\0';
		fwrite(ans.p, 1, ans.len, stdout);
		putchar('\n');
	}
	if (!bool_of(ok)) {
		fputs("farmgatectl: ", stderr);
		put_clean(stderr, str_of(json_get(root, "error"),
					 "the daemon refused the request (no reason)"));
		fputc('\n', stderr);
		goto out;
	}
	r = o.json ? CTL_EXIT_OK : print_answer(&o, op, root);
out:
	json_free(doc);
	free(req.p);
	free(ans.p);
	if (fflush(stdout) != 0 && r == CTL_EXIT_OK) {
		ctl_err("cannot write the output: %s", strerror(errno));
		r = CTL_EXIT_FAIL;
	}
	return r;
}
