/* URL Rewrite rules engine: Wildcard, ECMAScript (PCRE2) and ExactMatch patterns,
 * conditions, back-references and actions, as IIS URL Rewrite evaluates them. */
#ifndef FG_RULES_H
#define FG_RULES_H

#include <stddef.h>

#include "cfg-t.h"
#include "http1.h"

/* The request as the rules see it (IIS server variables). Every slice points
 * into memory the caller owns for the duration of the evaluation. */
struct rule_ctx {
	const char *url; /* {URL}: path, starts with '/', no query string */
	size_t url_len;
	const char *query; /* {QUERY_STRING}: without '?', may be empty */
	size_t query_len;
	const char *host; /* {HTTP_HOST} */
	size_t host_len;
	int https;		  /* {HTTPS}: "on" / "off"; {SERVER_PORT_SECURE} */
	const char *cert_subject; /* {CERT_SUBJECT} of the client certificate, or NULL */
	const char *cert_issuer;  /* {CERT_ISSUER} */
	const char *cert_serial;  /* {CERT_SERIALNUMBER} */
	const char *remote_addr;  /* {REMOTE_ADDR}, NUL-terminated */
	const char *remote_port;  /* {REMOTE_PORT}, NUL-terminated */
	const char *server_port;  /* {SERVER_PORT}, NUL-terminated */
	const char *method;	  /* {REQUEST_METHOD} */
	size_t method_len;
	const struct http_hdr *hdrs; /* for {HTTP_<NAME>} (NAME: '_' matches '-') */
	unsigned int nhdrs;
};

enum rules_outcome {
	RULES_NO_ROUTE = 0, /* no rule chose a farm (the proxy answers 404) */
	RULES_FARM = 1,	    /* Rewrite to http(s)://<farm>/...: res->farm, res->url */
	RULES_REDIRECT = 2, /* res->status, res->url is the Location */
	RULES_CUSTOM = 3,   /* res->status, res->reason, res->body */
	RULES_ABORT = 4,    /* close the connection without an answer */
	RULES_ERROR = 5,    /* a rewrite named no known farm, or a URL over the buffer (502) */
};

struct rule_result {
	int outcome;		 /* enum rules_outcome */
	const struct rule *rule; /* the rule whose action decided, or NULL */
	struct farm *farm;
	int https; /* the rewrite target's scheme was https */
	char *url; /* NUL-terminated, in the caller's buffer: origin-form path?query
		      for RULES_FARM and RULES_NO_ROUTE (the URL after path
		      rewrites), the Location for RULES_REDIRECT */
	size_t url_len;
	int status;
	const char *reason; /* CustomResponse statusReason (may be NULL) */
	const char *body;   /* CustomResponse statusDescription (may be NULL) */
};

/* Compiles rule->match and every condition pattern (PCRE2 for ECMAScript and
 * Wildcard) and checks the action's templates ({R:n}, {C:n}, known server
 * variables, a literal farm name that exists in cfg). On error writes a
 * message into err and returns -1; the message names the field relative to
 * the rule ("match.url: ..."). Called by the configuration loader after
 * cfg->farms is filled. */
int rules_compile(const struct config *cfg, struct rule *rule, char *err, size_t errlen);

/* Frees what rules_compile allocated (the compiled patterns). */
void rules_free(struct rule *rule);

/* Runs cfg's rules in order on ctx. The resulting URL is written into
 * buf[0..bufsz). Never allocates. */
void rules_eval(const struct config *cfg, const struct rule_ctx *ctx, struct rule_result *res,
		char *buf, size_t bufsz);

/* Looks up a server variable by name (e.g. "REMOTE_ADDR", "HTTP_HOST",
 * "HTTP_X_CUSTOM"). Returns 0 and sets *val and *len, or -1 if unknown or absent. */
int rules_var(const struct rule_ctx *ctx, const char *name, size_t name_len, const char **val,
	      size_t *len);

#endif
