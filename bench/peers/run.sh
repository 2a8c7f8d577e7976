#!/usr/bin/env bash
# bench/peers/run.sh: qmgrd against durable queue servers on this machine,
# the same load for each (BENCHMARKS.md, "Peers").
#
# Starts, one at a time, on loopback with private data directories under
# $PEERS_DIR (default /var/tmp, the disk qmgrd's data would use): qmgrd,
# Redis 7 (appendonly yes, appendfsync always), PostgreSQL 15 (a private
# cluster, synchronous_commit on), beanstalkd (binlog, fsync on every write:
# -f0), RabbitMQ (a private node with its own epmd: a durable quorum queue,
# publisher confirms, manual acks). Runs qmgr-bench (qmgrd) and
# qmgr-peer-bench (the others): 1 KiB
# messages, one call in flight per connection, P=C=8 and P=C=1, batches of
# 100 where the system has them; then producers alone, for memory per queued
# message. Measures the raw disk (log_bench) and the no-op gRPC server in the
# same run. Stops everything it started and prints one table.
#
# Usage: bench/peers/run.sh [--seconds N] [--build-dir DIR]
#                           [--systems "qmgrd redis postgres beanstalkd rabbitmq"]
#
# Server CPU is user+sys from /proc/PID/stat of the server's process tree
# (children that exited are in their parent's cutime/cstime), over the whole
# client run (connection set-up included). fsyncs are fsync(2) + fdatasync(2)
# calls by the server's processes, counted by `perf stat` on the syscall
# tracepoints (children inherit the counters); "n/a" when perf cannot.
# Per message = per (enqueued + consumed) / 2.
set -euo pipefail

SECONDS_PER_RUN=10
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD="$ROOT/build-peers"
SYSTEMS="qmgrd redis postgres beanstalkd rabbitmq"
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
    --build-dir) BUILD=$2; shift 2 ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    *) echo "usage: $0 [--seconds N] [--build-dir DIR] [--systems LIST]" >&2; exit 2 ;;
  esac
done

# ---- Packages (Debian) and build -------------------------------------------------

PACKAGES="redis-server postgresql-15 beanstalkd rabbitmq-server libhiredis-dev libpq-dev librabbitmq-dev linux-perf"
missing=""
for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "installing:$missing" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q && $SUDO apt-get install -y -q $missing
fi
PGBIN=/usr/lib/postgresql/15/bin

if [ ! -x "$BUILD/bench/qmgr-peer-bench" ] || [ ! -x "$BUILD/tools/qmgrd" ]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQMGR_BUILD_PEER_BENCH=ON >&2
  nice -n 10 make -C "$BUILD" -j2 qmgrd qmgr_bench qmgr_peer_bench log_bench >&2
fi
QMGRD="$BUILD/tools/qmgrd"
QBENCH="$BUILD/bench/qmgr-bench"
PBENCH="$BUILD/bench/qmgr-peer-bench"

# ---- Bookkeeping ---------------------------------------------------------------------

