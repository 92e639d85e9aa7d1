#!/usr/bin/env bash
# Builds kublk, the kernel's own ublk test server (tools/testing/selftests/ublk), from the Debian source
# package of the kernel the VM boots, into the kernel cache: <cache>/kublk/kublk (printed). The kernel
# tests make "another tool's" device with it (test/kernel/gc.test.ts). Its kernel headers and liburing come
# from the kernel's suite (linux-libc-dev, liburing-dev), unpacked beside it, never installed: the host's
# are too old for it. Uses scripts/fetch-kernel.sh's private apt state.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
abi=$("$here/fetch-kernel.sh")
cache="${UBLK_TS_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ublk-ts/kernel}"
out="$cache/kublk"
if [ -x "$out/kublk" ] && [ "$(cat "$out/ABI" 2>/dev/null)" = "$abi" ]; then echo "$out/kublk"; exit 0; fi
state="$cache/apt"
apt_opts=(-o "Dir::Etc::sourcelist=$state/etc/sources.list" -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=$state/lists" -o "Dir::Cache::Archives=$state/archives"
  -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1" -q)
# The source of the very kernel the VM boots: its version is that of linux-image-<abi>.
version=$(apt-cache "${apt_opts[@]}" show "linux-image-$abi" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
[ -n "$version" ] || { echo "build-kublk: no version for linux-image-$abi in $state" >&2; exit 1; }
series=$(echo "$abi" | cut -d. -f1,2)
work=$(mktemp -d "$cache/kublk-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get "${apt_opts[@]}" download "linux-source-$series=$version" "linux-libc-dev=$version" liburing-dev >&2
# Only the selftest's directory comes out of the 160 MB source tarball.
dpkg-deb --fsys-tarfile linux-source-"$series"_*.deb | tar -xO "./usr/src/linux-source-$series.tar.xz" \
  | tar -xJ --strip-components=5 --wildcards "linux-source-$series/tools/testing/selftests/ublk/*"
for d in linux-libc-dev_*.deb liburing-dev_*.deb; do dpkg -x "$d" sysroot; done
triplet=$(gcc -print-multiarch)
# As the selftest's Makefile builds it (every .c but the standalone metadata_size), liburing linked in.
srcs=$(ls ./*.c | grep -v '/metadata_size\.c$')
# shellcheck disable=SC2086
gcc -O2 -Wall -D_GNU_SOURCE -isystem sysroot/usr/include -isystem "sysroot/usr/include/$triplet" -o kublk $srcs \
  "sysroot/usr/lib/$triplet/liburing.a" -lpthread -lm
mkdir -p "$out"
install -m 755 kublk "$out/kublk"
echo "$abi" >"$out/ABI"
echo "$out/kublk"
