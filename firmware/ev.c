/* The event loop: one epoll set, a lazy binary-heap of timers, deferred dispatch safety. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ev.h"
#include "log.h"

uint64_t ev_now_refresh(struct ev_loop *loop)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	loop->now_ms = (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	return loop->now_ms;
}

int ev_init(struct ev_loop *loop, unsigned int max_events)
{
	memset(loop, 0, sizeof(*loop));
	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (loop->epfd == -1)
		return -1;
	loop->nevents = max_events;
	loop->events = calloc(max_events, sizeof(*loop->events));
	if (!loop->events) {
		ev_free(loop);
		errno = ENOMEM;
		return -1;
	}
	ev_now_refresh(loop);
	return 0;
}

void ev_free(struct ev_loop *loop)
{
	if (loop->epfd >= 0)
		close(loop->epfd);
	loop->epfd = -1;
	free(loop->events);
	free(loop->heap);
	loop->events = NULL;
	loop->heap = NULL;
}

int ev_fd_add(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.ptr = w};

	return epoll_ctl(loop->epfd, EPOLL_CTL_ADD, w->fd, &ev);
}

int ev_fd_mod(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.ptr = w};

	return epoll_ctl(loop->epfd, EPOLL_CTL_MOD, w->fd, &ev);
}

/* Closing the fd removes it from the epoll set; events of this batch that
 * still point at w are skipped because w->fd is -1. The owner must not free w
 * before the batch ends: owners defer frees (see proxy.c's graveyard). */
void ev_fd_close(struct ev_loop *loop, struct ev_fd *w)
{
	(void)loop;
	if (w->fd < 0)
		return;
	close(w->fd);
	w->fd = -1;
}

/* ---- timers: binary min-heap on key, with index back-pointers ---- */

static void heap_swap(struct ev_loop *loop, unsigned int a, unsigned int b)
{
	struct ev_timer *t = loop->heap[a];

	loop->heap[a] = loop->heap[b];
	loop->heap[b] = t;
	loop->heap[a]->heap_idx = a;
	loop->heap[b]->heap_idx = b;
}

static void heap_up(struct ev_loop *loop, unsigned int i)
{
	while (i > 0) {
		unsigned int p = (i - 1) / 2;

		if (loop->heap[p]->key <= loop->heap[i]->key)
			break;
		heap_swap(loop, i, p);
		i = p;
	}
}

static void heap_down(struct ev_loop *loop, unsigned int i)
{
	for (;;) {
		unsigned int l = 2 * i + 1, r = l + 1, m = i;

		if (l < loop->heap_len && loop->heap[l]->key < loop->heap[m]->key)
			m = l;
		if (r < loop->heap_len && loop->heap[r]->key < loop->heap[m]->key)
			m = r;
		if (m == i)
			break;
		heap_swap(loop, i, m);
		i = m;
	}
}

static int heap_push(struct ev_loop *loop, struct ev_timer *t)
{
	if (loop->heap_len == loop->heap_cap) {
		unsigned int cap = loop->heap_cap ? loop->heap_cap * 2 : 256;
		struct ev_timer **h = realloc(loop->heap, cap * sizeof(*h));

		if (!h)
			return -1;
		loop->heap = h;
		loop->heap_cap = cap;
	}
	t->heap_idx = loop->heap_len;
	loop->heap[loop->heap_len++] = t;
	heap_up(loop, t->heap_idx);
	return 0;
}

static void heap_remove(struct ev_loop *loop, struct ev_timer *t)
{
	unsigned int i = t->heap_idx;

	loop->heap_len--;
	if (i != loop->heap_len) {
		loop->heap[i] = loop->heap[loop->heap_len];
		loop->heap[i]->heap_idx = i;
		heap_down(loop, i);
		heap_up(loop, loop->heap[i]->heap_idx);
	}
	t->heap_idx = -1;
}

void ev_timer_init(struct ev_timer *t, void (*cb)(struct ev_loop *, struct ev_timer *))
{
	t->deadline = 0;
	t->key = 0;
	t->heap_idx = -1;
	t->cb = cb;
}

void ev_timer_set(struct ev_loop *loop, struct ev_timer *t, uint64_t deadline)
{
	t->deadline = deadline;
	if (!deadline)
		return; /* stays queued; ignored when its key expires */
	if (t->heap_idx < 0) {
		t->key = deadline;
		if (heap_push(loop, t) == -1)
			LOGE("timer heap: out of memory");
	} else if (deadline < t->key) {
		t->key = deadline;
		heap_up(loop, t->heap_idx);
	}
}

void ev_timer_del(struct ev_loop *loop, struct ev_timer *t)
{
	t->deadline = 0;
	if (t->heap_idx >= 0)
		heap_remove(loop, t);
}

/* Fires every timer whose deadline has passed; re-queues those whose
 * deadline moved later. Returns the ms until the next key, or -1. */
static int run_timers(struct ev_loop *loop)
{
	while (loop->heap_len) {
		struct ev_timer *t = loop->heap[0];

		if (t->key > loop->now_ms) {
			uint64_t d = t->key - loop->now_ms;

			return d > 60000 ? 60000 : (int)d;
		}
		heap_remove(loop, t);
		if (!t->deadline)
			continue;
		if (t->deadline > loop->now_ms) {
			t->key = t->deadline;
			heap_push(loop, t);
			continue;
		}
		t->deadline = 0;
		t->cb(loop, t);
	}
	return -1;
}

int ev_run(struct ev_loop *loop)
{
	while (!loop->stop) {
		int timeout = run_timers(loop);
		int n, i;

		if (loop->stop)
			break;
		n = epoll_wait(loop->epfd, loop->events, loop->nevents, timeout);
		ev_now_refresh(loop);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			LOGE("epoll_wait: %s", strerror(errno));
			return -1;
		}
		for (i = 0; i < n; i++) {
			struct ev_fd *w = loop->events[i].data.ptr;

			if (w->fd < 0)
				continue;
			w->cb(loop, w, loop->events[i].events);
		}
		if (loop->post_batch)
			loop->post_batch(loop);
	}
	return 0;
}
