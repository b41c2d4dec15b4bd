/* Configuration model types: ARR's farms, servers and URL Rewrite rules. */
#ifndef FG_CFG_T_H
#define FG_CFG_T_H

#include <stdint.h>
#include <sys/socket.h>

/* Load-balancing algorithms, named as ARR names them. */
enum lb_algo {
	LB_WEIGHTED_ROUND_ROBIN = 0,
	LB_LEAST_REQUESTS = 1,
	LB_LEAST_RESPONSE_TIME = 2,
	LB_WEIGHTED_TOTAL_TRAFFIC = 3,
	LB_REQUEST_HASH = 4,
};

/* URL Rewrite patternSyntax. */
enum rule_syntax {
	RULE_SYNTAX_ECMASCRIPT = 0, /* ARR's default */
	RULE_SYNTAX_WILDCARD = 1,
	RULE_SYNTAX_EXACT = 2,
};

enum rule_action_type {
	RULE_ACT_NONE = 0,
	RULE_ACT_REWRITE = 1,
	RULE_ACT_REDIRECT = 2,
	RULE_ACT_CUSTOM_RESPONSE = 3,
	RULE_ACT_ABORT = 4,
};

/* A compiled pattern (match url or a condition). */
struct rule_pattern {
	enum rule_syntax syntax;
	char *pattern;	 /* as written in the configuration */
	int ignore_case; /* default 1 */
	int negate;	 /* default 0 */
	void *re;	 /* pcre2_code * (ECMAScript and Wildcard); NULL for ExactMatch */
	void *md;	 /* pcre2_match_data * sized for re; owned */
};

struct rule_cond {
	char *input; /* template, e.g. "{HTTP_HOST}" */
	struct rule_pattern pat;
};

struct rule_action {
	enum rule_action_type type;
	char *url;		  /* Rewrite / Redirect target template */
	int append_query_string;  /* default 1 */
	int redirect_status;	  /* 301 (Permanent, default), 302, 303, 307 */
	int status_code;	  /* CustomResponse */
	char *status_reason;	  /* CustomResponse */
	char *status_description; /* CustomResponse body */
};

struct rule {
	char *name;
	int enabled;	     /* default 1 */
	int stop_processing; /* default 0 */
	struct rule_pattern match;
	struct rule_cond *conds;
	unsigned int nconds;
	int match_any;		/* logicalGrouping MatchAny (default MatchAll) */
	int track_all_captures; /* default 0 */
	struct rule_action action;
};

/* HTTP status codes and ranges ("200-399", "500-", "200,204,300-302"). */
#define CODE_SET_MAX 16
struct code_set {
	uint16_t lo[CODE_SET_MAX];
	uint16_t hi[CODE_SET_MAX];
	unsigned int n;
};

struct server_rt; /* runtime state of a server, survives reloads (lb.h) */
struct farm_rt;	  /* runtime state of a farm, survives reloads (lb.h) */
struct farm_tls;  /* a farm's upstream TLS context and identity (tls.h) */
struct fg_token;  /* an open PKCS#11 token and its signer thread (tls.h) */

struct server {
	char *address;		      /* FQDN or IP, required */
	uint16_t http_port;	      /* default 80 */
	uint16_t https_port;	      /* default 443 */
	int enabled;		      /* default 1 */
	uint32_t weight;	      /* default 100 */
	char *host_name;	      /* NULL when unset */
	struct farm *farm;	      /* back pointer */
	unsigned int idx;	      /* index in farm->servers */
	struct sockaddr_storage addr; /* resolved address, port = http_port */
	socklen_t addrlen;
	uint64_t affinity_id;	    /* stable id written in the affinity cookie */
	unsigned char cert_pin[32]; /* SHA-256 of the backend certificate (DER) */
	int has_cert_pin;
	struct sockaddr_storage tls_addr; /* resolved address, port = https_port */
	char *hc_host;			  /* healthCheckAlternateHostName, NULL = none */
	uint16_t hc_port;		  /* healthCheckAlternatePort, 0 = none */
	struct server_rt *rt;		  /* runtime state, attached by lb_attach() */
};

