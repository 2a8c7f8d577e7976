#!/usr/bin/env bash
# bench/engine_ab.sh: compares engine_bench binaries on one window
# (BENCHMARKS.md, "Engine"). The machine's state moves IRRECOVERABLE
# throughput by more than most changes do, so the binaries alternate run by
# run and each gets many runs; the median and mean of each are printed.
#
# Usage: bench/engine_ab.sh [--runs N] [--seconds S] BINARY...
#   extra engine_bench options go after `--`, e.g.
#   bench/engine_ab.sh --runs 15 old/engine_bench build/bench/engine_bench -- --producers 1 --consumers 1
set -euo pipefail

RUNS=15
SECONDS_PER_RUN=3
BINARIES=()
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) BINARIES+=("$1"); shift ;;
  esac
done
if [ ${#BINARIES[@]} -eq 0 ]; then
  echo "usage: $0 [--runs N] [--seconds S] BINARY... [-- engine_bench options]" >&2
  exit 2
fi
for b in "${BINARIES[@]}"; do
  [ -x "$b" ] || { echo "$b: not an executable" >&2; exit 2; }
done

echo "machine: nproc=$(nproc) kernel=$(uname -r) date=$(date -u +%FT%TZ) load=$(cut -d' ' -f1-3 /proc/loadavg)"
echo "each run: engine_bench --seconds $SECONDS_PER_RUN --classes IRRECOVERABLE --no-reference ${EXTRA[*]}"
declare -A RATES
STEALS=""
for ((i = 1; i <= RUNS; i++)); do
  for b in "${BINARIES[@]}"; do
    row=$("$b" --seconds "$SECONDS_PER_RUN" --classes IRRECOVERABLE --no-reference "${EXTRA[@]}" 2>&1 |
      grep -A1 '^class' | tail -1)
    # Columns: class W p+c enq/s cons/s cpu cpu-us/m (12 more) idle% steal%;
    # binaries older than the idle% and steal% columns leave those empty.
    read -r _ _ _ _ cons cores cpu_us _ _ _ _ _ _ _ _ _ _ _ _ idle steal _ <<<"$row"
    echo "run $i $b: $cons msgs/s consumed, $cores cores, $cpu_us CPU us/msg," \
      "machine idle ${idle:-?}%, steal ${steal:-?}%"
    RATES[$b]="${RATES[$b]:-} $cons"
    [ -n "${steal:-}" ] && STEALS+=" $steal"
  done
done
for b in "${BINARIES[@]}"; do
  echo "${RATES[$b]}" | tr ' ' '\n' | grep . | sort -n |
    awk -v b="$b" '{ v[NR] = $1; s += $1 }
      END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
            printf "%s: median %d, mean %d, min %d, max %d msgs/s over %d runs\n", b, m, s / NR, v[1], v[NR], NR }'
done
# Steal above a few percent means the hypervisor took CPU the runs needed:
# compare binaries within such a window, not across windows.
if [ -n "$STEALS" ]; then
  echo "$STEALS" | tr ' ' '\n' | grep . | sort -n |
    awk '{ v[NR] = $1 } END { printf "machine steal over the runs: median %d%%, min %d%%, max %d%%\n", v[int((NR + 1) / 2)], v[1], v[NR] }'
fi
