/* Error and access logs: stderr (one write(2) per line, so lines never interleave) or syslog. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static enum log_target log_access_to = LOG_TARGET_STDERR;
static enum log_target log_error_to = LOG_TARGET_STDERR;
static int log_debug;
static int log_syslog_open;

/* The last error-log lines, for the management plane (any thread logs). */
#define RING_LINES 200
#define RING_LEN   256
static struct {
	pthread_mutex_t lock;
	char line[RING_LINES][RING_LEN];
	unsigned int next, n;
} ring = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void ring_add(const char *text)
{
	pthread_mutex_lock(&ring.lock);
	snprintf(ring.line[ring.next], RING_LEN, "%s", text);
	ring.next = (ring.next + 1) % RING_LINES;
	if (ring.n < RING_LINES)
		ring.n++;
	pthread_mutex_unlock(&ring.lock);
}

void log_recent(void (*cb)(const char *line, void *arg), void *arg)
{
	unsigned int i;

	pthread_mutex_lock(&ring.lock);
	for (i = 0; i < ring.n; i++)
		cb(ring.line[(ring.next + RING_LINES - ring.n + i) % RING_LINES], arg);
	pthread_mutex_unlock(&ring.lock);
}

static const char *const level_names[] = {"error", "warning", "info", "debug"};
static const int level_syslog[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};

void log_configure(enum log_target access, enum log_target error, int debug)
{
	log_access_to = access;
	log_error_to = error;
	log_debug = debug;
	if ((access == LOG_TARGET_SYSLOG || error == LOG_TARGET_SYSLOG) && !log_syslog_open) {
		openlog("farmgated", LOG_PID | LOG_NDELAY, LOG_DAEMON);
		log_syslog_open = 1;
	}
}

int log_debug_enabled(void)
{
	return log_debug;
}

/* Formats "<time> <prefix><message>\n" into one buffer and writes it with a
 * single write(2); a line longer than the buffer is cut, never split. */
static void log_emit(enum log_target to, int sl_level, const char *prefix, const char *fmt,
		     va_list ap)
{
	char line[2048];
	struct timespec ts;
	struct tm tm;
	int n, m;

	if (to == LOG_TARGET_OFF)
		return;
	if (to == LOG_TARGET_SYSLOG) {
		n = snprintf(line, sizeof(line), "%s", prefix);
		vsnprintf(line + n, sizeof(line) - n, fmt, ap);
		syslog(sl_level, "%s", line);
		return;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s",
		     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		     ts.tv_nsec / 1000000, prefix);
	m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	if (m < 0)
		m = 0;
	n += m;
	if (n > (int)sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	while (write(STDERR_FILENO, line, n) == -1 && errno == EINTR)
		;
}

void fg_log(int level, const char *fmt, ...)
{
	char prefix[16];
	va_list ap;

	if (level < FG_LOG_ERR || level > FG_LOG_DEBUG)
		level = FG_LOG_ERR;
	if (level == FG_LOG_DEBUG && !log_debug)
		return;
	snprintf(prefix, sizeof(prefix), "%s: ", level_names[level]);
	va_start(ap, fmt);
	log_emit(log_error_to, level_syslog[level], prefix, fmt, ap);
	va_end(ap);
	if (level <= FG_LOG_INFO) {
		char line[RING_LEN];
		struct timespec ts;
		struct tm tm;
		int n;

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		n = (int)strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%SZ ", &tm);
		n += snprintf(line + n, sizeof(line) - (size_t)n, "%s", prefix);
		va_start(ap, fmt);
		vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
		va_end(ap);
		ring_add(line);
	}
}

void log_access(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_emit(log_access_to, LOG_INFO, "access: ", fmt, ap);
	va_end(ap);
}
