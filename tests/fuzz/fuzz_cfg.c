/* libFuzzer harness: the configuration loader cfg_load_buf (JSON text ->
 * validated config, rules compiled), then cfg_put.
 *
 * The loader resolves webFarms[].servers[].address with getaddrinfo (its only
 * lookup). A name could reach DNS, so inputs where one is not a numeric IP
 * address are skipped (the JSON parser, fuzzed through here anyway, tells
 * which). Nothing else the loader does touches the network, files or PKCS#11
 * modules: certificates, keys and tokens are opened later, by tls_prepare(). */
#include <arpa/inet.h>

#include "cfg.h"
#include "fuzz.h"
#include "json.h"

/* The member key of object v, or NULL. */
static const struct json_value *member(const struct json_value *v, const char *key)
{
	size_t i;

	if (v->type != JSON_OBJECT)
		return NULL;
	for (i = 0; i < v->u.obj.n; i++)
		if (strcmp(v->u.obj.members[i].key, key) == 0)
			return v->u.obj.members[i].value;
	return NULL;
}

/* True when no server address in the document needs a name lookup: each is
 * a string inet_pton accepts, or not a string (refused before lookup). */
static int numeric_servers(const struct json_value *root)
{
	const struct json_value *farms = member(root, "webFarms"), *servers, *addr;
	unsigned char a[16];
	size_t i, j;

	if (farms == NULL || farms->type != JSON_ARRAY)
		return 1;
	for (i = 0; i < farms->u.arr.n; i++) {
		servers = member(farms->u.arr.items[i], "servers");
		if (servers == NULL || servers->type != JSON_ARRAY)
			continue;
		for (j = 0; j < servers->u.arr.n; j++) {
			addr = member(servers->u.arr.items[j], "address");
			if (addr != NULL && addr->type == JSON_STRING &&
			    inet_pton(AF_INET, addr->u.str.s, a) != 1 &&
			    inet_pton(AF_INET6, addr->u.str.s, a) != 1)
				return 0;
		}
	}
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct json_doc *doc;
	struct config *cfg;
	char err[512];
	int ok;

	doc = json_parse((const char *)data, size, err, sizeof(err));
	if (doc == NULL)
		return 0;
	ok = numeric_servers(doc->root);
	json_free(doc);
	if (!ok)
		return -1; /* not added to the corpus */
	memset(err, 0x5A, sizeof(err));
	cfg = cfg_load_buf((const char *)data, size, err, sizeof(err));
	if (cfg == NULL) {
		/* a failure always says why (a NUL-terminated message) */
		FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL && err[0] != '\0');
		return 0;
	}
	FUZZ_CHECK(cfg->refcnt == 1 && cfg->nlisteners > 0);
	cfg_put(cfg);
	return 0;
}
