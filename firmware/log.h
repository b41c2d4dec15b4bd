/* Error and access logs: stderr (one write per line) or syslog. */
#ifndef FG_LOG_H
#define FG_LOG_H

#include "cfg-t.h"
#include "compiler.h"

enum fg_log_level {
	FG_LOG_ERR = 0,
	FG_LOG_WARN = 1,
	FG_LOG_INFO = 2,
	FG_LOG_DEBUG = 3,
};

/* Sets where each log goes; called at start-up and after each reload. */
void log_configure(enum log_target access, enum log_target error, int debug);

/* One line in the error log. Never pass PINs, keys or Authorization values. */
void fg_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One line in the access log (prefixed "access: "). */
void log_access(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int log_debug_enabled(void);

/* The last error-log lines (not debug, not access), oldest first. */
void log_recent(void (*cb)(const char *line, void *arg), void *arg);

#define LOGE(...) fg_log(FG_LOG_ERR, __VA_ARGS__)
#define LOGW(...) fg_log(FG_LOG_WARN, __VA_ARGS__)
#define LOGI(...) fg_log(FG_LOG_INFO, __VA_ARGS__)
#define LOGD(...)                                                                                  \
	do {                                                                                       \
		if (IS_ENABLED(CONFIG_DEBUG_LOG) && log_debug_enabled())                           \
			fg_log(FG_LOG_DEBUG, __VA_ARGS__);                                         \
	} while (0)

#endif
