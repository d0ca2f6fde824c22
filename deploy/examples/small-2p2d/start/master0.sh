#!/usr/bin/env bash
# master0 (master) of cluster small
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m pdmaster --host 10.0.0.21 --port 60011 --config_server_host 10.0.0.11 --config_server_port 60088 --lightllm_version v1.1.0 --model_dir /models/DeepSeek-R1
