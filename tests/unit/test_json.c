/* Unit tests for the strict JSON parser (json.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "json.h"

/* Parses a private, exactly sized copy of s[0..len) so that ASan catches any
 * read past the end (the parser must never rely on a terminating NUL). */
static struct json_doc *parse_exact(const char *s, size_t len, char *err, size_t errlen)
{
	char *copy = malloc(len ? len : 1);
	struct json_doc *doc;

	assert_non_null(copy);
	memcpy(copy, s, len);
	doc = json_parse(copy, len, err, errlen);
	free(copy);
	return doc;
}

static void expect_error_n(const char *s, size_t len, const char *msg)
{
	char err[256] = "";
	struct json_doc *doc = parse_exact(s, len, err, sizeof(err));

	if (doc != NULL)
		fail_msg("parsed but expected \"%s\"", msg);
	assert_string_equal(err, msg);
}

#define EXPECT_ERROR(lit, msg) expect_error_n(lit, sizeof(lit) - 1, msg)

static struct json_doc *must_parse_n(const char *s, size_t len)
{
	char err[256] = "";
	struct json_doc *doc = parse_exact(s, len, err, sizeof(err));

	if (doc == NULL)
		fail_msg("unexpected error: %s", err);
	assert_string_equal(err, "");
	return doc;
}

#define MUST_PARSE(lit) must_parse_n(lit, sizeof(lit) - 1)

static void test_valid_document(void **state)
{
	static const char src[] = "{\n"
				  "  \"z\": 1,\n"
				  "  \"a\": [true, false, null, \"s\", -2.5, {}],\n"
				  "  \"m\": {\"k\": []}\n"
				  "}";
	struct json_doc *doc = MUST_PARSE(src);
	const struct json_value *root = doc->root, *a, *m;

	(void)state;
	assert_int_equal(root->type, JSON_OBJECT);
	assert_int_equal(json_len(root), 3);
	/* member order is kept */
	assert_string_equal(root->u.obj.members[0].key, "z");
	assert_string_equal(root->u.obj.members[1].key, "a");
	assert_string_equal(root->u.obj.members[2].key, "m");
	assert_int_equal(json_get(root, "z")->u.num.i, 1);
	a = json_get(root, "a");
	assert_int_equal(a->type, JSON_ARRAY);
	assert_int_equal(json_len(a), 6);
	assert_int_equal(json_at(a, 0)->type, JSON_TRUE);
	assert_int_equal(json_at(a, 1)->type, JSON_FALSE);
	assert_int_equal(json_at(a, 2)->type, JSON_NULL);
	assert_string_equal(json_at(a, 3)->u.str.s, "s");
	assert_int_equal(json_at(a, 4)->type, JSON_NUMBER);
	assert_false(json_at(a, 4)->u.num.is_int);
	assert_string_equal(json_at(a, 4)->u.num.text, "-2.5");
	assert_int_equal(json_at(a, 5)->type, JSON_OBJECT);
	assert_int_equal(json_len(json_at(a, 5)), 0);
	assert_null(json_at(a, 6));
	assert_null(json_at(root, 0));
	m = json_get(root, "m");
	assert_int_equal(json_get(m, "k")->type, JSON_ARRAY);
	assert_int_equal(json_len(json_get(m, "k")), 0);
	assert_null(json_get(root, "missing"));
	assert_null(json_get(a, "z"));
	/* positions of values */
	assert_int_equal(root->line, 1);
	assert_int_equal(root->col, 1);
	assert_int_equal(a->line, 3);
	assert_int_equal(a->col, 8);
	assert_int_equal(json_at(a, 1)->line, 3);
	assert_int_equal(json_at(a, 1)->col, 15);
	assert_int_equal(json_get(m, "k")->line, 4);
	assert_int_equal(json_get(m, "k")->col, 14);
	json_free(doc);
}

