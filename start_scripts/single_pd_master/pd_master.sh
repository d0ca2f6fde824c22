#!/usr/bin/env bash
# A single PD master, as LightLLM's single_pd_master/pd_master.sh starts it (port 60011, no
# config server; nodes name it with --pd_master_ip). Extra arguments go to the master.
#
#   pd_master.sh <pd_master_ip> [master flags...]
#
# Environment:
#   PYTHON                python3
#   PD_MASTER_PORT        60011
#   MODEL_DIR             the model directory (its tokenizer); default: the master's own
#   PDCTL_ADMIN_TOKEN     bearer token for the master's admin API
set -euo pipefail

if (($# < 1)); then
  echo "usage: $0 <pd_master_ip> [master flags...]" >&2
  exit 2
fi
pd_master_ip=$1
shift

model_args=()
if [[ -n "${MODEL_DIR:-}" ]]; then
  model_args=(--model_dir "$MODEL_DIR")
fi

exec "${PYTHON:-python3}" -m pdmaster --run_mode pd_master "${model_args[@]}" \
  --host "$pd_master_ip" --port "${PD_MASTER_PORT:-60011}" "$@"
