/* ARR's URL test.
 *
 * Every server of a farm with healthCheck.url has one probe, which lives
 * with the server's runtime state (so a reload keeps its history) and runs
 * in the event loop: connect (or reuse the connection the last probe left
 * open), TLS with the farm's identity when the URL is https (the session
 * cache is the data plane's, so a warm farm needs no signature), one GET,
 * then the verdict: Success, ConnectionFailure, StatusCodeFailure or
 * ResponseEntityFailure. `retries` failures in a row make the server
 * unhealthy; one success makes it healthy again. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "cfg.h"
#include "health.h"
#include "http1.h"
#include "lb.h"
#include "list.h"
#include "log.h"
#include "proxy.h"
#include "tls.h"

#define PROBE_HEAD_MAX	  16384
#define PROBE_BODY_MAX	  65536 /* responseMatch looks at this much */
#define PROBE_MAX_HEADERS 100

enum probe_state {
	P_IDLE = 0, /* between probes; a kept-alive connection may be open */
	P_CONNECTING = 1,
	P_HANDSHAKE = 2,
	P_WRITING = 3,
	P_READING = 4,
	P_ABANDONED = 5, /* timed out while a token signature was pending */
};

struct waiter {
	struct verify *v;
	struct waiter *next;
};

struct verify {
	unsigned int pending;
	int cancelled;
	void (*done)(void *arg);
	void *arg;
	struct ev_timer fire;
};

struct probe {
	struct server_rt *rt;
	struct ev_fd ev;       /* the connection, fd -1 when none */
	struct ev_fd async_ev; /* a token signature's wait fd */
	struct ev_timer tmr;   /* next probe, or the timeout of this one */
	struct list link;      /* graveyard */
	int state;
	int in_flight;
	SSL *ssl;
	int conn_tls;
	uint64_t conn_ident;
	struct sockaddr_storage conn_addr;
	socklen_t conn_addrlen;
	int reused;  /* this probe rides on the last one's connection */
	int got_any; /* a byte of the response arrived */
	struct config *cfg;
	struct farm *farm;
	struct server *srv;
	char out[2048];
	size_t out_len, out_off;
	char *head; /* response head bytes */
	size_t head_len;
	char *body; /* the first PROBE_BODY_MAX body bytes, decoded */
	size_t body_len;
	int head_done, body_done, keep;
	struct http_resp resp;
	struct http_hdr hdrs[PROBE_MAX_HEADERS];
	struct http_chunked ch;
	uint64_t left; /* Content-Length bytes still to come */
	uint64_t t_start;
	struct waiter *waiters;
};

static struct {
	struct ev_loop *loop;
	struct list graveyard;
	int inited;
} H;

static void probe_io_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events);
static void probe_timer_cb(struct ev_loop *loop, struct ev_timer *t);
static void probe_drive(struct probe *p);

const char *health_result_name(int result)
{
	switch (result) {
	case PROBE_SUCCESS:
		return "Success";
	case PROBE_CONNECTION_FAILURE:
		return "ConnectionFailure";
	case PROBE_STATUS_CODE_FAILURE:
		return "StatusCodeFailure";
	case PROBE_RESPONSE_ENTITY_FAILURE:
		return "ResponseEntityFailure";
	default:
		return "None";
	}
}

void health_init(struct ev_loop *loop)
{
	H.loop = loop;
	if (!H.inited) {
		list_init(&H.graveyard);
		H.inited = 1;
	}
}

/* ---- the connection ---------------------------------------------------- */

static void conn_close(struct probe *p)
{
	if (p->ssl) {
		if (SSL_waiting_for_async(p->ssl)) {
			/* its job still runs on the signer: resumed and freed later */
			p->state = P_ABANDONED;
			epoll_ctl(H.loop->epfd, EPOLL_CTL_DEL, p->ev.fd, NULL);
			return;
		}
		if (SSL_is_init_finished(p->ssl))
			SSL_shutdown(p->ssl); /* else the session is not resumable */
		SSL_free(p->ssl);
		p->ssl = NULL;
		ERR_clear_error();
	}
	if (p->ev.fd >= 0)
		ev_fd_close(H.loop, &p->ev);
	p->got_any = 0;
}

static void probe_want(struct probe *p, uint32_t events)
{
	if (p->ev.fd >= 0)
		ev_fd_mod(H.loop, &p->ev, events);
}

/* ---- a probe's end -------------------------------------------------------- */