static void test_scalars_at_top_and_whitespace(void **state)
{
	struct json_doc *doc;

	(void)state;
	doc = MUST_PARSE(" \t\r\n \"x\" \r\n");
	assert_int_equal(doc->root->type, JSON_STRING);
	assert_string_equal(doc->root->u.str.s, "x");
	json_free(doc);
	doc = MUST_PARSE("null");
	assert_int_equal(doc->root->type, JSON_NULL);
	json_free(doc);
	doc = MUST_PARSE("42");
	assert_int_equal(doc->root->u.num.i, 42);
	json_free(doc);
	/* a UTF-8 byte order mark may precede the value (RFC 8259 8.1) */
	doc = MUST_PARSE("\xEF\xBB\xBF{\"a\":true}");
	assert_int_equal(json_get(doc->root, "a")->type, JSON_TRUE);
	json_free(doc);
	json_free(NULL);
}

static void test_string_escapes(void **state)
{
	struct json_doc *doc;
	const struct json_value *v;

	(void)state;
	doc = MUST_PARSE("[\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\", \"\\u00e9\\u20AC\","
			 " \"\\uD83D\\uDE00\", \"caf\xC3\xA9 \xF0\x9F\x98\x80\", \"\"]");
	v = json_at(doc->root, 0);
	assert_string_equal(v->u.str.s, "\" \\ / \b \f \n \r \t");
	assert_int_equal(v->u.str.len, 15);
	v = json_at(doc->root, 1);
	assert_string_equal(v->u.str.s, "\xC3\xA9\xE2\x82\xAC");
	assert_int_equal(v->u.str.len, 5);
	v = json_at(doc->root, 2);
	assert_string_equal(v->u.str.s, "\xF0\x9F\x98\x80");
	v = json_at(doc->root, 3);
	assert_string_equal(v->u.str.s, "caf\xC3\xA9 \xF0\x9F\x98\x80");
	v = json_at(doc->root, 4);
	assert_string_equal(v->u.str.s, "");
	assert_int_equal(v->u.str.len, 0);
	json_free(doc);
	/* escaped keys are decoded too */
	doc = MUST_PARSE("{\"a\\u0062\": 1}");
	assert_non_null(json_get(doc->root, "ab"));
	json_free(doc);
}

static void test_bad_escapes(void **state)
{
	(void)state;
	EXPECT_ERROR("\"a\\x\"", "line 1, column 3: invalid escape '\\x' in string");
	EXPECT_ERROR("\"\\u12G4\"", "line 1, column 2: invalid \\u escape (4 hex digits expected)");
	EXPECT_ERROR("\"\\u123\"", "line 1, column 2: invalid \\u escape (4 hex digits expected)");
	EXPECT_ERROR("\"\\u0000\"", "line 1, column 2: \\u0000 is not allowed in strings");
	EXPECT_ERROR("\"\\uD800\"", "line 1, column 2: unpaired surrogate \\uD800");
	EXPECT_ERROR("\"\\uD800\\u0041\"", "line 1, column 2: unpaired surrogate \\uD800");
	EXPECT_ERROR("\"\\uD800x\\uDC00\"", "line 1, column 2: unpaired surrogate \\uD800");
	EXPECT_ERROR("\"\\uDC00\"", "line 1, column 2: unpaired surrogate \\uDC00");
	EXPECT_ERROR("\"\\uDBFF\\uD800\"", "line 1, column 2: unpaired surrogate \\uDBFF");
	EXPECT_ERROR("\"abc\\", "line 1, column 1: unterminated string");
	EXPECT_ERROR("[\"abc\\\"]", "line 1, column 2: unterminated string");
}

