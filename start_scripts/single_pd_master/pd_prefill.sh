#!/usr/bin/env bash
# A prefill node under its node agent, as LightLLM's single_pd_master/pd_prefill.sh starts one
# (port 8019, nccl port 2732, tp 8, dp 8, --disable_cudagraph, KV_TRANS_USE_P2P=1, the master at
# <pd_master_ip>:60011). The agent starts the MPS daemon, runs and supervises the engine.
# Agent flags follow the two arguments; engine flags follow a `--`.
#
#   pd_prefill.sh <host> <pd_master_ip> [agent flags...] [-- engine flags...]
#
# Environment:
#   PYTHON                python3
#   ENGINE                lightllm (default) or sim (the simulated engine, no GPU, no MPS)
#   MODEL_DIR             the model directory (required for lightllm)
#   PREFILL_PORT          8019
#   NCCL_PORT             2732
#   TP, DP                8, 8
#   PD_MASTER_PORT        60011
#   LOG_DIR               logs/prefill (the engine's rotating logs)
#   PDCTL_AGENT_TOKEN     bearer token for the agent's API (port: PREFILL_PORT + 1000)
#   PDCTL_ADMIN_TOKEN     bearer token for the master's admin API (drain)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec bash "$here/../pd_node_agent.sh" prefill "$0" "${PREFILL_PORT:-8019}" 2732 pd_master_ip "$@"
