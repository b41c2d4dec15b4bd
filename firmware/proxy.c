/* The data plane: accept, parse, route, pick, connect (pooled), stream both ways. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "buf.h"
#include "cfg.h"
#include "compiler.h"
#include "ev.h"
#include "health.h"
#include "http1.h"
#include "lb.h"
#include "list.h"
#include "log.h"
#include "proxy.h"
#include "rules.h"
#include "tls.h"
#include "tls_front.h"

#define RESP_MAX_HEADERS 256
#define LINGER_MS	 2000
#define TUNNEL_IDLE_MS	 3600000
#define CHUNK_FRAMING	 24 /* "%x\r\n" + "\r\n" for a chunk of at most 2^64 */

struct listener {
	struct ev_fd ev;
	struct list link;
	struct sockaddr_storage ss;
	socklen_t sslen;
	char name[INET6_ADDRSTRLEN + 8];
	char port[6];
	int keep;	       /* reload bookkeeping */
	struct front_tls *tls; /* HTTPS: the current generation's contexts, else NULL */
};

enum up_state {
	UP_CONNECTING = 0,
	UP_ACTIVE = 1,
	UP_IDLE = 2,	  /* in its server's pool */
	UP_HANDSHAKE = 3, /* TLS handshake in progress */
	UP_ORPHAN = 4,	  /* client gone while a token signature was pending */
};

struct upstream {
	struct ev_fd ev;
	struct ev_timer tmr;
	struct server_rt *rt;
	struct client *cl; /* NULL when idle in a pool */
	struct list link;  /* rt->pool while idle; graveyard once closed */
	struct buf in;
	struct buf out;
	int state;
	unsigned char rd_ready, wr_ready, rdhup, eof, err;
	unsigned int closed : 1, reused : 1, sent_any : 1;
	uint64_t last_io_ms;
	char name[INET6_ADDRSTRLEN + 8];
	SSL *ssl;	       /* NULL for plain HTTP */
	uint64_t ident;	       /* TLS identity (farm_tls.ident) it was made with */
	struct ev_fd async_ev; /* the signer's wait fd while a signature is pending */
	struct config *hold;   /* an orphan keeps the generation of its key alive */
};

enum cl_state {
	CL_HEAD = 0,	  /* waiting for / parsing a request head */
	CL_PROXY = 1,	  /* a request is being proxied */
	CL_TUNNEL = 2,	  /* after 101: raw bytes both ways */
	CL_CLOSING = 3,	  /* flush the output, then lingering close */
	CL_LINGER = 4,	  /* output shut down; drain input briefly */
	CL_HANDSHAKE = 5, /* HTTPS: TLS handshake before the first request */
};

enum resp_state {
	RS_HEAD = 0,
	RS_BODY = 1,
	RS_DONE = 2,
};

struct client {
	struct ev_fd ev;
	struct ev_timer tmr;
	struct list link; /* all clients; graveyard once closed */
	struct listener *lst;
	struct config *cfg; /* generation of the current request (a reference) */
	struct buf in;
	struct buf out;
	struct http_hdr *hdrs;
	unsigned int hdrs_cap;
	struct http_req req;
	int state;
	unsigned char rd_ready, wr_ready, rdhup, eof, err;
	unsigned int closed : 1;
	unsigned int close_after : 1, keepalive : 1, head_method : 1, idempotent : 1;
	unsigned int req_done : 1, upgrade : 1, resp_rechunk : 1, resp_keep_up : 1;
	unsigned int retried : 1, aborted : 1, head_pending : 1, up_head_built : 1;
	unsigned int up_tls : 1; /* the rule rewrote to https://<farm>/ */
	unsigned int orphan : 1; /* closed while a token signature was pending */
	struct server_rt *ws_rt; /* a WebSocket tunnel counted on this server */
	/* HTTPS listeners */
	SSL *ssl;
	struct tls_peer *peer;	   /* what the handshake established */
	struct config *hs_cfg;	   /* keeps the listener's contexts alive during it */
	struct front_tls *lst_tls; /* the listener's contexts (hs_cfg's), during it */
	struct ev_fd async_ev;	   /* the signer's wait fd while a signature is pending */
	/* timing */
	uint64_t t_head_start; /* first byte of the current request head, 0 = none */
	uint64_t t_idle_start; /* keep-alive wait start */
	uint64_t t_start;      /* request head complete */
	uint64_t t_resp;       /* response head received */
	uint64_t last_io_ms;
	/* request body */
	int req_body;
	uint64_t req_left;
	struct http_chunked req_ch;
	/* routing: ctx points into the request head while head_pending */
	struct rule_ctx ctx;
	char *url; /* the rewritten origin-form target for the backend */
	size_t url_len;
	size_t url_cap;
	struct farm *farm;
	struct server *srv;
	struct upstream *up;
	/* response */
	int resp_state;
	int resp_body;
	uint64_t resp_left;
	struct http_chunked resp_ch;
	struct http_resp resp;
	int status;
	uint64_t bytes_out; /* to the client, this request */
	uint64_t up_sent;   /* to the backend, this request */
	uint64_t up_recv;   /* from the backend, this request */
	/* copies kept after the head leaves the buffer */
	char ip[INET6_ADDRSTRLEN];
	char port[6];
	char lport[6]; /* the listener's port ({SERVER_PORT}) */
	char host[256];
	char up_host[256];
	char reqline[320];
	int minor;
	const char *reason; /* why a request failed, for the log */
	char reason_buf[192];
};

struct proxy {
	struct ev_loop *loop;
	struct config *cfg;
	struct list listeners;
	struct list clients;
	struct list graveyard_cl;
	struct list graveyard_up;
	struct list orphans;	/* upstreams */
	struct list orphans_cl; /* clients */
	unsigned int nclients;
	unsigned int nclients_peak; /* since memory was last given back */
	uint64_t token_warn_ms;	    /* last "server key's token is down" warning */
	int stopping;
	struct http_hdr resp_hdrs[RESP_MAX_HEADERS];
	char scratch[16384]; /* rule results: used and copied within one call */
};

/* The one data plane of this process (one loop, one thread). */
static struct proxy px;

static void client_pump(struct client *cl);
static void client_close(struct client *cl);
static void upstream_close(struct upstream *up);
static void client_io_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events);
static void upstream_io_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events);
static int upstream_handshake(struct client *cl, struct upstream *up);
static void upstream_failed(struct client *cl, int status, const char *reason);

/* ---- small helpers ------------------------------------------------------ */

static int sockaddr_name(const struct sockaddr *sa, char *ip, size_t iplen, char *port)
{
	uint16_t p;

	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

		if (!inet_ntop(AF_INET6, &s6->sin6_addr, ip, iplen))
			return -1;
		p = ntohs(s6->sin6_port);
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

		if (!inet_ntop(AF_INET, &s4->sin_addr, ip, iplen))
			return -1;
		p = ntohs(s4->sin_port);
	}
	snprintf(port, 6, "%u", p);
	return 0;
}

static int hdr_is(const struct http_hdr *h, const char *lit)
{
	return http1_token_eq(h->name, h->name_len, lit);
}

/* True if `name` appears as a token in the Connection header values: such
 * headers are hop-by-hop for this message (RFC 9110 7.6.1). */
static int named_in_connection(const struct http_hdr *hdrs, unsigned int n, const char *name,
			       uint32_t name_len)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		const char *p, *end;

		if (!hdr_is(&hdrs[i], "connection"))
			continue;
		p = hdrs[i].value;
		end = p + hdrs[i].value_len;
		while (p < end) {
			const char *t;

			while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
				p++;
			t = p;
			while (p < end && *p != ',' && *p != ' ' && *p != '\t')
				p++;
			if ((uint32_t)(p - t) == name_len && !strncasecmp(t, name, name_len))
				return 1;
		}
	}
	return 0;
}

/* Headers never forwarded in either direction: hop-by-hop ones (RFC 9110
 * 7.6.1) and framing we always regenerate. */
static int hop_by_hop(const struct http_hdr *h)
{
	switch (h->name_len) {
	case 2:
		return hdr_is(h, "te");
	case 7:
		return hdr_is(h, "trailer") || hdr_is(h, "upgrade");
	case 10:
		return hdr_is(h, "connection") || hdr_is(h, "keep-alive");
	case 16:
		return hdr_is(h, "proxy-connection");
	case 17:
		return hdr_is(h, "transfer-encoding");
	}
	return 0;
}

/* Header name h is lit, ASCII case-insensitive, '_' matching '-': backends
 * that read headers CGI-style (HTTP_X_ARR_CLIENTCERT) take both as one. */
static int hdr_is_loose(const struct http_hdr *h, const char *lit)
{
	size_t i, n = strlen(lit);

	if (h->name_len != n || !n)
		return 0;
	for (i = 0; i < n; i++) {
		int a = (unsigned char)h->name[i], b = (unsigned char)lit[i];

		a = a == '_' ? '-' : (a >= 'A' && a <= 'Z' ? a + 32 : a);
		b = b == '_' ? '-' : (b >= 'A' && b <= 'Z' ? b + 32 : b);
		if (a != b)
			return 0;
	}
	return 1;
}

/* Identity headers only farmgated may set: always removed from requests. */
static int identity_header(const struct http_hdr *h)
{
	return hdr_is_loose(h, "x-arr-clientcert") || hdr_is_loose(h, "x-arr-ssl") ||
	       hdr_is_loose(h, "client-cert") || hdr_is_loose(h, "client-cert-chain");
}

static void put_str(struct buf *b, const char *s, size_t n)
{
	buf_put(b, s, n);
}

static void put_lit(struct buf *b, const char *s)
{
	buf_put(b, s, strlen(s));
}

static void put_hdr(struct buf *b, const char *name, size_t nlen, const char *val, size_t vlen)
{
	buf_put(b, name, nlen);
	buf_put(b, ": ", 2);
	buf_put(b, val, vlen);
	buf_put(b, "\r\n", 2);
}

static void copy_slice(char *dst, size_t dstlen, const char *s, size_t n)
{
	if (n >= dstlen)
		n = dstlen - 1;
	memcpy(dst, s, n);
	dst[n] = '\0';
}

/* ---- graveyard: frees deferred to the end of an event batch ------------- */

static void post_batch(struct ev_loop *loop)
{
	struct list *pos, *tmp;

	(void)loop;
	health_collect();
	list_for_each_safe(pos, tmp, &px.graveyard_up)
	{
		struct upstream *up = container_of(pos, struct upstream, link);

		list_del(&up->link);
		buf_free(&up->in);
		buf_free(&up->out);
		free(up);
	}
	list_for_each_safe(pos, tmp, &px.graveyard_cl)
	{
		struct client *cl = container_of(pos, struct client, link);

		list_del(&cl->link);
		buf_free(&cl->in);
		buf_free(&cl->out);
		free(cl->hdrs);
		free(cl->url);
		free(cl);
	}
}

/* ---- timers ---------------------------------------------------------- */

static void client_timer_cb(struct ev_loop *loop, struct ev_timer *t);
static void upstream_timer_cb(struct ev_loop *loop, struct ev_timer *t);

/* Computes the client's next deadline from its state; cheap to call after
 * every pump because moving a timer later is O(1). */
static void client_arm_timer(struct client *cl)
{
	const struct config *cfg = cl->cfg ? cl->cfg : px.cfg;
	uint64_t d = 0;

	switch (cl->state) {
	case CL_HANDSHAKE: /* part of the request head's time */
		d = cl->t_head_start + cfg->timeouts.request_header_ms;
		break;
	case CL_HEAD:
		if (buf_len(&cl->out))
			d = cl->last_io_ms + cfg->timeouts.request_body_ms;
		else if (cl->t_head_start)
			d = cl->t_head_start + cfg->timeouts.request_header_ms;
		else
			d = cl->t_idle_start + cfg->timeouts.keep_alive_ms;
		break;
	case CL_PROXY:
		if (!cl->req_done || buf_len(&cl->out))
			d = cl->last_io_ms + cfg->timeouts.request_body_ms;
		break;
	case CL_TUNNEL:
		d = cl->last_io_ms + TUNNEL_IDLE_MS;
		break;
	case CL_CLOSING:
		d = cl->last_io_ms + cfg->timeouts.request_body_ms;
		break;
	case CL_LINGER:
		d = cl->last_io_ms + LINGER_MS;
		break;
	}
	ev_timer_set(px.loop, &cl->tmr, d);
}

