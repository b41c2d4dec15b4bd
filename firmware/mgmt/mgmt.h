/* farmgate-mgmt: the management plane (docs/management.md). A separate process: HTTPS on
 * its own listener, the REST API and the embedded web UI; it reaches the data plane only
 * through farmgated's control socket. Blocking I/O, one thread per connection (few). */
#ifndef FG_MGMT_H
#define FG_MGMT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "jbuf.h"

#define MGMT_BODY_MAX (2u << 20) /* PFX uploads */

struct mgmt {
	const char *cfg_path;
	const char *data_dir;
	const char *control_socket;
	const char *system_helper; /* -x PROGRAM: reboot, factory-reset; NULL = none */
	int64_t started;	   /* wall clock */
};

extern struct mgmt M;

/* Answers are built in a struct jbuf (jbuf.h). */

/* One request as the API sees it. */
struct mgmt_req {
	const char *method;
	const char *path; /* raw target, before '?' (NUL-terminated copy) */
	const char *query;
	const char *body;
	size_t body_len;
	const char *host;	/* Host header, or "" */
	const char *origin;	/* Origin header, or NULL */
	const char *fetch_site; /* Sec-Fetch-Site, or NULL */
	const char *csrf;	/* X-CSRF-Token, or NULL */
	const char *cookie;	/* Cookie header, or NULL */
	const char *authz;	/* Authorization header, or NULL */
	const char *ip;
};

struct mgmt_resp {
	int status;
	const char *type; /* Content-Type */
	struct jbuf body;
	const unsigned char *static_body; /* instead of body (assets) */
	size_t static_len;
	char headers[1024]; /* extra header lines, each ending in \r\n */
	int api;	    /* no-store */
	/* a system action ("reboot", "factory-reset"): the helper runs once the
	 * answer is out and the connection closed */
	const char *run_after;
};

/* Routes and answers one request (mgmt_api.c). */
void mgmt_handle(const struct mgmt_req *rq, struct mgmt_resp *rs);

/* Auth and sessions (mgmt_auth.c). */
int auth_init(char *err, size_t errlen);
int auth_password_set(void);
int auth_setup(const char *code, const char *password, const char **why);
int auth_check_password(const char *password);
int auth_change_password(const char *current, const char *password, const char **why);
/* A new session: its id and CSRF token (33 bytes each). */
int session_new(char *id, char *csrf);
/* The session named by the request's cookie, refreshed: copies its CSRF token. */
int session_find(const char *cookie, char *csrf);
void session_drop(const char *cookie);
void session_drop_all(void);
/* Login throttling by client address: seconds to wait, 0 = go ahead. */
unsigned int throttle_wait(const char *ip);
void throttle_result(const char *ip, int ok);

/* The control socket: one request, its answer (malloc'ed, NUL-terminated), or NULL with
 * err filled. */
char *control_call(const char *req, int timeout_ms, char *err, size_t errlen);

/* Appends a line to the audit log. */
void audit(const char *ip, const char *action, const char *detail);

#endif
