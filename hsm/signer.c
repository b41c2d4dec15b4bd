/* The signer: a thread per token owns its PKCS#11 session and runs every signature, watches
 * the token and brings it back after a fault, so the event loop never waits on a token. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/async.h>

#include "key.h"
#include "list.h"
#include "log.h"
#include "p11.h"
#include "signer.h"

#define SIGNER_IDLE_MS	 1000 /* token probe / recovery period */
#define SIGNER_MAX_INPUT 1024 /* RSA-8192 raw block; digests are far smaller */

/* A key whose private operations this signer runs. */
struct binding {
	struct list link; /* signer->bindings */
	struct signer *s;
	EVP_PKEY *pkey; /* not owned */
	struct hsm_key *key;
	struct sign_stats *farm_stats;
};

/* One signature request. Shared by the caller and the thread: the last one
 * to drop its reference frees it (and closes its wait fd). */
struct sign_req {
	struct list link;
	struct binding *b;
	CK_MECHANISM_TYPE mech;
	unsigned char in[SIGNER_MAX_INPUT];
	size_t inlen;
	unsigned char out[SIGNER_MAX_INPUT];
	size_t outlen;
	int ok;
	atomic_int done;
	int refs; /* under signer->lock */
	int efd;  /* ASYNC wait fd, or -1 for a blocking caller */
	uint64_t t0_us;
	int (*fn)(struct p11_token *tok, void *arg); /* signer_call instead of a signature */
	void *arg;
	void (*free_arg)(void *arg); /* signer_post: the job owns arg */
	int rc;
};

struct signer {
	char name[64];
	struct p11_token *tok;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t work;
	pthread_cond_t done;
	struct list queue;
	struct list bindings;
	int stop;
	int started;
	atomic_int up;
	atomic_int awaiting_pin; /* opened without a PIN: down until one is given */
	int state_fd;
	struct sign_stats stats;
	char last_err[256]; /* recovery failures are logged when they change */
};

/* The key under which a request's fd is registered in OpenSSL's wait ctx. */
static const char signer_wait_key;

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void stats_add(struct sign_stats *st, uint64_t us, int ok)
{
	unsigned long long m;

	if (!st)
		return;
	if (!ok) {
		atomic_fetch_add(&st->errors, 1);
		return;
	}
	atomic_fetch_add(&st->count, 1);
	atomic_fetch_add(&st->total_us, us);
	m = atomic_load(&st->max_us);
	while (us > m && !atomic_compare_exchange_weak(&st->max_us, &m, us))
		;
}

static void state_changed(struct signer *s, int up)
{
	uint64_t one = 1;

	atomic_store(&s->up, up);
	if (write(s->state_fd, &one, sizeof(one)) == -1 && errno != EAGAIN)
		LOGE("token %s: eventfd: %s", s->name, strerror(errno));
}

/* Drops one reference; called with s->lock held. */
static void req_put(struct sign_req *r)
{
	if (--r->refs)
		return;
	if (r->efd >= 0)
		close(r->efd);
	if (r->free_arg)
		r->free_arg(r->arg);
	OPENSSL_cleanse(r->in, sizeof(r->in));
	free(r);
}

/* ---- the thread ---------------------------------------------------------- */

/* Brings the token back after a fault: new session, one login with the PIN
 * it was opened with, and every bound key found again by its CKA_ID. */
static void try_recover(struct signer *s)
{
	char err[256];
	struct list *pos, *tmp;

	if (p11_token_recover(s->tok, err, sizeof(err)) == -1) {
		if (strcmp(err, s->last_err)) {
			LOGW("token %s: still unavailable: %s", s->name, err);
			snprintf(s->last_err, sizeof(s->last_err), "%s", err);
		}
		return;
	}
	pthread_mutex_lock(&s->lock);
	list_for_each_safe(pos, tmp, &s->bindings)
	{
		struct binding *b = container_of(pos, struct binding, link);

		if (p11_key_refind(s->tok, b->key->id, b->key->id_len, &b->key->handle) == -1)
			LOGE("token %s: a bound key (CKA_ID of %zu bytes) is no longer on the "
			     "token",
			     s->name, b->key->id_len);
	}
	pthread_mutex_unlock(&s->lock);
	s->last_err[0] = '\0';
	LOGI("token %s is back: logged in again, client identity available", s->name);
	state_changed(s, 1);
}

