/* Bounded linear byte buffers: the back-pressure between a client and its backend. */
#ifndef FG_BUF_H
#define FG_BUF_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Valid bytes are data[head..tail). Space is only made by compaction, and a
 * buffer only grows when a message head needs it (buf_ensure_free), never
 * for bodies: that is what keeps memory bounded whatever a body's size. */
struct buf {
	char *data;
	uint32_t size;
	uint32_t head;
	uint32_t tail;
};

static inline int buf_alloc(struct buf *b, uint32_t size)
{
	b->data = malloc(size);
	b->size = b->data ? size : 0;
	b->head = b->tail = 0;
	return b->data ? 0 : -1;
}

static inline void buf_free(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->size = b->head = b->tail = 0;
}

static inline uint32_t buf_len(const struct buf *b)
{
	return b->tail - b->head;
}

static inline char *buf_ptr(const struct buf *b)
{
	return b->data + b->head;
}

/* Free bytes, counting what compaction would recover. */
static inline uint32_t buf_free_space(const struct buf *b)
{
	return b->size - buf_len(b);
}

/* Makes all free space contiguous at the tail; returns the tail pointer. */
static inline char *buf_tail(struct buf *b)
{
	if (b->head && b->tail == b->size) {
		memmove(b->data, b->data + b->head, b->tail - b->head);
		b->tail -= b->head;
		b->head = 0;
	}
	return b->data + b->tail;
}

static inline uint32_t buf_tail_room(const struct buf *b)
{
	return b->size - b->tail;
}

static inline void buf_commit(struct buf *b, uint32_t n)
{
	b->tail += n;
}

static inline void buf_consume(struct buf *b, uint32_t n)
{
	b->head += n;
	if (b->head == b->tail)
		b->head = b->tail = 0;
}

/* Compacts so that `need` bytes fit at the tail, growing the buffer if it is
 * too small even when compacted. Returns 0 or -1 (out of memory). */
static inline int buf_ensure_free(struct buf *b, uint32_t need)
{
	if (b->size - b->tail >= need)
		return 0;
	if (b->head) {
		memmove(b->data, b->data + b->head, b->tail - b->head);
		b->tail -= b->head;
		b->head = 0;
	}
	if (b->size - b->tail < need) {
		uint32_t nsize = b->tail + need;
		char *d = realloc(b->data, nsize);

		if (!d)
			return -1;
		b->data = d;
		b->size = nsize;
	}
	return 0;
}

/* Appends n bytes; the caller has made room (buf_ensure_free). */
static inline void buf_put(struct buf *b, const void *p, uint32_t n)
{
	memcpy(b->data + b->tail, p, n);
	b->tail += n;
}

#endif
