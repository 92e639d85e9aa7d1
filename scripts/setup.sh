#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for ublk-ts: build tools and liburing, the test peers, QEMU
# and the kernel cache the VM boots. Touches only the host's own suite (never installs from sid).
set -euo pipefail
pkgs=(g++ make python3 pkg-config liburing-dev qemu-system-x86 qemu-system-data busybox-static kmod xz-utils cpio
  fio e2fsprogs xfsprogs nbdkit qemu-utils util-linux procps)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root=()
  [ "$(id -u)" = 0 ] || as_root=(sudo)
  "${as_root[@]}" apt-get update -q
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
echo "setup: kernel $("$(dirname "$0")/fetch-kernel.sh")"
