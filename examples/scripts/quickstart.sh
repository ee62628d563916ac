#!/usr/bin/env bash
# Quickstart: build bluegreen, start an agent with one service `web` (it
# deploys v1 by itself: first start), then deploy and promote v2 while a
# client hammers the service, and show that no request failed.
#
#   examples/scripts/quickstart.sh            # Docker if the engine answers, else local processes
#   BG_RUNTIME=process examples/scripts/quickstart.sh
#
# Everything lives in a temporary directory and is removed at the end; the
# service listens on 127.0.0.1:${BG_QUICKSTART_PORT:-8080}.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
port=${BG_QUICKSTART_PORT:-8080}
runtime=${BG_RUNTIME:-}
if [ -z "$runtime" ]; then
  if docker version >/dev/null 2>&1; then runtime=docker; else runtime=process; fi
fi
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "building bg-agent, bgctl and websample"
cargo build --quiet --manifest-path "$root/Cargo.toml" -p bg-agent -p bgctl -p websample
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
if [ "$runtime" = docker ]; then
  say "building the websample images (no registry needed)"
  "$root/examples/scripts/build-websample-image.sh" v1 v2 >/dev/null
fi

work=$(mktemp -d /tmp/bg-quickstart.XXXXXX)
marker="bg-quickstart-$$"
agent_pid=""; load_pid=""
cleanup() {
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null || true
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  # The agent leaves app replicas running by design (restarts lose
  # nothing); the demo removes them.
  if [ "$runtime" = docker ]; then
    for id in $(docker ps -aq --filter label=bg.service=web 2>/dev/null); do
      if docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$id" | grep -qx "BG_QUICKSTART=$marker"; then
        docker rm -f "$id" >/dev/null 2>&1 || true
      fi
    done
  else
    for f in /proc/[0-9]*/environ; do
      if { tr '\0' '\n' < "$f"; } 2>/dev/null | grep -qx "BG_QUICKSTART=$marker"; then
        pid=${f#/proc/}; kill -9 "${pid%/environ}" 2>/dev/null || true
      fi
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ "$runtime" = docker ]; then
  app='image = "websample:v1"
pull = "never"
port = 5000'
else
  app="command = [\"$bin/websample\"]"
fi
cat > "$work/agent.toml" <<TOML
[agent]
state_dir = "$work/state"
control_socket = "$work/agent.sock"

[runtime]
kind = "$runtime"

[services.web]
listen = ["127.0.0.1:$port"]
$app
replicas = 2
env = { VERSION = "v1", BG_QUICKSTART = "$marker" }
stop_grace = "10s"

[services.web.health]
interval = "200ms"
healthy_threshold = 2
deadline = "30s"

[services.web.deploy]
drain_timeout = "10s"
TOML

say "starting bg-agent ($runtime runtime), config $work/agent.toml"
"$bin/bg-agent" --config "$work/agent.toml" > "$work/agent.log" 2>&1 &
agent_pid=$!
export BG_AGENT="unix://$work/agent.sock"
for _ in $(seq 100); do "$bin/bgctl" status >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/bgctl" status >/dev/null || { cat "$work/agent.log"; exit 1; }

say "first start: the agent deploys the configured spec (v1) by itself"
for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$port/" || { "$bin/bgctl" status web; cat "$work/agent.log"; exit 1; }
"$bin/bgctl" history web

say "a client now sends requests in a loop to http://127.0.0.1:$port/"
( while :; do curl -s -o /dev/null -w '%{http_code} ' --max-time 15 "http://127.0.0.1:$port/" || echo -n 'ERR '; done ) > "$work/codes" 2>/dev/null &
load_pid=$!
sleep 1

if [ "$runtime" = docker ]; then v2=(--image websample:v2 --env VERSION=v2); else v2=(--env VERSION=v2); fi
say "bgctl deploy web ${v2[*]} --promote   (start green, health-check, switch, drain blue, stop it)"
"$bin/bgctl" deploy web "${v2[@]}" --promote
sleep 1
kill "$load_pid"; wait "$load_pid" 2>/dev/null || true; load_pid=""

say "bgctl status web"
"$bin/bgctl" status web

total=$(wc -w < "$work/codes"); ok=$(tr ' ' '\n' < "$work/codes" | grep -c '^200$' || true)
say "client saw $ok OK out of $total requests during the deploy ($((total - ok)) failed)"
say "now serving: $(curl -s "http://127.0.0.1:$port/")"
[ "$ok" -eq "$total" ]
