/* Runs every registered case (or those whose name contains argv[1]) and prints one line per case. */
#include <stdlib.h>
#include <time.h>

#include <vector>

#include "check.h"

static test_case *cases;
static int failures_in_case;

void test_register(test_case *t)
{
	t->next = cases;
	cases = t;
}

void test_fail(const char *file, int line, const std::string &what)
{
	fprintf(stderr, "    %s:%d: %s\n", file, line, what.c_str());
	failures_in_case++;
}

int main(int argc, char **argv)
{
	std::vector<test_case *> all;
	for (test_case *t = cases; t; t = t->next)
		all.insert(all.begin(), t); /* constructors run in file order: keep it */
	int passed = 0, failed = 0;
	for (test_case *t : all) {
		if (argc > 1 && !strstr(t->name, argv[1]))
			continue;
		failures_in_case = 0;
		t->fn();
		printf("%s %s\n", failures_in_case ? "FAIL" : "ok  ", t->name);
		fflush(stdout);
		(failures_in_case ? failed : passed)++;
	}
	printf("native core: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
