#!/bin/sh
# Fail early, in one line, when the native build cannot work on this machine.
need() { echo "ublk-ts: $1 is missing: apt-get install $2" >&2; exit 1; }
command -v c++ >/dev/null 2>&1 || need "a C++ compiler" "g++ make"
command -v make >/dev/null 2>&1 || need "make" "make"
command -v pkg-config >/dev/null 2>&1 || need "pkg-config" "pkg-config"
pkg-config --exists liburing 2>/dev/null || need "liburing (pkg-config liburing)" "liburing-dev"
command -v python3 >/dev/null 2>&1 || need "python3 (for node-gyp)" "python3"
exit 0
