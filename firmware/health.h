/* ARR's URL test: a probe per server of every farm with healthCheck.url, in the event
 * loop, on a kept-alive connection (TLS with the farm's identity and sessions for https). */
#ifndef FG_HEALTH_H
#define FG_HEALTH_H

#include "cfg-t.h"
#include "ev.h"
#include "lb.h"

void health_init(struct ev_loop *loop);

/* After a generation went in (start, reload): every server of a farm with a
 * URL test gets a probe (kept if it had one), others lose theirs. */
void health_sync(struct config *cfg);

/* Stops and frees a server's probe (lb frees the server's state). */
void health_probe_free(struct server_rt *rt);

/* Frees what was closed during the last batch of events (post_batch). */
void health_collect(void);

/* Stops every probe (exit). */
void health_shutdown(void);

/* "Verify URL Test": one probe of every server of f now. done(arg) runs
 * once all have finished (results in each server_rt's last_* fields), in
 * a later callback, never from within this call. Returns a handle for
 * health_verify_cancel, or NULL if f has no URL test or memory ran out. */
struct verify;
struct verify *health_verify(struct farm *f, void (*done)(void *arg), void *arg);

/* The caller lost interest: done will not be called. */
void health_verify_cancel(struct verify *v);

/* ARR's words for a probe result. */
const char *health_result_name(int result);

#endif
