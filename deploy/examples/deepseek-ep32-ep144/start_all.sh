#!/usr/bin/env bash
# Starts every host's command over SSH, in order: config servers, masters, agents.
# The plan directory must be at the same path on every host (PLAN_DIR).
# shellcheck disable=SC2029  # PLAN_DIR is meant to expand here, quoted for the remote
set -euo pipefail
PLAN_DIR=${PLAN_DIR:-$(cd "$(dirname "$0")" && pwd)}
dir=$(printf %q "$PLAN_DIR")
ssh 10.0.0.11 "cd $dir && nohup bash start/cs0.sh > logs-cs0.txt 2>&1 &"
ssh 10.0.0.12 "cd $dir && nohup bash start/cs1.sh > logs-cs1.txt 2>&1 &"
ssh 10.0.0.13 "cd $dir && nohup bash start/cs2.sh > logs-cs2.txt 2>&1 &"
ssh 10.0.0.21 "cd $dir && nohup bash start/master0.sh > logs-master0.txt 2>&1 &"
ssh 10.0.0.22 "cd $dir && nohup bash start/master1.sh > logs-master1.txt 2>&1 &"
ssh 10.0.1.11 "cd $dir && nohup bash start/p0.sh > logs-p0.txt 2>&1 &"
ssh 10.0.1.12 "cd $dir && nohup bash start/p1.sh > logs-p1.txt 2>&1 &"
ssh 10.0.1.13 "cd $dir && nohup bash start/p2.sh > logs-p2.txt 2>&1 &"
ssh 10.0.1.14 "cd $dir && nohup bash start/p3.sh > logs-p3.txt 2>&1 &"
ssh 10.0.2.11 "cd $dir && nohup bash start/d0.sh > logs-d0.txt 2>&1 &"
ssh 10.0.2.12 "cd $dir && nohup bash start/d1.sh > logs-d1.txt 2>&1 &"
ssh 10.0.2.13 "cd $dir && nohup bash start/d2.sh > logs-d2.txt 2>&1 &"
ssh 10.0.2.14 "cd $dir && nohup bash start/d3.sh > logs-d3.txt 2>&1 &"
ssh 10.0.2.15 "cd $dir && nohup bash start/d4.sh > logs-d4.txt 2>&1 &"
ssh 10.0.2.16 "cd $dir && nohup bash start/d5.sh > logs-d5.txt 2>&1 &"
ssh 10.0.2.17 "cd $dir && nohup bash start/d6.sh > logs-d6.txt 2>&1 &"
ssh 10.0.2.18 "cd $dir && nohup bash start/d7.sh > logs-d7.txt 2>&1 &"
ssh 10.0.2.19 "cd $dir && nohup bash start/d8.sh > logs-d8.txt 2>&1 &"
ssh 10.0.2.20 "cd $dir && nohup bash start/d9.sh > logs-d9.txt 2>&1 &"
ssh 10.0.2.21 "cd $dir && nohup bash start/d10.sh > logs-d10.txt 2>&1 &"
ssh 10.0.2.22 "cd $dir && nohup bash start/d11.sh > logs-d11.txt 2>&1 &"
ssh 10.0.2.23 "cd $dir && nohup bash start/d12.sh > logs-d12.txt 2>&1 &"
ssh 10.0.2.24 "cd $dir && nohup bash start/d13.sh > logs-d13.txt 2>&1 &"
ssh 10.0.2.25 "cd $dir && nohup bash start/d14.sh > logs-d14.txt 2>&1 &"
ssh 10.0.2.26 "cd $dir && nohup bash start/d15.sh > logs-d15.txt 2>&1 &"
ssh 10.0.2.27 "cd $dir && nohup bash start/d16.sh > logs-d16.txt 2>&1 &"
ssh 10.0.2.28 "cd $dir && nohup bash start/d17.sh > logs-d17.txt 2>&1 &"
