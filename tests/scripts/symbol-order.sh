#!/usr/bin/env bash
# Regenerate agent/symbol-order.txt, the order the linker lays out
# bg-agent's functions in (agent/build.rs passes it to rust-lld).
#
#   tests/scripts/symbol-order.sh
#
# Runs the release bg-agent (the .deb's build: -p bg-agent -p bgctl) with
# one process-runtime service on an http and an https listener: once to
# deploy the replica, then, as after a restart, under callgrind adopting
# it, and dumps the functions that ran in four phases: plain HTTP/1.1 (wrk
# keep-alive and fresh connections, a metrics scrape), TLS (wrk keep-alive
# and handshakes, h2load over TLS), h2c (h2load), and start-up (with a
# status request on the control socket) and shutdown. Then the same
# traffic once more under `perf record` on the real CPU, for the code
# valgrind's emulated CPU does not take (ring's AVX2/ADX/VAES assembly).
# The file lists the functions in that order, so a process that serves
# only plain HTTP/1.1 touches one contiguous run of code once start-up's
# pages are dropped (see BENCHMARKS.md, "Memory").
#
# Mangled names carry hashes of the compiler version, Cargo.lock and
# features: after a toolchain or dependency update, rerun this script.
# Stale names are skipped by the linker (the layout just falls back to the
# default for those functions). Needs valgrind, wrk, nghttp2-client
# (h2load), openssl, curl; linux-perf optional. Takes about a minute.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/release
port=${PORT:-18900}
for t in valgrind callgrind_control wrk h2load openssl curl; do
  command -v "$t" >/dev/null || { echo "$t not found" >&2; exit 2; }
done
(cd "$root" && cargo build --release --locked -q -p bg-agent -p bgctl && cargo build --release --locked -q -p bg-tests --bin bench-upstream)

work=$(mktemp -d)
agent=
cleanup() {
  [ -n "$agent" ] && kill -KILL "$agent" 2>/dev/null || true
  # The replica, by the marker in its environment.
  for f in $(grep -l -a "BG_SYMBOL_ORDER_MARKER=$$" /proc/[0-9]*/environ 2>/dev/null); do
    f=${f#/proc/}; kill -KILL "${f%/environ}" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat >"$work/agent.toml" <<TOML
[agent]
state_dir = "$work/state"
control_socket = "$work/agent.sock"
metrics_listen = "127.0.0.1:$((port + 2))"

[runtime]
kind = "process"

[proxy]
https = ["127.0.0.1:$((port + 1))"]

[services.order]
listen = ["127.0.0.1:$port"]
command = ["$bin/bench-upstream"]
hosts = ["localhost"]
tls = { cert = "$work/cert.pem", key = "$work/key.pem" }
env = { BIND = "127.0.0.1", BG_SYMBOL_ORDER_MARKER = "$$" }
TOML
http=http://127.0.0.1:$port/
https=https://localhost:$((port + 1))/

start() { # $@: wrapper
  "$@" "$bin/bg-agent" --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
  agent=$!
  for _ in $(seq 600); do curl -sf -o /dev/null "$http" && return; sleep 0.2; done
  echo "bg-agent did not start:" >&2; cat "$work/agent.log" >&2; exit 1
}
# The replica outlives the agent, as on a restart; cleanup() kills it.
stop() { kill -TERM "$agent"; wait "$agent" || true; agent=; }
status() { curl -sf -o /dev/null --unix-socket "$work/agent.sock" http://agent/v1/services/order; }
plain() {
  wrk -t1 -c8 -d"$1"s "$http" >/dev/null
  wrk -t1 -c8 -d"$1"s -H 'Connection: close' "$http" >/dev/null
  curl -sf -o /dev/null "http://127.0.0.1:$((port + 2))/metrics"
}
tls() {
  wrk -t1 -c4 -d"$1"s "$https" >/dev/null
  wrk -t1 -c4 -d"$1"s -H 'Connection: close' "$https" >/dev/null
  h2load -c4 -m4 -n2000 "$https" --connect-to="127.0.0.1:$((port + 1))" >/dev/null
  h2load -c4 -n1000 --h1 "$https" --connect-to="127.0.0.1:$((port + 1))" >/dev/null
}
h2c() { h2load -c2 -m4 -n2000 "$http" >/dev/null; }

start env
stop
cg=$work/cg.out
start valgrind --tool=callgrind --demangle=no --callgrind-out-file="$cg"
dumps=0
dump() { # callgrind writes dump N to $cg.N
  dumps=$((dumps + 1))
  callgrind_control --dump="$1" "$agent" >/dev/null 2>&1
  for _ in $(seq 100); do [ -s "$cg.$dumps" ] && return; sleep 0.1; done
  echo "callgrind wrote no $cg.$dumps" >&2; exit 1
}
status; dump startup
plain 4; dump plain
tls 2; dump tls
h2c; dump h2c
stop
# Phases in layout order: plain, TLS, h2c, then start-up and shutdown (the
# final dump is $cg). Serving code comes first: once the agent is ready it
# drops the pages start-up mapped (agent/src/resident.rs), and what
# serving touches again is then one run from the start of the text.
phases=("$cg.2" "$cg.3" "$cg.4" "$cg.1" "$cg")

perf_syms=()
if command -v perf >/dev/null; then
  start perf record -F 15000 -o "$work/perf.data" --
  plain 2; tls 2; h2c
  stop
  perf report -i "$work/perf.data" --no-demangle --dso bg-agent --sort sym -F sym --stdio 2>/dev/null |
    awk '$1 == "[.]" {print $2}' >"$work/perf.txt"
  perf_syms=(--perf "$work/perf.txt")
else
  echo "perf not found: CPU-specific assembly stays where the linker puts it" >&2
fi
python3 "$root/tests/scripts/symbol-order.py" "$bin/bg-agent" "$root/agent/symbol-order.txt" "${phases[@]}" "${perf_syms[@]}"
