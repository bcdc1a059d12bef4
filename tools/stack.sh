#!/usr/bin/env bash
# The local coalmine stack on fixed loopback ports, in the background:
#   Envoy + filter  127.0.0.1:10000 (admin 9901)
#   controller      127.0.0.1:8700
#   model v1        127.0.0.1:8501  (baseline)
#   model v2        127.0.0.1:8502  (the new model: fragile on malformed input)
#   model v3        127.0.0.1:8503  (retrained on another split)
#
#   tools/stack.sh up | down | status
#
# Logs and pid files live in .coalmine/; the operator token is taken from
# COALMINE_OPERATOR_TOKEN or generated into .coalmine/operator-token, the
# feedback-only token (for label pipelines) into .coalmine/feedback-token. Models
# are trained into .coalmine/models/ on first use. COALMINE_DB chooses the
# controller's database (default .coalmine/coalmine.db). COALMINE_PROFILE names
# the cargo profile whose binaries and filter run (default release; `make up`
# and `make demo` build and pass `quick`).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=.coalmine
PROFILE=${COALMINE_PROFILE:-release}
BIN=target/$PROFILE
WASM=target/wasm32-wasip1/$PROFILE/coalmine_filter.wasm
SHIPPED_WASM=target/wasm32-wasip1/release/coalmine_filter.wasm
DATA=data/uci-heart-cleveland/cleveland.tsv
DB=${COALMINE_DB:-$DIR/coalmine.db}
# Must match the controller block of envoy/envoy.yaml (a local-only token).
SYNC_TOKEN=coalmine-local-sync-token
SERVICES=(models-v1 models-v2 models-v3 controller envoy)
declare -A PORT=([models-v1]=8501 [models-v2]=8502 [models-v3]=8503 [controller]=8700 [envoy]=10000)
declare -A READY=(
  [models-v1]=http://127.0.0.1:8501/healthz
  [models-v2]=http://127.0.0.1:8502/healthz
  [models-v3]=http://127.0.0.1:8503/healthz
  [controller]=http://127.0.0.1:8700/healthz
  [envoy]=http://127.0.0.1:9901/ready
)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'stack: %s\n' "$*" >&2; exit 1; }

