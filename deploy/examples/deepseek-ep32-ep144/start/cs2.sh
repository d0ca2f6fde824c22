#!/usr/bin/env bash
# cs2 (config_server) of cluster deepseek
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m config_server --config_server_host 10.0.0.13 --config_server_port 60088 --lightllm_version v1.1.0 --store etcd --etcd-endpoints 10.0.0.31:2379,10.0.0.32:2379,10.0.0.33:2379
