#!/usr/bin/env bash
# A real single-node Apache Cassandra for local work and tests, with no Docker and no tarball:
# cassandra-all and its runtime jars come from Maven Central (scripts/cassandra/pom.xml, the one
# place the version is pinned) into a git-ignored cache inside the checkout.
#
#   scripts/cassandra.sh start   resolve (first time only), configure, launch detached, and return when a
#                                CQL query answers: prints `ready 127.0.0.1:<port>`, exit 0; exit 1 on failure
#                                (the log tail is printed). Idempotent: a running node is reused.
#   scripts/cassandra.sh stop    SIGTERM the pid from the pid file, SIGKILL after 30 s; exit 0 (also if stopped)
#   scripts/cassandra.sh status  prints `running 127.0.0.1:<port>` (exit 0) or `stopped` / `not answering` (exit 3)
#
# Environment:
#   DW_CASSANDRA_HOME          cache/state folder (default <checkout>/.cache/cassandra): lib/ conf/ data/ logs/
#   DW_CASSANDRA_PORT          CQL native port (default 9042)
#   DW_CASSANDRA_STORAGE_PORT  internode port, loopback only (default 7000)
#   DW_CASSANDRA_HEAP          JVM heap, -Xms = -Xmx (default 1G)
#   DW_CASSANDRA_GC            g1 (default, Cassandra's) or zgc (sub-ms pauses: lower read p99, more CPU)
#   DW_CASSANDRA_JVM_EXTRA     more JVM options, appended (e.g. -XX:MaxGCPauseMillis=20)
#   DW_CASSANDRA_M2            Maven local repository (default <checkout>/.cache/m2)
#   DW_CASSANDRA_PYTHON        python with the `cassandra` driver for the CQL probe (default <checkout>/.venv/bin/python)
#   DW_CASSANDRA_TIMEOUT       seconds `start` waits for CQL (default 180)
# Needs Java 11 or 17 (Cassandra 5.0 supports no other): JAVA_HOME, `java` on PATH, then /usr/lib/jvm/java-{17,11}-*.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
POM="$ROOT/scripts/cassandra/pom.xml"
M2=${DW_CASSANDRA_M2:-$ROOT/.cache/m2}  # shared with scripts/spark-jars.sh
CHOME=${DW_CASSANDRA_HOME:-$ROOT/.cache/cassandra}
case $CHOME in /*) ;; *) CHOME=$PWD/$CHOME ;; esac  # the daemon runs from inside it
HOST=127.0.0.1
PORT=${DW_CASSANDRA_PORT:-9042}
STORAGE_PORT=${DW_CASSANDRA_STORAGE_PORT:-7000}
HEAP=${DW_CASSANDRA_HEAP:-1G}
GC=${DW_CASSANDRA_GC:-g1}
PY=${DW_CASSANDRA_PYTHON:-$ROOT/.venv/bin/python}
TIMEOUT=${DW_CASSANDRA_TIMEOUT:-180}

LIB="$CHOME/lib"
CONF="$CHOME/conf"
DATA="$CHOME/data"
LOGS="$CHOME/logs"
PIDFILE="$CHOME/cassandra.pid"
PORTFILE="$CHOME/cassandra.port"
MAIN=org.apache.cassandra.service.CassandraDaemon

VERSION=$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$POM")
[ -n "$VERSION" ] || { echo "cassandra: no <cassandra.version> in $POM" >&2; exit 1; }

log() { echo "[cassandra] $*" >&2; }
die() { echo "[cassandra] error: $*" >&2; exit 1; }

# --- pid handling (only ever by the pid we recorded, never by name) -------------------------------

# The recorded pid if that process is alive and is a CassandraDaemon; nothing otherwise.
live_pid() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid=$(tr -dc 0-9 <"$PIDFILE")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$MAIN" || return 1
  echo "$pid"
}

# The port the running node was started with (it may differ from this call's DW_CASSANDRA_PORT).
running_port() { if [ -f "$PORTFILE" ]; then tr -dc 0-9 <"$PORTFILE"; else echo "$PORT"; fi; }

log_tail() {
  local f
  for f in "$LOGS/system.log" "$LOGS/stdout.log"; do
    [ -s "$f" ] || continue
    echo "----- last lines of $f -----" >&2
    tail -n 40 "$f" >&2
  done
}

# --- CQL probe -----------------------------------------------------------------------------------

need_python() {
  [ -x "$PY" ] || die "no $PY: the CQL readiness probe needs the project's venv (run \`make setup\`) or DW_CASSANDRA_PYTHON"
  "$PY" -c 'import cassandra.cluster' 2>/dev/null \
    || die "$PY cannot import the python driver \`cassandra\` (scylla-driver): run \`make setup\` or set DW_CASSANDRA_PYTHON"
}

# cql_wait PORT SECONDS [PID]: runs `SELECT release_version FROM system.local` until it answers.
# Exit 0 (prints the version) when it answers, 1 on timeout, 2 if PID dies meanwhile.
cql_wait() {
  "$PY" - "$HOST" "$1" "$2" "${3:-}" <<'PY'
import logging, os, socket, sys, time, warnings
logging.disable(logging.CRITICAL)
warnings.simplefilter("ignore")
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import WhiteListRoundRobinPolicy

host, port, limit, pid = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + limit

def alive():
    if not pid:
        return True
    try:
        os.kill(int(pid), 0)
        return True
    except OSError:
        return False

while True:
    if not alive():
        sys.exit(2)
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
        profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([host]), request_timeout=10)
        cluster = Cluster([host], port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                          connect_timeout=5, control_connection_timeout=5)
        try:
            row = cluster.connect().execute("SELECT release_version FROM system.local").one()
            print(row.release_version)
            sys.exit(0)
        finally:
            cluster.shutdown()
    except SystemExit:
        raise
    except Exception:
        pass
    if time.monotonic() >= deadline:
        sys.exit(1)
    time.sleep(1)
PY
}

# --- Java ----------------------------------------------------------------------------------------

java_major() {
  "$1" -version 2>&1 | awk -F'"' '/ version "/ {print $2; exit}' | awk -F. '{ if ($1 == "1") print $2; else print $1 }'
}

find_java() {
  local c major
  for c in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java 2>/dev/null || true)" \
           /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/java-11-openjdk-*/bin/java \
           /usr/lib/jvm/*17*/bin/java /usr/lib/jvm/*11*/bin/java; do
    if [ -z "$c" ] || [ ! -x "$c" ]; then continue; fi
    major=$(java_major "$c")
    if [ "$major" = 17 ] || [ "$major" = 11 ]; then echo "$c"; return 0; fi
  done
  return 1
}

