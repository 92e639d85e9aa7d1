#!/usr/bin/env bash
# Fetch a Debian generic amd64 kernel (>= 6.16, with ublk_drv and 9p modules) into a per-user cache,
# using a private apt state so the host's own package set is never touched.
set -euo pipefail
cache="${UBLK_TS_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ublk-ts/kernel}"
if [ -f "$cache/READY" ]; then cat "$cache/READY"; exit 0; fi
mkdir -p "$cache"
state="$cache/apt"
mkdir -p "$state/lists/partial" "$state/archives/partial" "$state/etc"

# The mirror URI comes from the host's own apt configuration.
uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | grep -E 'debian/?$|debian/? ' | grep -v security | head -n1 \
      | sed -E 's/^URIs: *//; s/^deb +(\[[^]]*\] +)?//; s/ .*//' || true)
[ -n "$uri" ] || { echo "fetch-kernel: no Debian mirror found in /etc/apt" >&2; exit 1; }
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
{
  echo "deb [signed-by=$keyring] $uri trixie-backports main"
  echo "deb [signed-by=$keyring] $uri sid main"
} > "$state/etc/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$state/etc/sources.list" -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=$state/lists" -o "Dir::Cache::Archives=$state/archives"
  -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1" -q)
apt-get "${apt_opts[@]}" update >&2

# The newest linux-image-amd64 names its ABI in a dependency: linux-image-<abi>.
abi=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null \
      | sed -nE 's/.*Depends: linux-image-([0-9][^ ]*-amd64)$/\1/p' | sort -V | tail -n1)
[ -n "$abi" ] || { echo "fetch-kernel: no linux-image-amd64 found" >&2; exit 1; }
cd "$state/archives"
rm -f ./*.deb
pkgs=$(apt-cache "${apt_opts[@]}" depends "linux-image-$abi" | sed -nE 's/.*Depends: (linux-(binary|modules)-[^ ]*)$/\1/p' | sort -u)
[ -n "$pkgs" ] || pkgs="linux-image-$abi"
apt-get "${apt_opts[@]}" download $pkgs >&2
rm -rf "$cache/root"; mkdir -p "$cache/root"
for d in ./*.deb; do dpkg -x "$d" "$cache/root"; done
rm -f ./*.deb
depmod -b "$cache/root/usr" "$abi" 2>/dev/null || depmod -b "$cache/root" "$abi"
echo "$abi" > "$cache/READY"
echo "$abi"
