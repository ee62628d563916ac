#!/usr/bin/env bash
# Profile one proxy under a fixed wrk load, pinned as in the benchmark
# (bench-upstream and wrk on core 0, the proxy on core 1).
#
#   tests/scripts/profile-proxy.sh instructions|perf bg-proxy|haproxy [keep-alive|fresh]
#
# instructions: user-space instructions per request, counted by callgrind
#   (10 s of wrk, 1 thread, 8 connections; HAProxy's start-up, measured
#   with one request and no load, is subtracted). Unlike req/s on a shared
#   2-core VM it does not move with the machine's load.
#   callgrind_annotate --inclusive=yes DIR/cg.out shows where they go.
# perf: `perf record -g` (cpu-clock, kernel and user) of the proxy for 5 s
#   of wrk (1 thread, 32 connections); prints the split by binary and the
#   system calls' share. perf report -i DIR/perf.data for the rest.
#
# Needs wrk and valgrind or linux-perf (Debian packages), haproxy for the
# second peer, and the release helpers: cargo build --release -p bg-tests --bins
# The profile stays in the printed directory.
set -euo pipefail
tool=${1:?usage: $0 instructions|perf bg-proxy|haproxy [keep-alive|fresh]}
peer=${2:?usage: $0 instructions|perf bg-proxy|haproxy [keep-alive|fresh]}
mode=${3:-keep-alive}
port=${PORT:-18700}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/release
case $tool in
  instructions) needs=(valgrind wrk) ;;
  perf) needs=(perf wrk) ;;
  *) echo "unknown tool $tool (instructions or perf)" >&2; exit 2 ;;
esac
for t in "${needs[@]}"; do
  command -v "$t" >/dev/null || { echo "$t not found (apt-get install -y ${t/perf/linux-perf})" >&2; exit 2; }
done
out=$(mktemp -d)
wrk_args=()
[ "$mode" = fresh ] && wrk_args=(-H 'Connection: close')

taskset -c 0 "$bin/bench-upstream" "127.0.0.1:$((port + 1))" >/dev/null &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT

# The config the benchmark runs HAProxy with.
[ "$peer" = haproxy ] && haproxy_cfg=$("$bin/bench" --write-config haproxy --config-dir "$out" \
  --listen "127.0.0.1:$port" --upstream "127.0.0.1:$((port + 1))")

start_proxy() { # $1: callgrind output file (instructions only)
  local wrap=(taskset -c 1)
  [ "$tool" = instructions ] && wrap+=(valgrind --tool=callgrind --callgrind-out-file="$1")
  case $peer in
    bg-proxy) "${wrap[@]}" "$bin/bg-proxy-bench-server" "127.0.0.1:$port" "127.0.0.1:$((port + 1))" >"$1.log" 2>&1 & ;;
    haproxy) "${wrap[@]}" haproxy -db -f "$haproxy_cfg" >"$1.log" 2>&1 & ;;
    *) echo "unknown peer $peer" >&2; exit 2 ;;
  esac
  proxy=$!
  for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$port/" && return; sleep 0.2; done
  echo "the proxy did not start; see $1.log" >&2; exit 1
}
stop_proxy() { kill -TERM "$proxy"; wait "$proxy" 2>/dev/null || true; }
load() { # $1: connections, $2: seconds
  taskset -c 0 wrk -t1 -c"$1" -d"$2"s "${wrk_args[@]}" "http://127.0.0.1:$port/" | awk '/requests in/{print $1}'
}

if [ "$tool" = perf ]; then
  start_proxy "$out/proxy"
  load 32 8 >"$out/requests" &
  loader=$!
  sleep 1.5
  perf record -F 4999 -g -p "$proxy" -o "$out/perf.data" -- sleep 5 >/dev/null 2>&1
  wait "$loader"
  stop_proxy
  echo "$peer $mode: $(cat "$out/requests") requests in 8 s; profile $out/perf.data"
  perf report -i "$out/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -5
  perf report -i "$out/perf.data" --children --sort sym --stdio -g none 2>/dev/null |
    grep -E '\[k\] (entry_SYSCALL_64_after_hwframe|tcp_sendmsg|tcp_recvmsg|do_epoll_wait)$'
  exit 0
fi

refs() { grep -o 'refs: *[0-9,]*' "$1.log" | tr -dc 0-9; }
base=0
if [ "$peer" = haproxy ]; then
  start_proxy "$out/idle.out"; sleep 10; stop_proxy; base=$(refs "$out/idle.out")
fi
start_proxy "$out/cg.out"
requests=$(load 8 10)
stop_proxy
total=$(refs "$out/cg.out")
echo "$peer $mode: $requests requests, $total instructions (start-up $base), $(((total - base) / requests)) per request; profile $out/cg.out"
