#!/usr/bin/env bash
# A PD master in multi-PD-master mode, as LightLLM's multi_pd_master/pd_master_1.sh starts it
# (port 60011, config server on port 60088). It registers with the config server, and nodes
# find it there. Extra arguments go to the master.
#
#   pd_master.sh <host> <config_server_host> [master flags...]
#
# Environment:
#   PYTHON                python3
#   PD_MASTER_PORT        60011 (a second master on the same host: 60012)
#   CONFIG_SERVER_PORT    60088
#   MODEL_DIR             the model directory (its tokenizer); default: the master's own
#   PDCTL_REGISTER_TOKEN  bearer token for the config server's /v1 registration
set -euo pipefail

if (($# < 2)); then
  echo "usage: $0 <host> <config_server_host> [master flags...]" >&2
  exit 2
fi
host=$1
config_server_host=$2
shift 2

model_args=()
if [[ -n "${MODEL_DIR:-}" ]]; then
  model_args=(--model_dir "$MODEL_DIR")
fi

exec "${PYTHON:-python3}" -m pdmaster --run_mode pd_master "${model_args[@]}" \
  --host "$host" --port "${PD_MASTER_PORT:-60011}" \
  --config_server_host "$config_server_host" \
  --config_server_port "${CONFIG_SERVER_PORT:-60088}" "$@"
