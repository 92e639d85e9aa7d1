#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for ublk-ts: build tools and liburing, the test peers, QEMU
# and the kernel cache the VM boots. Touches only the host's own suite (never installs from sid).
set -euo pipefail
pkgs=(g++ make python3 pkg-config liburing-dev qemu-system-x86 qemu-system-data busybox-static kmod xz-utils cpio
  fio e2fsprogs xfsprogs nbdkit nbd-client nbd-server qemu-utils util-linux procps
  mdadm # md RAID1, the kernel's mirror the bench puts beside the mirror target
  systemd) # systemd-analyze: the host test verifies the shipped unit (systemd/ublk-ts.service)
as_root=()
[ "$(id -u)" = 0 ] || as_root=(sudo)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "${as_root[@]}" apt-get update -q
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
echo "setup: kernel $("$(dirname "$0")/fetch-kernel.sh")"
echo "setup: kublk (the kernel's own ublk test server, for the kernel tests) $("$(dirname "$0")/build-kublk.sh")"

# `ublk-ts` by name: a link in /usr/local/bin to this clone's launcher (bin/ublk-ts, which runs dist/ once
# `npm install` has built it). Outside the tree, so the clone stays clean; a file that is not a link is kept.
launcher=$(cd "$(dirname "$0")/.." && pwd)/bin/ublk-ts
link=/usr/local/bin/ublk-ts
if [ -e "$link" ] && [ ! -L "$link" ]; then
  echo "setup: $link is a file, not a link: left as it is (this clone's command is $launcher)"
elif [ "$(readlink "$link" 2>/dev/null)" != "$launcher" ]; then
  [ -L "$link" ] && echo "setup: $link pointed to $(readlink "$link"); it now runs this clone"
  if "${as_root[@]}" mkdir -p "${link%/*}" && "${as_root[@]}" ln -sfn "$launcher" "$link"; then
    echo "setup: ublk-ts on PATH: $link -> $launcher"
  else
    echo "setup: could not link $link; put ${launcher%/*} on your PATH instead"
  fi
fi
case ":$PATH:" in *":${link%/*}:"*) ;; *) echo "setup: note: ${link%/*} is not on your PATH; add it to run ublk-ts by name" ;; esac
