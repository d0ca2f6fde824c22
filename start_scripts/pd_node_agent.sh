#!/usr/bin/env bash
# What pd_prefill.sh and pd_decode.sh share: start a node agent for one role. Not meant to be
# run by hand; each role's script passes its name, its usage name and its default ports.
#
#   pd_node_agent.sh <role> <script name> <port> <nccl port> <masters> <host> <masters_host> \
#     [agent flags...] [-- engine flags...]
#
# <masters> is config_server_host (multi-master mode: <masters_host> is the config server)
# or pd_master_ip (LightLLM's single_pd_master scripts: <masters_host> is the master).
set -euo pipefail

role=$1
script=$2
port=$3
nccl_port=$4
masters=$5
shift 5
if (($# < 2)); then
  echo "usage: $script <host> <$masters> [agent flags...] [-- engine flags...]" >&2
  exit 2
fi
host=$1
masters_host=$2
shift 2
engine=${ENGINE:-lightllm}

args=(--role "$role" --engine "$engine" --host "$host"
  --port "$port" --nccl_port "${NCCL_PORT:-$nccl_port}"
  --tp "${TP:-8}" --dp "${DP:-8}"
  --log_dir "${LOG_DIR:-logs/$role}")
if [[ -n "${MODEL_DIR:-}" ]]; then
  args+=(--model_dir "$MODEL_DIR")
elif [[ "$engine" == lightllm ]]; then
  echo "$script: set MODEL_DIR to the model directory (or ENGINE=sim)" >&2
  exit 2
fi
if [[ "$masters" == pd_master_ip ]]; then
  args+=(--pd_master_ip "$masters_host" --pd_master_port "${PD_MASTER_PORT:-60011}")
else
  args+=(--config_server "$masters_host:${CONFIG_SERVER_PORT:-60088}")
  if [[ -n "${PD_MASTER:-}" ]]; then
    args+=(--pd_master "$PD_MASTER")
  fi
fi

exec "${PYTHON:-python3}" -m node_agents "${args[@]}" "$@"
