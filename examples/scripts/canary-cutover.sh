#!/usr/bin/env bash
# Canary cut-over a CI job can run: deploy the new version next to the old
# one, send it 10% then 50% of new clients with a check after each step, then
# promote. On any failure the new color is aborted (or, once promoted, rolled
# back) and the script exits non-zero.
#
#   IMAGE=websample:v2 SERVICE_URL=http://127.0.0.1:8080/ examples/scripts/canary-cutover.sh
#   VERSION=v2 SERVICE_URL=http://127.0.0.1:8080/ examples/scripts/canary-cutover.sh   # process runtime
#
# Environment:
#   BGCTL        the bgctl binary (default: bgctl)
#   BG_AGENT     the agent address, read by bgctl (default: its socket)
#   BG_TOKEN     the agent token, read by bgctl (TCP agents only)
#   SERVICE      the service to deploy (default: web)
#   IMAGE        the image to deploy (docker runtime), and/or
#   VERSION      passed to the app as --env VERSION=... (process runtime)
#   SERVICE_URL  a URL of the service, through its proxy (required)
#   REQUESTS     requests per check (default: 100)
#   MAX_ERRORS   non-2xx answers tolerated per check (default: 0)
#   SETTLE       seconds to wait after each weight change (default: 2)
set -euo pipefail

BGCTL=${BGCTL:-bgctl}
SERVICE=${SERVICE:-web}
REQUESTS=${REQUESTS:-100}
MAX_ERRORS=${MAX_ERRORS:-0}
SETTLE=${SETTLE:-2}
: "${SERVICE_URL:?set SERVICE_URL to a URL of the service, e.g. http://127.0.0.1:8080/}"

log() { printf '%s canary-cutover: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

deploy_args=()
[ -n "${IMAGE:-}" ] && deploy_args+=(--image "$IMAGE")
[ -n "${VERSION:-}" ] && deploy_args+=(--env "VERSION=$VERSION")
if [ ${#deploy_args[@]} -eq 0 ]; then
  log "set IMAGE (docker) or VERSION (process runtime) to say what to deploy"
  exit 2
fi

# Where we are, so a failure undoes the right thing.
stage=none

undo() {
  local code=$?
  trap - EXIT
  [ "$code" -eq 0 ] && exit 0
  case "$stage" in
    deployed)
      log "FAILED (exit $code): aborting the new color of $SERVICE; traffic goes back to the old one"
      "$BGCTL" abort "$SERVICE" || log "abort failed too: check 'bgctl status $SERVICE'"
      ;;
    promoted)
      log "FAILED (exit $code) after promote: rolling $SERVICE back"
      "$BGCTL" rollback "$SERVICE" || log "rollback failed too: check 'bgctl status $SERVICE'"
      ;;
    *)
      log "FAILED (exit $code) before anything changed"
      ;;
  esac
  exit "$code"
}
trap undo EXIT

# The service must report no unhealthy replica, and REQUESTS requests to
# SERVICE_URL must get at most MAX_ERRORS non-2xx answers (or no answer).
check() {
  local step=$1 status errors=0 code i
  sleep "$SETTLE"
  status=$("$BGCTL" status "$SERVICE" --output json)
  if grep -q '"health":"unhealthy"' <<<"$status"; then
    log "check at $step: $SERVICE has an unhealthy replica"
    return 1
  fi
  for ((i = 0; i < REQUESTS; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$SERVICE_URL" || true)
    case "$code" in
      2??) ;;
      *) errors=$((errors + 1)) ;;
    esac
  done
  log "check at $step: $errors of $REQUESTS requests failed (limit $MAX_ERRORS)"
  [ "$errors" -le "$MAX_ERRORS" ]
}

log "deploying ${deploy_args[*]} to $SERVICE (no traffic yet)"
"$BGCTL" deploy "$SERVICE" "${deploy_args[@]}"
stage=deployed

for weight in 10 50; do
  log "sending ${weight}% of new clients to the new color"
  "$BGCTL" canary "$SERVICE" --weight "$weight"
  check "${weight}%"
done

log "promoting $SERVICE"
stage=promoted
"$BGCTL" promote "$SERVICE"
check "100%"

stage=done
log "done: $SERVICE runs ${deploy_args[*]}"