static void upstream_arm_timer(struct upstream *up)
{
	struct client *cl = up->cl;
	uint64_t d = 0;

	switch (up->state) {
	case UP_CONNECTING:
		d = up->last_io_ms + cl->cfg->timeouts.connect_ms;
		break;
	case UP_HANDSHAKE:
		d = up->last_io_ms + cl->farm->protocol.timeout_ms;
		break;
	case UP_ORPHAN:
		break;
	case UP_ACTIVE:
		if (cl && cl->state == CL_PROXY && cl->resp_state != RS_DONE)
			d = up->last_io_ms + cl->farm->protocol.timeout_ms;
		break;
	case UP_IDLE:
		d = up->last_io_ms + px.cfg->timeouts.upstream_idle_ms;
		break;
	}
	ev_timer_set(px.loop, &up->tmr, d);
}

/* ---- I/O primitives ---------------------------------------------------- */

/* Reads into b. Returns bytes read (> 0), 0 when nothing could be read
 * (EAGAIN or no room), or -1 on EOF / error (sets *eof and *err). With
 * edge-triggered epoll a short read means the socket is drained, unless a
 * hang-up is pending (then read on until read returns 0). */
static int sock_read(int fd, struct buf *b, unsigned char *rd_ready, unsigned char rdhup,
		     unsigned char *eof, unsigned char *err)
{
	uint32_t room;
	ssize_t n;
	char *p = buf_tail(b);

	room = buf_tail_room(b);
	if (!room)
		return 0;
	n = read(fd, p, room);
	if (n > 0) {
		buf_commit(b, n);
		if ((uint32_t)n < room && !rdhup)
			*rd_ready = 0;
		return (int)n;
	}
	if (n == 0) {
		*eof = 1;
		*rd_ready = 0;
		return -1;
	}
	if (errno == EAGAIN || errno == EINTR) {
		if (errno == EAGAIN)
			*rd_ready = 0;
		return 0;
	}
	*eof = 1;
	*err = 1;
	*rd_ready = 0;
	return -1;
}

/* Writes what b holds. Returns bytes written, 0 if it would block, -1 on
 * error. */
static int sock_write(int fd, struct buf *b, unsigned char *wr_ready)
{
	ssize_t n;

	if (!buf_len(b))
		return 0;
	n = write(fd, buf_ptr(b), buf_len(b));
	if (n > 0) {
		if ((uint32_t)n < buf_len(b))
			*wr_ready = 0;
		buf_consume(b, n);
		return (int)n;
	}
	if (n == -1 && (errno == EAGAIN || errno == EINTR)) {
		if (errno == EAGAIN)
			*wr_ready = 0;
		return 0;
	}
	return -1;
}

/* TLS counterparts of sock_read/sock_write. A short SSL_read says nothing
 * about the socket (records), so readiness is cleared only on WANT_*. On the
 * upstream side an EOF without close_notify is an error: a close-delimited
 * body cut by an attacker must not look complete. */
static int ssl_read_buf(SSL *ssl, struct buf *b, unsigned char *rd_ready, unsigned char *wr_ready,
			unsigned char *eof, unsigned char *err)
{
	uint32_t room;
	char *p = buf_tail(b);
	int n;

	room = buf_tail_room(b);
	if (!room)
		return 0;
	/* no ERR_clear_error() here: every error path below leaves the queue
	 * empty, which is what SSL_get_error needs (and it is a hot path) */
	n = SSL_read(ssl, p, room);
	if (n > 0) {
		buf_commit(b, n);
		return n;
	}
	switch (SSL_get_error(ssl, n)) {
	case SSL_ERROR_WANT_READ:
		*rd_ready = 0;
		return 0;
	case SSL_ERROR_WANT_WRITE:
		*wr_ready = 0;
		return 0;
	case SSL_ERROR_ZERO_RETURN:
		*eof = 1;
		*rd_ready = 0;
		return -1;
	default:
		ERR_clear_error();
		*eof = *err = 1;
		*rd_ready = 0;
		return -1;
	}
}

static int ssl_write_buf(SSL *ssl, struct buf *b, unsigned char *rd_ready, unsigned char *wr_ready)
{
	int n;

	if (!buf_len(b))
		return 0;
	n = SSL_write(ssl, buf_ptr(b), buf_len(b));
	if (n > 0) {
		buf_consume(b, n);
		return n;
	}
	switch (SSL_get_error(ssl, n)) {
	case SSL_ERROR_WANT_WRITE:
		*wr_ready = 0;
		return 0;
	case SSL_ERROR_WANT_READ:
		*rd_ready = 0;
		return 0;
	default:
		ERR_clear_error();
		return -1;
	}
}

/* Flushes the client's output. Returns 1 if bytes moved. On a write error
 * the client is closed (its peer is gone). */
static int client_flush(struct client *cl)
{
	int n;

	if (!cl->wr_ready || !buf_len(&cl->out))
		return 0;
	n = cl->ssl ? ssl_write_buf(cl->ssl, &cl->out, &cl->rd_ready, &cl->wr_ready)
		    : sock_write(cl->ev.fd, &cl->out, &cl->wr_ready);
	if (n > 0) {
		cl->bytes_out += n;
		cl->last_io_ms = px.loop->now_ms;
		return 1;
	}
	if (n < 0) {
		cl->reason = "client write failed";
		cl->aborted = 1;
		client_close(cl);
		return 1;
	}
	return 0;
}

static int client_read(struct client *cl)
{
	int n;

	if (!cl->rd_ready || cl->eof)
		return 0;
	n = cl->ssl ? ssl_read_buf(cl->ssl, &cl->in, &cl->rd_ready, &cl->wr_ready, &cl->eof,
				   &cl->err)
		    : sock_read(cl->ev.fd, &cl->in, &cl->rd_ready, cl->rdhup, &cl->eof, &cl->err);
	if (n > 0) {
		cl->last_io_ms = px.loop->now_ms;
		return 1;
	}
	return n < 0; /* EOF is progress: the state machine must see it */
}

/* ---- local responses ---------------------------------------------------- */

static void request_done(struct client *cl);

/* Queues a response generated by farmgated itself (errors, redirects,
 * CustomResponse). A request whose body was not read closes the connection
 * after the response: its unread body would be taken for the next request. */
static void local_response(struct client *cl, int status, const char *reason, const char *extra,
			   const char *body)
{
	char head[1024];
	size_t blen, hlen;

	if (!reason)
		reason = http1_reason(status);
	if (!body) {
		static char text[128];

		snprintf(text, sizeof(text), "%d %s\n", status, reason);
		body = text;
	}
	blen = strlen(body);
	if (!cl->req_done || status == 400 || status == 408)
		cl->close_after = 1;
	hlen = snprintf(head, sizeof(head),
			"HTTP/1.%d %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
			"Content-Length: %zu\r\n%s%s\r\n",
			cl->minor == 0 ? 0 : 1, status, reason, blen, extra ? extra : "",
			cl->close_after ? "Connection: close\r\n"
					: (cl->minor == 0 ? "Connection: keep-alive\r\n" : ""));
	if (hlen >= sizeof(head))
		hlen = sizeof(head) - 1;
	if (cl->head_method)
		blen = 0;
	if (buf_ensure_free(&cl->out, hlen + blen) == -1) {
		client_close(cl);
		return;
	}
	put_str(&cl->out, head, hlen);
	put_str(&cl->out, body, blen);
	cl->status = status;
	cl->resp_state = RS_DONE;
	request_done(cl);
}

/* A request refused before routing (parse errors, timeouts). */
static void client_error(struct client *cl, int status, const char *reason)
{
	cl->reason = reason;
	cl->req_done = 0; /* framing unknown: close after the answer */
	local_response(cl, status, NULL, NULL, NULL);
}

/* ---- upstream connections ------------------------------------------------ */

static void upstream_async_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events);

static void upstream_close(struct upstream *up)
{
	if (up->closed)
		return;
	if (up->cl && up->cl->up == up)
		up->cl->up = NULL;
	if (up->ssl && SSL_waiting_for_async(up->ssl) && up->state != UP_ORPHAN && up->cl) {
		/* a signature is pending on the signer: its job must be resumed
		 * once more before the connection can be freed */
		up->state = UP_ORPHAN;
		up->hold = up->cl->cfg;
		cfg_get(up->hold);
		up->cl = NULL;
		ev_timer_del(px.loop, &up->tmr);
		list_del(&up->link);
		list_add_tail(&px.orphans, &up->link);
		return;
	}
	up->closed = 1;
	ev_timer_del(px.loop, &up->tmr);
	if (up->state == UP_IDLE) {
		if (up->ssl)
			up->rt->pool_tls_len--;
		else
			up->rt->pool_len--;
	}
	list_del(&up->link);
	if (up->ssl) {
		if (SSL_is_init_finished(up->ssl))
			SSL_shutdown(up->ssl); /* close_notify, best effort */
		SSL_free(up->ssl);
		up->ssl = NULL;
		ERR_clear_error();
	}
	ev_fd_close(px.loop, &up->ev);
	if (up->hold) {
		cfg_put(up->hold);
		up->hold = NULL;
	}
	up->cl = NULL;
	list_add_tail(&px.graveyard_up, &up->link);
}

/* Closes every idle connection of a server (its server left the
 * configuration, or we are stopping). */
static void pool_drain_list(struct list *pool)
{
	while (!list_empty(pool))
		upstream_close(container_of(pool->next, struct upstream, link));
}

static void pool_drain(struct server_rt *rt)
{
	pool_drain_list(&rt->pool);
	pool_drain_list(&rt->pool_tls);
}

/* Gives the client's upstream back to its pool if it can carry another
 * request, else closes it. */
static void upstream_release(struct client *cl, int reusable)
{
	struct upstream *up = cl->up;

	if (!up)
		return;
	cl->up = NULL;
	up->cl = NULL;
	if (!reusable || up->err || up->eof || buf_len(&up->in) || buf_len(&up->out) ||
	    up->state != UP_ACTIVE || cl->cfg != px.cfg || px.stopping ||
	    (up->ssl ? up->rt->pool_tls_len : up->rt->pool_len) >= CONFIG_UPSTREAM_POOL_MAX ||
	    (up->ssl && !tls_identity_up(cl->farm))) {
		upstream_close(up);
		return;
	}
	up->state = UP_IDLE;
	up->reused = 1;
	up->sent_any = 0;
	up->last_io_ms = px.loop->now_ms;
	if (up->ssl) {
		list_add(&up->rt->pool_tls, &up->link);
		up->rt->pool_tls_len++;
	} else {
		list_add(&up->rt->pool, &up->link);
		up->rt->pool_len++;
	}
	upstream_arm_timer(up);
}

static struct upstream *upstream_new(struct client *cl, struct server *srv)
{
	struct upstream *up = calloc(1, sizeof(*up));
	int fd, one = 1;

	if (!up)
		return NULL;
	if (buf_alloc(&up->in, CONFIG_IOBUF_SIZE) || buf_alloc(&up->out, CONFIG_IOBUF_SIZE))
		goto fail_buf;
	list_init(&up->link);
	ev_timer_init(&up->tmr, upstream_timer_cb);
	up->rt = srv->rt;
	up->cl = cl;
	up->ev.cb = upstream_io_cb;
	up->async_ev.fd = -1;
	up->last_io_ms = px.loop->now_ms;
	snprintf(up->name, sizeof(up->name), "%s:%u", srv->address,
		 (unsigned int)(cl->up_tls ? srv->https_port : srv->http_port));

