/* The data plane: listeners, client connections, upstream pools and proxying. */
#ifndef FG_PROXY_H
#define FG_PROXY_H

#include <stddef.h>

#include "cfg-t.h"
#include "ev.h"

/* Opens cfg's listeners and starts accepting on loop. Takes over the
 * caller's reference to cfg. Returns 0, or -1 with err filled. */
int proxy_start(struct ev_loop *loop, struct config *cfg, char *err, size_t errlen);

/* Swaps in a validated new generation (takes the caller's reference): opens
 * new listeners first, so a failure leaves the running generation intact.
 * Requests in flight finish on the generation they started with. Returns 0,
 * or -1 with err filled (cfg is then released). */
int proxy_reload(struct config *cfg, char *err, size_t errlen);

/* Graceful stop: closes listeners and idle connections; requests in flight
 * finish. Returns the number of client connections still open. */
unsigned int proxy_shutdown(void);

/* Closes everything and releases the current generation. */
void proxy_free(void);

struct fg_token;

/* A token went down (up = 0) or came back: farms using it fail closed while
 * it is down (their pooled TLS connections and sessions are dropped). */
void proxy_token_state(struct fg_token *tok, int up);

/* The generation new requests use. */
struct config *proxy_config(void);

struct server_rt;

/* Sets a server's ARR state (enum srv_admin): UnavailableGracefully closes
 * its idle connections, UnavailableImmediately also aborts the requests in
 * flight on it (502, or a reset once the response had started). */
void proxy_server_admin(struct server_rt *rt, int admin);

#endif
