/* farmgate-mgmt: the configuration file. Read, edited as a JSON tree (re-serialised with
 * one part replaced), validated by the data plane's own loader, saved atomically with the
 * previous generation kept, and applied through the control socket's "reload" (SIGHUP's
 * path); if farmgated refuses it, the previous file goes back. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cfg.h"
#include "json.h"
#include "log.h"
#include "mgmt.h"
#include "mgmt_config.h"

/* one change at a time: read, edit, save, reload */
static pthread_mutex_t cfg_lock = PTHREAD_MUTEX_INITIALIZER;

static char *slurp(const char *path, size_t *len);

char *config_read_path(const char *path, size_t *len, char *err, size_t errlen)
{
	char *text = slurp(path, len);

	if (!text)
		snprintf(err, errlen, "%s: cannot read it: %s", path, strerror(errno));
	return text;
}

char *config_read(size_t *len, char *err, size_t errlen)
{
	return config_read_path(M.cfg_path, len, err, errlen);
}

/* ---- serialising ------------------------------------------------------------ */

static void indent(struct jbuf *b, int depth)
{
	jb_lit(b, "\n");
	while (depth-- > 0)
		jb_lit(b, "  ");
}

void json_write(struct jbuf *b, const struct json_value *v, int depth, const struct json_edit *ed)
{
	size_t i;

	switch (v->type) {
	case JSON_NULL:
		jb_lit(b, "null");
		break;
	case JSON_TRUE:
		jb_lit(b, "true");
		break;
	case JSON_FALSE:
		jb_lit(b, "false");
		break;
	case JSON_NUMBER:
		jb_lit(b, v->u.num.text);
		break;
	case JSON_STRING:
		jb_str(b, v->u.str.s);
		break;
	case JSON_ARRAY: {
		int edited = ed && ed->arr == v, n = 0;

		jb_lit(b, "[");
		for (i = 0; i < v->u.arr.n; i++) {
			const struct json_value *item = v->u.arr.items[i];

			if (edited && !ed->append && i == ed->idx) {
				if (!ed->arr_with)
					continue; /* removed */
				item = ed->arr_with;
			}
			if (n++)
				jb_lit(b, ",");
			indent(b, depth + 1);
			json_write(b, item, depth + 1, ed);
		}
		if (edited && ed->append) {
			if (n++)
				jb_lit(b, ",");
			indent(b, depth + 1);
			json_write(b, ed->arr_with, depth + 1, ed);
		}
		if (n)
			indent(b, depth);
		jb_lit(b, "]");
		break;
	}
	case JSON_OBJECT: {
		int first = 1;

		jb_lit(b, "{");
		for (i = 0; i < v->u.obj.n; i++) {
			const struct json_member *m = &v->u.obj.members[i];
			const struct json_value *val = m->value;

			if (ed && ed->skip_secret && !strcmp(m->key, "clientCertPassword"))
				continue;
			if (ed && ed->parent == v && ed->key && !strcmp(ed->key, m->key)) {
				if (!ed->with)
					continue; /* removed */
				val = ed->with;
			}
			if (!first)
				jb_lit(b, ",");
			first = 0;
			indent(b, depth + 1);
			jb_str(b, m->key);
			jb_lit(b, ": ");
			json_write(b, val, depth + 1, ed);
		}
		if (ed && ed->parent == v && ed->key && ed->with && !json_get(v, ed->key)) {
			/* added */
			if (!first)
				jb_lit(b, ",");
			indent(b, depth + 1);
			jb_str(b, ed->key);
			jb_lit(b, ": ");
			json_write(b, ed->with, depth + 1, ed);
			first = 0;
		}
		if (!first)
			indent(b, depth);
		jb_lit(b, "}");
		break;
	}
	}
}

/* ---- saving and applying -------------------------------------------------------- */

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int fsync_dir(const char *path)
{
	char *d = strdup(path);
	int fd, rc = -1;

	if (!d)
		return -1;
	fd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		rc = fsync(fd);
		close(fd);
	}
	free(d);
	return rc;
}

/* Replaces the file atomically: temporary file beside it, fsync, rename,
 * directory fsync. The old content is kept as <file>.prev (also atomic). */
