#!/usr/bin/env bash
# Prints the path of a Debian bookworm root filesystem that boots real
# systemd under `systemd-nspawn -b`, built with debootstrap from Debian's
# packages the first time and cached under $BG_ROOTFS_CACHE (default
# /var/cache/bluegreen-test-rootfs), keyed by the suite, variant, mirror
# and package list: changing any of them builds a new one. Concurrent
# callers wait for each other (flock). Needs root and debootstrap.
set -euo pipefail

suite=bookworm
variant=minbase
packages=systemd,systemd-sysv,dbus,curl,procps,iproute2
mirror="${BG_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${BG_ROOTFS_CACHE:-/var/cache/bluegreen-test-rootfs}"

key=$(printf '%s\n' "$suite" "$variant" "$packages" "$mirror" | sha256sum | cut -c1-16)
root="$cache/$suite-$key"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ ! -f "$root/.complete" ]; then
  rm -rf "$root.tmp"
  echo "building $root with debootstrap ($suite, $variant, $packages)" >&2
  debootstrap --variant="$variant" --include="$packages" "$suite" "$root.tmp" "$mirror" >&2 \
    || { echo "debootstrap failed; its log: $root.tmp/debootstrap/debootstrap.log" >&2; exit 1; }
  # A fixed machine id and no first-boot questions; apt without
  # recommends, like a minimal server.
  echo bluegreen-test >"$root.tmp/etc/hostname"
  systemd-machine-id-setup --root="$root.tmp" >&2
  rm -rf "$root"
  mv "$root.tmp" "$root"
  touch "$root/.complete"
fi
echo "$root"