static void test_bad_utf8_and_controls(void **state)
{
	(void)state;
	EXPECT_ERROR("\"\xC0\x80\"", "line 1, column 2: invalid UTF-8 in string"); /* overlong */
	EXPECT_ERROR("\"\xE0\x80\x80\"", "line 1, column 2: invalid UTF-8 in string");
	EXPECT_ERROR("\"\xED\xA0\x80\"", "line 1, column 2: invalid UTF-8 in string"); /* D800 */
	EXPECT_ERROR("\"\xF4\x90\x80\x80\"", "line 1, column 2: invalid UTF-8 in string");
	EXPECT_ERROR("\"\xF5\x80\x80\x80\"", "line 1, column 2: invalid UTF-8 in string");
	EXPECT_ERROR("\"ab\x80\"", "line 1, column 4: invalid UTF-8 in string");
	EXPECT_ERROR("\"\xE2\x82\"", "line 1, column 2: invalid UTF-8 in string"); /* cut */
	EXPECT_ERROR("\"\xFF\"", "line 1, column 2: invalid UTF-8 in string");
	EXPECT_ERROR("\"a\tb\"",
		     "line 1, column 3: control character 0x09 in string (must be escaped)");
	EXPECT_ERROR("\"a\nb\"",
		     "line 1, column 3: control character 0x0A in string (must be escaped)");
	/* a raw NUL byte inside the buffer is a control character, not an end */
	expect_error_n("\"a\0b\"", 5,
		       "line 1, column 3: control character 0x00 in string (must be escaped)");
	expect_error_n("{\"a\":1}\0", 8,
		       "line 1, column 8: unexpected byte 0x00, expected end "
		       "of input after the value");
}

static void test_numbers(void **state)
{
	struct json_doc *doc;
	const struct json_value *r;

	(void)state;
	doc = MUST_PARSE("[0, -0, 123, -45, 1.5, 1e10, -1.25E-3, 9223372036854775807,"
			 " -9223372036854775808, 9223372036854775808, 1E+2, 0.0]");
	r = doc->root;
	assert_true(json_at(r, 0)->u.num.is_int);
	assert_int_equal(json_at(r, 0)->u.num.i, 0);
	assert_true(json_at(r, 1)->u.num.is_int);
	assert_int_equal(json_at(r, 1)->u.num.i, 0);
	assert_string_equal(json_at(r, 1)->u.num.text, "-0");
	assert_int_equal(json_at(r, 2)->u.num.i, 123);
	assert_int_equal(json_at(r, 3)->u.num.i, -45);
	assert_false(json_at(r, 4)->u.num.is_int);
	assert_string_equal(json_at(r, 4)->u.num.text, "1.5");
	assert_false(json_at(r, 5)->u.num.is_int);
	assert_string_equal(json_at(r, 5)->u.num.text, "1e10");
	assert_string_equal(json_at(r, 6)->u.num.text, "-1.25E-3");
	assert_true(json_at(r, 7)->u.num.is_int);
	assert_true(json_at(r, 7)->u.num.i == INT64_MAX);
	assert_true(json_at(r, 8)->u.num.is_int);
	assert_true(json_at(r, 8)->u.num.i == INT64_MIN);
	/* valid JSON but outside int64: kept as text only */
	assert_false(json_at(r, 9)->u.num.is_int);
	assert_string_equal(json_at(r, 9)->u.num.text, "9223372036854775808");
	assert_false(json_at(r, 10)->u.num.is_int);
	assert_false(json_at(r, 11)->u.num.is_int);
	json_free(doc);
	doc = MUST_PARSE("-9223372036854775809");
	assert_false(doc->root->u.num.is_int);
	json_free(doc);
}