static int save_atomic(const char *text, size_t len, const char *old, size_t oldlen, char *err,
		       size_t errlen)
{
	char tmp[1024], prev[1024];
	struct stat st;
	mode_t mode = 0600;
	int fd;

	if (stat(M.cfg_path, &st) == 0)
		mode = st.st_mode & 0777;
	snprintf(prev, sizeof(prev), "%s.prev", M.cfg_path);
	snprintf(tmp, sizeof(tmp), "%s.prev.tmp", M.cfg_path);
	if (old) {
		fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
		if (fd == -1 || write_all(fd, old, oldlen) == -1 || fsync(fd) == -1) {
			snprintf(err, errlen, "cannot save %s: %s", prev, strerror(errno));
			if (fd >= 0)
				close(fd);
			unlink(tmp);
			return -1;
		}
		close(fd);
		if (rename(tmp, prev) == -1) {
			snprintf(err, errlen, "cannot save %s: %s", prev, strerror(errno));
			unlink(tmp);
			return -1;
		}
	}
	snprintf(tmp, sizeof(tmp), "%s.tmp", M.cfg_path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd == -1 || write_all(fd, text, len) == -1 || fsync(fd) == -1) {
		snprintf(err, errlen, "cannot write %s: %s (the configuration is unchanged)", tmp,
			 strerror(errno));
		if (fd >= 0)
			close(fd);
		unlink(tmp);
		return -1;
	}
	close(fd);
	if (rename(tmp, M.cfg_path) == -1) {
		snprintf(err, errlen, "cannot replace %s: %s (the configuration is unchanged)",
			 M.cfg_path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	fsync_dir(M.cfg_path);
	return 0;
}

/* Asks farmgated to reload; 0, or -1 with its error. */
static int reload(char *err, size_t errlen)
{
	char e[256];
	char *ans = control_call("{\"op\":\"reload\"}", 60000, e, sizeof(e));
	struct json_doc *d;
	const struct json_value *ok, *msg;
	int rc = -1;

	if (!ans) {
		snprintf(err, errlen, "%s", e);
		return -1;
	}
	d = json_parse(ans, strlen(ans), e, sizeof(e));
	ok = d ? json_get(d->root, "ok") : NULL;
	msg = d ? json_get(d->root, "error") : NULL;
	if (ok && ok->type == JSON_TRUE)
		rc = 0;
	else
		snprintf(err, errlen, "%s",
			 msg && msg->type == JSON_STRING ? msg->u.str.s : "farmgated refused");
	json_free(d);
	free(ans);
	return rc;
}

/* Reads a whole file (NULL if it does not exist). */
static char *slurp(const char *path, size_t *len)
{
	struct jbuf b = {0};
	char buf[16384];
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd == -1)
		return NULL;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		jb_put(&b, buf, (size_t)n);
	close(fd);
	if (n < 0 || b.oom) {
		jb_free(&b);
		return NULL;
	}
	if (!b.p)
		jb_lit(&b, "");
	*len = b.len;
	return b.p;
}

/* Puts .prev back as it was before a failed change (or removes it). */
static void prev_restore(const char *old_prev, size_t len)
{
	char prev[1024], tmp[1060];
	int fd;

	snprintf(prev, sizeof(prev), "%s.prev", M.cfg_path);
	if (!old_prev) {
		unlink(prev);
		return;
	}
	snprintf(tmp, sizeof(tmp), "%s.tmp", prev);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd == -1 || write_all(fd, old_prev, len) == -1 || fsync(fd) == -1 ||
	    rename(tmp, prev) == -1)
		unlink(tmp);
	if (fd >= 0)
		close(fd);
}

