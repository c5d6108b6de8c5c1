"""The docs name what the code defines: asset groups, jobs, schedules, sensors and `dw` commands.

Fast: loads the Definitions object and the click group, reads the Markdown; no Spark, no run. A job
added without a row in docs/architecture.md's code-location table, or a documented command that
does not exist, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from dw_assets.cli import main as dw
from dw_assets.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
CONTRACTS = ROOT / "docs" / "contracts.md"
DOCS = sorted([README, *(ROOT / "docs").rglob("*.md")])
# Dagster's own API names that happen to end like a job / schedule / sensor name.
DAGSTER_API = {"define_asset_job", "execute_job", "build_schedule_from_partitioned_job"}
KINDS = ("group", "job", "schedule", "sensor")


def defined() -> dict[str, set[str]]:
    graph = defs.resolve_asset_graph()
    return {
        "group": {graph.get(key).group_name for key in graph.get_all_asset_keys()},
        # Dagster's implicit asset job (the UI's "Materialize" button) is not ours to document.
        "job": {job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__")},
        "schedule": {s.name for s in defs.schedules},
        "sensor": {s.name for s in defs.sensors},
    }


def section(path: Path, heading: str) -> str:
    """The text under ``heading`` (a ``## `` line) up to the next heading of the same level."""
    text = path.read_text()
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"{path.name} has no '## {heading}' section"
    return match.group(1)


def code_location_table() -> dict[str, set[str]]:
    rows: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for line in section(ARCHITECTURE, "The code location at a glance").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] in rows:
            rows[cells[0]].add(cells[1].strip("`"))
    return rows


def test_the_code_location_table_lists_exactly_what_definitions_holds():
    documented, actual = code_location_table(), defined()
    for kind in KINDS:
        assert documented[kind] == actual[kind], (
            f"{kind}s: not documented in docs/architecture.md {sorted(actual[kind] - documented[kind])}, "
            f"documented but not defined {sorted(documented[kind] - actual[kind])}")


def test_every_job_schedule_and_sensor_named_in_the_docs_exists():
    actual = defined()
    names = actual["job"] | actual["schedule"] | actual["sensor"]
    for path in DOCS:
        for name in re.findall(r"`([A-Za-z0-9_]+_(?:job|schedule|sensor))`", path.read_text()):
            assert name in names or name in DAGSTER_API, f"{path.relative_to(ROOT)} names `{name}`, which is not defined"


def test_every_list_of_groups_in_the_docs_names_real_groups_and_a_long_one_names_them_all():
    groups = defined()["group"]
    lists = 0
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"\bgroups?\s*\(?\s*((?:`[a-z0-9_]+`(?:\s*(?:,|\+|and)\s*|\s+)?)+)", text):
            named = re.findall(r"`([a-z0-9_]+)`", match.group(1))
            where = f"{path.relative_to(ROOT)}: {match.group(0)!r}"
            assert set(named) <= groups, f"{where} names groups that do not exist: {sorted(set(named) - groups)}"
            if len(named) >= 5:  # an enumeration, not an aside: it must be complete
                lists += 1
                assert set(named) == groups, f"{where} misses groups {sorted(groups - set(named))}"
    assert lists >= 2, "README and operations.md each enumerate the groups"


# -- the `dw` command line ------------------------------------------------------------------------------


def leaf_commands(group: click.Group = dw, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    out: dict[tuple[str, ...], click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out |= leaf_commands(command, (*prefix, name))
        else:
            out[(*prefix, name)] = command
    return out


def documented_commands(path: Path, heading: str) -> dict[tuple[str, ...], str]:
    """Each ``dw ...`` entry of the first ``text`` block under ``heading``: command path -> its synopsis
    (continuation lines joined, a trailing ``# comment`` dropped). ``dw bench a|b ...`` names a and b."""
    block = re.search(r"```text\n(.*?)```", section(path, heading), flags=re.S)
    assert block, f"{path.name} '{heading}' has no ```text block"
    entries: list[str] = []
    for line in block.group(1).splitlines():
        line = line.split("  #")[0].rstrip()
        if line.startswith("dw "):
            entries.append(line)
        elif line.strip() and entries:
            entries[-1] += " " + line.strip()
    commands: dict[tuple[str, ...], str] = {}
    for entry in entries:
        words = entry.split()[1:]
        path_words = []
        for word in words:
            if word.startswith(("-", "[")) or not re.fullmatch(r"[a-z][a-z0-9|-]*", word):
                break
            path_words.append(word)
        *parents, last = path_words
        for alternative in last.split("|"):
            commands[(*parents, alternative)] = entry
    return commands


def options_of(command: click.Command) -> dict[str, click.Parameter]:
    return {opt: p for p in command.params if isinstance(p, click.Option) for opt in (*p.opts, *p.secondary_opts)}


def check_synopsis(key: tuple[str, ...], synopsis: str, command: click.Command, complete: bool) -> None:
    name = "dw " + " ".join(key)
    options = options_of(command)
    written = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", synopsis))
    assert written <= set(options), f"`{name}` documents options it does not have: {sorted(written - set(options))}"
    if complete:
        missing = {p.opts[0] for p in command.params if isinstance(p, click.Option)
                   and not p.hidden and not (set(p.opts) | set(p.secondary_opts)) & written}
        assert not missing, f"`{name}`'s synopsis misses options {sorted(missing)}"
    for option, value in re.findall(r"(--[a-z][a-z0-9-]*) ([A-Za-z0-9_.]+(?:\|[A-Za-z0-9_.]+)+)", synopsis):
        choices = getattr(options[option].type, "choices", None)
        if choices is not None:
            assert set(value.split("|")) <= set(choices), f"`{name} {option}`: {value} vs the choices {choices}"


def test_the_readme_command_line_lists_every_dw_command_with_real_options():
    documented, actual = documented_commands(README, "Command line"), leaf_commands()
    assert set(documented) == set(actual), (
        f"README: undocumented {sorted(' '.join(k) for k in set(actual) - set(documented))}, "
        f"not a command {sorted(' '.join(k) for k in set(documented) - set(actual))}")
    for key, synopsis in documented.items():
        # Every option of the commands people run; the benches show their main options only.
        check_synopsis(key, synopsis, actual[key], complete=key[0] != "bench")


def test_the_contracts_command_line_names_every_command_with_real_options():
    documented, actual = documented_commands(CONTRACTS, "Command line"), leaf_commands()
    assert set(documented) == set(actual), (
        f"contracts.md: undocumented {sorted(' '.join(k) for k in set(actual) - set(documented))}, "
        f"not a command {sorted(' '.join(k) for k in set(documented) - set(actual))}")
    for key, synopsis in documented.items():
        if key[0] != "bench":
            check_synopsis(key, synopsis, actual[key], complete=True)


# -- the docs stand alone ---------------------------------------------------------------------------------


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but hyphens dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_between_docs_resolve_and_no_absent_document_is_cited(path):
    text = path.read_text()
    assert "DESIGN" not in text and "§" not in text, f"{path.relative_to(ROOT)} cites a document not in the repository"
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        linked = (path.parent / target).resolve() if target else path
        assert linked.exists(), f"{path.relative_to(ROOT)} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{path.relative_to(ROOT)} links to {target}#{anchor}: no such heading"
