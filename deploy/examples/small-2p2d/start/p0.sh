#!/usr/bin/env bash
# p0 (prefill) of cluster small
set -euo pipefail
cd "$(dirname "$0")/.."
# the agent runs (pd-node-agent --dry-run):
#   nvidia-cuda-mps-control -d
#   MOE_MODE=EP LOADWORKER=18 python3 -m lightllm.server.api_server \
#     --model_dir /models/DeepSeek-R1 \
#     --run_mode prefill \
#     --host 10.0.1.11 \
#     --port 8019 \
#     --tp 8 \
#     --dp 8 \
#     --nccl_port 2732 \
#     --enable_fa3 \
#     --disable_cudagraph \
#     --config_server_host 10.0.0.11 \
#     --config_server_port 60088
exec "${PYTHON:-python3}" -m node_agents --config agents/p0.toml
