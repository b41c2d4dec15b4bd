/* Build-option helpers (Linux's IS_ENABLED) and small compiler attributes. */
#ifndef FG_COMPILER_H
#define FG_COMPILER_H

/* IS_ENABLED(CONFIG_X) is 1 when CONFIG_X is defined to 1 in autoconf.h, else
 * 0, so both branches of an `if (IS_ENABLED(...))` keep compiling. */
#ifdef __CPPCHECK__
/* cppcheck cannot expand the placeholder trick; both branches get checked */
#define IS_ENABLED(option) 1
#else
#define FG__ARG_PLACEHOLDER_1		   0,
#define FG__TAKE_SECOND(ignored, val, ...) val
#define FG__IS_DEFINED3(arg1_or_junk)	   FG__TAKE_SECOND(arg1_or_junk 1, 0, 0)
#define FG__IS_DEFINED2(val)		   FG__IS_DEFINED3(FG__ARG_PLACEHOLDER_##val)
#define IS_ENABLED(option)		   FG__IS_DEFINED2(option)
#endif

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#endif
