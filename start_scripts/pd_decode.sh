#!/usr/bin/env bash
# A decode node under its node agent, as LightLLM's multi_pd_master/pd_decode.sh starts one
# (port 8121, nccl port 12322, tp 8, dp 8, config server on port 60088). The agent starts the
# MPS daemon, runs and supervises the engine, and registers the node with the config server.
# Agent flags follow the two arguments; engine flags follow a `--`.
#
#   pd_decode.sh <host> <config_server_host> [agent flags...] [-- engine flags...]
#
# Environment:
#   PYTHON                python3
#   ENGINE                lightllm (default) or sim (the simulated engine, no GPU, no MPS)
#   MODEL_DIR             the model directory (required for lightllm)
#   DECODE_PORT           8121
#   NCCL_PORT             12322
#   TP, DP                8, 8
#   CONFIG_SERVER_PORT    60088
#   PD_MASTER             ip:port of a single master (instead of the config server's masters)
#   LOG_DIR               logs/decode (the engine's rotating logs)
#   PDCTL_AGENT_TOKEN     bearer token for the agent's API (port: DECODE_PORT + 1000)
#   PDCTL_REGISTER_TOKEN  bearer token for the config server's /v1 registration
#   PDCTL_ADMIN_TOKEN     bearer token for the masters' admin API (drain)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec bash "$here/pd_node_agent.sh" decode "$0" "${DECODE_PORT:-8121}" 12322 config_server_host "$@"