static void go_down(struct signer *s, CK_RV rv)
{
	if (!atomic_load(&s->up))
		return;
	LOGE("token %s: %s: client identity unavailable until it is back", s->name,
	     p11_rv_name(rv));
	state_changed(s, 0);
}

static void run_request(struct signer *s, struct sign_req *r)
{
	uint64_t us;
	CK_RV rv;

	if (r->fn) {
		r->rc = r->fn(s->tok, r->arg);
		return;
	}
	if (!atomic_load(&s->up))
		try_recover(s);
	if (!atomic_load(&s->up)) {
		r->ok = 0;
		stats_add(&s->stats, 0, 0);
		stats_add(r->b->farm_stats, 0, 0);
		return;
	}
	r->outlen = sizeof(r->out);
	rv = p11_sign(s->tok, r->b->key->handle, r->mech, r->in, r->inlen, r->out, &r->outlen);
	us = now_us() - r->t0_us;
	r->ok = rv == CKR_OK;
	stats_add(&s->stats, us, r->ok);
	stats_add(r->b->farm_stats, us, r->ok);
	if (rv == CKR_OK)
		return;
	if (p11_rv_is_token_lost(rv))
		go_down(s, rv);
	else
		LOGW("token %s: signature failed: %s", s->name, p11_rv_name(rv));
}

static void idle_tick(struct signer *s)
{
	CK_RV rv;

	if (atomic_load(&s->awaiting_pin))
		return; /* nothing to recover: the operator has not given the PIN yet */
	if (!atomic_load(&s->up)) {
		try_recover(s);
		return;
	}
	rv = p11_token_probe(s->tok);
	if (rv != CKR_OK && p11_rv_is_token_lost(rv))
		go_down(s, rv);
}

