/* Load balancing (ARR's five algorithms), client affinity, and the runtime
 * state of farms and servers that survives configuration reloads. */
#ifndef FG_LB_H
#define FG_LB_H

#include <stdint.h>

#include "cfg-t.h"
#include "list.h"
#include "rules.h"

/* Runtime state of one server, shared by every configuration generation
 * that has the same farm name + address + http port. */
struct server_rt {
	char *key; /* "farm\naddress\nport" */
	int refcnt;
	/* counters (ARR's names) */
	uint32_t current_requests;
	uint64_t total_requests;
	uint64_t failed_requests;
	uint64_t bytes_sent;	 /* to the server */
	uint64_t bytes_received; /* from the server */
	/* LeastResponseTime: average over the farm's leastResponseTimePeriod */
	uint64_t rt_window_start_ms;
	uint64_t rt_window_sum_ms;
	uint32_t rt_window_count;
	uint32_t avg_response_ms; /* last completed window, or running average */
	/* WeightedRoundRobin (smooth, as nginx): */
	int64_t wrr_current;
	/* idle upstream connections (owned by the proxy, struct upstream.link):
	 * plain HTTP and TLS ones apart */
	struct list pool;
	unsigned int pool_len;
	struct list pool_tls;
	unsigned int pool_tls_len;
	/* the last TLS session with this server, and the identity it carries */
	void *tls_session;
	uint64_t tls_session_ident;
};

struct farm_rt {
	char *key; /* farm name, lower case */
	int refcnt;
	uint64_t rr_counter; /* tie breaks */
};

/* Input of a pick. */
struct lb_input {
	const struct rule_ctx *vars;  /* for RequestHash */
	uint64_t affinity_id;	      /* from the affinity cookie, 0 if none */
	const struct server *exclude; /* a server already tried, or NULL */
	uint64_t now_ms;
};

/* Attaches runtime state to every farm and server of cfg, reusing the state
 * of a previous generation (same key) so counters and pools survive reloads.
 * Returns 0, or -1 on allocation failure. */
int lb_attach(struct config *cfg);

/* Drops cfg's references to runtime state (when a generation is freed).
 * A server_rt whose refcnt reaches 0 is freed; its pool must be empty (the
 * proxy drains the pools of servers that left the configuration). */
void lb_detach(struct config *cfg);

/* Picks a server of the farm: the affinity server if the cookie names an
 * enabled one, else by the farm's algorithm among enabled servers with
 * weight > 0, never `exclude`. Returns NULL when none is available (503). */
struct server *lb_pick(struct farm *farm, const struct lb_input *in);

/* Accounting hooks the proxy calls around each request. */
void lb_request_start(struct server *srv);
void lb_request_end(struct server *srv, int failed, uint32_t response_ms, uint64_t bytes_sent,
		    uint64_t bytes_received, uint64_t now_ms);

/* The affinity id of a server: a stable 64-bit hash of farm name, address
 * and port; written as 16 lower-case hex digits in the cookie. */
uint64_t lb_affinity_id(const char *farm, const char *address, uint16_t port);

/* Parses a cookie value of 16 hex digits; returns 0 if invalid. */
uint64_t lb_affinity_parse(const char *s, size_t len);

#endif