static void verify_fire_cb(struct ev_loop *loop, struct ev_timer *t)
{
	struct verify *v = container_of(t, struct verify, fire);

	(void)loop;
	if (!v->cancelled && v->done)
		v->done(v->arg);
	free(v);
}

static void verify_release(struct verify *v)
{
	if (--v->pending)
		return;
	if (v->cancelled) {
		free(v);
		return;
	}
	ev_timer_set(H.loop, &v->fire, H.loop->now_ms); /* never from the caller's stack */
}

/* Frees the probe's buffers and drops its configuration reference. That
 * reference can be the last one (a reload removed this server while its
 * probe was in flight): freeing the configuration then drops rt, and rt
 * frees this probe (health_probe_free, which comes back here). So p->cfg is
 * cleared before cfg_put, and a caller must not touch p afterwards. */
static void probe_release_buffers(struct probe *p)
{
	struct config *cfg = p->cfg;

	free(p->head);
	free(p->body);
	p->head = p->body = NULL;
	p->head_len = p->body_len = 0;
	p->cfg = NULL;
	p->farm = NULL;
	p->srv = NULL;
	cfg_put(cfg);
}

static void probe_finish(struct probe *p, int result, int status, const char *reason)
{
	struct server_rt *rt = p->rt;
	uint64_t now = H.loop->now_ms;
	uint32_t ms = (uint32_t)(now - p->t_start);
	uint32_t retries = p->farm ? p->farm->health.retries : 3;
	uint32_t interval = p->farm ? p->farm->health.interval_ms : 30000;
	char why[192];

	rt->last_result = result;
	rt->last_status = status;
	rt->last_time_ms = ms;
	snprintf(rt->last_reason, sizeof(rt->last_reason), "%s", reason ? reason : "");
	if (result == PROBE_SUCCESS) {
		rt->probe_failures = 0;
		if (!rt->healthy) {
			snprintf(why, sizeof(why), "URL test: %d in %u ms", status, ms);
			lb_set_healthy(rt, 1, why, now);
		}
	} else {
		rt->probe_failures++;
		if (rt->healthy && rt->probe_failures >= retries) {
			snprintf(why, sizeof(why), "URL test failed %u time%s in a row: %s: %s",
				 rt->probe_failures, rt->probe_failures == 1 ? "" : "s",
				 health_result_name(result), reason ? reason : "");
			lb_set_healthy(rt, 0, why, now);
		} else {
			LOGD("farm %s server %s: URL test %s: %s", rt->farm_name, rt->name,
			     health_result_name(result), reason ? reason : "");
		}
	}
	if (!p->keep || result == PROBE_CONNECTION_FAILURE)
		conn_close(p);
	if (p->state != P_ABANDONED) {
		p->state = P_IDLE;
		probe_want(p, EPOLLIN | EPOLLRDHUP);
	}
	p->in_flight = 0;
	while (p->waiters) {
		struct waiter *w = p->waiters;

		p->waiters = w->next;
		verify_release(w->v);
		free(w);
	}
	ev_timer_set(H.loop, &p->tmr, now + interval);
	probe_release_buffers(p); /* last: it may free p */
}

static void probe_fail(struct probe *p, const char *reason)
{
	p->keep = 0;
	probe_finish(p, PROBE_CONNECTION_FAILURE, 0, reason);
}

/* The whole response is in: judge it. */
static void probe_judge(struct probe *p)
{
	const struct farm *f = p->farm;
	int st = p->resp.status;
	unsigned int i;
	int ok = 0;
	char why[128];

	for (i = 0; i < f->health.status_match.n; i++)
		if (st >= f->health.status_match.lo[i] && st <= f->health.status_match.hi[i])
			ok = 1;
	if (!ok) {
		snprintf(why, sizeof(why), "status %d is not in statusCodeMatch", st);
		probe_finish(p, PROBE_STATUS_CODE_FAILURE, st, why);
		return;
	}
	if (f->health.response_match && !memmem(p->body, p->body_len, f->health.response_match,
						strlen(f->health.response_match))) {
		snprintf(why, sizeof(why), "the body does not contain responseMatch");
		probe_finish(p, PROBE_RESPONSE_ENTITY_FAILURE, st, why);
		return;
	}
	probe_finish(p, PROBE_SUCCESS, st, "");
}

/* ---- reading the response ------------------------------------------------ */

