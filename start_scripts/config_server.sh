#!/usr/bin/env bash
# The config server of multi-PD-master mode, as LightLLM's multi_pd_master/config_server.sh
# starts it (port 60088). Extra arguments go to the config server.
#
#   config_server.sh <config_server_host> [config server flags...]
#
# Environment:
#   PYTHON                python3
#   CONFIG_SERVER_PORT    60088
#   PDCTL_STORE           memory (default; one replica) or etcd (replicas share etcd)
#   PDCTL_ETCD_ENDPOINTS  host:port,... of etcd (with PDCTL_STORE=etcd)
#   PDCTL_ADMIN_TOKEN     bearer token for the /v1 listings
#   PDCTL_REGISTER_TOKEN  bearer token for /v1 registrations
#   PDCTL_ALLOW_CIDR      networks allowed on LightLLM's endpoints, e.g. 10.0.0.0/8
set -euo pipefail

if (($# < 1)); then
  echo "usage: $0 <config_server_host> [config server flags...]" >&2
  exit 2
fi
config_server_host=$1
shift

exec "${PYTHON:-python3}" -m config_server --run_mode config_server \
  --config_server_host "$config_server_host" \
  --config_server_port "${CONFIG_SERVER_PORT:-60088}" "$@"
