#!/usr/bin/env bash
# Installs what is missing, builds, and runs the queue manager: qmgrd on the
# data directory ./qmgr-data (created on first start, restarted from after
# that), serving on 127.0.0.1:7430 until Ctrl-C or SIGTERM (a normal
# shutdown). Extra arguments go to qmgrd (see build/tools/qmgrd --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
exec build/tools/qmgrd --data-dir ./qmgr-data "$@"
