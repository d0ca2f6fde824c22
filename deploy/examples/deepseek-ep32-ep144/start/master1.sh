#!/usr/bin/env bash
# master1 (master) of cluster deepseek
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m pdmaster --host 10.0.0.22 --port 60011 --config_server_host config.deepseek.internal --config_server_port 60088 --lightllm_version v1.1.0 --model_dir /models/DeepSeek-R1
