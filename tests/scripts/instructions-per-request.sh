#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a
# figure that, unlike req/s on a shared 2-core VM, does not move with the
# machine's load. Used to profile bg-proxy against HAProxy (BENCHMARKS.md).
#
#   tests/scripts/instructions-per-request.sh bg-proxy|haproxy [keep-alive|fresh]
#
# Needs valgrind and wrk (Debian packages), haproxy for the second, and the
# release helpers: cargo build --release -p bg-tests --bins
# It runs bench-upstream on 127.0.0.1:$PORT+1, the proxy under callgrind on
# 127.0.0.1:$PORT, 10 s of wrk (1 thread, 8 connections), then prints the
# request count, the instructions and their quotient (HAProxy's start-up,
# measured with one request and no load, is subtracted). The profile stays
# in the printed directory: callgrind_annotate --inclusive=yes DIR/cg.out
set -euo pipefail
peer=${1:?usage: $0 bg-proxy|haproxy [keep-alive|fresh]}
mode=${2:-keep-alive}
port=${PORT:-18700}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/release
for tool in valgrind wrk; do
  command -v $tool >/dev/null || { echo "$tool not found (apt-get install -y $tool)" >&2; exit 2; }
done
out=$(mktemp -d)
wrk_args=()
[ "$mode" = fresh ] && wrk_args=(-H 'Connection: close')

"$bin/bench-upstream" "127.0.0.1:$((port + 1))" >/dev/null &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT

start_proxy() { # $1: callgrind output file
  case $peer in
    bg-proxy) valgrind --tool=callgrind --callgrind-out-file="$1" \
        "$bin/bg-proxy-bench-server" "127.0.0.1:$port" "127.0.0.1:$((port + 1))" >"$1.log" 2>&1 & ;;
    haproxy) cat >"$out/haproxy.cfg" <<CFG
global
    nbthread 1
defaults
    mode http
    timeout connect 3s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:$port
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend be
backend be
    server s1 127.0.0.1:$((port + 1))
CFG
      valgrind --tool=callgrind --callgrind-out-file="$1" haproxy -db -f "$out/haproxy.cfg" >"$1.log" 2>&1 & ;;
    *) echo "unknown peer $peer" >&2; exit 2 ;;
  esac
  proxy=$!
  for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$port/" && return; sleep 0.2; done
  echo "the proxy did not start; see $1.log" >&2; exit 1
}
stop_proxy() { kill -TERM "$proxy"; wait "$proxy" 2>/dev/null || true; }
refs() { grep -o 'refs: *[0-9,]*' "$1.log" | tr -dc 0-9; }

base=0
if [ "$peer" = haproxy ]; then
  start_proxy "$out/idle.out"; sleep 10; stop_proxy; base=$(refs "$out/idle.out")
fi
start_proxy "$out/cg.out"
requests=$(wrk -t1 -c8 -d10s "${wrk_args[@]}" "http://127.0.0.1:$port/" | awk '/requests in/{print $1}')
stop_proxy
total=$(refs "$out/cg.out")
echo "$peer $mode: $requests requests, $total instructions (start-up $base), $(((total - base) / requests)) per request; profile $out/cg.out"
