"""The simulator's hidden listeners in a lake (Dagster-free): whether a lake has them, loading them, and
why a week has no north star without them.

Only a world from ``dw simulate`` has them, under LAKE/simulator/ on a local lake (an S3 lake never holds
them: the simulated A/B and the north star need a local world). The evaluation assets, ``dw evaluate``,
``dw ab`` and the evaluation job's selection (``automation/schedules.py``) all ask here.
"""

from __future__ import annotations

from pathlib import Path

from dw_assets.lake.storage import Lake
from dw_assets.simulate import Truth, load_truth


def has_simulator_truth(lake_root: Path | str) -> bool:
    """Whether the lake at ``lake_root`` (a directory or ``s3://...``) holds the simulator's truth."""
    return not str(lake_root).startswith("s3://") and (Path(lake_root) / "simulator").is_dir()


def simulator_truth(lake: Lake) -> Truth:
    """The simulated world's hidden listeners (LAKE/simulator/); FileNotFoundError where there are none."""
    if not has_simulator_truth(lake.root):
        raise FileNotFoundError(
            f"the simulated A/B test needs the simulator's ground truth under {lake.root}/simulator/ "
            "(written by `dw simulate`); a real deployment runs the experiment live instead")
    return load_truth(lake.root)


def no_north_star_reason(lake: Lake) -> str:
    """Why a week has no north-star rows: the lake holds no simulator truth, or its sample was cut to nothing."""
    if not has_simulator_truth(lake.root):
        return f"no simulator truth under {lake.root}/simulator/ (only a simulated world has hidden listeners)"
    return "no user fitted the north star's sample caps (max_users, max_rows, DW_DRIVER_ROW_LIMIT)"