static void test_bad_numbers(void **state)
{
	(void)state;
	EXPECT_ERROR("01", "line 1, column 1: leading zeros are not allowed in numbers");
	EXPECT_ERROR("[-007]", "line 1, column 2: leading zeros are not allowed in numbers");
	EXPECT_ERROR("1.", "line 1, column 3: digit expected after the decimal point");
	EXPECT_ERROR("1.e5", "line 1, column 3: digit expected after the decimal point");
	EXPECT_ERROR(".5", "line 1, column 1: unexpected character '.', expected a value");
	EXPECT_ERROR("1e", "line 1, column 3: digit expected in the exponent");
	EXPECT_ERROR("1e+", "line 1, column 4: digit expected in the exponent");
	EXPECT_ERROR("-", "line 1, column 1: invalid number");
	EXPECT_ERROR("-x", "line 1, column 1: invalid number");
	EXPECT_ERROR("+1", "line 1, column 1: unexpected character '+', expected a value");
	EXPECT_ERROR("NaN", "line 1, column 1: unexpected character 'N', expected a value");
	EXPECT_ERROR("Infinity", "line 1, column 1: unexpected character 'I', expected a value");
	EXPECT_ERROR("-Infinity", "line 1, column 1: invalid number");
	EXPECT_ERROR("0x10",
		     "line 1, column 2: unexpected character 'x', expected end of input after "
		     "the value");
}

static void test_literals(void **state)
{
	(void)state;
	EXPECT_ERROR("tru", "line 1, column 1: invalid literal (true, false or null expected)");
	EXPECT_ERROR("nul", "line 1, column 1: invalid literal (true, false or null expected)");
	EXPECT_ERROR("[fals]", "line 1, column 2: invalid literal (true, false or null expected)");
	EXPECT_ERROR("True", "line 1, column 1: unexpected character 'T', expected a value");
	EXPECT_ERROR("truex", "line 1, column 5: unexpected character 'x', expected end of input "
			      "after the value");
}

static void test_structure_errors(void **state)
{
	(void)state;
	EXPECT_ERROR("", "line 1, column 1: unexpected end of input, expected a value");
	EXPECT_ERROR("  \n ", "line 2, column 2: unexpected end of input, expected a value");
	EXPECT_ERROR("[1,]", "line 1, column 4: trailing comma is not allowed");
	EXPECT_ERROR("{\"a\":1,}", "line 1, column 8: trailing comma is not allowed");
	EXPECT_ERROR("{\"a\" 1}", "line 1, column 6: unexpected character '1', expected ':' "
				  "after the key");
	EXPECT_ERROR("[1 2]", "line 1, column 4: unexpected character '2', expected ',' or ']'");
	EXPECT_ERROR("{\"a\":1 \"b\":2}",
		     "line 1, column 8: unexpected character '\"', expected ',' or '}'");
	EXPECT_ERROR("[1, 2", "line 1, column 6: unexpected end of input, expected ',' or ']'");
	EXPECT_ERROR("{\"a\":", "line 1, column 6: unexpected end of input, expected a value");
	EXPECT_ERROR("{", "line 1, column 2: unexpected end of input, expected a string key");
	EXPECT_ERROR("{a:1}", "line 1, column 2: unexpected character 'a', expected a string key");
	EXPECT_ERROR("{1:1}", "line 1, column 2: unexpected character '1', expected a string key");
	EXPECT_ERROR("['a']", "line 1, column 2: unexpected character ''', expected a value");
	EXPECT_ERROR("{} x", "line 1, column 4: unexpected character 'x', expected end of input "
			     "after the value");
	EXPECT_ERROR("1 2", "line 1, column 3: unexpected character '2', expected end of input "
			    "after the value");
	EXPECT_ERROR("[,1]", "line 1, column 2: unexpected character ',', expected a value");
	EXPECT_ERROR("]", "line 1, column 1: unexpected character ']', expected a value");
	EXPECT_ERROR("\xEF\xBB\xBF", "line 1, column 1: unexpected end of input, expected a value");
	EXPECT_ERROR("\xC3\xA9", "line 1, column 1: unexpected byte 0xC3, expected a value");
}

