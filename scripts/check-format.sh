#!/usr/bin/env bash
# Fails (exit 1) naming every project C++ file that clang-format would change.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
while IFS= read -r f; do
  if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "not formatted: $f"
    bad=1
  fi
done < <(git ls-files '*.cc' '*.h')
exit $bad