static void *signer_main(void *arg)
{
	struct signer *s = arg;
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals belong to the loop */

	pthread_mutex_lock(&s->lock);
	for (;;) {
		struct sign_req *r;
		int idle = 0;

		while (!s->stop && list_empty(&s->queue)) {
			struct timespec ts;

			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_sec += SIGNER_IDLE_MS / 1000;
			if (pthread_cond_timedwait(&s->work, &s->lock, &ts) == ETIMEDOUT) {
				idle = 1;
				break;
			}
		}
		if (s->stop)
			break;
		if (idle && list_empty(&s->queue)) {
			pthread_mutex_unlock(&s->lock);
			idle_tick(s);
			pthread_mutex_lock(&s->lock);
			continue;
		}
		r = container_of(s->queue.next, struct sign_req, link);
		list_del(&r->link);
		pthread_mutex_unlock(&s->lock);
		run_request(s, r);
		pthread_mutex_lock(&s->lock);
		atomic_store(&r->done, 1);
		if (r->efd >= 0) {
			uint64_t one = 1;

			if (write(r->efd, &one, sizeof(one)) == -1)
				LOGE("token %s: eventfd: %s", s->name, strerror(errno));
		} else {
			pthread_cond_broadcast(&s->done);
		}
		req_put(r);
	}
	/* stopping: fail what is still queued */
	while (!list_empty(&s->queue)) {
		struct sign_req *r = container_of(s->queue.next, struct sign_req, link);

		list_del(&r->link);
		r->ok = 0;
		r->rc = -1;
		atomic_store(&r->done, 1);
		if (r->efd >= 0) {
			uint64_t one = 1;

			if (write(r->efd, &one, sizeof(one)) == -1)
				LOGE("token %s: eventfd: %s", s->name, strerror(errno));
		}
		req_put(r);
	}
	pthread_cond_broadcast(&s->done);
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* ---- the caller's side ------------------------------------------------- */

/* The hsm_key sign hook: queues the operation for the thread. Inside an
 * ASYNC job the job pauses (the loop watches the wait fd) until done. */
static int signer_hook(struct hsm_key *k, CK_MECHANISM_TYPE mech, const unsigned char *in,
		       size_t inlen, unsigned char *out, size_t *outlen)
{
	struct binding *b = k->hook_arg;
	struct signer *s = b->s;
	ASYNC_JOB *job = ASYNC_get_current_job();
	ASYNC_WAIT_CTX *wctx = NULL;
	struct sign_req *r;
	int ok;

	if (!atomic_load(&s->up) || inlen > SIGNER_MAX_INPUT)
		return -1; /* fail fast: the identity is unavailable */
	r = calloc(1, sizeof(*r));
	if (!r)
		return -1;
	r->b = b;
	r->mech = mech;
	memcpy(r->in, in, inlen);
	r->inlen = inlen;
	r->refs = 2;
	r->efd = -1;
	r->t0_us = now_us();
	if (job) {
		wctx = ASYNC_get_wait_ctx(job);
		r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (r->efd == -1 ||
		    !ASYNC_WAIT_CTX_set_wait_fd(wctx, &signer_wait_key, r->efd, NULL, NULL)) {
			if (r->efd >= 0)
				close(r->efd);
			free(r);
			return -1;
		}
	}
	pthread_mutex_lock(&s->lock);
	list_add_tail(&s->queue, &r->link);
	pthread_cond_signal(&s->work);
	if (job) {
		pthread_mutex_unlock(&s->lock);
		while (!atomic_load(&r->done))
			if (!ASYNC_pause_job())
				break;
		ASYNC_WAIT_CTX_clear_fd(wctx, &signer_wait_key);
		pthread_mutex_lock(&s->lock);
		if (!atomic_load(&r->done)) {
			/* could not wait: the thread will drop the last reference */
			req_put(r);
			pthread_mutex_unlock(&s->lock);
			return -1;
		}
	} else {
		while (!atomic_load(&r->done))
			pthread_cond_wait(&s->done, &s->lock);
	}
	ok = r->ok && r->outlen <= *outlen;
	if (ok) {
		memcpy(out, r->out, r->outlen);
		*outlen = r->outlen;
	}
	req_put(r);
	pthread_mutex_unlock(&s->lock);
	return ok ? 0 : -1;
}

int signer_call(struct signer *s, int (*fn)(struct p11_token *tok, void *arg), void *arg)
{
	struct sign_req *r = calloc(1, sizeof(*r));
	int rc;

	if (!r)
		return -1;
	r->fn = fn;
	r->arg = arg;
	r->refs = 2;
	r->efd = -1;
	pthread_mutex_lock(&s->lock);
	if (s->stop) {
		pthread_mutex_unlock(&s->lock);
		free(r);
		return -1;
	}
	list_add_tail(&s->queue, &r->link);
	pthread_cond_signal(&s->work);
	while (!atomic_load(&r->done))
		pthread_cond_wait(&s->done, &s->lock);
	rc = r->rc;
	req_put(r);
	pthread_mutex_unlock(&s->lock);
	return rc;
}

struct signer_job *signer_post(struct signer *s, int (*fn)(struct p11_token *tok, void *arg),
			       void *arg, void (*free_arg)(void *arg))
{
	struct sign_req *r = calloc(1, sizeof(*r));

	if (!r) {
		free_arg(arg);
		return NULL;
	}
	r->fn = fn;
	r->arg = arg;
	r->free_arg = free_arg;
	r->refs = 2;
	r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	pthread_mutex_lock(&s->lock);
	if (r->efd == -1 || s->stop) {
		pthread_mutex_unlock(&s->lock);
		if (r->efd >= 0)
			close(r->efd);
		free_arg(arg);
		free(r);
		return NULL;
	}
	list_add_tail(&s->queue, &r->link);
	pthread_cond_signal(&s->work);
	pthread_mutex_unlock(&s->lock);
	return (struct signer_job *)r;
}

int signer_job_fd(const struct signer_job *j)
{
	return ((const struct sign_req *)j)->efd;
}

int signer_job_done(const struct signer_job *j)
{
	return atomic_load(&((const struct sign_req *)j)->done);
}

int signer_job_rc(const struct signer_job *j)
{
	return ((const struct sign_req *)j)->rc;
}

void *signer_job_arg(const struct signer_job *j)
{
	return ((const struct sign_req *)j)->arg;
}

void signer_await_pin(struct signer *s, int awaiting)
{
	atomic_store(&s->awaiting_pin, awaiting);
	if (atomic_load(&s->up) == !awaiting)
		return;
	state_changed(s, !awaiting);
}

int signer_awaiting_pin(const struct signer *s)
{
	return atomic_load(&s->awaiting_pin);
}

void signer_job_release(struct signer *s, struct signer_job *j)
{
	pthread_mutex_lock(&s->lock);
	req_put((struct sign_req *)j);
	pthread_mutex_unlock(&s->lock);
}

struct signer *signer_new(const char *name, struct p11_token *tok, char *err, size_t errlen)
{
	struct signer *s = calloc(1, sizeof(*s));
	pthread_condattr_t ca;

	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	snprintf(s->name, sizeof(s->name), "%s", name);
	s->tok = tok;
	list_init(&s->queue);
	list_init(&s->bindings);
	atomic_store(&s->up, 1);
	pthread_mutex_init(&s->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->work, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&s->done, NULL);
	s->state_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (s->state_fd == -1) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		goto fail;
	}
	if (pthread_create(&s->thread, NULL, signer_main, s)) {
		snprintf(err, errlen, "cannot start the signer thread");
		goto fail;
	}
	s->started = 1;
	return s;
fail:
	s->tok = NULL; /* the caller keeps ownership on failure */
	signer_free(s);
	return NULL;
}