int config_apply(const char *text, size_t len, int *http_status, char *err, size_t errlen)
{
	struct config *cfg;
	char *old = NULL, *old_prev = NULL, prev[1024], e[1024];
	size_t oldlen = 0, prevlen = 0;
	int rc = -1;

	*http_status = 400;
	cfg = cfg_load_buf(text, len, err, errlen); /* the data plane's own loader */
	if (!cfg)
		return -1;
	cfg_put(cfg);
	pthread_mutex_lock(&cfg_lock);
	old = config_read(&oldlen, e, sizeof(e));
	snprintf(prev, sizeof(prev), "%s.prev", M.cfg_path);
	old_prev = slurp(prev, &prevlen);
	*http_status = 500;
	if (save_atomic(text, len, old, oldlen, err, errlen) == -1) {
		prev_restore(old_prev, prevlen); /* .prev may have been rotated already */
		goto out;
	}
	if (reload(err, errlen) == -1) {
		/* farmgated said no (a token lookup, a port in use...): put the
		 * previous file back so the disk matches what runs, and the
		 * previous generation with it */
		*http_status = 409;
		if (old && save_atomic(old, oldlen, NULL, 0, e, sizeof(e)) == -1)
			snprintf(err + strlen(err), errlen - strlen(err),
				 "; and restoring the previous file failed: %s", e);
		prev_restore(old_prev, prevlen);
		goto out;
	}
	rc = 0;
out:
	pthread_mutex_unlock(&cfg_lock);
	free(old);
	free(old_prev);
	return rc;
}

/* SHA-256 of text as lower-case hex (65 bytes with the NUL); 0 or -1. */
static int sha256_hex(const char *text, size_t len, char out[65])
{
	unsigned char md[32];
	unsigned int i;

	if (!EVP_Digest(text, len, md, NULL, EVP_sha256(), NULL))
		return -1;
	for (i = 0; i < sizeof(md); i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	return 0;
}

/* The digest of the file text farmgated runs (its status), or -1 if it
 * cannot say (not running yet: it will read the file itself). */
static int running_sha256(char out[65])
{
	char e[256], *ans = control_call("{\"op\":\"status\"}", 10000, e, sizeof(e));
	struct json_doc *d = ans ? json_parse(ans, strlen(ans), e, sizeof(e)) : NULL;
	const struct json_value *v = d ? json_get(d->root, "configSha256") : NULL;
	int rc = -1;

	if (v && v->type == JSON_STRING && strlen(v->u.str.s) == 64) {
		memcpy(out, v->u.str.s, 65);
		rc = 0;
	}
	json_free(d);
	free(ans);
	return rc;
}

void config_reconcile(void)
{
	char run[65], file[65], prev_md[65], prev[1024], err[1024], e[512];
	char *text = NULL, *old_prev = NULL;
	size_t len = 0, prevlen = 0;

	pthread_mutex_lock(&cfg_lock);
	text = config_read(&len, e, sizeof(e));
	if (!text || running_sha256(run) == -1 || sha256_hex(text, len, file) == -1 ||
	    !strcmp(run, file))
		goto out;
	LOGW("%s is not the configuration farmgated runs (a save that was never applied?): "
	     "applying it",
	     M.cfg_path);
	if (reload(err, sizeof(err)) == 0) {
		LOGI("%s applied", M.cfg_path);
		goto out;
	}
	/* refused, as the save would have been: if the previous generation is
	 * what runs, it goes back, as the save would have put it back */
	snprintf(prev, sizeof(prev), "%s.prev", M.cfg_path);
	old_prev = slurp(prev, &prevlen);
	if (old_prev && sha256_hex(old_prev, prevlen, prev_md) == 0 && !strcmp(prev_md, run) &&
	    save_atomic(old_prev, prevlen, NULL, 0, e, sizeof(e)) == 0)
		LOGE("farmgated refused %s (%s): the previous configuration, which it runs, is "
		     "back",
		     M.cfg_path, err);
	else
		LOGE("farmgated refused %s (%s); it keeps running another configuration, and would "
		     "not start with this file",
		     M.cfg_path, err);
out:
	pthread_mutex_unlock(&cfg_lock);
	free(text);
	free(old_prev);
}

int config_restore_previous(int *http_status, char *err, size_t errlen)
{
	char prev[1024], buf[16384];
	struct jbuf b = {0};
	ssize_t n;
	int fd, rc;

	snprintf(prev, sizeof(prev), "%s.prev", M.cfg_path);
	fd = open(prev, O_RDONLY | O_CLOEXEC);
	if (fd == -1) {
		*http_status = 404;
		snprintf(err, errlen, "no previous configuration");
		return -1;
	}
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		jb_put(&b, buf, (size_t)n);
	close(fd);
	if (!b.p) {
		*http_status = 404;
		snprintf(err, errlen, "the previous configuration is empty");
		return -1;
	}
	rc = config_apply(b.p, b.len, http_status, err, errlen);
	jb_free(&b);
	return rc;
}
