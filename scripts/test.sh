#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole default test suite
# (ctest; tests labelled `long` are excluded: run them with `ctest -L long`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
ctest --test-dir build -j2 --output-on-failure --timeout 600 -LE long
