#!/usr/bin/env bash
# p1 (prefill) of cluster loopback
set -euo pipefail
cd "$(dirname "$0")/.."
# the agent runs (pd-node-agent --dry-run):
#   MOE_MODE=EP LOADWORKER=18 python3 -m node_agents.simengine \
#     --run_mode prefill \
#     --host 127.0.1.2 \
#     --port 8019 \
#     --tp 16 \
#     --dp 16 \
#     --nccl_port 2732 \
#     --enable_fa3 \
#     --disable_cudagraph \
#     --config_server_host 127.0.3.1 \
#     --config_server_port 60088 \
#     --lightllm_version v1.1.0 \
#     --nnodes 2 \
#     --node_rank 1 \
#     --nccl_host 127.0.1.1 \
#     --lightllm_version v1.1.0 \
#     --time_scale 0.2 \
#     --config_server_poll_s 1 \
#     --pd_reconnect_s 1
exec "${PYTHON:-python3}" -m node_agents --config agents/p1.toml