struct farm {
	char *name;  /* required, unique (case-insensitive, as ARR) */
	int enabled; /* default 1 */
	struct server *servers;
	unsigned int nservers;
	struct {
		enum lb_algo algorithm;	    /* default WeightedRoundRobin */
		char *hash_server_variable; /* RequestHash; NULL = hash {URL} */
		char **query_string_names;  /* RequestHash over these values */
		unsigned int nquery_string_names;
		uint32_t least_response_time_period_ms; /* default 5000 */
	} lb;
	struct {
		int use_cookie;	    /* default 0 */
		char *cookie_name;  /* default "ARRAffinity" */
		uint32_t timeout_s; /* default 1200 (00:20:00) */
	} affinity;
	struct {
		uint32_t timeout_ms;	    /* default 30000 */
		int keep_alive;		    /* default 1 */
		int preserve_host_header;   /* default 1 */
		int reverse_rewrite_host;   /* default 0 */
		char *xff_name;		    /* default "X-Forwarded-For"; "" = not sent */
		int xff_include_port;	    /* default 1 */
		int arr_response_header;    /* default 1 */
		char *client_cert_hash;	    /* SHA-1 or SHA-256 thumbprint, NULL = none */
		char *client_cert_token;    /* tokens[].name; NULL = the only token */
		char *backend_ca_file;	    /* default /etc/ssl/certs/ca-certificates.crt */
		char *client_cert_file;	    /* PFX to import onto the token (ARR's
					     clientCertFileName), NULL = none */
		char *client_cert_password; /* its password (clientCertPassword) */
		char *client_cert_header;   /* default "X-ARR-ClientCert"; "" = not sent */
		char *ssl_header;	    /* default "X-ARR-SSL"; "" = not sent */
		int client_cert_rfc9440;    /* also Client-Cert / Client-Cert-Chain */
	} protocol;
	struct {
		char *url;		      /* NULL: the URL test is off */
		int https;		      /* the URL's scheme is https */
		char *host;		      /* Host of the probes (the URL's authority) */
		char *path;		      /* origin-form target, starts with '/' */
		uint32_t interval_ms;	      /* default 30000 */
		uint32_t timeout_ms;	      /* default 30000 */
		uint32_t retries;	      /* default 3 */
		struct code_set status_match; /* default 200-399 */
		char *response_match;	      /* NULL = none */
		struct code_set live_codes;   /* default 500- */
		uint32_t max_live_failures;   /* default 10 */
		uint32_t live_period_ms;      /* default 0 = live-traffic test off */
		uint32_t min_servers;	      /* default 0 */
	} health;
	struct farm_rt *rt;   /* runtime state, attached by lb_attach() */
	struct farm_tls *tls; /* built by tls_prepare() */
};

/* IIS's SSL Settings: client certificates Ignore / Accept / Require. */
enum client_cert_mode {
	CLIENT_CERT_IGNORE = 0,
	CLIENT_CERT_ACCEPT = 1,
	CLIENT_CERT_REQUIRE = 2,
};

/* One server certificate of an HTTPS listener: from files, or on a token. */
struct listener_cert_cfg {
	char *cert_file;  /* PEM: certificate then intermediates */
	char *key_file;	  /* PEM key; no group/other permission bits */
	char *cert_hash;  /* thumbprint of a certificate on a token */
	char *cert_token; /* tokens[].name; NULL = the only token */
	char *chain_file; /* intermediates for a token certificate */
};

struct listener_ssl_cfg {
	struct listener_cert_cfg *certs; /* the first is the default (no SNI match) */
	unsigned int ncerts;
	int client_certs;     /* enum client_cert_mode, default Ignore */
	char *client_ca_file; /* required with Accept / Require */
	char **crl_files;
	unsigned int ncrl_files;
	uint32_t verify_depth;	     /* default 4 */
	int failure_forbidden;	     /* clientCertFailure Forbidden (403) vs Handshake */
	int session_tickets;	     /* default 1 */
	uint32_t ticket_rotation_ms; /* default 3600000 */
};