	fd = socket(srv->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		goto fail_buf;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	up->ev.fd = fd;
	if (connect(fd, (const struct sockaddr *)(cl->up_tls ? &srv->tls_addr : &srv->addr),
		    srv->addrlen) == 0) {
		up->state = UP_ACTIVE;
	} else if (errno == EINPROGRESS) {
		up->state = UP_CONNECTING;
	} else {
		cl->reason = "connect failed";
		goto fail_fd;
	}
	up->wr_ready = 1;
	if (cl->up_tls) {
		up->ssl = tls_conn_new(cl->farm, srv, fd);
		if (!up->ssl)
			goto fail_fd;
		up->ident = cl->farm->tls->ident;
		if (up->state == UP_ACTIVE)
			up->state = UP_HANDSHAKE;
	}
	if (ev_fd_add(px.loop, &up->ev, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) == -1)
		goto fail_ssl;
	return up;

fail_ssl:
	SSL_free(up->ssl);

fail_fd:
	close(fd);
fail_buf:
	buf_free(&up->in);
	buf_free(&up->out);
	free(up);
	return NULL;
}

/* Takes the most recently used idle connection of srv, or opens one. */
static struct upstream *upstream_get(struct client *cl, struct server *srv, int fresh)
{
	struct server_rt *rt = srv->rt;
	struct list *pool = cl->up_tls ? &rt->pool_tls : &rt->pool;
	unsigned int *pool_len = cl->up_tls ? &rt->pool_tls_len : &rt->pool_len;

	while (!fresh && cl->farm->protocol.keep_alive && !list_empty(pool)) {
		struct upstream *up = container_of(pool->next, struct upstream, link);

		list_del(&up->link);
		(*pool_len)--;
		up->state = UP_ACTIVE; /* out of the pool: closing must not count it */
		if (up->eof || up->err || up->rdhup ||
		    (up->ssl && up->ident != cl->farm->tls->ident)) {
			upstream_close(up);
			continue;
		}
		up->state = UP_ACTIVE;
		up->cl = cl;
		up->last_io_ms = px.loop->now_ms;
		return up;
	}
	return upstream_new(cl, srv);
}

/* ---- request dispatch ------------------------------------------------------ */

/* Finds the affinity cookie's value in the request's Cookie headers. */
static uint64_t find_affinity(const struct client *cl, const struct farm *farm)
{
	const char *name = farm->affinity.cookie_name;
	size_t nlen = strlen(name);
	unsigned int i;

	for (i = 0; i < cl->req.nhdrs; i++) {
		const struct http_hdr *h = &cl->req.hdrs[i];
		const char *p, *end;

		if (!hdr_is(h, "cookie"))
			continue;
		p = h->value;
		end = p + h->value_len;
		while (p < end) {
			const char *c, *eq, *v;

			while (p < end && (*p == ' ' || *p == ';'))
				p++;
			c = p;
			while (p < end && *p != ';')
				p++;
			eq = memchr(c, '=', p - c);
			if (!eq || (size_t)(eq - c) != nlen || strncmp(c, name, nlen))
				continue;
			v = eq + 1;
			return lb_affinity_parse(v, p - v);
		}
	}
	return 0;
}

/* The request head leaves the input buffer: only once the backend
 * connection is up (so a failed connect can be retried elsewhere) and, for
 * requests without a body, once the response starts. */
static void consume_head(struct client *cl)
{
	if (!cl->head_pending)
		return;
	cl->head_pending = 0;
	buf_consume(&cl->in, cl->req.head_len);
	cl->req.nhdrs = 0;
	memset(&cl->ctx, 0, sizeof(cl->ctx));
}

/* Writes the request head for the backend into up->out: origin-form target,
 * Host per preserveHostHeader, client headers minus hop-by-hop and identity
 * headers, X-Forwarded-For/-Proto, and framing we generate ourselves. */
static int build_upstream_head(struct client *cl, struct upstream *up)
{
	const struct http_req *r = &cl->req;
	const struct farm *f = cl->farm;
	const struct server *s = cl->srv;
	const char *xff = f->protocol.xff_name;
	size_t xff_len = xff ? strlen(xff) : 0;
	char xffbuf[4096];
	size_t xffn = 0;
	char num[32];
	unsigned int i;
	int has_conn_tokens = 0;
	const struct tls_peer *pe = cl->peer;
	const char *cch = f->protocol.client_cert_header, *sslh = f->protocol.ssl_header;
	size_t cch_len = strlen(cch), sslh_len = strlen(sslh);
	uint32_t need = r->head_len + cl->url_len + 1024 + sizeof(xffbuf) + sizeof(cl->up_host);

	if (pe) /* the certificate may go twice (ARR's header and RFC 9440's) */
		need += strlen(pe->ssl_summary) + 2 * (pe->cert_b64 ? strlen(pe->cert_b64) : 0) +
			(pe->chain_b64 ? strlen(pe->chain_b64) : 0) + 128;
	if (buf_ensure_free(&up->out, need) == -1)
		return -1;

	/* Host towards the backend */
	if (f->protocol.preserve_host_header && cl->host[0])
		snprintf(cl->up_host, sizeof(cl->up_host), "%s", cl->host);
	else if (s->host_name)
		snprintf(cl->up_host, sizeof(cl->up_host), "%s", s->host_name);
	else if (s->http_port != 80)
		snprintf(cl->up_host, sizeof(cl->up_host),
			 strchr(s->address, ':') ? "[%s]:%u" : "%s:%u", s->address, s->http_port);
	else
		snprintf(cl->up_host, sizeof(cl->up_host), strchr(s->address, ':') ? "[%s]" : "%s",
			 s->address);

	put_str(&up->out, r->method_s, r->method_len);
	put_lit(&up->out, " ");
	put_str(&up->out, cl->url, cl->url_len);
	put_lit(&up->out, " HTTP/1.1\r\nHost: ");
	put_lit(&up->out, cl->up_host);
	put_lit(&up->out, "\r\n");

	for (i = 0; i < r->nhdrs; i++)
		if (hdr_is(&r->hdrs[i], "connection"))
			has_conn_tokens = 1;
	for (i = 0; i < r->nhdrs; i++) {
		const struct http_hdr *h = &r->hdrs[i];

		if (hop_by_hop(h) || identity_header(h) || hdr_is(h, "host") ||
		    hdr_is(h, "expect") || hdr_is(h, "content-length") ||
		    hdr_is(h, "x-forwarded-proto") || hdr_is_loose(h, cch) || hdr_is_loose(h, sslh))
			continue;
		if (xff_len && h->name_len == xff_len && !strncasecmp(h->name, xff, xff_len)) {
			/* earlier hops; ours is appended below */
			if (xffn + h->value_len + 2 < sizeof(xffbuf) / 2) {
				if (xffn) {
					memcpy(xffbuf + xffn, ", ", 2);
					xffn += 2;
				}
				memcpy(xffbuf + xffn, h->value, h->value_len);
				xffn += h->value_len;
			}
			continue;
		}
		if (has_conn_tokens && named_in_connection(r->hdrs, r->nhdrs, h->name, h->name_len))
			continue;
		put_hdr(&up->out, h->name, h->name_len, h->value, h->value_len);
	}
	if (xff_len) {
		int br = strchr(cl->ip, ':') != NULL && f->protocol.xff_include_port;

		xffn += snprintf(xffbuf + xffn, sizeof(xffbuf) - xffn, "%s%s%s%s%s%s",
				 xffn ? ", " : "", br ? "[" : "", cl->ip, br ? "]" : "",
				 f->protocol.xff_include_port ? ":" : "",
				 f->protocol.xff_include_port ? cl->port : "");
		put_hdr(&up->out, xff, xff_len, xffbuf, xffn);
	}
	if (cl->ssl) {
		put_lit(&up->out, "X-Forwarded-Proto: https\r\n");
		if (sslh_len && pe)
			put_hdr(&up->out, sslh, sslh_len, pe->ssl_summary, strlen(pe->ssl_summary));
	} else {
		put_lit(&up->out, "X-Forwarded-Proto: http\r\n");
	}
	if (pe && pe->cert_b64) {
		size_t n = strlen(pe->cert_b64);

		if (cch_len)
			put_hdr(&up->out, cch, cch_len, pe->cert_b64, n);
		if (f->protocol.client_cert_rfc9440) {
			put_lit(&up->out, "Client-Cert: :");
			put_str(&up->out, pe->cert_b64, n);
			put_lit(&up->out, ":\r\n");
			if (pe->chain_b64)
				put_hdr(&up->out, "Client-Cert-Chain", 17, pe->chain_b64,
					strlen(pe->chain_b64));
		}
	}
	if (cl->req_body == HTTP_BODY_LENGTH) {
		int n = snprintf(num, sizeof(num), "%" PRIu64, r->content_length);

		put_hdr(&up->out, "Content-Length", 14, num, n);
	} else if (cl->req_body == HTTP_BODY_CHUNKED) {
		put_lit(&up->out, "Transfer-Encoding: chunked\r\n");
	}
	if (cl->upgrade) {
		const struct http_hdr *u = http1_find(r->hdrs, r->nhdrs, "upgrade");

		put_hdr(&up->out, "Upgrade", 7, u->value, u->value_len);
		put_lit(&up->out, "Connection: Upgrade\r\n");
	} else if (!f->protocol.keep_alive) {
		put_lit(&up->out, "Connection: close\r\n");
	}
	put_lit(&up->out, "\r\n");
	return 0;
}

/* Picks a server of cl->farm (never `exclude`; exactly `force` if given) and
 * starts a connection to it; one more server is tried if the connection
 * cannot even be started. Returns 0, or -1 after answering the client. */
static int start_upstream(struct client *cl, struct server *exclude, struct server *force,
			  int fresh)
{
	struct lb_input in;
	struct server *srv;

	memset(&in, 0, sizeof(in));
	in.vars = &cl->ctx;
	in.affinity_id = cl->farm->affinity.use_cookie ? find_affinity(cl, cl->farm) : 0;
	in.exclude = exclude;
	in.now_ms = px.loop->now_ms;
	for (;;) {
		srv = force ? force : lb_pick(cl->farm, &in);
		force = NULL;
		if (!srv) {
			if (!cl->reason)
				cl->reason = "no server available";
			local_response(cl, exclude ? 502 : 503, NULL, NULL, NULL);
			return -1;
		}
		cl->srv = srv;
		lb_request_start(srv);
		cl->up = upstream_get(cl, srv, fresh);
		if (cl->up) {
			cl->up_head_built = 0;
			upstream_arm_timer(cl->up);
			return 0;
		}
		lb_request_end(srv, 1, 0, 0, 0, px.loop->now_ms);
		cl->srv = NULL;
		cl->reason = "cannot open a connection to the backend";
		if (cl->retried) {
			local_response(cl, 502, NULL, NULL, NULL);
			return -1;
		}
		cl->retried = 1;
		in.exclude = srv;
		exclude = srv;
	}
}

/* Only WebSocket is tunnelled: other upgrades (h2c, TLS) would hand the
 * backend connection to a protocol this proxy does not speak. */
static int upgrade_is_websocket(const struct http_req *r)
{
	const struct http_hdr *u = http1_find(r->hdrs, r->nhdrs, "upgrade");

	return u && http1_token_eq(u->value, u->value_len, "websocket");
}

/* Routes a parsed request: rules, farm, server, upstream. */
static void handle_request(struct client *cl)
{
	struct http_req *r = &cl->req;
	struct config *cfg = px.cfg;
	struct rule_ctx *ctx = &cl->ctx;
	struct rule_result res;
	const char *target = r->target, *q;
	size_t tlen = r->target_len;
	const char *host = "";
	size_t host_len = 0;
	unsigned int i;

	cl->cfg = cfg;
	cfg_get(cfg);
	cl->head_pending = 1;
	cl->t_start = px.loop->now_ms;
	cl->t_head_start = 0;
	cl->minor = r->minor;
	cl->head_method = r->method == HTTP_M_HEAD;
	cl->idempotent = r->method == HTTP_M_GET || r->method == HTTP_M_HEAD ||
			 r->method == HTTP_M_OPTIONS || r->method == HTTP_M_PUT ||
			 r->method == HTTP_M_DELETE;
	cl->keepalive =
		r->minor ? !(r->flags & HTTP_F_CONN_CLOSE) : !!(r->flags & HTTP_F_CONN_KEEPALIVE);
	cl->close_after = !cl->keepalive || px.stopping;
	cl->req_body = r->body;
	cl->req_left = r->content_length;
	cl->req_done = r->body == HTTP_BODY_NONE ||
		       (r->body == HTTP_BODY_LENGTH && r->content_length == 0);
	http1_chunked_init(&cl->req_ch, 1);
	cl->upgrade = (r->flags & (HTTP_F_UPGRADE | HTTP_F_CONN_UPGRADE)) ==
			      (HTTP_F_UPGRADE | HTTP_F_CONN_UPGRADE) &&
		      r->minor == 1 && r->method == HTTP_M_GET && upgrade_is_websocket(r);
	cl->resp_state = RS_HEAD;
	cl->farm = NULL;
	cl->srv = NULL;
	cl->retried = 0;
	cl->reason = NULL;
	cl->status = 0;
	cl->bytes_out = cl->up_sent = cl->up_recv = 0;
	cl->state = CL_PROXY;

	if (r->target_form == HTTP_TARGET_ABSOLUTE) {
		/* RFC 9112 3.2.2: the target's authority replaces Host */
		const char *a = (const char *)memchr(target, ':', tlen) + 3, *e = target + tlen;
		const char *p = a;

		while (p < e && *p != '/' && *p != '?')
			p++;
		host = a;
		host_len = p - a;
		target = p < e ? p : "/";
		tlen = p < e ? (size_t)(e - p) : 1;
	} else if (r->host_idx >= 0) {
		host = r->hdrs[r->host_idx].value;
		host_len = r->hdrs[r->host_idx].value_len;
	}
	if (r->target_form == HTTP_TARGET_ASTERISK) {
		target = "/";
		tlen = 1;
	}
	copy_slice(cl->host, sizeof(cl->host), host, host_len);
	snprintf(cl->reqline, sizeof(cl->reqline), "%.*s %.*s HTTP/1.%d", (int)r->method_len,
		 r->method_s, (int)(tlen > 256 ? 256 : tlen), target, r->minor);
	for (i = 0; cl->reqline[i]; i++)
		if (cl->reqline[i] == '"')
			cl->reqline[i] = '\'';

	if (cl->peer && cl->peer->status) {
		/* clientCertFailure Forbidden: IIS's 403.7 / 403.13 / 403.16 / 403.17 */
		char body[96];

		snprintf(body, sizeof(body), "403 Forbidden: %s\n", cl->peer->reason);
		cl->close_after = 1;
		cl->reason = cl->peer->reason;
		local_response(cl, 403, NULL, NULL, body);
		return;
	}
	if (r->method == HTTP_M_CONNECT || r->method == HTTP_M_TRACE) {
		/* what follows a CONNECT is tunnel data, never a request: close */
		cl->close_after = 1;
		cl->reason = "method not allowed";
		local_response(cl, 405, NULL,
			       "Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n", NULL);
		return;
	}

	q = memchr(target, '?', tlen);
	memset(ctx, 0, sizeof(*ctx));
	ctx->url = target;
	ctx->url_len = q ? (size_t)(q - target) : tlen;
	ctx->query = q ? q + 1 : "";
	ctx->query_len = q ? tlen - (q + 1 - target) : 0;
	ctx->host = cl->host;
	ctx->host_len = strlen(cl->host);
	ctx->https = cl->ssl != NULL;
	if (cl->peer) {
		ctx->cert_subject = cl->peer->subject;
		ctx->cert_issuer = cl->peer->issuer;
		ctx->cert_serial = cl->peer->serial;
	}
	ctx->remote_addr = cl->ip;
	ctx->remote_port = cl->port;
	ctx->server_port = cl->lport;
	ctx->method = r->method_s;
	ctx->method_len = r->method_len;
	ctx->hdrs = r->hdrs;
	ctx->nhdrs = r->nhdrs;

	rules_eval(cfg, ctx, &res, px.scratch, sizeof(px.scratch));
	switch (res.outcome) {
	case RULES_FARM:
		break;
	case RULES_REDIRECT: {
		char loc[8192 + 16];

		if (res.url_len > 8192 || memchr(res.url, '\r', res.url_len) ||
		    memchr(res.url, '\n', res.url_len)) {
			cl->reason = "redirect target invalid";
			local_response(cl, 502, NULL, NULL, NULL);
			return;
		}
		snprintf(loc, sizeof(loc), "Location: %s\r\n", res.url);
		cl->reason = "redirect";
		local_response(cl, res.status, NULL, loc, "");
		return;
	}
	case RULES_CUSTOM:
		cl->reason = "custom response";
		local_response(cl, res.status, res.reason, NULL, res.body ? res.body : "");
		return;
	case RULES_ABORT:
		cl->reason = "AbortRequest";
		cl->aborted = 1;
		request_done(cl);
		client_close(cl);
		return;
	case RULES_ERROR:
		cl->reason = "rewrite failed (unknown farm or URL too long)";
		local_response(cl, 502, NULL, NULL, NULL);
		return;
	case RULES_NO_ROUTE:
	default:
		cl->reason = "no rule routes this request";
		local_response(cl, 404, NULL, NULL, NULL);
		return;
	}

	cl->farm = res.farm;
	cl->up_tls = res.https;
	if (!lb_farm_online(cl->farm)) {
		cl->reason = "farm offline";
		local_response(cl, 503, NULL, NULL, NULL);
		return;
	}
	if (cl->up_tls && !tls_identity_up(cl->farm)) {
		/* fail closed: the token holding this farm's key is gone */
		cl->reason = "client identity unavailable";
		local_response(cl, 502, NULL, NULL, NULL);
		return;
	}
	if (res.url_len + 1 > cl->url_cap) {
		size_t cap = res.url_len + 256;
		char *u = realloc(cl->url, cap);

		if (!u) {
			cl->reason = "out of memory";
			local_response(cl, 503, NULL, NULL, NULL);
			return;
		}
		cl->url = u;
		cl->url_cap = cap;
	}
	memcpy(cl->url, res.url, res.url_len + 1);
	cl->url_len = res.url_len;
	if (start_upstream(cl, NULL, NULL, 0) == -1)
		return;
	if ((r->flags & HTTP_F_EXPECT_CONTINUE) && !cl->req_done &&
	    buf_len(&cl->in) == r->head_len) {
		/* the body waits for our word (Expect itself is not forwarded) */
		if (buf_ensure_free(&cl->out, 25) == 0)
			put_lit(&cl->out, "HTTP/1.1 100 Continue\r\n\r\n");
	}
}

/* ---- request and response bodies ----------------------------------------- */

/* Moves body bytes from src into dst, re-framing chunked bodies as clean
 * chunks (sizes in hex, no extensions, no trailers) when `rechunk`. For
 * Content-Length bodies *left counts down. Returns 1 if anything moved,
 * 0 if nothing could, -1 on a framing error. Sets *done at the end of the
 * body. */
static int move_body(struct buf *src, struct buf *dst, int kind, uint64_t *left,
		     struct http_chunked *ch, int rechunk, int *done)
{
	int moved = 0;

