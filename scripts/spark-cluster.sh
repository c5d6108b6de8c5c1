#!/usr/bin/env bash
# A real Spark standalone cluster on loopback, from the pinned pyspark in .venv (its jars/ and bin/spark-class;
# no download): one master and three workers, each worker 1 core and 2 GB, so executors run in their own JVMs
# and Python workers, as on a multi-host cluster. An application that sets spark.cores.max=2 (the cluster tests,
# `dw bench scale`) runs on two executors; the third core is for `dw run`'s second application (below). State, logs and work folders live in a git-ignored cache.
#
#   scripts/spark-cluster.sh start   launch what is not running (detached) and return when every worker has
#                                    registered with the master: prints `ready spark://127.0.0.1:<port>`, exit 0;
#                                    exit 1 on failure (the logs' tails are printed). Idempotent: a running
#                                    cluster is reused (a missing worker is started).
#   scripts/spark-cluster.sh stop    SIGTERM the recorded pids (workers first: they end their executors), SIGKILL
#                                    after 30 s; exit 0 (also if stopped)
#   scripts/spark-cluster.sh status  prints `running spark://127.0.0.1:<port> (<n> workers)` (exit 0) or
#                                    `stopped` / `not ready ...` (exit 3)
#
# Point the pipeline at it: DW_SPARK_MASTER=spark://127.0.0.1:7077 dw run --lake ... (docs/operations.md).
#
# Environment:
#   DW_SPARK_CLUSTER_HOME           state folder (default <checkout>/.cache/spark-cluster): logs/ work/ tmp/ conf/
#   DW_SPARK_CLUSTER_PORT           master RPC port (default 7077)
#   DW_SPARK_CLUSTER_UI_PORT        master web UI port, loopback only; its /json is the readiness probe (default 7080)
#   DW_SPARK_CLUSTER_WORKERS        worker count (default 3)
#   DW_SPARK_CLUSTER_WORKER_CORES   cores per worker (default 1)
#   DW_SPARK_CLUSTER_WORKER_MEMORY  memory per worker for its executors (default 2g)
#   DW_SPARK_CLUSTER_DAEMON_MEMORY  heap of the master and worker JVMs themselves (default 256m)
#   DW_SPARK_CLUSTER_APP_CORES      cores an application gets unless it sets spark.cores.max (default 1): `dw run`
#                                   trains item2vec in a second process (a second application) alongside the
#                                   main one; with every core taken by the first, the second would wait forever.
#                                   The main application asks for more with DW_SPARK_CORES_MAX (spark.cores.max)
#   DW_SPARK_CLUSTER_PYTHON         python with pyspark (default <checkout>/.venv/bin/python): finds SPARK_HOME
#   DW_SPARK_CLUSTER_TIMEOUT        seconds `start` waits for the workers (default 120)
# Needs Java 17 or later (Spark 4): JAVA_HOME or `java` on PATH.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCHOME=${DW_SPARK_CLUSTER_HOME:-$ROOT/.cache/spark-cluster}
HOST=127.0.0.1
PORT=${DW_SPARK_CLUSTER_PORT:-7077}
UI_PORT=${DW_SPARK_CLUSTER_UI_PORT:-7080}
WORKERS=${DW_SPARK_CLUSTER_WORKERS:-3}
WORKER_CORES=${DW_SPARK_CLUSTER_WORKER_CORES:-1}
WORKER_MEMORY=${DW_SPARK_CLUSTER_WORKER_MEMORY:-2g}
DAEMON_MEMORY=${DW_SPARK_CLUSTER_DAEMON_MEMORY:-256m}
APP_CORES=${DW_SPARK_CLUSTER_APP_CORES:-1}
PY=${DW_SPARK_CLUSTER_PYTHON:-$ROOT/.venv/bin/python}
TIMEOUT=${DW_SPARK_CLUSTER_TIMEOUT:-120}

LOGS="$SCHOME/logs"
STATEFILE="$SCHOME/cluster.ports"  # "<port> <ui port>" of the running master
MASTER_MAIN=org.apache.spark.deploy.master.Master
WORKER_MAIN=org.apache.spark.deploy.worker.Worker

log() { echo "[spark-cluster] $*" >&2; }
die() { echo "[spark-cluster] error: $*" >&2; exit 1; }

# --- pid handling (only ever by the pids we recorded, never by name) -----------------------------

