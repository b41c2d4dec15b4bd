/* The local control socket (docs/control.md): server and farm states, health, Verify URL
 * Test, counters. One JSON request per connection, answered in the event loop. */
#ifndef FG_CONTROL_H
#define FG_CONTROL_H

#include <stddef.h>

#include "ev.h"

/* Listens on path (NULL: none), replacing the socket of a previous call
 * when the path changed. A path a live daemon already serves is left to it
 * (logged); a stale socket file is replaced. Never fatal: the data plane
 * runs without a control socket. */
void control_listen(struct ev_loop *loop, const char *path);

/* The "reload" op's work (SIGHUP's): returns 0, or -1 with err filled. */
void control_set_reload(int (*fn)(char *err, size_t errlen));

/* Closes the socket and every control connection (exit). */
void control_close(void);

#endif