	*done = 0;
	if (kind == HTTP_BODY_LENGTH || kind == HTTP_BODY_UNTIL_EOF) {
		uint32_t n = buf_len(src);
		uint32_t room;

		if (kind == HTTP_BODY_LENGTH && n > *left)
			n = (uint32_t)*left;
		buf_tail(dst);
		room = buf_tail_room(dst);
		if (rechunk) {
			if (room <= CHUNK_FRAMING)
				return 0;
			room -= CHUNK_FRAMING;
		}
		if (n > room)
			n = room;
		if (n) {
			if (rechunk) {
				char hdr[24];
				int hl = snprintf(hdr, sizeof(hdr), "%x\r\n", n);

				buf_put(dst, hdr, hl);
			}
			buf_put(dst, buf_ptr(src), n);
			if (rechunk)
				buf_put(dst, "\r\n", 2);
			buf_consume(src, n);
			moved = 1;
		}
		if (kind == HTTP_BODY_LENGTH) {
			*left -= n;
			*done = *left == 0;
		}
		return moved;
	}
	/* chunked */
	for (;;) {
		size_t consumed = 0, off = 0, dlen = 0, inlen = buf_len(src);
		uint32_t room;
		int r;

		buf_tail(dst);
		room = buf_tail_room(dst);
		if (room <= CHUNK_FRAMING)
			return moved;
		if (inlen > room - CHUNK_FRAMING)
			inlen = room - CHUNK_FRAMING;
		if (!inlen)
			return moved;
		r = http1_chunked_step(ch, buf_ptr(src), inlen, &consumed, &off, &dlen);
		if (r == HTTP_CHUNK_ERROR)
			return -1;
		if (r == HTTP_CHUNK_DATA && dlen) {
			if (rechunk) {
				char hdr[24];
				int hl = snprintf(hdr, sizeof(hdr), "%zx\r\n", dlen);

				buf_put(dst, hdr, hl);
			}
			buf_put(dst, buf_ptr(src) + off, dlen);
			if (rechunk)
				buf_put(dst, "\r\n", 2);
		}
		if (consumed) {
			buf_consume(src, consumed);
			moved = 1;
		}
		if (r == HTTP_CHUNK_DONE) {
			if (rechunk)
				buf_put(dst, "0\r\n\r\n", 5);
			*done = 1;
			return 1;
		}
		if (r == HTTP_CHUNK_AGAIN && !consumed)
			return moved;
	}
}

/* ---- response head -------------------------------------------------------- */

/* Rewrites a Location-like value whose authority is the backend's host to the
 * client's Host (reverseRewriteHostInResponseHeaders). Returns 1 and fills
 * out if rewritten. */
static int reverse_rewrite(const struct client *cl, const struct http_hdr *h, char *out,
			   size_t outlen, size_t *n)
{
	const char *v = h->value, *e = v + h->value_len, *a, *p;
	size_t hl = strlen(cl->up_host);

	if (h->value_len > 7 && !strncasecmp(v, "http://", 7))
		a = v + 7;
	else if (h->value_len > 8 && !strncasecmp(v, "https://", 8))
		a = v + 8;
	else
		return 0;
	p = a;
	while (p < e && *p != '/' && *p != '?' && *p != '#')
		p++;
	if ((size_t)(p - a) != hl || strncasecmp(a, cl->up_host, hl) || !cl->host[0])
		return 0;
	*n = snprintf(out, outlen, "http://%s%.*s", cl->host, (int)(e - p), p);
	return *n < outlen;
}

/* Builds the client's response head from the backend's: the final one, or
 * an interim (1xx other than 101), which carries the backend's end-to-end
 * fields and nothing of ours. Returns 0, or -1 if the output cannot take it
 * yet (caller retries after a flush). */
static int build_response_head(struct client *cl)
{
	const struct http_resp *rs = &cl->resp;
	const struct farm *f = cl->farm;
	int interim = rs->status < 200 && rs->status != 101;
	int disable_affinity = 0, has_conn_tokens = 0;
	unsigned int i;
	char tmp[8192 + 64];
	uint32_t need = rs->head_len + 512 + sizeof(tmp);

	if (buf_len(&cl->out) && buf_free_space(&cl->out) < need)
		return -1; /* wait for the previous bytes to drain */
	if (buf_ensure_free(&cl->out, need) == -1)
		return -1;

	for (i = 0; i < rs->nhdrs; i++) {
		if (hdr_is(&rs->hdrs[i], "arr-disable-session-affinity") &&
		    http1_token_eq(rs->hdrs[i].value, rs->hdrs[i].value_len, "true"))
			disable_affinity = 1;
		if (hdr_is(&rs->hdrs[i], "connection"))
			has_conn_tokens = 1;
	}

	i = snprintf(tmp, sizeof(tmp), "HTTP/1.%d %d ", cl->minor ? 1 : 0, rs->status);
	put_str(&cl->out, tmp, i);
	if (rs->reason_len)
		put_str(&cl->out, rs->reason, rs->reason_len);
	else
		put_lit(&cl->out, http1_reason(rs->status));
	put_lit(&cl->out, "\r\n");

	for (i = 0; i < rs->nhdrs; i++) {
		const struct http_hdr *h = &rs->hdrs[i];
		size_t n;

		if (rs->status == 101 && (hdr_is(h, "upgrade"))) {
			put_hdr(&cl->out, h->name, h->name_len, h->value, h->value_len);
			continue;
		}
		if (hop_by_hop(h) || hdr_is(h, "arr-disable-session-affinity"))
			continue;
		if (has_conn_tokens &&
		    named_in_connection(rs->hdrs, rs->nhdrs, h->name, h->name_len))
			continue;
		/* one normalised Content-Length is written below: a list
		 * ("5, 5") or repeated fields would reach the client as is */
		if (hdr_is(h, "content-length"))
			continue;
		if (f->protocol.reverse_rewrite_host &&
		    (hdr_is(h, "location") || hdr_is(h, "content-location")) &&
		    reverse_rewrite(cl, h, tmp, sizeof(tmp), &n)) {
			put_hdr(&cl->out, h->name, h->name_len, tmp, n);
			continue;
		}
		put_hdr(&cl->out, h->name, h->name_len, h->value, h->value_len);
	}
	if (interim) {
		put_lit(&cl->out, "\r\n");
		return 0;
	}
	if (f->affinity.use_cookie && !disable_affinity && rs->status != 101) {
		i = snprintf(tmp, sizeof(tmp),
			     "Set-Cookie: %s=%016" PRIx64 "; Path=/; Max-Age=%u; HttpOnly\r\n",
			     f->affinity.cookie_name, cl->srv->affinity_id, f->affinity.timeout_s);
		put_str(&cl->out, tmp, i);
	}
	if (f->protocol.arr_response_header)
		put_lit(&cl->out, "X-Powered-By: ARR/3.0\r\n");
	if (rs->status == 101) {
		put_lit(&cl->out, "Connection: Upgrade\r\n");
	} else if (cl->resp_rechunk) {
		put_lit(&cl->out, "Transfer-Encoding: chunked\r\n");
	} else if (http1_find(rs->hdrs, rs->nhdrs, "content-length")) {
		i = snprintf(tmp, sizeof(tmp), "Content-Length: %" PRIu64 "\r\n",
			     rs->content_length);
		put_str(&cl->out, tmp, i);
	}
	if (rs->status != 101) {
		if (cl->close_after)
			put_lit(&cl->out, "Connection: close\r\n");
		else if (!cl->minor)
			put_lit(&cl->out, "Connection: keep-alive\r\n");
	}
	put_lit(&cl->out, "\r\n");
	return 0;
}

/* Tells whether a response with a body names a transfer coding other than
 * chunked ("gzip", "gzip, chunked"). farmgated decodes none and re-chunks
 * the body without the Transfer-Encoding field, so the client would get
 * coded bytes labelled as plain ones: such a response is refused (502), as
 * nginx does. */
static int resp_te_unsupported(const struct http_resp *rs)
{
	unsigned int i;

	if (rs->body == HTTP_BODY_NONE)
		return 0;
	for (i = 0; i < rs->nhdrs; i++)
		if (hdr_is(&rs->hdrs[i], "transfer-encoding") &&
		    !http1_token_eq(rs->hdrs[i].value, rs->hdrs[i].value_len, "chunked"))
			return 1;
	return 0;
}

/* Parses the backend's response head in up->in and starts the response.
 * Returns 1 on progress, 0 if more bytes are needed. */
static int process_response_head(struct client *cl)
{
	struct upstream *up = cl->up;
	struct http_limits lim = {
		.max_line = cl->cfg->limits.max_response_header_size,
		.max_head = cl->cfg->limits.max_response_header_size,
		.max_headers = RESP_MAX_HEADERS,
	};
	struct http_resp *rs = &cl->resp;
	int r;

	r = http1_parse_response(buf_ptr(&up->in), buf_len(&up->in), &lim, cl->req.method, rs,
				 px.resp_hdrs);
	if (r == HTTP1_INCOMPLETE) {
		/* a head larger than the I/O buffer: grow up to the limit once */
		if (buf_len(&up->in) == up->in.size && up->in.size <= lim.max_head &&
		    buf_ensure_free(&up->in, lim.max_head + 1 - buf_len(&up->in)) == 0)
			return 1;
		return 0;
	}
	if (r < 0) {
		cl->reason = "invalid response from backend";
		return -1;
	}
	if (resp_te_unsupported(rs)) {
		cl->reason = "unsupported transfer coding from backend";
		return -1;
	}
	if (rs->status >= 100 && rs->status < 200 && rs->status != 101) {
		/* interim responses go on to HTTP/1.1 clients (RFC 9110 15.2: 103
		 * Early Hints, 102 Processing), but 100 Continue: farmgated answers
		 * Expect itself and does not forward it, so the backend's is not
		 * the client's to see */
		if (rs->status != 100 && cl->minor && build_response_head(cl) == -1)
			return 0;
		buf_consume(&up->in, r);
		return 1;
	}
	if (!cl->t_resp)
		cl->t_resp = px.loop->now_ms;
	if (rs->status == 101 && !cl->upgrade) {
		cl->reason = "101 without an upgrade request";
		return -1;
	}
	cl->status = rs->status;
	cl->resp_body = rs->body;
	cl->resp_left = rs->content_length;
	http1_chunked_init(&cl->resp_ch, 0);
	cl->resp_keep_up = rs->body != HTTP_BODY_UNTIL_EOF && !(rs->flags & HTTP_F_CONN_CLOSE) &&
			   (rs->minor == 1 || (rs->flags & HTTP_F_CONN_KEEPALIVE)) &&
			   cl->farm->protocol.keep_alive && !cl->upgrade;
	cl->resp_rechunk = 0;
	if (rs->body == HTTP_BODY_CHUNKED || rs->body == HTTP_BODY_UNTIL_EOF) {
		if (cl->minor)
			cl->resp_rechunk = 1;
		else
			cl->close_after = 1; /* HTTP/1.0: the end is the close */
	}
	if (build_response_head(cl) == -1)
		return 0;
	buf_consume(&up->in, r);
	if (rs->status == 101) {
		cl->ws_rt = cl->srv->rt;
		cl->ws_rt->ws_current++;
		cl->ws_rt->ws_total++;
		cl->state = CL_TUNNEL;
		cl->resp_state = RS_DONE;
		return 1;
	}
	cl->resp_state = rs->body == HTTP_BODY_NONE ? RS_DONE : RS_BODY;
	if (rs->body == HTTP_BODY_LENGTH && rs->content_length == 0)
		cl->resp_state = RS_DONE;
	return 1;
}

/* ---- request completion --------------------------------------------------- */

/* Logs the request and resets the client for the next one (keep-alive) or
 * moves it to closing. The upstream must have been released before. */
static void request_done(struct client *cl)
{
	uint64_t now = px.loop->now_ms;

	consume_head(cl);
	if (cl->ws_rt) {
		cl->ws_rt->ws_current--;
		cl->ws_rt = NULL;
	}
	if (cl->srv && cl->t_resp)
		lb_live_result(cl->srv, cl->resp.status, now);
	else if (cl->srv && (cl->status == 502 || cl->status == 504))
		lb_live_result(cl->srv, -1, now); /* the backend failed before answering */
	if (cl->srv)
		lb_request_end(cl->srv, cl->status == 0 || cl->status >= 500 || cl->aborted,
			       cl->t_resp ? (uint32_t)(cl->t_resp - cl->t_start) : 0, cl->up_sent,
			       cl->up_recv, now);
	if (IS_ENABLED(CONFIG_ACCESS_LOG)) {
		char srvname[INET6_ADDRSTRLEN + 8] = "-";

		if (cl->srv)
			snprintf(srvname, sizeof(srvname), "%s:%u", cl->srv->address,
				 (unsigned int)(cl->up_tls ? cl->srv->https_port
							   : cl->srv->http_port));
		log_access("%s:%s \"%s\" \"%s\" %d %" PRIu64 " farm=%s server=%s time=%" PRIu64
			   "ms%s%s",
			   cl->ip, cl->port, cl->host, cl->reqline[0] ? cl->reqline : "-",
			   cl->status, cl->bytes_out + buf_len(&cl->out),
			   cl->farm ? cl->farm->name : "-", srvname,
			   now - (cl->t_start ? cl->t_start : now), cl->reason ? " reason=" : "",
			   cl->reason ? cl->reason : "");
	}
	if (cl->reason && (cl->status >= 500 || cl->aborted) && cl->farm)
		LOGW("%s:%s \"%s\" farm=%s: %s", cl->ip, cl->port, cl->reqline, cl->farm->name,
		     cl->reason);
	if (cl->cfg) {
		cfg_put(cl->cfg);
		cl->cfg = NULL;
	}
	cl->srv = NULL;
	cl->farm = NULL;
	cl->t_resp = 0;
	cl->t_start = 0;
	cl->reqline[0] = '\0';
	cl->reason = NULL;
	cl->bytes_out = 0;
	cl->head_method = 0;
	cl->minor = 1;
	cl->req_done = 1;
	cl->state = (cl->close_after || px.stopping) ? CL_CLOSING : CL_HEAD;
	cl->t_idle_start = now;
}

/* Frees what a closed client holds besides its buffers (post_batch frees
 * those) and sends it to the graveyard. */
static void client_release(struct client *cl)
{
	if (cl->ssl) {
		/* a finished handshake's session stays resumable (session-id
		 * cache) however the connection ended; nothing more is sent */
		if (SSL_is_init_finished(cl->ssl))
			SSL_set_shutdown(cl->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
		SSL_free(cl->ssl);
		cl->ssl = NULL;
		ERR_clear_error();
	}
	tls_peer_free(cl->peer);
	cl->peer = NULL;
	if (cl->hs_cfg) {
		cfg_put(cl->hs_cfg);
		cl->hs_cfg = NULL;
	}
	ev_fd_close(px.loop, &cl->ev);
	list_add_tail(&px.graveyard_cl, &cl->link);
}

static void client_close(struct client *cl)
{
	if (cl->closed)
		return;
	if (cl->up)
		upstream_close(cl->up);
	if (cl->t_start) {
		/* a request cut short: log it and settle the server's counters */
		cl->aborted = 1;
		if (!cl->reason)
			cl->reason = "client connection lost";
		request_done(cl);
	}
	cl->closed = 1;
	if (cl->cfg) {
		cfg_put(cl->cfg);
		cl->cfg = NULL;
	}
	ev_timer_del(px.loop, &cl->tmr);
	if (cl->aborted) {
		/* a reset tells the client the response is incomplete */
		struct linger lg = {1, 0};

		setsockopt(cl->ev.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	list_del(&cl->link);
	px.nclients--;
	if (cl->ssl && SSL_waiting_for_async(cl->ssl)) {
		/* a token signature is pending: its job must be resumed once more
		 * before the connection (and its socket, which the job may still
		 * write to) can go; hs_cfg keeps the key's generation alive */
		cl->orphan = 1;
		epoll_ctl(px.loop->epfd, EPOLL_CTL_DEL, cl->ev.fd, NULL);
		shutdown(cl->ev.fd, SHUT_RDWR);
		list_add_tail(&px.orphans_cl, &cl->link);
		return;
	}
	client_release(cl);
}

/* Ends a request after a backend failure: a new attempt when nothing of it
 * reached a backend (or a pooled connection turned out closed and the
 * request is idempotent and bodiless), else an error response if none has
 * started, else a reset of the client connection. */
static void upstream_failed(struct client *cl, int status, const char *reason)
{
	struct upstream *up = cl->up;
	int nothing_sent = up && !up->sent_any;
	int stale = up && up->reused && !cl->up_recv && cl->idempotent &&
		    cl->req_body == HTTP_BODY_NONE;
	struct server *prev = cl->srv;

	cl->reason = reason;
	if (cl->resp_state != RS_HEAD) {
		cl->aborted = 1;
		upstream_release(cl, 0);
		request_done(cl);
		client_close(cl);
		return;
	}
	if (up)
		upstream_close(up);
	if (!cl->retried && cl->head_pending && prev && stale && !nothing_sent) {
		/* the server is fine, its idle connection was not */
		cl->retried = 1;
		cl->up_head_built = 0;
		lb_request_end(prev, 0, 0, 0, 0, px.loop->now_ms);
		start_upstream(cl, NULL, prev, 1);
		return;
	}
	if (!cl->retried && cl->head_pending && prev && nothing_sent) {
		/* nothing reached the backend: one other server may take it */
		struct lb_input in;
		struct server *next;

		memset(&in, 0, sizeof(in));
		in.vars = &cl->ctx;
		in.exclude = prev;
		in.now_ms = px.loop->now_ms;
		next = lb_pick(cl->farm, &in);
		if (next) {
			LOGW("%s:%s \"%s\" farm=%s server=%s:%u: %s; nothing was sent: retrying on "
			     "%s:%u",
			     cl->ip, cl->port, cl->reqline, cl->farm->name, prev->address,
			     (unsigned int)(cl->up_tls ? prev->https_port : prev->http_port),
			     reason, next->address,
			     (unsigned int)(cl->up_tls ? next->https_port : next->http_port));
			cl->retried = 1;
			cl->up_head_built = 0;
			cl->reason = NULL; /* the retry's own outcome is what the access log says */
			lb_live_result(prev, -1, px.loop->now_ms);
			lb_request_end(prev, 1, 0, 0, 0, px.loop->now_ms);
			cl->srv = NULL;
			start_upstream(cl, prev, next, 0);
			return;
		}
	}
	local_response(cl, status, NULL, NULL, NULL);
}

/* ---- the pumps ---------------------------------------------------------- */

static const char *parse_error_reason(int status)
{
	switch (status) {
	case 414:
		return "request line too long";
	case 431:
		return "request header too large";
	case 417:
		return "unsupported expectation";
	case 501:
		return "unsupported transfer coding";
	case 505:
		return "HTTP version not supported";
	}
	return "malformed request";
}

static int step_head(struct client *cl)
{
	const struct config *cfg = px.cfg;
	int p = client_flush(cl), r;

	if (cl->closed)
		return 1;
	if (buf_len(&cl->in)) {
		struct http_limits lim = {
			.max_line = cfg->limits.max_request_line,
			.max_head = cfg->limits.max_header_size,
			.max_headers = cfg->limits.max_headers,
		};

		if (cl->hdrs_cap < lim.max_headers) {
			struct http_hdr *h = realloc(cl->hdrs, lim.max_headers * sizeof(*h));

			if (!h) {
				client_close(cl);
				return 1;
			}
			cl->hdrs = h;
			cl->hdrs_cap = lim.max_headers;
		}
		if (!cl->t_head_start)
			cl->t_head_start = px.loop->now_ms;
		r = http1_parse_request(buf_ptr(&cl->in), buf_len(&cl->in), &lim, &cl->req,
					cl->hdrs);
		if (r > 0) {
			handle_request(cl);
			return 1;
		}
		if (r < HTTP1_INCOMPLETE) {
			client_error(cl, -r, parse_error_reason(-r));
			return 1;
		}
		if (!buf_free_space(&cl->in)) {
			client_error(cl, 431, "request header too large");
			return 1;
		}
	}
	if (px.stopping && !buf_len(&cl->in) && !buf_len(&cl->out)) {
		client_close(cl);
		return 1;
	}
	if (client_read(cl))
		return 1;
	if (cl->eof && !buf_len(&cl->out)) {
		client_close(cl);
		return 1;
	}
	return p;
}

static int upstream_write(struct client *cl, struct upstream *up)
{
	int n;

	if (!up->wr_ready || !buf_len(&up->out))
		return 0;
	n = up->ssl ? ssl_write_buf(up->ssl, &up->out, &up->rd_ready, &up->wr_ready)
		    : sock_write(up->ev.fd, &up->out, &up->wr_ready);
	if (n > 0) {
		up->sent_any = 1;
		cl->up_sent += n;
		up->last_io_ms = px.loop->now_ms;
		return 1;
	}
	return n; /* 0 or -1 */
}

static int upstream_read(struct client *cl, struct upstream *up)
{
	int n;

	if (!up->rd_ready || up->eof)
		return 0;
	n = up->ssl ? ssl_read_buf(up->ssl, &up->in, &up->rd_ready, &up->wr_ready, &up->eof,
				   &up->err)
		    : sock_read(up->ev.fd, &up->in, &up->rd_ready, up->rdhup, &up->eof, &up->err);
	if (n > 0) {
		cl->up_recv += n;
		up->last_io_ms = px.loop->now_ms;
		return 1;
	}
	return n < 0;
}

static int step_proxy(struct client *cl)
{
	struct upstream *up = cl->up;
	int p = 0, r, done;

	if (!up) {
		client_close(cl); /* cannot happen: every path sets up or answers */
		return 1;
	}
	if (up->state != UP_ACTIVE)
		return client_flush(cl);
	if (!cl->up_head_built) {
		if (build_upstream_head(cl, up) == -1) {
			upstream_failed(cl, 502, "out of memory");
			return 1;
		}
		cl->up_head_built = 1;
		if (!cl->req_done)
			consume_head(cl); /* the body follows the head in cl->in */
		p = 1;
	}

	/* request body: client -> backend */
	if (!cl->req_done) {
		r = move_body(&cl->in, &up->out, cl->req_body, &cl->req_left, &cl->req_ch,
			      cl->req_body == HTTP_BODY_CHUNKED, &done);
		if (r < 0) {
			cl->reason = "invalid chunked request body";
			if (cl->resp_state == RS_HEAD) {
				upstream_close(up);
				client_error(cl, 400, cl->reason);
			} else {
				cl->aborted = 1;
				upstream_release(cl, 0);
				request_done(cl);
				client_close(cl);
			}
			return 1;
		}
		p |= r;
		if (done) {
			cl->req_done = 1;
			p = 1;
		} else {
			p |= client_read(cl);
			if (cl->eof && !buf_len(&cl->in)) {
				cl->reason = "client closed the connection during the request body";
				cl->aborted = 1;
				upstream_release(cl, 0);
				request_done(cl);
				client_close(cl);
				return 1;
			}
		}
	}

	r = upstream_write(cl, up);
	if (r < 0) {
		upstream_failed(cl, 502, "backend connection failed while sending the request");
		return 1;
	}
	p |= r;
	p |= upstream_read(cl, up);

	if (cl->resp_state == RS_HEAD && buf_len(&up->in)) {
		r = process_response_head(cl);
		if (r < 0) {
			upstream_failed(cl, 502, cl->reason);
			return 1;
		}
		if (r > 0) {
			consume_head(cl);
			p = 1;
		}
		if (cl->state == CL_TUNNEL)
			return 1;
	}
	if (cl->resp_state == RS_BODY && buf_len(&up->in)) {
		r = move_body(&up->in, &cl->out, cl->resp_body, &cl->resp_left, &cl->resp_ch,
			      cl->resp_rechunk, &done);
		if (r < 0) {
			upstream_failed(cl, 502, "invalid chunked response from backend");
			return 1;
		}
		p |= r;
		if (done) {
			cl->resp_state = RS_DONE;
			p = 1;
		}
	}
	if (up->eof) {
		if (cl->resp_state == RS_HEAD) {
			upstream_failed(
				cl, 502,
				up->err ? "backend reset the connection"
					: "backend closed the connection before responding");
			return 1;
		}
		if (cl->resp_state == RS_BODY && !buf_len(&up->in)) {
			if (cl->resp_body != HTTP_BODY_UNTIL_EOF || up->err) {
				upstream_failed(cl, 502,
						"backend closed the connection mid-response");
				return 1;
			}
			if (cl->resp_rechunk) {
				if (buf_ensure_free(&cl->out, 5) == -1) {
					client_close(cl);
					return 1;
				}
				put_lit(&cl->out, "0\r\n\r\n");
			}
			cl->resp_state = RS_DONE;
			cl->resp_keep_up = 0;
			p = 1;
		}
	}

	p |= client_flush(cl);
	if (cl->closed)
		return 1;
	if (cl->resp_state == RS_DONE) {
		if (!cl->req_done) {
			/* answered before the whole body arrived: neither
			 * connection knows where the next message starts */
			cl->close_after = 1;
			cl->resp_keep_up = 0;
		}
		upstream_release(cl, cl->resp_keep_up);
		request_done(cl);
		return 1;
	}
	return p;
}

/* After 101 Switching Protocols: bytes both ways until both sides end. */
static int step_tunnel(struct client *cl)
{
	struct upstream *up = cl->up;
	uint64_t dummy = 0;
	int p = 0, done, r;

	if (!up) {
		client_close(cl);
		return 1;
	}
	if (buf_len(&cl->in))
		p |= move_body(&cl->in, &up->out, HTTP_BODY_UNTIL_EOF, &dummy, &cl->req_ch, 0,
			       &done);
	p |= client_read(cl);
	r = upstream_write(cl, up);
	if (r < 0)
		up->eof = up->err = 1;
	p |= r > 0;
	p |= upstream_read(cl, up);
	if (buf_len(&up->in))
		p |= move_body(&up->in, &cl->out, HTTP_BODY_UNTIL_EOF, &dummy, &cl->resp_ch, 0,
			       &done);
	p |= client_flush(cl);
	if (cl->closed)
		return 1;
	if (cl->eof && !buf_len(&cl->in) && !buf_len(&up->out) && !up->err)
		shutdown(up->ev.fd, SHUT_WR);
	if ((up->eof && !buf_len(&up->in) && !buf_len(&cl->out)) || (cl->eof && up->eof) ||
	    up->err) {
		cl->close_after = 1;
		upstream_release(cl, 0);
		request_done(cl);
		client_close(cl);
		return 1;
	}
	return p;
}

static int step_closing(struct client *cl)
{
	int p = client_flush(cl);

	if (cl->closed)
		return 1;
	if (buf_len(&cl->out))
		return p;
	if (cl->eof) {
		client_close(cl);
		return 1;
	}
	/* lingering close: unread input must not turn our close into a reset
	 * that destroys the response before the client reads it */
	if (cl->ssl && SSL_is_init_finished(cl->ssl)) {
		ERR_clear_error();
		SSL_shutdown(cl->ssl); /* close_notify, best effort */
		ERR_clear_error();
	}
	shutdown(cl->ev.fd, SHUT_WR);
	cl->state = CL_LINGER;
	cl->last_io_ms = px.loop->now_ms;
	return 1;
}

static int step_linger(struct client *cl)
{
	char tmp[4096];
	ssize_t n;

	if (!cl->rd_ready)
		return 0;
	n = read(cl->ev.fd, tmp, sizeof(tmp));
	if (n > 0)
		return 1;
	if (n == -1 && errno == EAGAIN) {
		cl->rd_ready = 0;
		return 0;
	}
	client_close(cl);
	return 1;
}

static void client_async_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events);

/* HTTPS: drives the handshake. The client certificate's verdict and what
 * the farm is told about the connection are read once, at its end. */
static int step_handshake(struct client *cl)
{
	const char *tok;
	int r;

	ERR_clear_error();
	r = SSL_do_handshake(cl->ssl);
	tls_async_forget(cl->ssl, &cl->async_ev);
	if (r == 1) {
		SSL_clear_mode(cl->ssl, SSL_MODE_ASYNC); /* signatures are done */
		cl->peer = tls_peer_new(cl->ssl, cl->lst_tls);
		cfg_put(cl->hs_cfg);
		cl->hs_cfg = NULL;
		cl->lst_tls = NULL;
		if (!cl->peer) {
			client_close(cl);
			return 1;
		}
		cl->state = CL_HEAD;
		cl->t_head_start = 0;
		cl->t_idle_start = cl->last_io_ms = px.loop->now_ms;
		return 1;
	}
	switch (SSL_get_error(cl->ssl, r)) {
	case SSL_ERROR_WANT_READ:
		cl->rd_ready = 0;
		return 0;
	case SSL_ERROR_WANT_WRITE:
		cl->wr_ready = 0;
		return 0;
	case SSL_ERROR_WANT_ASYNC:
		tls_async_watch(px.loop, cl->ssl, &cl->async_ev, client_async_cb);
		return 0;
	default:
		tok = tls_front_token_down(cl->lst_tls);
		if (tok && px.loop->now_ms - px.token_warn_ms >= 1000) {
			/* once a second at most: every full handshake fails now */
			px.token_warn_ms = px.loop->now_ms;
			LOGW("%s:%s: TLS handshake failed: the server key's token %s is down",
			     cl->ip, cl->port, tok);
		}
		if (tok)
			ERR_clear_error();
		else if (SSL_get_verify_result(cl->ssl) != X509_V_OK ||
			 ERR_GET_REASON(ERR_peek_last_error()) ==
				 SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
			/* a refused client certificate: the operator may be asked why */
			LOGI("%s:%s: %s", cl->ip, cl->port,
			     tls_handshake_failure(cl->ssl, "client"));
		else
			LOGD("%s:%s: %s", cl->ip, cl->port,
			     tls_handshake_failure(cl->ssl, "client"));
		/* lingering close: in TLS 1.3 the client may have sent its request
		 * already; closing on it would reset the alert away */
		shutdown(cl->ev.fd, SHUT_WR);
		cl->state = CL_LINGER;
		cl->last_io_ms = px.loop->now_ms;
		return 1;
	}
}

/* Runs the client's state machine until nothing moves. */
static void client_pump(struct client *cl)
{
	int p;

	do {
		if (cl->closed)
			return;
		switch (cl->state) {
		case CL_HEAD:
			p = step_head(cl);
			break;
		case CL_PROXY:
			p = step_proxy(cl);
			break;
		case CL_TUNNEL:
			p = step_tunnel(cl);
			break;
		case CL_CLOSING:
			p = step_closing(cl);
			break;
		case CL_HANDSHAKE:
			p = step_handshake(cl);
			break;
		default:
			p = step_linger(cl);
			break;
		}
	} while (p);
	if (cl->closed)
		return;
	client_arm_timer(cl);
	if (cl->up)
		upstream_arm_timer(cl->up);
}

/* ---- callbacks ---------------------------------------------------------- */

static void client_io_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	struct client *cl = container_of(w, struct client, ev);

	(void)loop;
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		cl->rd_ready = 1;
	if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		cl->rdhup = 1;
	if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
		cl->wr_ready = 1;
	client_pump(cl);
}

/* Drives an upstream TLS handshake. Returns 1 when done, 0 while it waits
 * (socket or signer), -1 after it failed (the request was answered or
 * retried: the caller must not touch cl's upstream again). */
static int upstream_handshake(struct client *cl, struct upstream *up)
{
	int r;

	ERR_clear_error();
	r = SSL_do_handshake(up->ssl);
	tls_async_forget(up->ssl, &up->async_ev);
	if (r == 1) {
		/* signatures are done: later reads and writes need no ASYNC jobs */
		SSL_clear_mode(up->ssl, SSL_MODE_ASYNC);
		up->state = UP_ACTIVE;
		up->last_io_ms = px.loop->now_ms;
		return 1;
	}
	switch (SSL_get_error(up->ssl, r)) {
	case SSL_ERROR_WANT_READ:
		up->rd_ready = 0;
		return 0;
	case SSL_ERROR_WANT_WRITE:
		up->wr_ready = 0;
		return 0;
	case SSL_ERROR_WANT_ASYNC:
		tls_async_watch(px.loop, up->ssl, &up->async_ev, upstream_async_cb);
		return 0;
	default: {
		snprintf(cl->reason_buf, sizeof(cl->reason_buf), "%s",
			 tls_failure_reason(up->ssl, cl->farm));
		if (!tls_identity_up(cl->farm))
			cl->retried = 1; /* every server would need the same token */
		upstream_failed(cl, 502, cl->reason_buf);
		if (!cl->closed)
			client_pump(cl);
		return -1;
	}
	}
}

static void upstream_io_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	struct upstream *up = container_of(w, struct upstream, ev);
	struct client *cl = up->cl;

	(void)loop;
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		up->rd_ready = 1;
	if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		up->rdhup = 1;
	if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
		up->wr_ready = 1;
	if (up->state == UP_ORPHAN)
		return; /* only its wait fd matters */
	if (up->state == UP_IDLE || !cl) {
		/* an idle backend connection closed or spoke unasked: drop it;
		 * on TLS, a post-handshake message (a session ticket) is fine */
		if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
			return;
		if (up->ssl && !(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
			char c;
			int n;

			ERR_clear_error();
			n = SSL_read(up->ssl, &c, 1);
			if (n <= 0 && SSL_get_error(up->ssl, n) == SSL_ERROR_WANT_READ) {
				up->rd_ready = 0;
				return;
			}
		}
		upstream_close(up);
		return;
	}
	if (up->state == UP_CONNECTING) {
		int err = 0;
		socklen_t len = sizeof(err);

		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		if (getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
			err = errno;
		if (err) {
			upstream_failed(cl, 502,
					err == ECONNREFUSED ? "backend refused the connection"
							    : "backend connect failed");
			if (!cl->closed)
				client_pump(cl);
			return;
		}
		up->state = up->ssl ? UP_HANDSHAKE : UP_ACTIVE;
		up->last_io_ms = px.loop->now_ms;
	}
	if (up->state == UP_HANDSHAKE && upstream_handshake(cl, up) < 0)
		return;
	client_pump(cl);
}

/* The signer finished a signature a paused handshake waits for. */
static void upstream_async_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	struct upstream *up = container_of(w, struct upstream, async_ev);

	(void)loop;
	(void)events;
	if (up->state == UP_ORPHAN) {
		/* resume the job so it completes, then let the connection go */
		ERR_clear_error();
		SSL_do_handshake(up->ssl);
		tls_async_forget(up->ssl, &up->async_ev);
		if (!SSL_waiting_for_async(up->ssl)) {
			up->state = UP_ACTIVE;
			upstream_close(up);
		}
		return;
	}
	if (up->state == UP_HANDSHAKE && up->cl && upstream_handshake(up->cl, up) == 1)
		client_pump(up->cl);
}

/* The signer finished a signature a client's handshake waits for. */
static void client_async_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	struct client *cl = container_of(w, struct client, async_ev);

	(void)loop;
	(void)events;
	if (cl->orphan) {
		/* resume the job so it completes, then let the connection go */
		ERR_clear_error();
		SSL_do_handshake(cl->ssl);
		tls_async_forget(cl->ssl, &cl->async_ev);
		if (!SSL_waiting_for_async(cl->ssl)) {
			list_del(&cl->link);
			client_release(cl);
		}
		return;
	}
	client_pump(cl);
}

static void client_timer_cb(struct ev_loop *loop, struct ev_timer *t)
{
	struct client *cl = container_of(t, struct client, tmr);

	(void)loop;
	switch (cl->state) {
	case CL_HEAD:
		if (cl->t_head_start && !buf_len(&cl->out)) {
			client_error(cl, 408, "request header timeout");
			client_pump(cl);
		} else {
			client_close(cl); /* idle keep-alive, or a client not reading */
		}
		return;
	case CL_PROXY:
		if (!cl->req_done && cl->resp_state == RS_HEAD) {
			if (cl->up)
				upstream_close(cl->up);
			client_error(cl, 408, "request body timeout");
			client_pump(cl);
			return;
		}
		cl->reason = cl->req_done ? "client stopped reading the response"
					  : "request body timeout";
		cl->aborted = 1;
		upstream_release(cl, 0);
		request_done(cl);
		client_close(cl);
		return;
	default:
		client_close(cl);
		return;
	}
}

static void upstream_timer_cb(struct ev_loop *loop, struct ev_timer *t)
{
	struct upstream *up = container_of(t, struct upstream, tmr);
	struct client *cl = up->cl;

	(void)loop;
	if (up->state == UP_IDLE || !cl) {
		upstream_close(up);
		return;
	}
	/* a pooled connection whose backend is slow is not a stale one: the
	 * request reached it, so it is not sent a second time */
	up->reused = 0;
	upstream_failed(cl, 504,
			up->state == UP_CONNECTING  ? "backend connect timeout"
			: up->state == UP_HANDSHAKE ? "TLS handshake timeout"
						    : "backend response timeout");
	if (!cl->closed)
		client_pump(cl);
}

/* ---- listeners and accept ------------------------------------------------- */

static void client_new(struct listener *lst, int fd, const struct sockaddr_storage *ss)
{
	const struct config *cfg = px.cfg;
	uint32_t insize = cfg->limits.max_header_size + 1;
	struct client *cl = calloc(1, sizeof(*cl));
	int one = 1;

	if (insize < CONFIG_IOBUF_SIZE)
		insize = CONFIG_IOBUF_SIZE;
	if (!cl)
		goto fail;
	if (buf_alloc(&cl->in, insize) || buf_alloc(&cl->out, CONFIG_IOBUF_SIZE))
		goto fail_buf;
	cl->hdrs = calloc(cfg->limits.max_headers, sizeof(*cl->hdrs));
	if (!cl->hdrs)
		goto fail_buf;
	cl->hdrs_cap = cfg->limits.max_headers;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (sockaddr_name((const struct sockaddr *)ss, cl->ip, sizeof(cl->ip), cl->port))
		snprintf(cl->ip, sizeof(cl->ip), "unknown");
	cl->lst = lst;
	memcpy(cl->lport, lst->port, sizeof(cl->lport));
	cl->ev.fd = fd;
	cl->ev.cb = client_io_cb;
	ev_timer_init(&cl->tmr, client_timer_cb);
	cl->rd_ready = 1;
	cl->wr_ready = 1;
	cl->state = CL_HEAD;
	cl->t_idle_start = cl->last_io_ms = px.loop->now_ms;
	cl->async_ev.fd = -1;
	if (lst->tls) {
		cl->ssl = tls_front_conn_new(lst->tls, fd);
		if (!cl->ssl)
			goto fail_buf;
		cl->state = CL_HANDSHAKE;
		cl->t_head_start = px.loop->now_ms;
		cl->lst_tls = lst->tls;
		cl->hs_cfg = px.cfg;
		cfg_get(cl->hs_cfg);
	}
	list_init(&cl->link);
	if (ev_fd_add(px.loop, &cl->ev, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) == -1)
		goto fail_buf;
	list_add_tail(&px.clients, &cl->link);
	px.nclients++;
	client_pump(cl);
	return;

fail_buf:
	if (cl->hs_cfg)
		cfg_put(cl->hs_cfg);
	SSL_free(cl->ssl);
	buf_free(&cl->in);
	buf_free(&cl->out);
	free(cl->hdrs);
	free(cl);
fail:
	close(fd);
}

static struct ev_timer accept_pause;

static void listeners_set(uint32_t events)
{
	struct list *pos, *tmp;

	list_for_each_safe(pos, tmp, &px.listeners)
	{
		struct listener *l = container_of(pos, struct listener, link);

		ev_fd_mod(px.loop, &l->ev, events);
	}
}

static void accept_resume_cb(struct ev_loop *loop, struct ev_timer *t)
{
	(void)loop;
	(void)t;
	if (!px.stopping)
		listeners_set(EPOLLIN);
}

static void listener_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	struct listener *lst = container_of(w, struct listener, ev);
	int i;

	(void)events;
	for (i = 0; i < 64; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept4(w->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd == -1) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				/* out of descriptors: pause accepting instead of spinning */
				LOGW("accept on %s: %s; pausing accepts for 100 ms", lst->name,
				     strerror(errno));
				listeners_set(0);
				ev_timer_set(loop, &accept_pause, loop->now_ms + 100);
			}
			return;
		}
		if (px.nclients >= px.cfg->limits.max_connections) {
			close(fd); /* maxConnections reached: a clean refusal */
			continue;
		}
		client_new(lst, fd, &ss);
	}
}

