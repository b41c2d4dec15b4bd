/* The signer: one thread per token runs every private-key operation, so the event loop never
 * waits on a smart card, TPM or HSM. */
#ifndef FG_SIGNER_H
#define FG_SIGNER_H

#include <stdatomic.h>
#include <stdint.h>

#include <openssl/evp.h>

struct p11_token;
struct signer;

/* Signature counters, updated by the signer thread, read by anyone. */
struct sign_stats {
	atomic_ullong count;	/* signatures made */
	atomic_ullong errors;	/* signatures that failed */
	atomic_ullong total_us; /* sum of their latencies (queue + token) */
	atomic_ullong max_us;
};

/* Starts a signer thread for an opened, logged-in token (taking ownership
 * of it). `name` is used in logs. Returns NULL with err filled on failure. */
struct signer *signer_new(const char *name, struct p11_token *tok, char *err, size_t errlen);

/* Stops the thread, fails queued requests, closes the token. */
void signer_free(struct signer *s);

/* 1 while the token answers and is logged in; 0 after a token fault until the
 * token is back and logged in again. */
int signer_is_up(const struct signer *s);

/* An eventfd that becomes readable whenever signer_is_up() changes; the
 * reader drains it with signer_state_ack(). */
int signer_event_fd(const struct signer *s);
void signer_state_ack(struct signer *s);

const char *signer_name(const struct signer *s);
const struct sign_stats *signer_stats(const struct signer *s);

/* Routes the private operations of a token key (hsm_key_new) through this
 * signer; farm_stats (may be NULL) counts them too. Inside an OpenSSL ASYNC
 * job (SSL_MODE_ASYNC handshakes) the caller's job pauses until the signature
 * is ready, its wait fd becoming readable; elsewhere the caller blocks. The
 * binding lives until signer_unbind_key. Returns 0, or -1 if pkey is not a
 * token key. */
int signer_bind_key(struct signer *s, EVP_PKEY *pkey, struct sign_stats *farm_stats);
void signer_unbind_key(struct signer *s, EVP_PKEY *pkey);

/* Runs fn(token, arg) on the signer thread (which owns the token's session)
 * and waits for it: for lookups at configuration time, never on the data
 * path. Returns fn's result, or -1 if the signer is stopping. */
int signer_call(struct signer *s, int (*fn)(struct p11_token *tok, void *arg), void *arg);

/* A token opened without its PIN (none in the configuration): down, and not
 * probed or recovered, until signer_await_pin(s, 0) after a login. */
void signer_await_pin(struct signer *s, int awaiting);
int signer_awaiting_pin(const struct signer *s);

/* The same without waiting: fn(token, arg) is queued for the signer thread
 * and the job's eventfd (signer_job_fd) becomes readable once it is done
 * (signer_job_done, signer_job_rc, signer_job_arg for the results). The job
 * owns arg: free_arg(arg) runs when both sides are finished with it, the
 * caller saying so with signer_job_release (also to give up early: the
 * thread finishes the work and frees it). NULL on failure (arg freed). For
 * the management plane's token operations, which must not stall the loop. */
struct signer_job;
struct signer_job *signer_post(struct signer *s, int (*fn)(struct p11_token *tok, void *arg),
			       void *arg, void (*free_arg)(void *arg));
int signer_job_fd(const struct signer_job *j);
int signer_job_done(const struct signer_job *j);
int signer_job_rc(const struct signer_job *j);
void *signer_job_arg(const struct signer_job *j);
void signer_job_release(struct signer *s, struct signer_job *j);

#endif
