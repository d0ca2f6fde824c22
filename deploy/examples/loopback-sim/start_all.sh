#!/usr/bin/env bash
# Starts every host's command over SSH, in order: config servers, masters, agents.
# The plan directory must be at the same path on every host (PLAN_DIR).
# shellcheck disable=SC2029  # PLAN_DIR is meant to expand here, quoted for the remote
set -euo pipefail
PLAN_DIR=${PLAN_DIR:-$(cd "$(dirname "$0")" && pwd)}
dir=$(printf %q "$PLAN_DIR")
ssh 127.0.3.1 "cd $dir && nohup bash start/cs.sh > logs-cs.txt 2>&1 &"
ssh 127.0.3.2 "cd $dir && nohup bash start/master.sh > logs-master.txt 2>&1 &"
ssh 127.0.1.1 "cd $dir && nohup bash start/p0.sh > logs-p0.txt 2>&1 &"
ssh 127.0.1.2 "cd $dir && nohup bash start/p1.sh > logs-p1.txt 2>&1 &"
ssh 127.0.2.1 "cd $dir && nohup bash start/d0.sh > logs-d0.txt 2>&1 &"
ssh 127.0.2.2 "cd $dir && nohup bash start/d1.sh > logs-d1.txt 2>&1 &"