# --- resolve jars --------------------------------------------------------------------------------

resolve() {
  local stamp
  stamp="$LIB/.resolved-$(sha1sum "$POM" | cut -c1-12)"
  if [ -f "$stamp" ] && [ -f "$LIB/cassandra-all-$VERSION.jar" ]; then return 0; fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found: it resolves cassandra-all $VERSION from Maven Central"
  log "resolving org.apache.cassandra:cassandra-all:$VERSION and its runtime jars with Maven into $LIB"
  local t0=$SECONDS tmp="$LIB.tmp.$$" offline=()
  rm -rf "$tmp"
  # Everything already in the local repository: try offline first, fall back to the network.
  [ -f "$M2/org/apache/cassandra/cassandra-all/$VERSION/cassandra-all-$VERSION.jar" ] && offline=(-o)
  mvn_copy() {
    mvn -B -q "$@" -f "$POM" -Dmaven.repo.local="$M2" dependency:copy-dependencies \
      -DoutputDirectory="$tmp" -DincludeScope=runtime >"$CHOME/maven.log" 2>&1
  }
  if ! { [ ${#offline[@]} -gt 0 ] && mvn_copy -o; } && ! mvn_copy; then
    cat "$CHOME/maven.log" >&2
    rm -rf "$tmp"
    die "maven could not resolve cassandra-all $VERSION (log above, also in $CHOME/maven.log)"
  fi
  [ -f "$tmp/cassandra-all-$VERSION.jar" ] || die "maven ran but $tmp has no cassandra-all-$VERSION.jar"
  rm -rf "$LIB"
  mv "$tmp" "$LIB"
  touch "$stamp"
  log "resolved $(find "$LIB" -name '*.jar' | wc -l) jars ($(du -sh "$LIB" | cut -f1)) in $((SECONDS - t0))s"
}

# --- configuration -------------------------------------------------------------------------------

write_conf() {
  rm -rf "$CHOME/tmp"  # native libraries the last JVM unpacked (left behind if it was killed)
  mkdir -p "$CONF/triggers" "$DATA" "$LOGS" "$CHOME/tmp"
  cat >"$CONF/cassandra.yaml" <<EOF
# Written by scripts/cassandra.sh at every start: edit the script, not this file.
# A lean single node on loopback for Cassandra $VERSION (5.0-style option names).
cluster_name: dw_assets_dev
num_tokens: 16
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch

listen_address: $HOST
rpc_address: $HOST
storage_port: $STORAGE_PORT
start_native_transport: true
native_transport_port: $PORT
native_transport_max_threads: 32
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$HOST:$STORAGE_PORT"

authenticator:
  class_name: org.apache.cassandra.auth.AllowAllAuthenticator
authorizer:
  class_name: org.apache.cassandra.auth.AllowAllAuthorizer
network_authorizer:
  class_name: org.apache.cassandra.auth.AllowAllNetworkAuthorizer

data_file_directories:
  - $DATA/data
commitlog_directory: $DATA/commitlog
saved_caches_directory: $DATA/saved_caches
hints_directory: $DATA/hints
cdc_raw_directory: $DATA/cdc_raw
cdc_enabled: false

commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB
commitlog_total_space: 256MiB

# Small memory footprint: the test suite runs Spark on the same 2-core machine.
memtable_allocation_type: heap_buffers
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB
memtable_flush_writers: 1
concurrent_reads: 4
concurrent_writes: 4
concurrent_counter_writes: 4
concurrent_materialized_view_writes: 2
concurrent_compactors: 1
compaction_throughput: 64MiB/s
key_cache_size: 16MiB
counter_cache_size: 8MiB
file_cache_size: 32MiB
networking_cache_size: 16MiB

hinted_handoff_enabled: false
auto_snapshot: false
snapshot_before_compaction: false
incremental_backups: false
EOF
  cat >"$CONF/logback.xml" <<'EOF'
<!-- Written by scripts/cassandra.sh: INFO to ${cassandra.logdir}/system.log only (no console, no debug.log). -->
<configuration scan="false">
  <appender name="SYSTEMLOG" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter">
      <level>INFO</level>
    </filter>
    <file>${cassandra.logdir}/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>${cassandra.logdir}/system.log.%i.zip</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="SYSTEMLOG" />
  </root>
  <logger name="org.apache.cassandra" level="INFO"/>
</configuration>
EOF
}

# JVM options: Cassandra 5.0's conf/jvm-server.options and conf/jvm17-server.options, minus what only
# suits big dedicated servers (-XX:+AlwaysPreTouch, -XX:+UseNUMA, 16m G1 regions, heap dumps), plus
# the system properties bin/cassandra and cassandra-env.sh set. No JMX port is opened.
jvm_opts() {
  local jamm
  case "$GC" in
    # Cassandra 5.0's jvm17-server.options default.
    g1) GC_OPTS=(-XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
                 -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70) ;;
    # Its commented ZGC alternative: sub-millisecond pauses, for read latency (docs/scale.md).
    zgc) GC_OPTS=(-XX:+UseZGC) ;;
    *) die "DW_CASSANDRA_GC must be g1 or zgc, got '$GC'" ;;
  esac
  jamm=$(find "$LIB" -maxdepth 1 -name 'jamm-*.jar' | head -n1)
  [ -n "$jamm" ] || die "no jamm jar in $LIB (Cassandra needs it as -javaagent)"
  JVM_OPTS=(
    -Xms"$HEAP" -Xmx"$HEAP" -Xss256k
    -ea -da:net.openhft...
    -XX:+UseThreadPriorities -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem
    -XX:+ExitOnOutOfMemoryError
    "${GC_OPTS[@]}"
    ${DW_CASSANDRA_JVM_EXTRA:-}
    "-Xlog:gc:file=$LOGS/gc.log:time,uptime:filecount=3,filesize=10M"
    -Djava.net.preferIPv4Stack=true
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    -javaagent:"$jamm"
    -Djava.io.tmpdir="$CHOME/tmp"
    -Dcassandra.config="file://$CONF/cassandra.yaml"
    -Dlogback.configurationFile="file://$CONF/logback.xml"
    -Dcassandra.logdir="$LOGS"
    -Dcassandra.storagedir="$DATA"
    -Dcassandra.triggers_dir="$CONF/triggers"
    -Dcassandra-pidfile="$PIDFILE"
    -Dcassandra-foreground=yes
    -Dcassandra.skip_wait_for_gossip_to_settle=0
  )
}