static void body_keep(struct probe *p, const char *d, size_t n)
{
	size_t room = PROBE_BODY_MAX - p->body_len;

	if (n > room)
		n = room;
	memcpy(p->body + p->body_len, d, n);
	p->body_len += n;
}

/* Feeds response bytes after the head. Returns 0, or -1 on bad framing. */
static int body_feed(struct probe *p, const char *d, size_t n)
{
	while (n && !p->body_done) {
		if (p->resp.body == HTTP_BODY_LENGTH) {
			size_t k = n < p->left ? n : (size_t)p->left;

			body_keep(p, d, k);
			p->left -= k;
			d += k;
			n -= k;
			if (!p->left)
				p->body_done = 1;
		} else if (p->resp.body == HTTP_BODY_CHUNKED) {
			size_t used = 0, off = 0, len = 0;
			int r = http1_chunked_step(&p->ch, d, n, &used, &off, &len);

			if (r == HTTP_CHUNK_ERROR)
				return -1;
			if (r == HTTP_CHUNK_DATA)
				body_keep(p, d + off, len);
			if (r == HTTP_CHUNK_DONE)
				p->body_done = 1;
			d += used;
			n -= used;
		} else { /* until EOF */
			body_keep(p, d, n);
			n = 0;
		}
	}
	if (n) /* bytes after the response: the connection is not clean */
		p->keep = 0;
	if (!p->body_done && p->body_len >= PROBE_BODY_MAX) {
		/* enough to judge; the rest is not worth reading */
		p->keep = 0;
		p->body_done = 1;
	}
	return 0;
}

static int head_feed(struct probe *p)
{
	static const struct http_limits lim = {PROBE_HEAD_MAX, PROBE_HEAD_MAX, PROBE_MAX_HEADERS};
	int r = http1_parse_response(p->head, p->head_len, &lim, HTTP_M_GET, &p->resp, p->hdrs);

	if (r == HTTP1_INCOMPLETE)
		return p->head_len < PROBE_HEAD_MAX ? 0 : -1;
	if (r < 0)
		return -1;
	if (p->resp.status >= 100 && p->resp.status < 200) {
		/* an interim response: drop it, the real one follows */
		memmove(p->head, p->head + r, p->head_len - (size_t)r);
		p->head_len -= (size_t)r;
		return head_feed(p);
	}
	p->head_done = 1;
	p->keep = p->resp.minor == 1 && !(p->resp.flags & HTTP_F_CONN_CLOSE) &&
		  p->resp.body != HTTP_BODY_UNTIL_EOF;
	p->left = p->resp.content_length;
	http1_chunked_init(&p->ch, 0);
	if (p->resp.body == HTTP_BODY_NONE ||
	    (p->resp.body == HTTP_BODY_LENGTH && !p->resp.content_length))
		p->body_done = 1;
	return body_feed(p, p->head + r, p->head_len - (size_t)r);
}

/* Reads what is there. Returns 1 when the response is complete, 0 to wait,
 * -1 after the probe ended (failed). */
static int probe_read(struct probe *p)
{
	char tmp[16384];

	for (;;) {
		char *dst = p->head_done ? tmp : p->head + p->head_len;
		size_t room = p->head_done ? sizeof(tmp) : PROBE_HEAD_MAX - p->head_len;
		int n;

		if (p->ssl) {
			ERR_clear_error();
			n = SSL_read(p->ssl, dst, (int)room);
			if (n <= 0) {
				int e = SSL_get_error(p->ssl, n);

				if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
					return 0;
				n = e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
				ERR_clear_error();
			}
		} else {
			n = (int)read(p->ev.fd, dst, room);
			if (n < 0 && (errno == EAGAIN || errno == EINTR))
				return 0;
		}
		if (n <= 0) { /* EOF or error */
			if (p->head_done && p->resp.body == HTTP_BODY_UNTIL_EOF && n == 0) {
				p->body_done = 1;
				p->keep = 0;
				return 1;
			}
			if (!p->got_any && p->reused) {
				/* the kept-alive connection had been closed: once more */
				conn_close(p);
				p->reused = 0;
				return 2;
			}
			probe_fail(p, p->head_done ? "connection closed in the body"
						   : "connection closed before a response");
			return -1;
		}
		p->got_any = 1;
		if (!p->head_done) {
			p->head_len += (size_t)n;
			if (head_feed(p) < 0) {
				probe_fail(p, "invalid response head");
				return -1;
			}
		} else if (body_feed(p, tmp, (size_t)n) < 0) {
			probe_fail(p, "invalid chunked body");
			return -1;
		}
		if (p->head_done && p->body_done)
			return 1;
	}
}

