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

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec bash "$here/pd_node_agent.sh" prefill "$0" "${PREFILL_PORT:-8019}" 2732 config_server_host "$@"
