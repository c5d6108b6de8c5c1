"""dw_assets.procfs: the /proc readers the benches use to follow process trees."""

import os
import subprocess
import sys

from dw_assets import procfs


def test_parent_children_and_cpu_of_real_processes():
    child = subprocess.Popen([sys.executable, "-c", "import time; sum(range(10**7)); time.sleep(30)"])
    try:
        assert procfs.parent_pid(os.getpid()) == os.getppid()
        assert procfs.parent_pid(child.pid) == os.getpid()
        assert child.pid in procfs.children()[os.getpid()]
        assert procfs.cpu_seconds(os.getpid()) > 0
    finally:
        child.kill()
        child.wait()
    # A process that is gone has no parent and no CPU figure.
    assert procfs.parent_pid(child.pid) == -1 and procfs.cpu_seconds(child.pid) is None
    assert procfs.parent_pid(2**22 + 12345) == -1  # never existed