static void test_duplicate_keys(void **state)
{
	char buf[4096];
	size_t n = 0;
	int i;

	(void)state;
	EXPECT_ERROR("{\"a\":1,\"b\":2,\"a\":3}", "line 1, column 14: duplicate key \"a\"");
	EXPECT_ERROR("{\"x\":{\"k\":1,\n  \"k\":2}}", "line 2, column 3: duplicate key \"k\"");
	/* the same key after decoding escapes is the same key */
	EXPECT_ERROR("{\"ab\":1,\"a\\u0062\":2}", "line 1, column 9: duplicate key \"ab\"");
	/* "a" and "A" differ, as do "a" and "a " */
	json_free(MUST_PARSE("{\"a\":1,\"A\":2,\"a \":3}"));

	/* a large object is checked when it closes: the first duplicate in
	 * document order is reported */
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "{");
	for (i = 0; i < 100; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\"k%03d\":%d,\n", i, i);
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\"k090\":0,\n\"k050\":0,\n\"k100\":0}");
	expect_error_n(buf, n, "line 101, column 1: duplicate key \"k090\"");

	/* and one without duplicates parses, members in order */
	n = (size_t)snprintf(buf, sizeof(buf), "{");
	for (i = 0; i < 100; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\"k%03d\":%d", i ? "," : "",
				      99 - i, i);
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "}");
	{
		struct json_doc *doc = must_parse_n(buf, n);

		assert_int_equal(json_len(doc->root), 100);
		assert_string_equal(doc->root->u.obj.members[0].key, "k099");
		assert_string_equal(doc->root->u.obj.members[99].key, "k000");
		assert_int_equal(json_get(doc->root, "k042")->u.num.i, 57);
		json_free(doc);
	}
}

static void test_depth_limit(void **state)
{
	char buf[4 * (JSON_MAX_DEPTH + 1) + 16];
	size_t n;
	int i;
	struct json_doc *doc;

	(void)state;
	/* exactly JSON_MAX_DEPTH levels: accepted */
	n = 0;
	for (i = 0; i < JSON_MAX_DEPTH; i++)
		buf[n++] = '[';
	for (i = 0; i < JSON_MAX_DEPTH; i++)
		buf[n++] = ']';
	doc = must_parse_n(buf, n);
	assert_int_equal(doc->root->type, JSON_ARRAY);
	json_free(doc);
	/* one more: refused, pointing at the bracket that goes too deep */
	n = 0;
	for (i = 0; i < JSON_MAX_DEPTH + 1; i++)
		buf[n++] = '[';
	for (i = 0; i < JSON_MAX_DEPTH + 1; i++)
		buf[n++] = ']';
	expect_error_n(buf, n, "line 1, column 65: nesting deeper than 64 levels");
	/* objects count as levels too: the 65th opener, a '{', is at column
	 * 1 + 32 * strlen("{\"\":") + 32 * strlen("[") */
	n = 0;
	for (i = 0; i < JSON_MAX_DEPTH + 1; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, i % 2 ? "[" : "{\"\":");
	expect_error_n(buf, n, "line 1, column 161: nesting deeper than 64 levels");
}

static void test_deep_input_no_stack_overflow(void **state)
{
	/* 100000 opening brackets: refused at the limit, without deep recursion */
	size_t n = 100000;
	char *buf = malloc(n);

	(void)state;
	assert_non_null(buf);
	memset(buf, '[', n);
	expect_error_n(buf, n, "line 1, column 65: nesting deeper than 64 levels");
	memset(buf, '{', n);
	expect_error_n(buf, n, "line 1, column 2: unexpected character '{', expected a string key");
	free(buf);
}

static void test_error_positions(void **state)
{
	(void)state;
	EXPECT_ERROR("{\n  \"a\": 1,\n  \"b\": x\n}", "line 3, column 8: unexpected character "
						      "'x', expected a value");
	/* columns count characters, not bytes */
	EXPECT_ERROR("[\"\xC3\xA9\xC3\xA9\", ?]",
		     "line 1, column 8: unexpected character '?', expected a value");
	/* CRLF line ends */
	EXPECT_ERROR("[\r\n1,\r\n\"\\q\"]", "line 3, column 2: invalid escape '\\q' in string");
	/* the BOM is not a column */
	EXPECT_ERROR("\xEF\xBB\xBF[x]", "line 1, column 2: unexpected character 'x', expected a "
					"value");
}