# live_pid NAME MAIN: the pid in NAME.pid if that process is alive and runs MAIN; nothing otherwise.
live_pid() {
  local pid file="$SCHOME/$1.pid"
  [ -f "$file" ] || return 1
  pid=$(tr -dc 0-9 <"$file")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$2" || return 1
  echo "$pid"
}

worker_names() { local i; for i in $(seq 1 "$WORKERS"); do echo "worker-$i"; done; }

# The ports the running master was started with (they may differ from this call's settings).
running_ports() { if [ -f "$STATEFILE" ]; then cat "$STATEFILE"; else echo "$PORT $UI_PORT"; fi; }

log_tails() {
  local f
  for f in "$LOGS"/*.log; do
    [ -s "$f" ] || continue
    echo "----- last lines of $f -----" >&2
    tail -n 25 "$f" >&2
  done
}

# --- readiness: the master's /json lists its workers ------------------------------------------------

# alive_workers UI_PORT: how many workers the master reports ALIVE (nothing if it does not answer).
alive_workers() {
  "$PY" - "$HOST" "$1" <<'PY' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/json/", timeout=3) as answer:
    state = json.load(answer)
print(sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE"))
PY
}

# wait_ready UI_PORT SECONDS: 0 once WORKERS workers are alive, 1 on timeout, 2 if a recorded daemon died.
wait_ready() {
  local deadline=$((SECONDS + $2)) alive name
  while :; do
    live_pid master "$MASTER_MAIN" >/dev/null || return 2
    for name in $(worker_names); do live_pid "$name" "$WORKER_MAIN" >/dev/null || return 2; done
    alive=$(alive_workers "$1" || true)
    [ "${alive:-0}" -ge "$WORKERS" ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 1
  done
}

# --- launching -----------------------------------------------------------------------------------

spark_home() {
  [ -x "$PY" ] || die "no $PY: the cluster runs the project's pinned pyspark (run \`make setup\`) or set DW_SPARK_CLUSTER_PYTHON"
  SPARK_HOME=$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))') \
    || die "$PY cannot import pyspark: run \`make setup\`"
  if [ ! -x "$SPARK_HOME/bin/spark-class" ] || [ ! -d "$SPARK_HOME/jars" ]; then
    die "$SPARK_HOME has no bin/spark-class or jars/: not a full pyspark install"
  fi
  export SPARK_HOME
}

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# launch NAME MAIN ARGS...: one daemon, detached, its pid in NAME.pid and its output in logs/NAME.log.
launch() {
  local name=$1 pid
  shift
  [ -f "$LOGS/$name.log" ] && mv -f "$LOGS/$name.log" "$LOGS/$name.log.prev"
  # spark-class builds the java command line (module options included) and execs it, so $! is the JVM.
  # setsid: its own session, so the caller's Ctrl-C or process-group kill does not reach it.
  # 9>&-: the start lock is not inherited by the daemon.
  ( cd "$SCHOME" && exec setsid "$SPARK_HOME/bin/spark-class" "$@" >"$LOGS/$name.log" 2>&1 </dev/null 9>&- ) &
  pid=$!
  echo "$pid" >"$SCHOME/$name.pid"
}

cmd_start() {
  local pid name rport rui rc t0=$SECONDS started=()
  spark_home
  mkdir -p "$LOGS" "$SCHOME/work" "$SCHOME/tmp" "$SCHOME/conf"
  # Daemons and the executors they launch bind loopback only; executors keep shuffle files under tmp/.
  export SPARK_LOCAL_IP=$HOST SPARK_LOCAL_DIRS="$SCHOME/tmp" SPARK_CONF_DIR="$SCHOME/conf" \
         SPARK_LOG_DIR="$LOGS" SPARK_DAEMON_MEMORY="$DAEMON_MEMORY"
  # An application's folder (its executors' stdout/stderr, shipped files) goes a day after it ended.
  export SPARK_WORKER_OPTS="-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.interval=3600 -Dspark.worker.cleanup.appDataTtl=86400"

  if pid=$(live_pid master "$MASTER_MAIN"); then
    read -r rport rui < <(running_ports)
    [ "$rport" = "$PORT" ] || die "a master (pid $pid) already runs on port $rport; stop it first to use port $PORT"
    UI_PORT=$rui
  else
    rm -f "$SCHOME/master.pid" "$STATEFILE"
    port_busy "$PORT" && die "port $HOST:$PORT is taken by another process (set DW_SPARK_CLUSTER_PORT)"
    port_busy "$UI_PORT" && die "port $HOST:$UI_PORT is taken by another process (set DW_SPARK_CLUSTER_UI_PORT)"
    command -v java >/dev/null 2>&1 || [ -n "${JAVA_HOME:-}" ] || die "Spark 4 needs Java 17 or later: none found (JAVA_HOME, PATH)"
    export SPARK_MASTER_OPTS="-Dspark.deploy.defaultCores=$APP_CORES"
    launch master "$MASTER_MAIN" --host "$HOST" --port "$PORT" --webui-port "$UI_PORT"
    echo "$PORT $UI_PORT" >"$STATEFILE"
    started+=(master)
  fi
  for name in $(worker_names); do
    live_pid "$name" "$WORKER_MAIN" >/dev/null && continue
    mkdir -p "$SCHOME/work/$name"
    launch "$name" "$WORKER_MAIN" --host "$HOST" --port 0 --webui-port 0 --cores "$WORKER_CORES" \
      --memory "$WORKER_MEMORY" --work-dir "$SCHOME/work/$name" "spark://$HOST:$PORT"
    started+=("$name")
  done
  [ ${#started[@]} -gt 0 ] && log "starting ${started[*]} (spark://$HOST:$PORT, web UI http://$HOST:$UI_PORT," \
    "$WORKERS x $WORKER_CORES core / $WORKER_MEMORY, logs in $LOGS)"

  rc=0
  wait_ready "$UI_PORT" "$TIMEOUT" || rc=$?
  if [ "$rc" = 0 ]; then
    [ ${#started[@]} -gt 0 ] && log "$WORKERS workers registered after $((SECONDS - t0))s"
    echo "ready spark://$HOST:$PORT"
    return 0
  fi
  log_tails
  if [ "$rc" = 2 ]; then
    stop_all
    die "a daemon exited during startup (logs above, in $LOGS)"
  fi
  stop_all
  die "$WORKERS workers did not register with spark://$HOST:$PORT within ${TIMEOUT}s (logs above, in $LOGS)"
}

stop_all() {
  local name pid file main pids=() alive=()
  # Workers first: a worker kills its executors (and their Python workers) as it stops.
  for name in $(worker_names) master; do
    main=$WORKER_MAIN
    [ "$name" = master ] && main=$MASTER_MAIN
    if pid=$(live_pid "$name" "$main"); then pids+=("$pid"); fi
  done
  # Workers beyond this call's DW_SPARK_CLUSTER_WORKERS, left by an earlier start.
  for file in "$SCHOME"/worker-*.pid; do
    [ -f "$file" ] || continue
    name=$(basename "$file" .pid)
    if pid=$(live_pid "$name" "$WORKER_MAIN") && [[ " ${pids[*]} " != *" $pid "* ]]; then pids=("$pid" "${pids[@]}"); fi
  done
  if [ ${#pids[@]} -gt 0 ]; then
    log "stopping pids ${pids[*]}"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 60); do
      alive=()
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
      [ ${#alive[@]} -eq 0 ] && break
      sleep 0.5
    done
    if [ ${#alive[@]} -gt 0 ]; then
      log "pids ${alive[*]} still alive after 30s: SIGKILL"
      for pid in "${alive[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    fi
  fi
  rm -f "$SCHOME"/master.pid "$SCHOME"/worker-*.pid "$STATEFILE"
  [ ${#pids[@]} -gt 0 ]
}

cmd_stop() {
  if stop_all; then echo "stopped"; else echo "stopped (was not running)"; fi
}

cmd_status() {
  local pid rport rui alive
  if ! pid=$(live_pid master "$MASTER_MAIN"); then echo "stopped"; return 3; fi
  read -r rport rui < <(running_ports)
  alive=$(alive_workers "$rui" || true)
  if [ "${alive:-0}" -ge "$WORKERS" ]; then
    echo "running spark://$HOST:$rport ($alive workers, master pid $pid, web UI http://$HOST:$rui)"
    return 0
  fi
  echo "not ready spark://$HOST:$rport (${alive:-no answer from the master: 0} of $WORKERS workers alive, master pid $pid)"
  return 3
}

# One start/stop at a time (e.g. parallel test workers): they queue on this lock; status takes none.
lock() { mkdir -p "$SCHOME"; exec 9>"$SCHOME/.lock"; flock 9; }

case "${1:-}" in
  start) lock; cmd_start ;;
  stop) lock; cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
