/* The event loop: one epoll set, a lazy timer heap and signals through signalfd. */
#ifndef FG_EV_H
#define FG_EV_H

#include <stdint.h>
#include <sys/epoll.h>

struct ev_loop;

/* An fd watcher, embedded in its owner's struct (recovered with container_of).
 * Once ev_fd_close() is called, events already fetched for it in the current
 * batch are not dispatched, so a callback may close another connection. */
struct ev_fd {
	int fd;
	void (*cb)(struct ev_loop *loop, struct ev_fd *w, uint32_t events);
};

/* A one-shot timer, embedded in its owner. `deadline` is the time wanted;
 * the heap key may be earlier (moving a deadline later costs nothing: the
 * timer is re-queued when its old key expires). */
struct ev_timer {
	uint64_t deadline; /* ms, monotonic; 0 = not armed */
	uint64_t key;
	int heap_idx; /* -1 when not in the heap */
	void (*cb)(struct ev_loop *loop, struct ev_timer *t);
};

struct ev_loop {
	int epfd;
	int stop;
	uint64_t now_ms; /* monotonic, refreshed after each epoll_wait */
	struct ev_timer **heap;
	unsigned int heap_len;
	unsigned int heap_cap;
	struct epoll_event *events;
	unsigned int nevents;
	/* called after each batch of events: owners free what they closed */
	void (*post_batch)(struct ev_loop *loop);
};

int ev_init(struct ev_loop *loop, unsigned int max_events);
void ev_free(struct ev_loop *loop);

/* Registers w->fd; events is EPOLLIN/EPOLLOUT/EPOLLRDHUP/EPOLLET as wanted.
 * Returns 0 or -1 (errno set). */
int ev_fd_add(struct ev_loop *loop, struct ev_fd *w, uint32_t events);
int ev_fd_mod(struct ev_loop *loop, struct ev_fd *w, uint32_t events);

/* Closes w->fd (removing it from epoll) and sets w->fd to -1. */
void ev_fd_close(struct ev_loop *loop, struct ev_fd *w);

void ev_timer_init(struct ev_timer *t, void (*cb)(struct ev_loop *, struct ev_timer *));
/* Arms t to fire at `deadline` (absolute ms); 0 disarms. O(1) when the
 * deadline moves later, O(log n) otherwise. */
void ev_timer_set(struct ev_loop *loop, struct ev_timer *t, uint64_t deadline);
/* Removes t from the heap (before freeing its owner). */
void ev_timer_del(struct ev_loop *loop, struct ev_timer *t);

/* Runs until loop->stop is set. Returns 0, or -1 if epoll_wait failed. */
int ev_run(struct ev_loop *loop);

uint64_t ev_now_refresh(struct ev_loop *loop);

#endif
