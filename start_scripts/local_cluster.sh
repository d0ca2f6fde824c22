#!/usr/bin/env bash
# One-machine PD cluster on the simulated engine, laid out as a real one: a config server,
# 2 PD masters, and 2 prefill + 2 decode nodes, each under its node agent (LightLLM nodes
# refuse 127.0.0.1 as their host, so nodes use 127.0.0.2-5). Every role is started with its
# own script (config_server.sh, pd_master.sh, pd_prefill.sh, pd_decode.sh with ENGINE=sim).
# Waits until both masters see all 4 nodes, sends one real request through each master,
# prints what to try, and stops everything on Ctrl-C. With --once it exits after the answers.
# Every port it needs is checked first: a second run while one is up fails at once, naming
# the port, and never touches the running cluster's logs (LOG_DIR is locked by its run).
#
# LIGHTLLM_VERSIONS (default v1.1.0) runs 2 prefill + 2 decode nodes per LightLLM version,
# e.g. LIGHTLLM_VERSIONS=v1.1.0,v1.2.0 for a mixed cluster (the masters pair nodes within one
# version; hosts 127.0.0.2-5 for the first version, 127.0.0.6-9 for the second, ...).
#
# With --plan CLUSTER_FILE it runs a planned cluster instead (pd-cluster plan, e.g.
# deploy/examples/loopback-sim.toml: multi-node simulated instances on loopback addresses):
# every host's start script from the plan, in order, then one request through each master.
#
# Environment: PYTHON (python3), CONFIG_SERVER_PORT (60088), MASTER_PORTS ("60011 60012"),
#              LOG_DIR (./logs/local_cluster), SIM_ARGS (extra flags for every simulated
#              engine, e.g. "--time_scale 0.5"), PDCTL_STORE / PDCTL_ETCD_ENDPOINTS (the
#              config server's store; default memory).
set -euo pipefail

