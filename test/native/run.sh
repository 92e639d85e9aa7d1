#!/bin/sh
# Host unit tests of the native core (test/native/README.md): builds them (plain and ASan/UBSan, no liburing
# library, no ublk) and runs both. Arguments go to the test binaries: a part of the names of the cases to run.
set -eu
cd "$(dirname "$0")"
out=${NATIVE_TEST_OUT:-../../build/native-test}
make -s -j"$(nproc)" OUT="$out"
echo "== plain"
"$out/native-core" "$@"
echo "== asan+ubsan"
"$out/native-core-asan" "$@"
