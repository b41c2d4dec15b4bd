/* Load balancing (ARR's five algorithms), client affinity, and the runtime
 * state of farms and servers that survives configuration reloads. */
#ifndef FG_LB_H
#define FG_LB_H

#include <stdint.h>

#include "cfg-t.h"
#include "list.h"
#include "rules.h"

/* ARR's runtime server states (SetState), in IIS Manager's words. */
enum srv_admin {
	SRV_AVAILABLE = 0,		 /* Make Server Available */
	SRV_DRAIN = 1,			 /* Disallow New Connections (affinity still) */
	SRV_UNAVAILABLE_GRACEFULLY = 2,	 /* in-flight requests finish */
	SRV_UNAVAILABLE_IMMEDIATELY = 3, /* in-flight requests aborted */
};

/* Outcomes of a URL test (ARR's Verify URL Test words). */
enum probe_result {
	PROBE_NONE = 0, /* not tested yet */
	PROBE_SUCCESS = 1,
	PROBE_CONNECTION_FAILURE = 2,
	PROBE_STATUS_CODE_FAILURE = 3,
	PROBE_RESPONSE_ENTITY_FAILURE = 4,
};

struct probe; /* a server's URL test (health.c) */

/* Runtime state of one server, shared by every configuration generation
 * that has the same farm name + address + http port. */
struct server_rt {
	char *key; /* "farm\naddress\nport" */
	int refcnt;
	char *farm_name; /* as first configured, for logs */
	char *name;	 /* "address:port", for logs and the control socket */
	/* administrative state and health (survive reloads) */
	int admin;		 /* enum srv_admin */
	int healthy;		 /* 1 until a test says otherwise */
	int rescue;		 /* kept in rotation by minServers while unhealthy */
	uint32_t probe_failures; /* consecutive failed URL tests */
	uint64_t *live_fail_ms;	 /* ring of live-traffic failure times */
	uint32_t live_cap, live_n, live_head;
	uint64_t unhealthy_since_ms; /* loop time it became unhealthy */
	int64_t health_changed;	     /* wall clock (s) of the last transition, 0 = never */
	int last_result;	     /* enum probe_result of the last URL test */
	int last_status;
	uint32_t last_time_ms;
	char last_reason[96];
	struct probe *probe; /* NULL when the farm has no URL test */
	/* WebSocket tunnels */
	uint32_t ws_current;
	uint64_t ws_total;
	/* requests per second: completions in the last whole second */
	uint64_t rps_sec;
	uint32_t rps_count, rps_last;
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
	int offline;	     /* Take Offline (survives reloads) */
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

/* Live traffic: the backend's status for a finished request, or -1 when the
 * connection failed or timed out. Counts failures per the farm's
 * liveTrafficFailureCodes and may mark the server unhealthy. */
void lb_live_result(struct server *srv, int backend_status, uint64_t now_ms);

/* Health transitions, logged once each with the reason. */
void lb_set_healthy(struct server_rt *rt, int healthy, const char *why, uint64_t now_ms);

/* A farm takes requests: enabled in the configuration and not taken offline. */
int lb_farm_online(const struct farm *farm);

/* Requests per second of a server (completions in the last whole second). */
uint32_t lb_rps(struct server_rt *rt, uint64_t now_ms);

/* Counters back to zero (ARR's ResetCounters). */
void lb_reset_counters(struct server_rt *rt);

/* The affinity id of a server: a stable 64-bit hash of farm name, address
 * and port; written as 16 lower-case hex digits in the cookie. */
uint64_t lb_affinity_id(const char *farm, const char *address, uint16_t port);

/* Parses a cookie value of 16 hex digits; returns 0 if invalid. */
uint64_t lb_affinity_parse(const char *s, size_t len);

#endif
