"""Model versions: one per week's models, so artifacts that must agree can be checked.

``model_version = "<week>-<digest>"`` where the digest covers the training
config, the source of the code that trained it, and the versions of the
upstream artifacts it was built from. Re-running a week with the same code and
config gives the same version; any change gives a new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any


class VersionMismatch(ValueError):
    """Artifacts that must come from one model version do not."""


def _plain(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if hasattr(config, "model_dump"):
        return config.model_dump()
    return config


def model_version(week: str, configs: Iterable[Any] = (), code: Iterable[ModuleType] = (), upstream: Iterable[str] = ()) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([_plain(c) for c in configs], sort_keys=True, default=str).encode())
    for module in code:
        digest.update(inspect.getsource(module).encode())
    for version in sorted(upstream):
        digest.update(version.encode())
    return f"{week}-{digest.hexdigest()[:12]}"


def require_same_version(versions: Mapping[str, str]) -> str:
    """The one version all named artifacts share; raises naming them when they differ."""
    distinct = set(versions.values())
    if len(distinct) != 1:
        listing = ", ".join(f"{name}={version}" for name, version in sorted(versions.items()))
        raise VersionMismatch(f"artifacts from different model versions cannot be combined: {listing}")
    return distinct.pop()


def table_version(table, asset: str) -> str:
    """The one ``model_version`` of a Spark table written by a model (``user_embeddings``, ``audio_vectors``):
    a distinct over one dictionary-encoded column; raises naming ``asset`` when there is not exactly one.
    A pandas frame (a per-track table the lake read for the driver) is read the same way."""
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        versions = sorted(table["model_version"].unique()) if "model_version" in table else []
    else:
        versions = sorted(r[0] for r in table.select("model_version").distinct().collect())
    if len(versions) != 1:
        raise VersionMismatch(f"expected one model_version in {asset}, found {versions or 'none'}")
    return versions[0]


def embedding_versions(**inputs: Any) -> str:
    """The shared model version of model inputs that must agree (raises naming the odd ones): artifacts,
    and tables with a ``model_version`` column (``user_embeddings``, ``track_embeddings``, ``audio_vectors``)."""
    from dw_assets.lake.storage import Artifact

    return require_same_version({name: value.model_version if isinstance(value, Artifact) else table_version(value, name)
                                 for name, value in inputs.items()})
