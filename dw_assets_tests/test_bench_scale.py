"""``dw bench scale`` counts only its own cluster's executors: the tests' cluster may share the host."""

from __future__ import annotations

import subprocess
import sys
import time

from dw_assets.bench.scale import EXECUTOR_MARK, executor_pids


def test_executors_of_another_master_are_not_counted():
    # A process that looks like an executor (its command line carries the mark) under no worker.
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", EXECUTOR_MARK])
    try:
        deadline = time.monotonic() + 10  # until the child has exec'd (its command line is the parent's before)
        while fake.pid not in executor_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.pid in executor_pids()
        assert fake.pid not in executor_pids("spark://127.0.0.1:1")
    finally:
        fake.kill()
        fake.wait()
