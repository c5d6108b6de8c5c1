"""The deployment settings (``dw_assets.settings``): read when asked, errors that name the variable,
and README's tables listing exactly the settings the package reads.

Fast: no Spark, no run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dw_assets import settings
from dw_assets.lake import driver_guard
from dw_assets.settings import SETTINGS, SettingError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").rglob("*.md"))]
NAME = re.compile(r"\b(?:DW_[A-Z0-9_]*[A-Z0-9]|DAGSTER_HOME)\b")
# Modules that still read a DW_* variable themselves; each is a change its owner has to make.
NOT_YET: set[str] = set()


def test_a_setting_is_read_when_asked_not_at_import(monkeypatch):
    monkeypatch.delenv("DW_QUEUE_WAIT_S", raising=False)
    assert settings.get("DW_QUEUE_WAIT_S") == 1800.0
    monkeypatch.setenv("DW_QUEUE_WAIT_S", " 12 ")
    assert settings.get("DW_QUEUE_WAIT_S") == 12.0
    monkeypatch.setenv("DW_QUEUE_WAIT_S", "  ")  # blank is unset
    assert settings.get("DW_QUEUE_WAIT_S") == 1800.0


@pytest.mark.parametrize(("name", "bad", "why"), [
    ("DW_QUEUE_WAIT_S", "soon", "must be a finite number >= 0"),
    ("DW_SPARK_SHUFFLE_PARTITIONS", "0", "must be a positive integer"),
    ("DW_SPARK_DRIVER_MEMORY", "2 gigs", "must be a JVM memory size"),
    ("DW_SPARK_JARS_SHARED", "maybe", "must be 1 or 0"),
    ("DW_FIRST_WEEK", "2026-01-06", "must be a Monday"),
    ("DW_GC_FREEZE", "2", "must be 1 or 0"),
])
def test_a_bad_value_is_an_error_naming_the_setting_and_the_value(monkeypatch, name, bad, why):
    monkeypatch.setenv(name, bad)
    with pytest.raises(SettingError, match=f"^{name} {why}.*, got '{re.escape(bad)}'$"):
        settings.get(name)


def test_the_modules_report_the_setting_too(monkeypatch):
    monkeypatch.setenv("DW_DRIVER_ROW_LIMIT", "many")
    with pytest.raises(ValueError, match="DW_DRIVER_ROW_LIMIT must be a positive integer, got 'many'"):
        driver_guard.row_limit()


def test_a_secret_is_never_echoed(monkeypatch):
    monkeypatch.setenv("DW_ADMIN_TOKEN", "  the-token-0123456789 ")
    assert settings.get("DW_ADMIN_TOKEN") == "  the-token-0123456789 "  # taken as set, not stripped
    secret = settings.Setting("DW_TEST_SECRET", "a test secret", parse=settings.positive_int, secret=True)
    monkeypatch.setenv("DW_TEST_SECRET", "hunter2")
    with pytest.raises(SettingError) as error:
        secret.get()
    assert "hunter2" not in str(error.value) and "DW_TEST_SECRET" in str(error.value)


def test_an_unknown_setting_is_a_clear_error():
    with pytest.raises(KeyError, match="DW_NOPE is not a setting"):
        settings.get("DW_NOPE")


def test_resources_read_their_settings_through_dagster_env_vars(monkeypatch):
    from dagster import EnvVar

    from dw_assets.definitions import location_resources

    monkeypatch.setenv("DW_LAKE", "/tmp/dw-settings-test-lake")
    monkeypatch.setenv("DW_STORE_URL", "sqlite:////tmp/dw-settings-test.db")
    monkeypatch.delenv("DW_S3_ENDPOINT_URL", raising=False)
    resources = location_resources()
    assert resources["lake"].root == EnvVar("DW_LAKE") and isinstance(resources["lake"].root, EnvVar)
    assert isinstance(resources["playlist_store"].url, EnvVar)
    assert resources["io_manager"].lake is resources["lake"]
    monkeypatch.setenv("DW_STORE_URL", "redis://user:pw@127.0.0.1/0")
    with pytest.raises(ValueError, match="DW_REDIS_PASSWORD"):  # checked now, not at the first run
        location_resources()


def _table_names(path: Path, heading: str) -> list[set[str]]:
    """The setting names in the first cell of each Markdown table under ``heading``, one set per table."""
    text = path.read_text()
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"{path.name} has no '## {heading}' section"
    tables: list[set[str]] = []
    in_table = False
    for line in match.group(1).splitlines():
        if line.startswith("|"):
            if not in_table:
                tables.append(set())
            in_table = True
            tables[-1] |= set(NAME.findall(line.split("|")[1]))
        else:
            in_table = False
    return tables


def _used_outside_the_package(name: str) -> bool:
    places = [*(ROOT / "scripts").rglob("*"), *(ROOT / "dw_assets_tests").rglob("*.py"), ROOT / "Makefile"]
    return any(p.is_file() and name in p.read_text(errors="ignore") for p in places)


def test_readme_lists_exactly_the_settings_and_the_tools_own_variables():
    package, tools = _table_names(README, "Configuration")[:2]
    assert package - {"DAGSTER_HOME"} == set(SETTINGS) - {"DAGSTER_HOME"}, (
        f"README's Configuration table misses {sorted(set(SETTINGS) - package)}, "
        f"lists {sorted(package - set(SETTINGS))} that dw_assets.settings does not define")
    assert not tools & set(SETTINGS), f"settings of the package listed as tools' own: {sorted(tools & set(SETTINGS))}"
    unused = sorted(n for n in tools if not _used_outside_the_package(n))
    assert not unused, f"README lists scripts' / tests' variables nothing reads: {unused}"


def test_every_variable_in_a_docs_table_exists():
    for path in DOCS:
        for line in path.read_text().splitlines():
            if not line.startswith("|"):
                continue
            for name in NAME.findall(line):
                assert name in SETTINGS or _used_outside_the_package(name), (
                    f"{path.relative_to(ROOT)} documents {name}, which neither dw_assets.settings nor a "
                    "script or test reads")


def test_the_package_reads_its_settings_through_the_helper():
    reads = re.compile(r"os\.environ\.get\(|os\.getenv\(|os\.environ\[[^\]]+\](?!\s*=[^=])")
    offenders = []
    for path in sorted((ROOT / "dw_assets").rglob("*.py")):
        where = str(path.relative_to(ROOT))
        if where == "dw_assets/settings.py" or where in NOT_YET:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if reads.search(line) and "DW_" in line or re.search(r"os\.environ\.get\(\s*[A-Z_]+_ENV", line):
                offenders.append(f"{where}:{number}: {line.strip()}")
    assert not offenders, "read DW_* variables through dw_assets.settings:\n" + "\n".join(offenders)