# --- commands ------------------------------------------------------------------------------------

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

cmd_start() {
  local pid rport rc
  need_python
  if pid=$(live_pid); then
    rport=$(running_port)
    [ "$rport" = "$PORT" ] || die "a node (pid $pid) already runs on port $rport; stop it first to use port $PORT"
    if cql_wait "$PORT" "$TIMEOUT" "$pid" >/dev/null; then echo "ready $HOST:$PORT"; return 0; fi
    log_tail
    die "node pid $pid is running but CQL on $HOST:$PORT did not answer within ${TIMEOUT}s"
  fi
  if [ -f "$PIDFILE" ]; then log "removing stale pid file (pid $(cat "$PIDFILE") is gone)"; rm -f "$PIDFILE" "$PORTFILE"; fi
  port_busy "$PORT" && die "port $HOST:$PORT is taken by another process (set DW_CASSANDRA_PORT)"
  port_busy "$STORAGE_PORT" && die "storage port $HOST:$STORAGE_PORT is taken by another process (set DW_CASSANDRA_STORAGE_PORT)"

  JAVA=$(find_java) || die "Cassandra 5.0 needs Java 11 or 17: none found (JAVA_HOME, PATH, /usr/lib/jvm)"
  resolve
  write_conf
  jvm_opts
  # This run's log starts empty, so a failure shows this run's lines (one earlier run is kept).
  [ -f "$LOGS/system.log" ] && mv -f "$LOGS/system.log" "$LOGS/system.log.prev"
  local t0=$SECONDS
  log "starting Cassandra $VERSION on $HOST:$PORT (java $(java_major "$JAVA"), heap $HEAP, logs in $LOGS)"
  # setsid: its own session, so the caller's Ctrl-C or process-group kill does not reach it.
  # 9>&-: the start lock is not inherited by the daemon.
  # Cassandra always calls mlockall(MCL_CURRENT), which faults in and pins the whole -Xms heap (RSS
  # ~1.6 GB at once). A small RLIMIT_MEMLOCK makes that call fail with a warning; root ignores the
  # limit through CAP_IPC_LOCK, so that capability is dropped for the JVM (setpriv, util-linux).
  local launcher=(setsid)
  if [ "$(id -u)" = 0 ] && setpriv --bounding-set=-ipc_lock --inh-caps=-ipc_lock true 2>/dev/null; then
    launcher+=(setpriv --bounding-set=-ipc_lock --inh-caps=-ipc_lock)
  fi
  ( cd "$CHOME" && ulimit -S -l 64 && exec "${launcher[@]}" "$JAVA" "${JVM_OPTS[@]}" -cp "$CONF:$LIB/*" "$MAIN" \
      >"$LOGS/stdout.log" 2>&1 </dev/null 9>&- ) &
  pid=$!
  echo "$pid" >"$PIDFILE"
  echo "$PORT" >"$PORTFILE"
  rc=0
  cql_wait "$PORT" "$TIMEOUT" "$pid" >/dev/null || rc=$?
  if [ "$rc" = 0 ]; then
    log "CQL answered after $((SECONDS - t0))s"
    echo "ready $HOST:$PORT"
    return 0
  fi
  log_tail
  if [ "$rc" = 2 ]; then
    rm -f "$PIDFILE" "$PORTFILE"
    die "Cassandra (pid $pid) exited during startup (logs above, in $LOGS)"
  fi
  log "CQL did not answer within ${TIMEOUT}s: stopping pid $pid"
  stop_pid "$pid"
  die "Cassandra did not answer CQL on $HOST:$PORT within ${TIMEOUT}s (logs above, in $LOGS)"
}

stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still alive after 30s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$PIDFILE" "$PORTFILE"
}

cmd_stop() {
  local pid
  if pid=$(live_pid); then
    log "stopping pid $pid"
    stop_pid "$pid"
    echo "stopped"
  else
    rm -f "$PIDFILE" "$PORTFILE"
    echo "stopped (was not running)"
  fi
}

cmd_status() {
  local pid rport
  if ! pid=$(live_pid); then echo "stopped"; return 3; fi
  rport=$(running_port)
  (need_python) || { echo "running $HOST:$rport (pid $pid) but no python driver to check CQL"; return 3; }
  if cql_wait "$rport" 0 "$pid" >/dev/null; then echo "running $HOST:$rport (pid $pid)"; return 0; fi
  echo "not answering $HOST:$rport (pid $pid)"
  return 3
}

# One start/stop at a time (e.g. parallel test workers): they queue on this lock; status takes none.
lock() { mkdir -p "$CHOME"; exec 9>"$CHOME/.lock"; flock 9; }

case "${1:-}" in
  start) lock; cmd_start ;;
  stop) lock; cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
