#!/usr/bin/env bash
# Build websample as a static binary and package it FROM scratch as
# websample:<tag> for each tag given (default: v1 v2). No registry needed.
#
#   examples/scripts/build-websample-image.sh            # websample:v1, websample:v2
#   examples/scripts/build-websample-image.sh v3         # websample:v3
#   examples/scripts/build-websample-image.sh v1-hc      # with a Docker HEALTHCHECK
#
# The tags share one binary: the version an instance reports comes from its
# VERSION environment variable, which bluegreen sets per deploy. Each tag
# also gets a label so `docker inspect` tells them apart.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tags=("$@"); [ ${#tags[@]} -gt 0 ] || tags=(v1 v2)
target=x86_64-unknown-linux-gnu

echo "building static websample ($target)" >&2
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --manifest-path "$root/Cargo.toml" --release --target "$target" -p websample >&2

ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
# Where cargo put it: CARGO_TARGET_DIR when set, as cargo itself reads it.
cp "${CARGO_TARGET_DIR:-$root/target}/$target/release/websample" "$ctx/websample"
cp "$root/examples/websample/docker/Dockerfile" "$ctx/Dockerfile"
for tag in "${tags[@]}"; do
  printf '\nLABEL org.bluegreen.websample.tag=%s\nENV VERSION=%s\n' "$tag" "${tag%-hc}" > "$ctx/Dockerfile.tag"
  # Tags ending in -hc carry the image's own HEALTHCHECK (checked every second).
  case "$tag" in
    *-hc) printf 'HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD ["/websample", "--healthcheck"]\n' >> "$ctx/Dockerfile.tag" ;;
  esac
  cat "$ctx/Dockerfile" "$ctx/Dockerfile.tag" > "$ctx/Dockerfile.full"
  DOCKER_BUILDKIT=0 docker build -q -f "$ctx/Dockerfile.full" -t "websample:$tag" "$ctx" >&2
  echo "websample:$tag"
done