/* ---- the state machine ------------------------------------------------------- */

static void probe_async_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	struct probe *p = container_of(w, struct probe, async_ev);

	(void)loop;
	(void)events;
	if (p->state == P_ABANDONED) {
		ERR_clear_error();
		SSL_do_handshake(p->ssl);
		tls_async_forget(p->ssl, &p->async_ev);
		if (!SSL_waiting_for_async(p->ssl)) {
			p->state = P_IDLE;
			conn_close(p);
			if (!p->rt) /* its server is gone: health_probe_free left it */
				list_add_tail(&H.graveyard, &p->link);
		}
		return;
	}
	probe_drive(p);
}

static int probe_connect(struct probe *p)
{
	int fd = socket(p->conn_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;

	if (fd == -1)
		return -1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&p->conn_addr, p->conn_addrlen) == -1 &&
	    errno != EINPROGRESS) {
		close(fd);
		return -1;
	}
	p->ev.fd = fd;
	p->ev.cb = probe_io_cb;
	if (ev_fd_add(H.loop, &p->ev, EPOLLOUT) == -1) {
		close(fd);
		p->ev.fd = -1;
		return -1;
	}
	p->state = P_CONNECTING;
	p->reused = 0;
	return 0;
}

static void probe_drive(struct probe *p)
{
	for (;;) {
		switch (p->state) {
		case P_CONNECTING: {
			int err = 0;
			socklen_t len = sizeof(err);

			if (getsockopt(p->ev.fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
				err = errno;
			if (err == EINPROGRESS || err == EALREADY)
				return;
			if (err) {
				char why[96];

				snprintf(why, sizeof(why), "connect: %s", strerror(err));
				probe_fail(p, why);
				return;
			}
			/* connected? a pending connect reports no error either */
			{
				struct sockaddr_storage ss;
				socklen_t sl = sizeof(ss);

				if (getpeername(p->ev.fd, (struct sockaddr *)&ss, &sl) == -1) {
					probe_want(p, EPOLLOUT);
					return;
				}
			}
			if (p->conn_tls) {
				p->ssl = tls_conn_new(p->farm, p->srv, p->ev.fd);
				if (!p->ssl) {
					probe_fail(p, "out of memory");
					return;
				}
				p->state = P_HANDSHAKE;
			} else {
				p->state = P_WRITING;
			}
			break;
		}
		case P_HANDSHAKE: {
			int r;

			ERR_clear_error();
			r = SSL_do_handshake(p->ssl);
			tls_async_forget(p->ssl, &p->async_ev);
			if (r == 1) {
				SSL_clear_mode(p->ssl, SSL_MODE_ASYNC);
				p->state = P_WRITING;
				break;
			}
			switch (SSL_get_error(p->ssl, r)) {
			case SSL_ERROR_WANT_READ:
				probe_want(p, EPOLLIN);
				return;
			case SSL_ERROR_WANT_WRITE:
				probe_want(p, EPOLLOUT);
				return;
			case SSL_ERROR_WANT_ASYNC:
				tls_async_watch(H.loop, p->ssl, &p->async_ev, probe_async_cb);
				return;
			default:
				probe_fail(p, tls_failure_reason(p->ssl, p->farm));
				return;
			}
		}
		case P_WRITING: {
			ssize_t n;

			if (p->ssl) {
				ERR_clear_error();
				n = SSL_write(p->ssl, p->out + p->out_off,
					      (int)(p->out_len - p->out_off));
				if (n <= 0) {
					int e = SSL_get_error(p->ssl, (int)n);

					ERR_clear_error();
					if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
						probe_want(p, e == SSL_ERROR_WANT_WRITE ? EPOLLOUT
											: EPOLLIN);
						return;
					}
					n = -1;
				}
			} else {
				n = write(p->ev.fd, p->out + p->out_off, p->out_len - p->out_off);
				if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
					probe_want(p, EPOLLOUT);
					return;
				}
			}
			if (n < 0) {
				if (p->reused) { /* a stale kept-alive connection */
					conn_close(p);
					if (probe_connect(p) == -1) {
						probe_fail(p, "cannot open a connection");
						return;
					}
					break;
				}
				probe_fail(p, "write failed");
				return;
			}
			p->out_off += (size_t)n;
			if (p->out_off < p->out_len)
				break;
			p->state = P_READING;
			probe_want(p, EPOLLIN | EPOLLRDHUP);
			break;
		}
		case P_READING: {
			int r = probe_read(p);

			if (r == 1) {
				probe_judge(p);
				return;
			}
			if (r == 2) { /* stale connection: a fresh one */
				p->head_len = p->body_len = 0;
				p->head_done = p->body_done = 0;
				p->out_off = 0;
				if (probe_connect(p) == -1) {
					probe_fail(p, "cannot open a connection");
					return;
				}
				break;
			}
			return;
		}
		default:
			return;
		}
	}
}