static void test_every_prefix_fails_cleanly(void **state)
{
	static const char src[] = "{\"a\": [1, -2.5e3, true, false, null, \"\\u00e9\\uD83D\\uDE00"
				  "\xC3\xA9\"], \"b\": {\"c\": \"\\n\"}}";
	size_t n;
	char err[256];

	(void)state;
	json_free(MUST_PARSE(src));
	/* every strict prefix of a document is incomplete: an error, never a
	 * read past the exactly sized copy (ASan) and never a leak (LSan) */
	for (n = 0; n < sizeof(src) - 1; n++) {
		struct json_doc *doc = parse_exact(src, n, err, sizeof(err));

		if (doc != NULL)
			fail_msg("prefix of %zu bytes parsed", n);
		assert_true(strncmp(err, "line 1, column ", 15) == 0);
	}
}

static void test_large_array_and_strings(void **state)
{
	size_t count = 20000, n = 0, cap = count * 8 + 70000, i;
	char *buf = malloc(cap);
	struct json_doc *doc;

	(void)state;
	assert_non_null(buf);
	buf[n++] = '[';
	for (i = 0; i < count; i++)
		n += (size_t)snprintf(buf + n, cap - n, "%s%zu", i ? "," : "", i);
	/* one string bigger than an arena block */
	n += (size_t)snprintf(buf + n, cap - n, ",\"");
	memset(buf + n, 'z', 60000);
	n += 60000;
	n += (size_t)snprintf(buf + n, cap - n, "\",\"tail\"]");
	doc = must_parse_n(buf, n);
	assert_int_equal(json_len(doc->root), count + 2);
	assert_int_equal(json_at(doc->root, 12345)->u.num.i, 12345);
	assert_int_equal(json_at(doc->root, count)->u.str.len, 60000);
	assert_string_equal(json_at(doc->root, count + 1)->u.str.s, "tail");
	json_free(doc);
	free(buf);
}

static void test_small_error_buffer(void **state)
{
	char err[8];

	(void)state;
	memset(err, 'x', sizeof(err));
	assert_null(json_parse("[", 1, err, sizeof(err)));
	assert_string_equal(err, "line 1,");
	assert_null(json_parse("[", 1, NULL, 0));
}

static void test_type_names(void **state)
{
	(void)state;
	assert_string_equal(json_type_name(JSON_NULL), "null");
	assert_string_equal(json_type_name(JSON_TRUE), "boolean");
	assert_string_equal(json_type_name(JSON_FALSE), "boolean");
	assert_string_equal(json_type_name(JSON_NUMBER), "number");
	assert_string_equal(json_type_name(JSON_STRING), "string");
	assert_string_equal(json_type_name(JSON_ARRAY), "array");
	assert_string_equal(json_type_name(JSON_OBJECT), "object");
	assert_int_equal(json_len(NULL), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_document),
		cmocka_unit_test(test_scalars_at_top_and_whitespace),
		cmocka_unit_test(test_string_escapes),
		cmocka_unit_test(test_bad_escapes),
		cmocka_unit_test(test_bad_utf8_and_controls),
		cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_bad_numbers),
		cmocka_unit_test(test_literals),
		cmocka_unit_test(test_structure_errors),
		cmocka_unit_test(test_duplicate_keys),
		cmocka_unit_test(test_depth_limit),
		cmocka_unit_test(test_deep_input_no_stack_overflow),
		cmocka_unit_test(test_error_positions),
		cmocka_unit_test(test_every_prefix_fails_cleanly),
		cmocka_unit_test(test_large_array_and_strings),
		cmocka_unit_test(test_small_error_buffer),
		cmocka_unit_test(test_type_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
