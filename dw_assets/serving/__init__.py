"""Serving: playlist stores (SQLite, Redis, ScyllaDB), weekly publishing and the read-only HTTP API.

Pure logic, no Dagster: ``stores`` (the ``PlaylistStore`` interface and its three implementations),
``publish`` (write a whole week, verify, flip ``current_week``, keep N weeks), ``api`` (FastAPI app and
``serve``), ``loadtest`` (the serving benchmark's load generator).
"""

from dw_assets.serving.publish import InjectedFailure, publish_week
from dw_assets.serving.stores import PlaylistStore, StoreError, StoreUnavailable, open_store

__all__ = ["InjectedFailure", "PlaylistStore", "StoreError", "StoreUnavailable", "open_store", "publish_week"]