static struct listener *listener_open(const struct listener_cfg *lc, char *err, size_t errlen)
{
	struct listener *l = calloc(1, sizeof(*l));
	int fd, one = 1;

	if (!l) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (strchr(lc->address, ':')) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&l->ss;

		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(lc->port);
		inet_pton(AF_INET6, lc->address, &s6->sin6_addr);
		l->sslen = sizeof(*s6);
		snprintf(l->name, sizeof(l->name), "[%s]:%u", lc->address, lc->port);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&l->ss;

		s4->sin_family = AF_INET;
		s4->sin_port = htons(lc->port);
		inet_pton(AF_INET, lc->address, &s4->sin_addr);
		l->sslen = sizeof(*s4);
		snprintf(l->name, sizeof(l->name), "%s:%u", lc->address, lc->port);
	}
	snprintf(l->port, sizeof(l->port), "%u", lc->port);
	fd = socket(l->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (l->ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&l->ss, l->sslen) == -1 || listen(fd, 4096) == -1)
		goto fail_fd;
	l->ev.fd = fd;
	l->ev.cb = listener_cb;
	l->tls = lc->tls;
	if (ev_fd_add(px.loop, &l->ev, EPOLLIN) == -1)
		goto fail_fd;
	list_init(&l->link);
	return l;

