"""Host-local cache of shipped model sets: written once per host, memory-mapped by every Python worker.

A Spark executor with c cores runs c Python workers. Unpickling a shipped model set in each of them holds
c copies per host (at 100 M tracks the candidate models are ~100 GB: the IVF index ~26 GB, item2vec vectors
25.6 GB, the neighbour table 51 GB). Instead the first worker on a host that needs a model set writes it as
plain files (faiss's own format, ``.npy``) into ``<cache root>/<digest>``, and every worker opens those files
memory-mapped, so the OS page cache holds one copy per host, shared by all its workers.

Writing is atomic and happens once per digest and host: a worker takes an exclusive ``flock`` on
``.<digest>.lock``, writes into a temporary folder and ``os.rename``-s it to ``<digest>``; a worker that
finds ``<digest>`` needs neither the lock nor the shipped bytes, and one that waited for the lock finds it
complete. A writer that died leaves only a temporary folder, removed by the next writer of that digest.
The newest ``KEEP`` digests (by last use) stay; older ones are deleted when a new one is written (a
worker still mapping one keeps its pages: Linux frees a deleted file once it is unmapped).

The cache root: ``DW_MODEL_CACHE_DIR``, else ``<system temp dir>/dw-model-cache``; it must be a local disk
of the host (``flock`` is host-local) with room for ``KEEP`` model sets.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from dw_assets import settings

KEEP = 4  # model sets kept per host: this week's candidate and ranking sets, and a control arm's two beside them
_KEY = re.compile(r"[0-9A-Za-z_-]{1,64}")


def cache_root() -> Path:
    """The folder holding one sub-folder per cached digest (``DW_MODEL_CACHE_DIR`` or the temp dir's)."""
    return Path(settings.get("DW_MODEL_CACHE_DIR") or Path(tempfile.gettempdir()) / "dw-model-cache")


def materialize(key: str, write: Callable[[Path], None], root: str | Path | None = None, keep: int = KEEP) -> Path:
    """The complete folder ``<root>/<key>``, calling ``write(folder)`` to fill it only if no process on this
    host has done so; ``write`` is never called when the folder exists, and by one process at a time.

    key: a content digest of what ``write`` writes (``payload_key``), so a folder never goes stale.
    """
    if not _KEY.fullmatch(key):
        raise ValueError(f"cache key must be 1-64 characters of [0-9A-Za-z_-], got {key!r}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(root) if root is not None else cache_root()
    final = root / key
    if final.is_dir():
        _touch(final)
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{key}.lock"):
        if final.is_dir():  # written while this process waited for the lock
            return final
        for stale in root.glob(f".tmp-{key}-*"):  # a writer that died; no other one runs (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        try:
            write(scratch)
            os.rename(scratch, final)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    prune(root, keep)
    return final


def cached(key: str, root: str | Path | None = None) -> bool:
    """Whether this host already holds ``key`` complete."""
    return ((Path(root) if root is not None else cache_root()) / key).is_dir()


def prune(root: str | Path, keep: int = KEEP) -> list[str]:
    """Delete all but the ``keep`` most recently used digests under ``root``; returns the deleted keys."""
    folders = [p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")]
    folders.sort(key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
    deleted = []
    for folder in folders[keep:]:
        with _locked(Path(root) / f".{folder.name}.lock", wait=False) as held:
            if held:  # skip one being written right now
                shutil.rmtree(folder, ignore_errors=True)
                deleted.append(folder.name)
    return deleted


def _touch(folder: Path) -> None:
    """Mark ``folder`` as used now (pruning keeps the most recently used)."""
    with suppress(OSError):  # pruned meanwhile or a read-only cache: nothing to record
        os.utime(folder)


@contextmanager
def _locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock on ``path`` for the block; with wait=False, yields False if another process holds it."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_array(path: str | Path, mmap: bool = True) -> np.ndarray:
    """An ``.npy`` file of the host's copy; with ``mmap`` memory-mapped read-only, but as a plain
    ``ndarray`` view of the mapping: indexing an ``np.memmap`` goes through its Python ``__getitem__``
    and wraps every result as a memmap (~9 % of the ranking's CPU on the demo), a view does neither."""
    array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    return array.view(np.ndarray) if isinstance(array, np.memmap) else array


def is_mapped(array: np.ndarray) -> bool:
    """Whether ``array`` reads a memory-mapped file (``load_array``'s views included)."""
    while isinstance(array, np.ndarray):
        if isinstance(array, np.memmap):
            return True
        array = array.base
    return False
