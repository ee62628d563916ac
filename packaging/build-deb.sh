#!/usr/bin/env bash
# Builds the bluegreen Debian package with cargo-deb
# (`cargo install cargo-deb --locked`): bg-agent and bgctl in /usr/bin, the
# systemd units in /lib/systemd/system, /etc/bg-agent/agent.toml (a
# conffile), shell completions, README and example configs. Prints the
# path of the .deb (under $CARGO_TARGET_DIR/debian, default target/debian).
#
# BG_DEB_PROFILE=dev packages the debug binaries instead of release ones
# (the tests do, to reuse what `cargo test` built; same files otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
profile="${BG_DEB_PROFILE:-release}"
case "$profile" in
  release) out="$target/release" ;;
  dev) out="$target/debug" ;;
  *) echo "BG_DEB_PROFILE=$profile: expected release or dev" >&2; exit 2 ;;
esac

cargo build --profile "$profile" --locked -p bg-agent -p bgctl >&2
completions="$out/completions"
mkdir -p "$completions"
"$out/bgctl" completions bash >"$completions/bgctl"
"$out/bgctl" completions zsh >"$completions/_bgctl"
"$out/bgctl" completions fish >"$completions/bgctl.fish"
deb_dir="$target/debian/$profile"
mkdir -p "$deb_dir"
cargo deb -p bg-agent --profile "$profile" --no-build --locked --strip --output "$deb_dir" "$@" >&2
ls -t "$deb_dir"/bluegreen_*.deb | head -n 1
