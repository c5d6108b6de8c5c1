"""The asset graph as reviewed: a change to assets, deps, partitions or checks shows up in the diff.

Regenerate after an intended change with ``DW_UPDATE_SNAPSHOTS=1 pytest dw_assets_tests/test_definitions.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dw_assets.definitions import defs

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def asset_graph_summary() -> dict:
    graph = defs.resolve_asset_graph()
    summary = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        summary[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": type(node.partitions_def).__name__ if node.partitions_def else None,
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "checks": sorted(
                f"{c.name}{' (blocking)' if graph.get(c).blocking else ''}" for c in node.check_keys
            ),
            "layer": node.metadata.get("dw/layer"),
        }
    return summary


def test_asset_graph_matches_the_reviewed_snapshot():
    summary = asset_graph_summary()
    if os.environ.get("DW_UPDATE_SNAPSHOTS") or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    assert summary == json.loads(SNAPSHOT.read_text())


def test_every_weekly_table_has_a_layer_and_a_schema_check():
    for name, node in asset_graph_summary().items():
        if node["group"] == "serving":  # lives in the serving store, checked against the lake
            assert node["layer"] is None and node["checks"], name
            continue
        assert node["layer"] in {"bronze", "silver", "gold", "models", "reports"}, name
        if node["layer"] not in ("models", "reports"):  # model artifacts and reports are files, not tables
            assert any(check.startswith("pandera_schema") for check in node["checks"]), name
        # every asset is weekly but the upload sensor's, partitioned by upload date
        expected = "DynamicPartitionsDefinition" if name == "new_track_vectors" else "WeeklyPartitionsDefinition"
        assert node["partitions"] == expected, name


def test_dw_help_prints_no_dagster_warnings(tmp_path):
    dw = str(Path(sys.executable).with_name("dw"))
    done = subprocess.run([dw, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    assert "Usage: dw" in done.stdout
    # A command that loads the code location's assets (here up to its error: no landed world) prints none either.
    done = subprocess.run([dw, "run", "--lake", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert "manifest.json not found" in done.stderr, done.stderr
    assert "Warning" not in done.stderr, done.stderr


def test_no_asset_module_imports_another():
    """Asset modules are thin wrappers, not libraries: shared logic lives in Dagster-free modules."""
    import ast

    package = Path(__file__).resolve().parents[1] / "dw_assets"
    asset_modules = {p for p in package.rglob("*.py") if p.name == "assets.py" or p.name.endswith("_assets.py")}
    names = {".".join(p.relative_to(package.parent).with_suffix("").parts) for p in asset_modules}
    offenders = []
    for path in sorted(asset_modules):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in names:
                offenders.append(f"{path.relative_to(package.parent)} imports {node.module}")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.relative_to(package.parent)} imports {a.name}" for a in node.names if a.name in names]
    assert len(names) >= 7 and offenders == []


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports at run time, wherever the import is (a function-level
    import that closes a cycle only hides it); imports under ``if TYPE_CHECKING:`` are not run."""
    import ast

    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dw_assets"):
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & modules


def test_no_import_cycle_between_the_packages_modules():
    """Module A importing B while B imports A (directly or around a loop) is refused, function-level
    imports included: each domain module sits above the ones it uses."""
    package = Path(__file__).resolve().parents[1] / "dw_assets"
    paths = {".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in package.rglob("*.py")}
    graph = {m: _imported_modules(p, set(paths)) - {m} for m, p in paths.items()}
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in path:
                cycles.append(path[path.index(target):] + [target])
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])

