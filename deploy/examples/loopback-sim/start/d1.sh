#!/usr/bin/env bash
# d1 (decode) of cluster loopback
set -euo pipefail
cd "$(dirname "$0")/.."
# the agent runs (pd-node-agent --dry-run):
#   MOE_MODE=EP LOADWORKER=18 python3 -m node_agents.simengine \
#     --run_mode decode \
#     --host 127.0.2.2 \
#     --port 8121 \
#     --tp 16 \
#     --dp 16 \
#     --nccl_port 12322 \
#     --enable_fa3 \
#     --config_server_host 127.0.3.1 \
#     --config_server_port 60088 \
#     --lightllm_version v1.1.0 \
#     --nnodes 2 \
#     --node_rank 1 \
#     --nccl_host 127.0.2.1 \
#     --lightllm_version v1.1.0 \
#     --time_scale 0.2 \
#     --config_server_poll_s 1 \
#     --pd_reconnect_s 1
exec "${PYTHON:-python3}" -m node_agents --config agents/d1.toml