void signer_free(struct signer *s)
{
	struct list *pos, *tmp;

	if (!s)
		return;
	if (s->started) {
		pthread_mutex_lock(&s->lock);
		s->stop = 1;
		pthread_cond_signal(&s->work);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->thread, NULL);
	}
	list_for_each_safe(pos, tmp, &s->bindings)
	{
		struct binding *b = container_of(pos, struct binding, link);

		b->key->sign_hook = NULL;
		list_del(&b->link);
		free(b);
	}
	if (s->tok)
		p11_token_close(s->tok);
	if (s->state_fd >= 0)
		close(s->state_fd);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->work);
	pthread_cond_destroy(&s->done);
	free(s);
}

int signer_is_up(const struct signer *s)
{
	return atomic_load(&s->up);
}

int signer_event_fd(const struct signer *s)
{
	return s->state_fd;
}

void signer_state_ack(struct signer *s)
{
	uint64_t v;

	while (read(s->state_fd, &v, sizeof(v)) == sizeof(v))
		;
}

const char *signer_name(const struct signer *s)
{
	return s->name;
}

const struct sign_stats *signer_stats(const struct signer *s)
{
	return &s->stats;
}

int signer_bind_key(struct signer *s, EVP_PKEY *pkey, struct sign_stats *farm_stats)
{
	struct hsm_key *k = hsm_key_of(pkey);
	struct binding *b;

	if (!k)
		return -1;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -1;
	b->s = s;
	b->pkey = pkey;
	b->key = k;
	b->farm_stats = farm_stats;
	k->hook_arg = b;
	k->sign_hook = signer_hook;
	pthread_mutex_lock(&s->lock);
	list_add_tail(&s->bindings, &b->link);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

void signer_unbind_key(struct signer *s, EVP_PKEY *pkey)
{
	struct list *pos, *tmp;

	pthread_mutex_lock(&s->lock);
	list_for_each_safe(pos, tmp, &s->bindings)
	{
		struct binding *b = container_of(pos, struct binding, link);

		if (b->pkey == pkey) {
			b->key->sign_hook = NULL;
			b->key->hook_arg = NULL;
			list_del(&b->link);
			free(b);
		}
	}
	pthread_mutex_unlock(&s->lock);
}
