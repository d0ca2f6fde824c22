#!/usr/bin/env bash
# A prefill node under its node agent, as LightLLM's multi_pd_master/pd_prefill.sh starts one
# (port 8019, nccl port 2732, tp 8, dp 8, config server on port 60088). The agent starts the
# MPS daemon, runs and supervises the engine, and registers the node with the config server.
# Agent flags follow the two arguments; engine flags follow a `--`.
#
#   pd_prefill.sh <host> <config_server_host> [agent flags...] [-- engine flags...]
#
# Environment:
#   PYTHON                python3
#   ENGINE                lightllm (default) or sim (the simulated engine, no GPU, no MPS)
#   MODEL_DIR             the model directory (required for lightllm)
#   PREFILL_PORT          8019
#   NCCL_PORT             2732
#   TP, DP                8, 8
#   CONFIG_SERVER_PORT    60088
#   PD_MASTER             ip:port of a single master (instead of the config server's masters)
#   LOG_DIR               logs/prefill (the engine's rotating logs)
#   PDCTL_AGENT_TOKEN     bearer token for the agent's API (port: PREFILL_PORT + 1000)
#   PDCTL_REGISTER_TOKEN  bearer token for the config server's /v1 registration
#   PDCTL_ADMIN_TOKEN     bearer token for the masters' admin API (drain)
set -euo pipefail

if (($# < 2)); then
  echo "usage: $0 <host> <config_server_host> [agent flags...] [-- engine flags...]" >&2
  exit 2
fi
host=$1
config_server_host=$2
shift 2
engine=${ENGINE:-lightllm}

args=(--role prefill --engine "$engine" --host "$host"
  --port "${PREFILL_PORT:-8019}" --nccl_port "${NCCL_PORT:-2732}"
  --tp "${TP:-8}" --dp "${DP:-8}"
  --config_server "$config_server_host:${CONFIG_SERVER_PORT:-60088}"
  --log_dir "${LOG_DIR:-logs/prefill}")
if [[ -n "${MODEL_DIR:-}" ]]; then
  args+=(--model_dir "$MODEL_DIR")
elif [[ "$engine" == lightllm ]]; then
  echo "$0: set MODEL_DIR to the model directory (or ENGINE=sim)" >&2
  exit 2
fi
if [[ -n "${PD_MASTER:-}" ]]; then
  args+=(--pd_master "$PD_MASTER")
fi

exec "${PYTHON:-python3}" -m node_agents "${args[@]}" "$@"
