"""torch's intra-op thread count as a training setting, not a property of the process.

A float reduction split over a different number of threads adds in a different order, so the same
seed trained with 1 and with 2 threads gives weights ~1e-3 apart: a test process that set 1 thread
and ``dw run`` on all cores would build different models. The training configs therefore name their
thread count and the training functions run under ``torch_threads(config.threads)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` intra-op threads (None: the process's setting), then restore it."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 (or None: the process's setting), got {threads}")