static void probe_io_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	struct probe *p = container_of(w, struct probe, ev);

	(void)loop;
	if (p->state == P_ABANDONED)
		return;
	if (p->state == P_IDLE) {
		/* the server closed the kept-alive connection (or spoke unasked);
		 * on TLS, a post-handshake message (a session ticket) is fine */
		if (p->ssl && !(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
			char c;
			int n;

			ERR_clear_error();
			n = SSL_read(p->ssl, &c, 1);
			if (n <= 0 && SSL_get_error(p->ssl, n) == SSL_ERROR_WANT_READ)
				return;
			ERR_clear_error();
		}
		conn_close(p);
		return;
	}
	probe_drive(p);
}

/* Finds the current configuration's farm and server of rt. */
static int probe_locate(struct probe *p)
{
	struct config *cfg = proxy_config();
	unsigned int i, j;

	for (i = 0; cfg && i < cfg->nfarms; i++)
		for (j = 0; j < cfg->farms[i].nservers; j++)
			if (cfg->farms[i].servers[j].rt == p->rt) {
				p->cfg = cfg;
				cfg_get(cfg);
				p->farm = &cfg->farms[i];
				p->srv = &cfg->farms[i].servers[j];
				return 0;
			}
	return -1;
}

static void probe_start(struct probe *p)
{
	const struct farm *f;
	const struct server *s;
	struct sockaddr_storage addr;
	const char *host;
	int tls;

	if (p->in_flight)
		return;
	if (p->state == P_ABANDONED) { /* its last connection still waits for the token */
		ev_timer_set(H.loop, &p->tmr, H.loop->now_ms + 1000);
		return;
	}
	if (probe_locate(p) == -1 || !p->farm->health.url) {
		probe_release_buffers(p); /* no longer configured: sync frees it */
		return;
	}
	f = p->farm;
	s = p->srv;
	tls = f->health.https;
	memcpy(&addr, tls ? &s->tls_addr : &s->addr, sizeof(addr));
	if (s->hc_port) {
		if (addr.ss_family == AF_INET6)
			((struct sockaddr_in6 *)&addr)->sin6_port = htons(s->hc_port);
		else
			((struct sockaddr_in *)&addr)->sin_port = htons(s->hc_port);
	}
	if (p->ev.fd >= 0 && (p->conn_tls != tls || p->conn_addrlen != s->addrlen ||
			      memcmp(&p->conn_addr, &addr, s->addrlen) ||
			      (tls && f->tls && p->conn_ident != f->tls->ident)))
		conn_close(p); /* the configuration changed under it */
	memcpy(&p->conn_addr, &addr, sizeof(addr));
	p->conn_addrlen = s->addrlen;
	p->conn_tls = tls;
	p->conn_ident = tls && f->tls ? f->tls->ident : 0;
	p->in_flight = 1;
	p->t_start = H.loop->now_ms;
	p->head = malloc(PROBE_HEAD_MAX);
	p->body = malloc(PROBE_BODY_MAX);
	p->head_len = p->body_len = 0;
	p->head_done = p->body_done = p->keep = 0;
	ev_timer_set(H.loop, &p->tmr, p->t_start + f->health.timeout_ms);
	if (!p->head || !p->body) {
		probe_fail(p, "out of memory");
		return;
	}
	host = s->hc_host ? s->hc_host : f->health.host;
	p->out_len =
		(size_t)snprintf(p->out, sizeof(p->out),
				 "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: farmgate-health\r\n"
				 "Accept: */*\r\n\r\n",
				 f->health.path, host);
	p->out_off = 0;
	if (p->out_len >= sizeof(p->out)) {
		probe_fail(p, "healthCheck.url is too long");
		return;
	}
	if (tls && !tls_identity_up(f)) {
		probe_fail(p, "client identity unavailable");
		return;
	}
	if (p->ev.fd >= 0) {
		p->reused = 1;
		p->got_any = 0;
		p->state = P_WRITING;
	} else if (probe_connect(p) == -1) {
		probe_fail(p, "cannot open a connection");
		return;
	}
	probe_drive(p);
}

