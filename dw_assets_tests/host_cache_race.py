"""A process of test_host_cache's race: its own module, so a spawned child imports only numpy and the cache."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from dw_assets.lake import host_cache


def _slow_write(log: str):
    """A writer that records who wrote and takes long enough for the other processes to race it."""

    def write(folder: Path) -> None:
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        np.save(folder / "vectors.npy", np.arange(1_000, dtype=np.float32).reshape(100, 10))

    return write


def race(root: str, log: str, start, out) -> None:
    start.wait()
    folder = host_cache.materialize("digest0001", _slow_write(log), root)
    out.put(float(np.load(folder / "vectors.npy", mmap_mode="r").sum()))