once=0
plan=""
while (($#)); do
  case $1 in
    --once) once=1 ;;
    --plan)
      plan=${2:?--plan needs a cluster file}
      shift
      ;;
    *)
      echo "usage: local_cluster.sh [--once] [--plan CLUSTER_FILE]" >&2
      exit 2
      ;;
  esac
  shift
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHON=${PYTHON:-python3}
export CONFIG_SERVER_PORT=${CONFIG_SERVER_PORT:-60088}
read -r -a MASTER_PORTS <<< "${MASTER_PORTS:-60011 60012}"
LOG_DIR=${LOG_DIR:-logs/local_cluster}
read -r -a SIM_ARGS <<< "${SIM_ARGS:-}"
IFS=, read -r -a VERSIONS <<< "${LIGHTLLM_VERSIONS:-v1.1.0}"
per_role=$((2 * ${#VERSIONS[@]}))

# host:port pairs every role will listen on: config server, masters, engines, agents and
# the decode engines' KV hand-off port
ports=()
if [[ -n $plan ]]; then  # the plan's: every host's main port, and each agent's (+1000)
  plan_dir=$(mktemp -d)
  trap 'rm -rf "$plan_dir"' EXIT
  "$PYTHON" -m pdcluster plan "$plan" --out "$plan_dir" >/dev/null
  while read -r _ role address port; do
    ports+=("$address:$port")
    [[ $role == prefill || $role == decode ]] && ports+=("$address:$((port + 1000))")
  done <"$plan_dir/hosts.txt"
else
  ports+=("127.0.0.1:$CONFIG_SERVER_PORT")
  for port in "${MASTER_PORTS[@]}"; do
    ports+=("127.0.0.1:$port")
  done
  for k in "${!VERSIONS[@]}"; do
    for i in 0 1; do
      ports+=("127.0.0.$((2 + 4 * k + i)):8019" "127.0.0.$((2 + 4 * k + i)):9019")
      ports+=("127.0.0.$((4 + 4 * k + i)):8121" "127.0.0.$((4 + 4 * k + i)):9121")
      ports+=("127.0.0.$((4 + 4 * k + i)):42000")
    done
  done
fi
taken=$("$PYTHON" -c '
import socket, sys
for pair in sys.argv[1:]:
    host, port = pair.rsplit(":", 1)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            s.bind((host, int(port)))
        except OSError:
            print(pair)
' "${ports[@]}")
if [[ -n "$taken" ]]; then
  echo "local_cluster.sh: in use already (another local cluster?): $(echo "$taken" | tr '\n' ' ')" >&2
  if [[ -n $plan ]]; then
    echo "  stop it first, or change the ports in $plan" >&2
  else
    echo "  stop it first, or set CONFIG_SERVER_PORT / MASTER_PORTS for the ports on 127.0.0.1" >&2
  fi
  exit 1
fi

mkdir -p "$LOG_DIR"
exec {lock}>"$LOG_DIR/.lock"
if ! flock -n "$lock"; then
  echo "local_cluster.sh: $LOG_DIR is in use by another run; set LOG_DIR" >&2
  exit 1
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  [[ -n ${plan_dir:-} ]] && rm -rf "$plan_dir"
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true  # agents stop their engines first
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {  # start NAME COMMAND...: run one role in the background, logging to LOG_DIR/NAME.log
  local name=$1
  shift
  "$@" >"$LOG_DIR/$name.log" 2>&1 &
  pids+=($!)
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds, or fail with logs
  local what=$1 seconds=$2
  shift 2
  local tries=$((seconds * 5))
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then
      return 0
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
  echo "timed out after ${seconds} s waiting for $what; logs in $LOG_DIR:" >&2
  tail -n 20 "$LOG_DIR"/*.log >&2
  exit 1
}

http() {  # http URL [JSON_BODY]: GET (or POST the body), print the answer; fail unless 2xx
  # Python rather than curl, which a fresh machine may not have.
  "$PYTHON" -c '
import sys, urllib.request
data = sys.argv[2].encode() if len(sys.argv) > 2 else None
request = urllib.request.Request(sys.argv[1], data, {"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=30) as reply:
    sys.stdout.write(reply.read().decode())
' "$@"
}

all_nodes_joined() {  # all_nodes_joined URL: the master at URL sees every node
  http "$1/readiness" | grep -q "\"prefill_nodes\":$per_role,\"decode_nodes\":$per_role"
}

nodes_joined() {  # nodes_joined URL P D: the master at URL sees P prefill + D decode nodes
  http "$1/readiness" | grep -q "\"prefill_nodes\":$2,\"decode_nodes\":$3"
}

run_plan() {  # run_plan CLUSTER_FILE: start every host of the plan, then ask each master
  local out="$LOG_DIR/plan" name role address port
  "$PYTHON" -m pdcluster plan "$1" --out "$out"
  local masters=() prefill=0 decode=0
  while read -r name role address port; do
    case $role in
      config_server)
        start "$name" bash "$out/start/$name.sh"
        wait_for "$name ($role)" 30 http "http://$address:$port/readiness"
        ;;
      master)
        start "$name" bash "$out/start/$name.sh"
        wait_for "$name ($role)" 30 http "http://$address:$port/health"
        masters+=("$address:$port")
        ;;
      prefill | decode)
        start "$name" bash "$out/start/$name.sh"
        [[ $role == prefill ]] && prefill=$((prefill + 1)) || decode=$((decode + 1))
        ;;
    esac
  done <"$out/hosts.txt"
  for master in "${masters[@]}"; do
    wait_for "$prefill prefill + $decode decode ranks on $master" 90 \
      nodes_joined "http://$master" "$prefill" "$decode"
  done
  local request='{"inputs": "What is AI?", "parameters": {"max_new_tokens": 16}}'
  echo "planned cluster ready (plan in $out): masters ${masters[*]}"
  for master in "${masters[@]}"; do
    echo -n "answer from the master at $master:  "
    http "http://$master/generate" "$request"
    echo
  done
}

if [[ -n $plan ]]; then
  run_plan "$plan"
  ((once)) && exit 0
  echo "Logs in $LOG_DIR. Press Ctrl-C to stop the cluster."
  wait -n "${pids[@]}" || true
  echo "a cluster process exited; stopping" >&2
  exit 1
fi

config_url="http://127.0.0.1:$CONFIG_SERVER_PORT"
start config_server bash "$here/config_server.sh" 127.0.0.1
wait_for "the config server" 30 http "$config_url/readiness"

for i in "${!MASTER_PORTS[@]}"; do
  start "master$i" env PD_MASTER_PORT="${MASTER_PORTS[$i]}" \
    bash "$here/pd_master.sh" 127.0.0.1 127.0.0.1
done
for port in "${MASTER_PORTS[@]}"; do
  wait_for "the master on port $port" 30 http "http://127.0.0.1:$port/health"
done

for k in "${!VERSIONS[@]}"; do
  version=${VERSIONS[$k]}
  for i in 0 1; do
    n=$((2 * k + i))
    prefill_host="127.0.0.$((2 + 4 * k + i))"
    decode_host="127.0.0.$((4 + 4 * k + i))"
    start "agent-prefill$n" env ENGINE=sim LIGHTLLM_VERSION="$version" \
      LOG_DIR="$LOG_DIR/prefill$n" \
      bash "$here/pd_prefill.sh" "$prefill_host" 127.0.0.1 --api-host "$prefill_host" \
      --startsecs 1 -- --config_server_poll_s 2 "${SIM_ARGS[@]}"
    start "agent-decode$n" env ENGINE=sim LIGHTLLM_VERSION="$version" \
      LOG_DIR="$LOG_DIR/decode$n" \
      bash "$here/pd_decode.sh" "$decode_host" 127.0.0.1 --api-host "$decode_host" \
      --startsecs 1 -- --config_server_poll_s 2 "${SIM_ARGS[@]}"
  done
done
for port in "${MASTER_PORTS[@]}"; do
  wait_for "$((2 * per_role)) nodes on the master on port $port" 60 all_nodes_joined \
    "http://127.0.0.1:$port"
done

request='{"inputs": "What is AI?", "parameters": {"max_new_tokens": 16}}'
echo "cluster ready: config server $config_url, masters on 127.0.0.1:${MASTER_PORTS[*]},"
for k in "${!VERSIONS[@]}"; do
  echo "  LightLLM ${VERSIONS[$k]}: prefill agents 127.0.0.$((2 + 4 * k))-$((3 + 4 * k))" \
    "(engine :8019, agent :9019), decode agents 127.0.0.$((4 + 4 * k))-$((5 + 4 * k))" \
    "(engine :8121, agent :9121)"
done
echo "request: $request"
for port in "${MASTER_PORTS[@]}"; do
  echo -n "answer from the master on port $port:  "
  http "http://127.0.0.1:$port/generate" "$request"
  echo
done
((once)) && exit 0

cat <<EOT

Try it:
  curl http://127.0.0.1:${MASTER_PORTS[0]}/generate_stream -H 'Content-Type: application/json' -d '$request'
  curl $config_url/v1/nodes          # every node: role, state, masters it is connected to
  curl $config_url/v1/masters
  curl http://127.0.0.2:9019/status   # a node agent
  curl -X POST http://127.0.0.2:9019/drain
Logs in $LOG_DIR. Press Ctrl-C to stop the cluster.
EOT
wait -n "${pids[@]}" || true
echo "a cluster process exited; stopping" >&2
