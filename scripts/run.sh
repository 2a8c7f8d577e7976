#!/usr/bin/env bash
# Installs what is missing, builds, and runs the main program. Until qmgrd
# exists that is the system log on this machine's disk: log_bench appends
# durably into ./qmgr-data, then qmgrctl verifies and summarizes a log it
# leaves in ./qmgr-data/log.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
mkdir -p qmgr-data
build/bench/log_bench --dir qmgr-data --seconds 1 --appenders 1 --keep-logs
build/tools/qmgrctl --log-dir qmgr-data/log-1 log verify
build/tools/qmgrctl --log-dir qmgr-data/log-1 log stats