running() { # service → true if its recorded process is alive
  local pid
  pid=$(cat "$DIR/$1.pid" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

secret() { # file → its token, generated on first use
  [ -s "$1" ] || { head -c 24 /dev/urandom | base64 | tr -d '/+=\n' > "$1"; chmod 600 "$1"; }
  cat "$1"
}

start() { # service, command...
  local name=$1; shift
  setsid "$@" >"$DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/$name.pid"
}

wait_ready() { # service
  local deadline=$((SECONDS + 30))
  until curl -sf -o /dev/null "${READY[$1]}"; do
    running "$1" || die "$1 exited; see $DIR/$1.log: $(tail -n 3 "$DIR/$1.log" | tr '\n' ' ')"
    [ $SECONDS -lt $deadline ] || die "$1 not ready after 30 s; see $DIR/$1.log"
    sleep 0.1
  done
}

up() {
  for f in "$BIN/coalmine-controller" "$BIN/coalmine-models-server" "$WASM" .venv/bin/envoy; do
    [ -e "$f" ] || die "$f is missing; run \`make up\` (it builds what the stack runs)"
  done
  mkdir -p "$DIR/models"
  for s in "${SERVICES[@]}"; do
    if running "$s"; then die "$s is already running (pid $(cat "$DIR/$s.pid")); \`make down\` first"; fi
    if port_busy "${PORT[$s]}"; then die "port ${PORT[$s]} (for $s) is in use by another program"; fi
  done
  port_busy 9901 && die "port 9901 (Envoy admin) is in use by another program"

  declare -A HOW=([v1]="" [v2]="--underfit" [v3]="--seed 7")
  for v in v1 v2 v3; do
    if [ ! -s "$DIR/models/$v.json" ]; then
      say "training $v"
      # shellcheck disable=SC2086 # HOW holds separate flags
      "$BIN/coalmine-models-server" train --data "$DATA" --out "$DIR/models/$v.json" --version "$v" ${HOW[$v]}
    fi
  done

  local operator_token models_token feedback_token
  if [ -n "${COALMINE_OPERATOR_TOKEN:-}" ]; then
    operator_token=$COALMINE_OPERATOR_TOKEN
    printf '%s' "$operator_token" > "$DIR/operator-token"; chmod 600 "$DIR/operator-token"
  else
    operator_token=$(secret "$DIR/operator-token")
  fi
  models_token=$(secret "$DIR/models-admin-token")
  feedback_token=$(secret "$DIR/feedback-token")

  say "starting the stack (logs in $DIR/)"
  COALMINE_MODELS_ADMIN_TOKEN=$models_token start models-v1 \
    "$BIN/coalmine-models-server" serve --model "$DIR/models/v1.json" --listen 127.0.0.1:8501
  COALMINE_MODELS_ADMIN_TOKEN=$models_token start models-v2 \
    "$BIN/coalmine-models-server" serve --model "$DIR/models/v2.json" --listen 127.0.0.1:8502 --crash-on-malformed
  COALMINE_MODELS_ADMIN_TOKEN=$models_token start models-v3 \
    "$BIN/coalmine-models-server" serve --model "$DIR/models/v3.json" --listen 127.0.0.1:8503
  COALMINE_OPERATOR_TOKEN=$operator_token COALMINE_SYNC_TOKEN=$SYNC_TOKEN \
    COALMINE_FEEDBACK_TOKEN=$feedback_token start controller \
    "$BIN/coalmine-controller" --listen 127.0.0.1:8700 --db "$DB"
  # The shipped config, pointed at the filter of the profile built.
  sed "s#$SHIPPED_WASM#$WASM#" envoy/envoy.yaml > "$DIR/envoy.yaml"
  grep -q "filename: $WASM" "$DIR/envoy.yaml" || die "envoy/envoy.yaml does not load $SHIPPED_WASM"
  start envoy .venv/bin/envoy -c "$DIR/envoy.yaml" --disable-hot-restart --log-level info
  for s in "${SERVICES[@]}"; do wait_ready "$s"; done
  cat <<EOT
    model v1      http://127.0.0.1:8501   (baseline)
    model v2      http://127.0.0.1:8502   (fragile: 500 on malformed input)
    model v3      http://127.0.0.1:8503   (retrained on another split)
    controller    http://127.0.0.1:8700   (database $DB)
    envoy         http://127.0.0.1:10000  (admin http://127.0.0.1:9901)
    operator token in $DIR/operator-token; feedback token in $DIR/feedback-token;
    model fault switch token in $DIR/models-admin-token
    stop it with: make down
EOT
}

down() {
  # Every service is asked to stop at once (each takes a moment to close its
  # connections), then waited for; one that lingers past 10 s is killed.
  local any="" pids=() names=()
  for s in envoy controller models-v3 models-v2 models-v1; do
    [ -f "$DIR/$s.pid" ] || continue
    local pid; pid=$(cat "$DIR/$s.pid")
    if kill -0 "$pid" 2>/dev/null; then
      any=1
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid"); names+=("$s")
    fi
    rm -f "$DIR/$s.pid"
  done
  local deadline=$((SECONDS + 10)) i
  for i in "${!pids[@]}"; do
    local pid=${pids[$i]}
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; }
    echo "    stopped ${names[$i]} (pid $pid)"
  done
  [ -n "$any" ] || echo "    nothing was running"
  local busy=""
  for p in 10000 9901 8700 8501 8502 8503; do port_busy "$p" && busy+=" $p"; done
  [ -z "$busy" ] || die "still listening after make down:$busy (not started by make up?)"
}

status() {
  for s in "${SERVICES[@]}"; do
    if running "$s"; then echo "    $s: running (pid $(cat "$DIR/$s.pid"), port ${PORT[$s]})"; else echo "    $s: stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