fail_fd:
	snprintf(err, errlen, "listener %s: %s", l->name, strerror(errno));
	close(fd);
	free(l);
	return NULL;
fail:
	snprintf(err, errlen, "listener %s: %s", l->name, strerror(errno));
	free(l);
	return NULL;
}

/* "listener 0.0.0.0:80: Address already in use" -> "$.listeners[i]: ..." */
static void listener_err_path(char *err, size_t errlen, unsigned int i)
{
	char tmp[512];

	snprintf(tmp, sizeof(tmp), "%s", err);
	snprintf(err, errlen, "$.listeners[%u]: %s", i, tmp);
}

static void listener_close(struct listener *l)
{
	list_del(&l->link);
	ev_fd_close(px.loop, &l->ev);
	free(l); /* listener events are level-triggered and never batched after close */
}

static struct listener *listener_find(const struct listener_cfg *lc)
{
	struct list *pos, *tmp;
	char name[INET6_ADDRSTRLEN + 8];

	snprintf(name, sizeof(name), strchr(lc->address, ':') ? "[%s]:%u" : "%s:%u", lc->address,
		 lc->port);
	list_for_each_safe(pos, tmp, &px.listeners)
	{
		struct listener *l = container_of(pos, struct listener, link);

		if (!strcmp(l->name, name))
			return l;
	}
	return NULL;
}

