#!/usr/bin/env bash
# cs (config_server) of cluster loopback
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m config_server --config_server_host 127.0.3.1 --config_server_port 60088 --lightllm_version v1.1.0
