#!/usr/bin/env bash
# cs0 (config_server) of cluster small
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m config_server --config_server_host 10.0.0.11 --config_server_port 60088 --lightllm_version v1.1.0