struct front_tls; /* a listener's server contexts (tls_front.h) */

struct listener_cfg {
	char *address;		      /* default "0.0.0.0" */
	uint16_t port;		      /* required */
	struct listener_ssl_cfg *ssl; /* NULL: plain HTTP */
	struct front_tls *tls;	      /* built by tls_prepare() when ssl is set */
};

/* A PKCS#11 token that holds client-certificate keys. */
struct token_cfg {
	char *name;	/* referenced by protocol.clientCertToken */
	char *module;	/* PKCS#11 module path */
	char *uri;	/* RFC 7512 token selection, e.g. pkcs11:token=farmgate */
	char *pin_file; /* root-owned, mode 0600 or stricter */
};

enum log_target {
	LOG_TARGET_STDERR = 0,
	LOG_TARGET_SYSLOG = 1,
	LOG_TARGET_OFF = 2,
};

/* A list of strings of the configuration (owned). */
struct str_list {
	char **v;
	unsigned int n;
};

enum net_mode {
	NET_MODE_DHCP = 0,
	NET_MODE_STATIC = 1,
};

#define SYSTEM_DNS_MAX 3
#define SYSTEM_NTP_MAX 4

/* "system": the appliance's operating-system settings. farmgated only
 * validates them; the init scripts read them through farmgated -S. Every
 * value is made of [A-Za-z0-9.:/_-] (it is printed single-quoted for sh). */
struct system_cfg {
	char *host_name; /* RFC 1123, default "farmgate" */
	struct {
		char *interface;     /* default "eth0" */
		int mode;	     /* enum net_mode, default dhcp */
		char *address;	     /* IPv4 or IPv6 CIDR, static only; NULL = none */
		char *gateway;	     /* same family as address, static only */
		struct str_list dns; /* 0 to SYSTEM_DNS_MAX addresses */
	} net;
	struct str_list ntp_servers; /* 0 to SYSTEM_NTP_MAX addresses or host names */
};

struct config {
	int refcnt;
	unsigned char sha256[32]; /* of the text it was loaded from */
	struct listener_cfg *listeners;
	unsigned int nlisteners;
	struct {
		uint32_t max_request_line;	   /* default 8192 -> 414 */
		uint32_t max_header_size;	   /* default 16384 (whole head) -> 431 */
		uint32_t max_headers;		   /* default 100 -> 431 */
		uint32_t max_connections;	   /* default 10000 */
		uint32_t max_response_header_size; /* default 65536 (ARR) */
	} limits;
	struct {
		uint32_t connect_ms;	    /* default 5000 */
		uint32_t request_header_ms; /* default 10000 (slowloris) */
		uint32_t keep_alive_ms;	    /* default 60000 client idle */
		uint32_t request_body_ms;   /* default 60000 between body reads */
		uint32_t upstream_idle_ms;  /* default 30000 pooled conn idle */
	} timeouts;
	struct {
		enum log_target access;
		enum log_target error;
		int debug; /* default 0 */
	} log;
	struct farm *farms;
	unsigned int nfarms;
	struct rule *rules;
	unsigned int nrules;
	struct token_cfg *tokens;
	unsigned int ntokens;
	char *control_socket;	 /* default /run/farmgated.sock; NULL when "" */
	struct {		 /* farmgate-mgmt's listener (farmgated only checks it) */
		char *address;	 /* default "0.0.0.0" */
		uint16_t port;	 /* default 8443 */
		char *cert_file; /* NULL: generated in the data directory */
		char *key_file;
		char *cert_hash;  /* instead: a certificate on a token, by thumbprint */
		char *cert_token; /* tokens[].name; NULL = the only token */
		int configured;	  /* the section is present: ports are checked */
	} mgmt;
	struct system_cfg system;
	int tls_prepared; /* tls_prepare() ran: farm->tls set where needed */
};

#endif
