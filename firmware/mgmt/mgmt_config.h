/* farmgate-mgmt: reading, editing, saving and applying the configuration file. */
#ifndef FG_MGMT_CONFIG_H
#define FG_MGMT_CONFIG_H

#include <stddef.h>

#include "json.h"
#include "mgmt.h"

/* One edit applied while serialising: a member of an object replaced, added
 * or removed (with == NULL), and/or an item of an array replaced, removed
 * (arr_with == NULL) or appended. */
struct json_edit {
	const struct json_value *parent; /* object whose member `key` changes */
	const char *key;
	const struct json_value *with;
	const struct json_value *arr; /* array whose item `idx` changes */
	size_t idx;
	const struct json_value *arr_with;
	int append;
	int skip_secret; /* drop clientCertPassword members (exports) */
};

/* The file's text (malloc'ed), or NULL with err; the same for another file. */
char *config_read(size_t *len, char *err, size_t errlen);
char *config_read_path(const char *path, size_t *len, char *err, size_t errlen);

/* JSON text of v with ed applied (ed may be NULL), two-space indented. */
void json_write(struct jbuf *b, const struct json_value *v, int depth, const struct json_edit *ed);

/* Validates text with farmgated's own loader, saves it atomically (the old
 * file kept as .prev), asks farmgated to reload and, if it refuses, puts the
 * old file back. Returns 0, or -1 with err and the HTTP status to answer
 * (400 invalid, 409 refused by farmgated, 500 cannot write). */
int config_apply(const char *text, size_t len, int *http_status, char *err, size_t errlen);

/* At start: if the file is not what farmgated runs (farmgate-mgmt was killed
 * between a save and its reload), applies it; if farmgated refuses it and
 * <file>.prev is what runs, puts that back. Logs what it did. */
void config_reconcile(void);

/* Applies <file>.prev. */
int config_restore_previous(int *http_status, char *err, size_t errlen);

#endif
