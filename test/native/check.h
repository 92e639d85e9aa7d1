/* A tiny test registry: TEST(name) { ... } registers a case; CHECK* record a failure and go on, so one run
 * shows every broken expectation of a case. */
#pragma once
#include <stdio.h>
#include <string.h>

#include <string>

struct test_case {
	const char *name;
	void (*fn)();
	test_case *next;
};
void test_register(test_case *t);
void test_fail(const char *file, int line, const std::string &what);

#define TEST(name)                                                   \
	static void test_##name();                                   \
	__attribute__((constructor)) static void reg_test_##name()   \
	{                                                            \
		static test_case tc = {#name, test_##name, nullptr}; \
		test_register(&tc);                                  \
	}                                                            \
	static void test_##name()

#define CHECK(cond)                                                  \
	do {                                                         \
		if (!(cond))                                         \
			test_fail(__FILE__, __LINE__, "CHECK(" #cond ")"); \
	} while (0)

/* Equality of two integers, showing both values. */
#define CHECK_EQ(a, b)                                                                                    \
	do {                                                                                              \
		long long va_ = (long long)(a), vb_ = (long long)(b);                                     \
		if (va_ != vb_)                                                                           \
			test_fail(__FILE__, __LINE__,                                                     \
				  std::string(#a " == " #b ": ") + std::to_string(va_) + " != " + std::to_string(vb_)); \
	} while (0)

#define CHECK_CONTAINS(s, part)                                                                           \
	do {                                                                                              \
		std::string s_ = (s);                                                                     \
		if (s_.find(part) == std::string::npos)                                                   \
			test_fail(__FILE__, __LINE__, std::string(#s " contains \"") + (part) + "\": \"" + s_ + "\""); \
	} while (0)
