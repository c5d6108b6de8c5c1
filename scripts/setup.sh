#!/usr/bin/env bash
# Sets up a fresh clone: Java 17 for Spark and Cassandra, redis-server for the store tests and Debian's chromium
# for the UI test (if missing), a virtualenv with the pinned packages, Spark's pinned S3 jars.
# Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v java >/dev/null 2>&1; then
  echo "[setup] java not found: installing openjdk-17-jre-headless" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi

if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
  echo "[setup] redis-server not found: installing it (the Redis store tests start their own on loopback)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
fi

# The UI test drives this browser through Playwright; Playwright's own browser downloads are never used.
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  echo "[setup] chromium not found: installing it (the UI test loads the asset graph in headless chromium)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "[setup] installing pinned packages into .venv (constraints.txt)" >&2
  start=$(date +%s)
  # This machine's pip config lists local indexes that may be empty: drop those warnings.
  quiet() { "$@" 2> >(grep -v -e "is ignored: it is neither" -e BuildBackendWarning >&2); }
  quiet .venv/bin/python -m pip install -q --upgrade pip
  # torch==2.13.0: a local CPU wheel (2.13.0+cpu) where pip's find-links has one, else the CUDA build from
  # PyPI with its nvidia-* wheels (runs on the CPU too); constraints pin those and everything else.
  quiet .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
  echo "[setup] installed in $(( $(date +%s) - start ))s" >&2
fi

# Spark's s3a:// jars (hadoop-aws + the AWS SDK bundle, pinned) from Maven Central into .cache/spark-jars;
# a no-op once there. Cassandra's jars are resolved the same way by `scripts/cassandra.sh start`.
scripts/spark-jars.sh
