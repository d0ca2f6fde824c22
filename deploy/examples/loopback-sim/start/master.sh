#!/usr/bin/env bash
# master (master) of cluster loopback
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m pdmaster --host 127.0.3.2 --port 60011 --config_server_host 127.0.3.1 --config_server_port 60088 --lightllm_version v1.1.0
