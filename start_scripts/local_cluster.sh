#!/usr/bin/env bash
# One-machine PD cluster on the simulated engine: 1 master + 2 prefill + 2 decode nodes on
# loopback (LightLLM nodes refuse 127.0.0.1 as their host, so nodes use 127.0.0.2-5).
# Waits until the master is ready, sends one real request, prints a curl line to try, and
# stops everything on Ctrl-C. With --once it exits after the first answer.
#
# Environment: PYTHON (python3), MASTER_PORT (60011), LOG_DIR (./logs/local_cluster),
#              SIM_ARGS (extra flags for every simulated node, e.g. "--time_scale 0.5").
set -euo pipefail

once=0
[[ "${1:-}" == "--once" ]] && once=1

PYTHON=${PYTHON:-python3}
MASTER_PORT=${MASTER_PORT:-60011}
LOG_DIR=${LOG_DIR:-logs/local_cluster}
read -r -a SIM_ARGS <<< "${SIM_ARGS:-}"
mkdir -p "$LOG_DIR"

pids=()
cleanup() {
  trap - INT TERM EXIT
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {  # start NAME ARGS...: run one role in the background, logging to LOG_DIR/NAME.log
  local name=$1
  shift
  "$PYTHON" "$@" >"$LOG_DIR/$name.log" 2>&1 &
  pids+=($!)
}

start master -m pdmaster --host 127.0.0.1 --port "$MASTER_PORT"
for i in 0 1; do
  start "prefill$i" -m node_agents.simengine --run_mode prefill --host "127.0.0.$((2 + i))" \
    --port 8019 --pd_master_ip 127.0.0.1 --pd_master_port "$MASTER_PORT" --pd_reconnect_s 1 \
    "${SIM_ARGS[@]}"
  start "decode$i" -m node_agents.simengine --run_mode decode --host "127.0.0.$((4 + i))" \
    --port 8121 --pd_decode_rpyc_port 42000 --pd_master_ip 127.0.0.1 \
    --pd_master_port "$MASTER_PORT" --pd_reconnect_s 1 "${SIM_ARGS[@]}"
done

url="http://127.0.0.1:$MASTER_PORT"
for _ in $(seq 1 150); do
  if curl -fsS "$url/readiness" 2>/dev/null | grep -q '"prefill_nodes":2,"decode_nodes":2'; then
    break
  fi
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "a cluster process exited early; logs in $LOG_DIR:" >&2
      tail -n 20 "$LOG_DIR"/*.log >&2
      exit 1
    fi
  done
  sleep 0.2
done
if ! curl -fsS "$url/readiness"; then
  echo "cluster not ready after 30 s; logs in $LOG_DIR" >&2
  exit 1
fi
echo

request='{"inputs": "What is AI?", "parameters": {"max_new_tokens": 16}}'
echo "cluster ready: master $url, prefill 127.0.0.2-3:8019, decode 127.0.0.4-5:8121"
echo "request: $request"
echo -n "answer:  "
curl -fsS "$url/generate" -H 'Content-Type: application/json' -d "$request"
echo
((once)) && exit 0

cat <<EOT

Try it:
  curl $url/generate_stream -H 'Content-Type: application/json' -d '$request'
Logs in $LOG_DIR. Press Ctrl-C to stop the cluster.
EOT
wait -n "${pids[@]}" || true
echo "a cluster process exited; stopping" >&2