static void probe_timer_cb(struct ev_loop *loop, struct ev_timer *t)
{
	struct probe *p = container_of(t, struct probe, tmr);
	char why[64];

	(void)loop;
	if (!p->in_flight) {
		probe_start(p);
		return;
	}
	snprintf(why, sizeof(why), "no response within %u ms",
		 p->farm ? p->farm->health.timeout_ms : 0);
	probe_fail(p, why);
}

/* ---- lifetime ------------------------------------------------------------------ */

static struct probe *probe_new(struct server_rt *rt, uint64_t first_ms)
{
	struct probe *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->rt = rt;
	p->ev.fd = -1;
	p->async_ev.fd = -1;
	ev_timer_init(&p->tmr, probe_timer_cb);
	list_init(&p->link);
	rt->probe = p;
	ev_timer_set(H.loop, &p->tmr, first_ms);
	return p;
}

void health_probe_free(struct server_rt *rt)
{
	struct probe *p = rt->probe;

	if (!p)
		return;
	rt->probe = NULL;
	ev_timer_del(H.loop, &p->tmr);
	while (p->waiters) {
		struct waiter *w = p->waiters;

		p->waiters = w->next;
		verify_release(w->v);
		free(w);
	}
	probe_release_buffers(p);
	p->rt = NULL;
	if (p->ssl && SSL_waiting_for_async(p->ssl) && H.loop && !H.loop->stop) {
		/* its job must be resumed once more: probe_async_cb frees it */
		conn_close(p);
		return;
	}
	if (p->ssl) {
		SSL_free(p->ssl);
		p->ssl = NULL;
		ERR_clear_error();
	}
	if (p->ev.fd >= 0)
		ev_fd_close(H.loop, &p->ev);
	list_add_tail(&H.graveyard, &p->link);
}

void health_collect(void)
{
	struct list *pos, *tmp;

	if (!H.inited)
		return;
	list_for_each_safe(pos, tmp, &H.graveyard)
	{
		struct probe *p = container_of(pos, struct probe, link);

		list_del(&p->link);
		free(p);
	}
}

void health_sync(struct config *cfg)
{
	uint64_t now = H.loop ? H.loop->now_ms : 0;
	unsigned int i, j, k = 0;

	if (!H.loop)
		return;
	for (i = 0; i < cfg->nfarms; i++) {
		struct farm *f = &cfg->farms[i];

		for (j = 0; j < f->nservers; j++) {
			struct server_rt *rt = f->servers[j].rt;

			if (!rt)
				continue;
			if (f->health.url && !rt->probe) {
				/* first probes at once, a little apart */
				probe_new(rt, now + 10 * (k++ % 100));
			} else if (!f->health.url && rt->probe) {
				health_probe_free(rt);
				if (!rt->healthy)
					lb_set_healthy(rt, 1, "the URL test was removed", now);
			}
		}
	}
}

void health_shutdown(void)
{
	/* probes go with their servers' state (lb_detach at exit) */
	health_collect();
}

/* ---- Verify URL Test ------------------------------------------------------------ */

struct verify *health_verify(struct farm *f, void (*done)(void *arg), void *arg)
{
	struct verify *v;
	unsigned int i;

	if (!f->health.url || !H.loop)
		return NULL;
	v = calloc(1, sizeof(*v));
	if (!v)
		return NULL;
	v->done = done;
	v->arg = arg;
	v->pending = 1; /* ours, released below: done never runs in this call */
	ev_timer_init(&v->fire, verify_fire_cb);
	for (i = 0; i < f->nservers; i++) {
		struct server_rt *rt = f->servers[i].rt;
		struct waiter *w;

		if (!rt)
			continue;
		if (!rt->probe && !probe_new(rt, H.loop->now_ms))
			continue;
		w = calloc(1, sizeof(*w));
		if (!w)
			continue;
		w->v = v;
		w->next = rt->probe->waiters;
		rt->probe->waiters = w;
		v->pending++;
		if (!rt->probe->in_flight)
			ev_timer_set(H.loop, &rt->probe->tmr, H.loop->now_ms); /* now */
	}
	verify_release(v);
	return v;
}

void health_verify_cancel(struct verify *v)
{
	if (v)
		v->cancelled = 1;
}