/* ---- memory after a burst ------------------------------------------------
 * Connection buffers come from malloc, and after a burst (an attack of slow
 * readers, a traffic peak) glibc keeps what was freed for reuse: RSS would
 * stay at the peak. Once the connections have fallen to a quarter of their
 * peak, malloc_trim() a second later gives the free pages back. */

#define TRIM_MIN_PEAK 256 /* connections: below that, nothing worth a trim */
#define TRIM_DELAY_MS 1000

static struct ev_timer trim_timer;

static void trim_cb(struct ev_loop *loop, struct ev_timer *t)
{
	(void)loop;
	(void)t;
#ifdef __GLIBC__
	malloc_trim(0);
#endif
	px.nclients_peak = px.nclients;
}

static void post_batch_check(struct ev_loop *loop)
{
	post_batch(loop);
	if (px.stopping && !px.nclients)
		loop->stop = 1;
	if (px.nclients > px.nclients_peak)
		px.nclients_peak = px.nclients;
	else if (px.nclients_peak >= TRIM_MIN_PEAK && px.nclients <= px.nclients_peak / 4 &&
		 !trim_timer.deadline)
		ev_timer_set(loop, &trim_timer, loop->now_ms + TRIM_DELAY_MS);
}

/* ---- public API ----------------------------------------------------------- */

