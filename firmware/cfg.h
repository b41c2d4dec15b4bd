/* Configuration: JSON file with ARR's names -> validated immutable struct config. */
#ifndef FG_CFG_H
#define FG_CFG_H

#include <stddef.h>
#include <stdio.h>

#include "cfg-t.h"

/* The control socket when the configuration names none (docs/control.md). */
#define CFG_CONTROL_SOCKET "/run/farmgated.sock"

/* Loads, validates and compiles a configuration. Returns a new generation
 * with refcnt 1, or NULL with a message in err of the form
 * "$.webFarms[0].servers[1].weight: must be an integer from 0 to 100000".
 * Every default is ARR's; unknown fields are errors. Server addresses are
 * resolved here (getaddrinfo), never on the data path. */
struct config *cfg_load_file(const char *path, char *err, size_t errlen);
struct config *cfg_load_buf(const char *json, size_t len, char *err, size_t errlen);

/* Reference counting: a generation lives while requests use it. */
void cfg_get(struct config *cfg);
void cfg_put(struct config *cfg);

/* Farm by name, ASCII case-insensitive (ARR's names are). NULL if none. */
struct farm *cfg_find_farm(const struct config *cfg, const char *name, size_t len);

/* Prints the system section as sh assignments, one per line, every value
 * single-quoted, defaults filled in, lists space-separated (farmgated -S):
 * FG_HOSTNAME, FG_NET_IF, FG_NET_MODE, FG_NET_ADDRESS, FG_NET_GATEWAY,
 * FG_NET_DNS, FG_NTP_SERVERS. Returns 0, or -1 with err and nothing printed
 * if a value holds a byte outside [A-Za-z0-9.:/_-] (the loader lets none
 * through; this is the last guard before a shell reads them). */
int cfg_system_shell(const struct config *cfg, FILE *out, char *err, size_t errlen);

/* Parses an ARR TimeSpan "hh:mm:ss" (or "d.hh:mm:ss", optional ".fff") into
 * milliseconds. Returns 0, or -1 if malformed. */
int cfg_parse_timespan(const char *s, size_t len, uint64_t *ms);

#endif
