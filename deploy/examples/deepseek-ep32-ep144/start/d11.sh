#!/usr/bin/env bash
# d11 (decode) of cluster deepseek
set -euo pipefail
cd "$(dirname "$0")/.."
# the agent runs (pd-node-agent --dry-run):
#   nvidia-cuda-mps-control -d
#   MOE_MODE=EP LOADWORKER=18 python3 -m lightllm.server.api_server \
#     --model_dir /models/DeepSeek-R1 \
#     --run_mode decode \
#     --host 10.0.2.22 \
#     --port 8121 \
#     --tp 144 \
#     --dp 144 \
#     --nccl_port 12322 \
#     --enable_fa3 \
#     --config_server_host config.deepseek.internal \
#     --config_server_port 60088 \
#     --nnodes 18 \
#     --node_rank 11 \
#     --nccl_host 10.0.2.11
exec "${PYTHON:-python3}" -m node_agents --config agents/d11.toml
