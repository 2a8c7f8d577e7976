#!/usr/bin/env bash
# bench/callgrind.sh: qmgrd's instructions per message, counted by callgrind
# (BENCHMARKS.md, "Peers", "What was optimized"). Instruction counts do not
# depend on how loaded the machine is, so two builds compare here where
# their throughput would not.
#
# Runs qmgrd under `valgrind --tool=callgrind` twice on fresh data
# directories: once while qmgr-bench enqueues and consumes --messages
# messages (unary: Enqueue, then Get with commit_previous, one call in flight
# per producer and consumer), once with none (connect and define the queue
# only). Instructions per message = (Ir of the first - Ir of the second) / N:
# start-up, recovery and shutdown cancel out. Prints the totals and the
# functions whose own instructions (self cost) grew most per message.
#
# Usage: bench/callgrind.sh [--qmgrd PATH] [--bench PATH] [--messages N]
#          [--class RECOVERABLE|IRRECOVERABLE] [--producers P] [--consumers C]
#          [--size BYTES] [--top K] [--keep DIR]
#
# Time-driven checkpoints are off (--checkpoint-interval-s 0
# --max-restart-seconds 0): under valgrind a run takes minutes, and one that
# crossed the interval would count a checkpoint the other did not. The
# log-size trigger stays at its default, which these runs do not reach.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QMGRD="$ROOT/build/tools/qmgrd"
QBENCH="$ROOT/build/bench/qmgr-bench"
MESSAGES=2000
CLASS=RECOVERABLE
PRODUCERS=1
CONSUMERS=1
SIZE=1024
TOP=12
KEEP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --qmgrd) QMGRD=$2; shift 2 ;;
    --bench) QBENCH=$2; shift 2 ;;
    --messages) MESSAGES=$2; shift 2 ;;
    --class) CLASS=$2; shift 2 ;;
    --producers) PRODUCERS=$2; shift 2 ;;
    --consumers) CONSUMERS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --top) TOP=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    *) echo "usage: $0 [--qmgrd PATH] [--bench PATH] [--messages N] [--class C] [--producers P] [--consumers C] [--size B] [--top K] [--keep DIR]" >&2; exit 2 ;;
  esac
done
for tool in valgrind callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "$tool not found (Debian: valgrind)" >&2; exit 1; }
done
[ -x "$QMGRD" ] || { echo "no qmgrd at $QMGRD" >&2; exit 1; }
[ -x "$QBENCH" ] || { echo "no qmgr-bench at $QBENCH" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/qmgr-callgrind.XXXXXX")
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP" && cp "$WORK"/callgrind.* "$WORK"/*.log "$KEEP"/ 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# profile N: qmgrd under callgrind while qmgr-bench moves N messages; prints
# the total Ir and leaves the per-function self costs in $WORK/functions.N.
profile() {
  local n=$1 port out
  port=$(free_port)
  out="$WORK/callgrind.$n"
  valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$QMGRD" --data-dir "$WORK/data.$n" --listen "127.0.0.1:$port" \
    --checkpoint-interval-s 0 --max-restart-seconds 0 >"$WORK/qmgrd.$n.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/qmgrd.$n.log" >&2; exit 1; }
    sleep 0.1
  done
  "$QBENCH" --target "127.0.0.1:$port" --mode unary --messages "$n" --no-noop \
    --producers "$PRODUCERS" --consumers "$CONSUMERS" --size "$SIZE" --class "$CLASS" \
    >"$WORK/bench.$n.log" 2>&1
  # Every message enqueued and consumed, or the count means nothing.
  grep '^RESULT,' "$WORK/bench.$n.log" | awk -F, '$12 != 0 || $13 != 0 {
    print "qmgr-bench: " $12 " errors, " $13 " messages not consumed" > "/dev/stderr"; exit 1}'
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" || true
  SERVER_PID=""
  callgrind_annotate --inclusive=no --auto=no --threshold=100 "$out" >"$WORK/functions.$n" 2>/dev/null
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

echo "== qmgrd under callgrind: $MESSAGES messages ($CLASS, ${SIZE} B, P=$PRODUCERS C=$CONSUMERS)" >&2
t0=$(date +%s)
IR_N=$(profile "$MESSAGES")
t1=$(date +%s)
echo "== the same with no messages" >&2
IR_0=$(profile 0)
t2=$(date +%s)
RESULT_LINE=$(grep '^RESULT,' "$WORK/bench.$MESSAGES.log")

echo "qmgrd: $QMGRD"
echo "load: $MESSAGES messages of $SIZE B, $CLASS, P=$PRODUCERS C=$CONSUMERS, unary Enqueue + Get(commit_previous); runs of $((t1 - t0)) s and $((t2 - t1)) s under valgrind"
echo "qmgr-bench: $RESULT_LINE"
awk -v a="$IR_N" -v b="$IR_0" -v n="$MESSAGES" 'BEGIN {
  printf "Ir with messages: %d\nIr without: %d\nIr per message: %.0f\n", a, b, (a - b) / n}'
echo
# callgrind_annotate's lines: "  1,234,567 (12.34%)  file:function [object]"
# (no object: qmgrd itself).
python3 - "$WORK/functions.$MESSAGES" "$WORK/functions.0" "$MESSAGES" "$TOP" <<'EOF'
import os, re, sys
def load(path):
    functions, objects = {}, {}
    for line in open(path, errors="replace"):
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*?)\s*$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        cost, name = int(m.group(1).replace(",", "")), m.group(2)
        obj = re.search(r"\s+\[([^\]]*)\]$", name)
        name = name[: obj.start()] if obj else name
        name = name.split(":", 1)[1] if ":" in name else name
        lib = re.sub(r"\.so(\.[\d.]+)?$", "", os.path.basename(obj.group(1))) if obj else "qmgrd"
        functions[name] = functions.get(name, 0) + cost
        objects[lib] = objects.get(lib, 0) + cost
    return functions, objects
(f_with, o_with), (f_without, o_without) = load(sys.argv[1]), load(sys.argv[2])
n, top = int(sys.argv[3]), int(sys.argv[4])
def table(title, column, with_msgs, without, rows):
    print(title)
    print()
    print(f"| Ir/msg | {column} |")
    print("|--:|---|")
    delta = {k: c - without.get(k, 0) for k, c in with_msgs.items()}
    for k, c in sorted(delta.items(), key=lambda kv: -kv[1])[:rows]:
        print(f"| {c / n:,.0f} | `{k if len(k) <= 110 else k[:107] + '...'}` |")
    print()
table(f"By object (own instructions, with - without, / {n}):", "object", o_with, o_without, 8)
table(f"Functions by own instructions per message (with - without, / {n}):", "function",
      f_with, f_without, top)
EOF