WORK=$(mktemp -d "${PEERS_DIR:-/var/tmp}/qmgr-peers.XXXXXX")
chmod 755 "$WORK"
SERVER_PID=""
EPMD_PID=""
cleanup() {
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# SIGTERM to the server (RabbitMQ's start script passes it on to the Erlang
# VM and waits for it), 30 s to stop, then SIGKILL to what is left of the
# process tree it had.
stop_server() {
  local pids p
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    pids=$(tree_pids "$SERVER_PID")
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
  if [ -n "$EPMD_PID" ]; then
    kill -TERM "$EPMD_PID" 2>/dev/null || true
    wait "$EPMD_PID" 2>/dev/null || true
  fi
  EPMD_PID=""
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_port PORT [SECONDS]: until something accepts connections on it.
wait_port() {
  for _ in $(seq $((${2:-30} * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

tree_pids() {
  echo "$1"
  local c
  for c in $(pgrep -P "$1" || true); do tree_pids "$c"; done
}
# user+sys clock ticks of a process tree, exited children included.
cpu_ticks() {
  local total=0 p f
  for p in $(tree_pids "$1"); do
    f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
    total=$((total + $(echo "$f" | awk '{print $12 + $13 + $14 + $15}')))
  done
  echo "$total"
}
# Proportional set size of a process tree, KiB (shared pages counted once).
pss_kib() {
  local total=0 p v
  for p in $(tree_pids "$1"); do
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null) || continue
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
TICK=$(getconf CLK_TCK)
PERF_OK=0
if perf stat -e syscalls:sys_enter_fdatasync -o /dev/null true 2>/dev/null; then PERF_OK=1; fi

ROWS="$WORK/rows"
: >"$ROWS"
RAW=""

# measure SYSTEM DURABILITY -- COMMAND...: runs the client, adds a row.
measure() {
  local system=$1 durability=$2
  shift 3
  RUN_S=$S
  local out="$WORK/out" perf_out="$WORK/perf" perf_pid="" t0 t1 fsyncs="n/a"
  t0=$(cpu_ticks "$SERVER_PID")
  if [ "$PERF_OK" = 1 ]; then
    perf stat -x, -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync \
      -p "$(tree_pids "$SERVER_PID" | paste -sd,)" -o "$perf_out" &
    perf_pid=$!
    sleep 0.3
  fi
  "$@" >"$out"
  sleep 0.5  # exited children reaped: their counts and CPU join the parent's
  t1=$(cpu_ticks "$SERVER_PID")
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    fsyncs=$(awk -F, '/sys_enter_f/ {n += $1} END {print n + 0}' "$perf_out")
  fi
  grep '^RESULT,' "$out" | while IFS=, read -r _ server p c batch enq cons ep50 ep99 cp50 cp99 errors backlog; do
    local name=$system dur=$durability cpu fs
    if [ "$server" = "no-op" ]; then
      printf '| gRPC no-op (same load) | %s | %s | %s | %s | %s | %s / %s | %s / %s | – | – | none |\n' \
        "$p" "$c" "$batch" "$enq" "$cons" "$ep50" "$ep99" "$cp50" "$cp99" >>"$ROWS"
      continue
    fi
    cpu=$(awk -v t=$((t1 - t0)) -v hz="$TICK" -v e="$enq" -v c="$cons" -v s="$SECONDS_PER_RUN" \
      'BEGIN {m = (e + c) / 2 * s; printf (m > 0 ? "%.1f" : "–"), (m > 0 ? t / hz * 1e6 / m : 0)}')
    fs=$(awk -v f="$fsyncs" -v e="$enq" -v c="$cons" -v s="$SECONDS_PER_RUN" \
      'BEGIN {m = (e + c) / 2 * s; if (f == "n/a" || m == 0) print "n/a"; else printf "%.3f", f / m}')
    printf '| %s | %s | %s | %s | %s | %s | %s / %s | %s / %s | %s | %s | %s |\n' \
      "$name" "$p" "$c" "$batch" "$enq" "$cons" "$ep50" "$ep99" "$cp50" "$cp99" "$cpu" "$fs" "$dur" >>"$ROWS"
    [ "$errors" = 0 ] || echo "$system: $errors errors (see $out)" >&2
  done
}

# memory SYSTEM -- COMMAND...: producers alone; Pss growth per queued message.
MEMROWS="$WORK/memrows"
: >"$MEMROWS"
memory() {
  local system=$1
  shift 2
  RUN_S=$MEM_S
  local before after queued
  before=$(pss_kib "$SERVER_PID")
  "$@" >"$WORK/out"
  after=$(pss_kib "$SERVER_PID")
  queued=$(grep '^RESULT,' "$WORK/out" | head -1 | cut -d, -f13)
  awk -v s="$system" -v b="$before" -v a="$after" -v q="$queued" \
    'BEGIN {printf "| %s | %d | %.1f | %.0f |\n", s, q, (a - b) / 1024, (q > 0 ? (a - b) * 1024 / q : 0)}' >>"$MEMROWS"
}

S=$SECONDS_PER_RUN
MEM_S=5

# ---- The raw disk ------------------------------------------------------------------------

echo "== raw disk (log_bench)" >&2
"$BUILD/bench/log_bench" --dir "$WORK/raw" --seconds 1 --appenders 1 >"$WORK/raw.txt" 2>&1 || true
RAW=$(grep -E '^(write  |512 B |4 KiB |64 KiB |1 MiB )' "$WORK/raw.txt" | head -5 || true)

# ---- qmgrd ---------------------------------------------------------------------------------

start_qmgrd() {
  local port
  port=$(free_port)
  rm -rf "$WORK/qmgrd"
  "$QMGRD" --data-dir "$WORK/qmgrd" --listen "127.0.0.1:$port" >"$WORK/qmgrd.log" 2>&1 &
  SERVER_PID=$!
  wait_port "$port"
  QTARGET="127.0.0.1:$port"
}
start_redis() {
  PORT=$(free_port)
  rm -rf "$WORK/redis"
  mkdir -p "$WORK/redis"
  redis-server --port "$PORT" --bind 127.0.0.1 --dir "$WORK/redis" --appendonly yes \
    --appendfsync always --save "" --protected-mode no --daemonize no \
    >"$WORK/redis.log" 2>&1 &
  SERVER_PID=$!
  wait_port "$PORT"
}
start_postgres() {
  PORT=$(free_port)
  local pgdata="$WORK/pg" runas=()
  if [ "$(id -u)" -eq 0 ]; then runas=(runuser -u nobody --); fi
  if [ ! -d "$pgdata" ]; then
    mkdir -p "$pgdata"
    [ "$(id -u)" -eq 0 ] && chown nobody "$pgdata"
    "${runas[@]}" "$PGBIN/initdb" -D "$pgdata" -U bench --auth=trust >"$WORK/initdb.log" 2>&1
  fi
  # runuser execs postgres: the pid is the postmaster's.
  "${runas[@]}" "$PGBIN/postgres" -D "$pgdata" -c listen_addresses=127.0.0.1 -c port="$PORT" \
    -c unix_socket_directories="$pgdata" -c synchronous_commit=on -c fsync=on \
    >>"$WORK/postgres.log" 2>&1 &
  SERVER_PID=$!
  wait_port "$PORT"
}
start_beanstalkd() {
  PORT=$(free_port)
  rm -rf "$WORK/beanstalkd"
  mkdir -p "$WORK/beanstalkd"
  beanstalkd -l 127.0.0.1 -p "$PORT" -b "$WORK/beanstalkd" -f0 >"$WORK/beanstalkd.log" 2>&1 &
  SERVER_PID=$!
  wait_port "$PORT"
}
# A RabbitMQ node of its own: data, logs, config, Erlang cookie ($HOME) and
# epmd (on a port of its own, started here and stopped by stop_server) are
# private to $WORK/rabbitmq, so a system-wide node, its epmd on port 4369 and
# /etc/rabbitmq are neither used nor touched. Everything listens on loopback.
start_rabbitmq() {
  PORT=$(free_port)
  local dir="$WORK/rabbitmq" epmd_port dist_port
  epmd_port=$(free_port)
  dist_port=$(free_port)
  rm -rf "$dir"
  mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
  : >"$dir/rabbitmq-env.conf"
  : >"$dir/rabbitmq.conf"
  echo '[].' >"$dir/enabled_plugins"
  epmd -port "$epmd_port" -address 127.0.0.1 >"$dir/epmd.log" 2>&1 &
  EPMD_PID=$!
  wait_port "$epmd_port"
  env HOME="$dir/home" ERL_EPMD_PORT="$epmd_port" \
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/rabbitmq.pid" RABBITMQ_NODENAME="qmgrbench-$$@localhost" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$PORT" RABBITMQ_DIST_PORT="$dist_port" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    /usr/lib/rabbitmq/bin/rabbitmq-server >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port "$PORT" 120
}
qb() { "$QBENCH" --target "$QTARGET" --seconds "$RUN_S" "$@"; }
rb() { "$PBENCH" --port "$PORT" --seconds "$RUN_S" "$@"; }
pb() {
  "$PBENCH" --system postgres --conninfo "host=127.0.0.1 port=$PORT user=bench dbname=postgres" \
    --seconds "$RUN_S" "$@"
}
bb() { "$PBENCH" --system beanstalkd --port "$PORT" --seconds "$RUN_S" "$@"; }
ab() { "$PBENCH" --system rabbitmq --port "$PORT" --seconds "$RUN_S" "$@"; }

# Memory is measured on a freshly started server (an allocator reuses what
# earlier rows freed), with producers alone, batched where the system can.
for system in $SYSTEMS; do
  echo "== $system" >&2
  case "$system" in
    qmgrd)
      durable="RECOVERABLE: answers after fdatasync"
      start_qmgrd
      measure qmgrd "$durable" -- qb --mode unary --producers 8 --consumers 8
      measure "qmgrd, streams" "$durable" -- qb --mode stream --window 1 --producers 8 --consumers 8
      measure qmgrd "$durable" -- qb --mode unary --producers 1 --consumers 1
      measure qmgrd "$durable" -- qb --mode unary --producers 8 --consumers 8 --batch 100 --no-noop
      measure "qmgrd, streams" "$durable" -- qb --mode stream --producers 8 --consumers 8 --batch 100 --no-noop
      measure qmgrd "IRRECOVERABLE: memory only" -- qb --mode unary --producers 8 --consumers 8 --class IRRECOVERABLE
      stop_server
      start_qmgrd
      memory qmgrd -- qb --mode unary --producers 8 --consumers 0 --batch 100 --no-noop
      stop_server
      ;;
    redis)
      start_redis
      measure "Redis list (LPUSH/BRPOP)" "AOF always; no ack" -- rb --system redis-list --producers 8 --consumers 8
      measure "Redis list (LPUSH/BRPOP)" "AOF always; no ack" -- rb --system redis-list --producers 1 --consumers 1
      measure "Redis list (LPUSH/BLMPOP)" "AOF always; no ack" -- rb --system redis-list --producers 8 --consumers 8 --batch 100
      measure "Redis reliable (BLMOVE+LREM)" "AOF always" -- rb --system redis-reliable --producers 8 --consumers 8
      measure "Redis reliable (BLMOVE+LREM)" "AOF always" -- rb --system redis-reliable --producers 1 --consumers 1
      stop_server
      start_redis
      memory Redis -- rb --system redis-list --producers 8 --consumers 0 --batch 100
      stop_server
      ;;
    postgres)
      start_postgres
      measure "PostgreSQL 15 (SKIP LOCKED)" "synchronous_commit on" -- pb --producers 8 --consumers 8
      measure "PostgreSQL 15 (SKIP LOCKED)" "synchronous_commit on" -- pb --producers 1 --consumers 1
      measure "PostgreSQL 15 (SKIP LOCKED)" "synchronous_commit on" -- pb --producers 8 --consumers 8 --batch 100
      stop_server
      start_postgres
      memory PostgreSQL -- pb --producers 8 --consumers 0 --batch 100
      stop_server
      ;;
    beanstalkd)
      start_beanstalkd
      measure beanstalkd "binlog, fsync every write (-f0)" -- bb --producers 8 --consumers 8
      measure beanstalkd "binlog, fsync every write (-f0)" -- bb --producers 1 --consumers 1
      stop_server
      start_beanstalkd
      memory beanstalkd -- bb --producers 8 --consumers 0
      stop_server
      ;;
    rabbitmq)
      durable="quorum queue; publisher confirms; manual ack"
      rabbit="RabbitMQ $(dpkg-query -W -f '${Version}' rabbitmq-server | cut -d. -f1,2) (quorum queue)"
      start_rabbitmq
      measure "$rabbit" "$durable" -- ab --producers 8 --consumers 8
      measure "$rabbit" "$durable" -- ab --producers 1 --consumers 1
      measure "$rabbit" "$durable" -- ab --producers 8 --consumers 8 --batch 100
      stop_server
      start_rabbitmq
      memory RabbitMQ -- ab --producers 8 --consumers 0 --batch 100
      stop_server
      ;;
    *) echo "unknown system $system" >&2; exit 2 ;;
  esac
done

# ---- The table -----------------------------------------------------------------------------

echo "machine: nproc=$(nproc) kernel=$(uname -r) date=$(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "load: 1 KiB messages, one call in flight per connection, ${S} s per row; fsyncs by perf (syscall tracepoints, the server's processes)"
echo
echo "Raw disk (log_bench: preallocated file, 4 KiB-aligned pwrite + fdatasync):"
echo
echo '```'
echo "$RAW"
echo '```'
echo
echo "| system | P | C | batch | enq msgs/s | consumed msgs/s | enqueue p50 / p99 µs | consume p50 / p99 µs | server CPU µs/msg | fsyncs/msg | durability |"
echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
cat "$ROWS"
echo
echo "Memory per queued message (producers alone for ${MEM_S} s; growth of the server's Pss):"
echo
echo "| system | messages queued | Pss growth MiB | bytes per message |"
echo "|---|--:|--:|--:|"
cat "$MEMROWS"