int proxy_start(struct ev_loop *loop, struct config *cfg, char *err, size_t errlen)
{
	unsigned int i;

	memset(&px, 0, sizeof(px));
	px.loop = loop;
	list_init(&px.listeners);
	list_init(&px.clients);
	list_init(&px.graveyard_cl);
	list_init(&px.graveyard_up);
	list_init(&px.orphans);
	list_init(&px.orphans_cl);
	ev_timer_init(&accept_pause, accept_resume_cb);
	ev_timer_init(&trim_timer, trim_cb);
	loop->post_batch = post_batch_check;
	if (lb_attach(cfg) == -1) {
		snprintf(err, errlen, "out of memory");
		cfg_put(cfg);
		return -1;
	}
	px.cfg = cfg;
	for (i = 0; i < cfg->nlisteners; i++) {
		struct listener *l = listener_open(&cfg->listeners[i], err, errlen);

		if (!l) {
			listener_err_path(err, errlen, i);
			proxy_free();
			return -1;
		}
		list_add_tail(&px.listeners, &l->link);
		LOGI("listening on %s", l->name);
	}
	health_init(loop);
	health_sync(cfg);
	return 0;
}

int proxy_reload(struct config *cfg, char *err, size_t errlen)
{
	struct list fresh, *pos, *tmp;
	struct config *old = px.cfg;
	unsigned int i, j;

	list_init(&fresh);
	list_for_each_safe(pos, tmp, &px.listeners) container_of(pos, struct listener, link)->keep =
		0;
	for (i = 0; i < cfg->nlisteners; i++) {
		struct listener *l = listener_find(&cfg->listeners[i]);

		if (l) {
			l->keep = 1;
			continue;
		}
		l = listener_open(&cfg->listeners[i], err, errlen);
		if (!l) {
			listener_err_path(err, errlen, i);
			goto fail;
		}
		l->keep = 1;
		list_add_tail(&fresh, &l->link);
	}
	if (lb_attach(cfg) == -1) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	px.cfg = cfg;
	health_sync(cfg);
	for (i = 0; i < cfg->nlisteners; i++) {
		struct listener *l = listener_find(&cfg->listeners[i]);

		if (l) /* new connections get the new generation's contexts */
			l->tls = cfg->listeners[i].tls;
	}
	list_for_each_safe(pos, tmp, &px.listeners)
	{
		struct listener *l = container_of(pos, struct listener, link);

		if (!l->keep) {
			LOGI("no longer listening on %s", l->name);
			listener_close(l);
		}
	}
	list_for_each_safe(pos, tmp, &fresh)
	{
		struct listener *l = container_of(pos, struct listener, link);

		list_del(&l->link);
		list_add_tail(&px.listeners, &l->link);
		LOGI("listening on %s", l->name);
	}
	/* idle connections to servers that left the configuration */
	for (i = 0; i < old->nfarms; i++)
		for (j = 0; j < old->farms[i].nservers; j++) {
			struct server_rt *rt = old->farms[i].servers[j].rt;

			if (rt && rt->refcnt == 1)
				pool_drain(rt);
		}
	log_configure(cfg->log.access, cfg->log.error, cfg->log.debug);
	cfg_put(old);
	return 0;

fail:
	list_for_each_safe(pos, tmp, &fresh)
		listener_close(container_of(pos, struct listener, link));
	cfg_put(cfg);
	return -1;
}

unsigned int proxy_shutdown(void)
{
	struct list *pos, *tmp;
	unsigned int i, j;

	px.stopping = 1;
	list_for_each_safe(pos, tmp, &px.listeners)
		listener_close(container_of(pos, struct listener, link));
	list_for_each_safe(pos, tmp, &px.clients)
	{
		struct client *cl = container_of(pos, struct client, link);

		if ((cl->state == CL_HEAD && !buf_len(&cl->in) && !buf_len(&cl->out)) ||
		    cl->state == CL_HANDSHAKE)
			client_close(cl);
	}
	for (i = 0; i < px.cfg->nfarms; i++)
		for (j = 0; j < px.cfg->farms[i].nservers; j++)
			if (px.cfg->farms[i].servers[j].rt)
				pool_drain(px.cfg->farms[i].servers[j].rt);
	if (!px.nclients)
		px.loop->stop = 1;
	return px.nclients;
}

void proxy_free(void)
{
	struct list *pos, *tmp;
	unsigned int i, j;

	list_for_each_safe(pos, tmp, &px.listeners)
		listener_close(container_of(pos, struct listener, link));
	list_for_each_safe(pos, tmp, &px.clients)
		client_close(container_of(pos, struct client, link));
	if (px.cfg) {
		for (i = 0; i < px.cfg->nfarms; i++)
			for (j = 0; j < px.cfg->farms[i].nservers; j++)
				if (px.cfg->farms[i].servers[j].rt)
					pool_drain(px.cfg->farms[i].servers[j].rt);
	}
	while (!list_empty(&px.orphans_cl)) {
		/* exit: nothing will resume their jobs; OpenSSL frees them */
		struct client *cl = container_of(px.orphans_cl.next, struct client, link);

		list_del(&cl->link);
		client_release(cl);
	}
	while (!list_empty(&px.orphans)) {
		/* exit: nothing will resume their jobs; OpenSSL frees them */
		struct upstream *up = container_of(px.orphans.next, struct upstream, link);

		up->state = UP_ACTIVE;
		upstream_close(up);
	}
	post_batch(px.loop);
	ev_timer_del(px.loop, &accept_pause);
	ev_timer_del(px.loop, &trim_timer);
	if (px.cfg)
		cfg_put(px.cfg);
	px.cfg = NULL;
}

void proxy_token_state(struct fg_token *tok, int up)
{
	unsigned int i, j;

	if (up || !px.cfg)
		return;
	/* fail closed: no request may ride on a connection or a session made
	 * with an identity whose token is gone */
	for (i = 0; i < px.cfg->nfarms; i++) {
		struct farm *f = &px.cfg->farms[i];

		if (!f->tls || f->tls->token != tok)
			continue;
		for (j = 0; j < f->nservers; j++)
			if (f->servers[j].rt)
				pool_drain_list(&f->servers[j].rt->pool_tls);
	}
	tls_forget_sessions(px.cfg, tok);
}

struct config *proxy_config(void)
{
	return px.cfg;
}

void proxy_server_admin(struct server_rt *rt, int admin)
{
	struct list *pos, *tmp;

	rt->admin = admin;
	if (admin == SRV_AVAILABLE || admin == SRV_DRAIN)
		return;
	pool_drain(rt); /* idle connections: nothing more will use them */
	if (admin != SRV_UNAVAILABLE_IMMEDIATELY)
		return;
	list_for_each_safe(pos, tmp, &px.clients)
	{
		struct client *cl = container_of(pos, struct client, link);

		if (cl->closed || !cl->srv || cl->srv->rt != rt || !cl->up ||
		    (cl->state != CL_PROXY && cl->state != CL_TUNNEL))
			continue;
		cl->retried = 1; /* aborted, not moved: the operator said so */
		upstream_failed(cl, 502, "server made unavailable immediately");
		if (!cl->closed)
			client_pump(cl);
	}
}
