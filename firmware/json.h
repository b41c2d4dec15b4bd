/* Strict JSON (RFC 8259) DOM parser: one arena per document, errors with line and column. */
#ifndef FG_JSON_H
#define FG_JSON_H

#include <stddef.h>
#include <stdint.h>

/* Containers nested deeper than this are refused (the parser recurses once
 * per level, so this bounds its stack use). */
#define JSON_MAX_DEPTH 64

enum json_type {
	JSON_NULL = 0,
	JSON_FALSE = 1,
	JSON_TRUE = 2,
	JSON_NUMBER = 3,
	JSON_STRING = 4,
	JSON_ARRAY = 5,
	JSON_OBJECT = 6,
};

struct json_member;

/* One value. Everything it points to lives in the document's arena. */
struct json_value {
	enum json_type type;
	uint32_t line; /* where the value starts, 1-based */
	uint32_t col;  /* 1-based, in characters (UTF-8 code points) */
	union {
		struct {
			const char *s; /* decoded UTF-8, NUL-terminated, no NUL inside */
			size_t len;
		} str;
		struct {
			const char *text; /* as written, NUL-terminated */
			int64_t i;	  /* the value when is_int */
			int is_int; /* integer syntax (no fraction or exponent) within int64 */
		} num;
		struct {
			struct json_value **items;
			size_t n;
		} arr;
		struct {
			struct json_member *members; /* in document order, keys unique */
			size_t n;
		} obj;
	} u;
};

struct json_member {
	const char *key; /* decoded, NUL-terminated */
	size_t key_len;
	struct json_value *value;
};

struct json_arena_block;

/* A parsed document: the root value and the arena holding everything. */
struct json_doc {
	struct json_value *root;
	struct json_arena_block *blocks;
};

/* Parses exactly one JSON value from buf[0..len) (surrounding whitespace and
 * one leading UTF-8 byte order mark allowed). Never reads past len; buf needs
 * no terminating NUL. Returns a document the caller frees with json_free, or
 * NULL with "line L, column C: reason" in err (truncated to errlen). */
struct json_doc *json_parse(const char *buf, size_t len, char *err, size_t errlen);

/* Frees a document and every value in it. NULL is allowed. */
void json_free(struct json_doc *doc);

/* Member of an object by exact key, or NULL (also when v is not an object). */
const struct json_value *json_get(const struct json_value *v, const char *key);

/* Item i of an array, or NULL when out of range or v is not an array. */
const struct json_value *json_at(const struct json_value *v, size_t i);

/* Number of items of an array or members of an object; 0 for anything else. */
size_t json_len(const struct json_value *v);

/* Type name for messages: "null", "boolean", "number", "string", "array", "object". */
const char *json_type_name(enum json_type t);

#endif
