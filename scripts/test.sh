#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v etcd >/dev/null 2>&1 || [[ -x /usr/bin/etcd ]] || need_apt+=(etcd-server)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if ((${#need_apt[@]})) && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
python3 -m ruff check .
python3 -m mypy  # the packages, strict: see [tool.mypy] in pyproject.toml
python3 -m pytest -q "$@"
