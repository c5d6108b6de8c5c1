"""One planner for every way a week runs: ``dw run``, ``dw backfill``, the schedules and the UI's run guard.

:func:`plan_weeks` is a pure function: the target weeks, the landed weeks and what the instance says
is materialized in, the ordered steps out, each a registered job (``weekly_discover_job`` or
``weekly_evaluation_job``), a part of it and one week. Nothing here runs Dagster; the runner
(``automation/runner.py``) executes the steps in process, the schedules turn them into run requests.

The rules it encodes:

- week W's ranker learns from week W-1's candidates (labelled by W's listening): W-1's
  ranker-training assets are built first when the instance lacks them;
- the first landed week (W-1 has not landed) has no week to learn from: its playlists come from a
  stand-in ranker (retrieval order through the same re-ranking; ``ranking/batch.py``);
- week W's models read a 12-week window (W-1's read W-12..W-1): landed weeks of it whose interactions
  are missing are ingested first;
- week W's evaluation reads week W+1's listening (the discovery holdout): it is planned only when
  W+1 has landed, after the step that ingests W+1;
- a failed week stops the weeks after it (they would build on a hole): :func:`stopped_by`.

Sizes: week keys and asset names only (a few hundred weeks at most); nothing here reads data.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from dw_assets.calendar import HISTORY_WEEKS, shift_week, week_range, week_start

DISCOVER_JOB = "weekly_discover_job"
EVALUATION_JOB = "weekly_evaluation_job"
# What one week contributes to later weeks' history windows (a step's part "ingest").
PER_WEEK_ASSETS = (
    "track_catalog", "user_directory", "user_playlists", "raw_play_events", "quarantined_events",
    "interactions", "flagged_activity",
)
# What week W's ranker reads from week W-1, with what they need (part "ranker_training").
RANKER_TRAINING_ASSETS = ("candidates", "track_stats", "user_profiles")
# Parts of a step: which assets of its job it runs.
WEEK, INGEST, RANKER_TRAINING, EVALUATION = "week", "ingest", "ranker_training", "evaluation"
STAND_IN_REASON = (
    "first landed week: its ranker would learn from week {previous}'s candidates labelled by this week's "
    "listening and week {previous} has not landed, so its playlists come from a stand-in ranker (retrieval "
    "order through the same re-ranking)"
)


class PlanError(ValueError):
    """The targets cannot be planned (a week that has not landed, a range out of order)."""


@dataclass(frozen=True)
class Step:
    """One run: ``part`` of ``job`` for ``week``.

    ``part``: ``week`` (the whole job), ``ingest`` (``PER_WEEK_ASSETS``), ``ranker_training``
    (``RANKER_TRAINING_ASSETS`` and what they need, less the ingest) or ``evaluation`` (the whole
    evaluation job). ``why``: one line for the log. ``stand_in``: the week's playlists come from the
    stand-in ranker (the first landed week).
    """

    job: str
    week: str
    part: str
    why: str
    stand_in: bool = False

    @property
    def key(self) -> str:
        """A stable name (run keys, logs): ``<week>:<part>``."""
        return f"{self.week}:{self.part}"


@dataclass(frozen=True)
class Plan:
    """The steps in order; ``stopped``: target weeks left out because an earlier week failed."""

    steps: tuple[Step, ...]
    stopped: tuple[str, ...] = ()
    reason: str = ""

    def weeks(self) -> list[str]:
        """The weeks that get a whole-week step, in order."""
        return [s.week for s in self.steps if s.part == WEEK]


@dataclass
class _Built:
    """What the instance has plus what earlier steps of the plan build: asset -> weeks."""

    have: dict[str, set[str]] = field(default_factory=dict)

    def has(self, asset: str, week: str) -> bool:
        return week in self.have.get(asset, ())

    def add(self, week: str, *assets: str) -> None:
        for asset in assets:
            self.have.setdefault(asset, set()).add(week)


def weeks_from_to(first_week: str, last_week: str) -> list[str]:
    """The week keys ``first_week``..``last_week``, both included (a command's --from/--to);
    PlanError for a bad key or order."""
    try:
        span = week_start(last_week) - week_start(first_week)
    except ValueError as exc:
        raise PlanError(str(exc)) from exc
    if last_week < first_week:
        raise PlanError(f"--to {last_week} is before --from {first_week}")
    return week_range(first_week, span.days // 7 + 1)


def window(week: str) -> list[str]:
    """The week keys of ``week``'s 12-week history window, ``week`` included."""
    return [shift_week(week, -offset) for offset in range(HISTORY_WEEKS - 1, -1, -1)]


def is_first_landed(week: str, landed: Collection[str]) -> bool:
    """Week W has no landed week before it: no ranker can be trained for it."""
    return shift_week(week, -1) not in landed


def plan_weeks(
    targets: Iterable[str],
    landed: Collection[str],
    materialized: Mapping[str, Collection[str]],
    *,
    evaluate: bool = True,
    rebuild_history: bool = False,
    failed: Collection[str] = (),
) -> Plan:
    """The ordered steps that build every target week whole (and evaluate it when its holdout has landed).

    ``targets``: week keys; ``landed``: the landing zone's weeks; ``materialized``: asset name -> the
    weeks the instance has (``interactions``, ``candidates``, the ranker-training assets);
    ``evaluate``: plan week W's evaluation when W+1 has landed; ``rebuild_history``: rebuild the
    earlier weeks a target needs even when they are materialized; ``failed``: weeks whose last run
    failed: the targets after the earliest of them are not planned (``Plan.stopped``).
    """
    targets = sorted(set(targets))
    landed = set(landed)
    missing = [w for w in targets if w not in landed]
    if missing:
        raise PlanError(f"week(s) {', '.join(missing)} have not landed (landed: {', '.join(sorted(landed)) or 'none'})")
    stop = stopped_by_any(targets, failed)
    stopped = tuple(w for w in targets if stop and w > stop)
    targets = [w for w in targets if w not in stopped]
    built = _Built({name: set(weeks) for name, weeks in materialized.items()})
    if rebuild_history:  # earlier weeks are rebuilt once, as if the instance had none of them
        built = _Built()
    steps: list[Step] = []
    for number, week in enumerate(targets):
        previous = shift_week(week, -1)
        stand_in = is_first_landed(week, landed)
        # Week W-1's models read W-12..W-1 and W's read W-11..W: both windows' landed weeks, oldest first.
        needed = sorted({k for k in window(previous) + window(week) if k in landed and k < week})
        for earlier in needed:
            if not built.has("interactions", earlier):
                steps.append(Step(DISCOVER_JOB, earlier, INGEST, f"history of week {week}"))
                built.add(earlier, *PER_WEEK_ASSETS)
        if not stand_in and not built.has("candidates", previous):
            steps.append(Step(DISCOVER_JOB, previous, RANKER_TRAINING,
                              f"week {week}'s ranker learns from week {previous}'s candidates"))
            built.add(previous, *RANKER_TRAINING_ASSETS)
        why = STAND_IN_REASON.format(previous=previous) if stand_in else "the week"
        steps.append(Step(DISCOVER_JOB, week, WEEK, why, stand_in=stand_in))
        built.add(week, *PER_WEEK_ASSETS, *RANKER_TRAINING_ASSETS, "ranked_playlists")
        # The evaluation of W after the step that ingests W+1: the next target's week step, else an ingest.
        # The first landed week has none: its control arm (week W-1's models) does not exist.
        if evaluate and not stand_in and shift_week(week, 1) in landed:
            steps.extend(_evaluation_steps(week, targets[number + 1:], built))
    # Evaluations deferred to the next target's week step go right after it.
    return Plan(tuple(_place_evaluations(steps)), stopped,
                f"week {stop} failed: the weeks after it build on it" if stopped else "")


def plan_evaluation(week: str, landed: Collection[str], materialized: Mapping[str, Collection[str]], *,
                    refresh: bool = False) -> Plan:
    """The steps that evaluate a week that is built (`dw evaluate`, `dw ab`), by ``plan_weeks``' rules: the
    ingest of its holdout week W+1 when the instance lacks it, then the evaluation; no step when the week
    has an evaluation already, unless ``refresh``. ``materialized`` as for ``plan_weeks``, with
    ``ranked_playlists`` and ``offline_evaluation``."""
    landed = set(landed)
    holdout = shift_week(week, 1)
    if week not in materialized.get("ranked_playlists", ()):
        raise PlanError(f"week {week} has no playlists: build it first (`dw run --week {week}`)")
    if is_first_landed(week, landed):
        raise PlanError(f"week {week} is the first landed week: its evaluation has no control arm (week "
                        f"{shift_week(week, -1)}'s models), so it has none")
    if holdout not in landed and holdout not in materialized.get("interactions", ()):
        raise PlanError(f"week {week} cannot be evaluated yet: its holdout week {holdout} has not landed")
    if not refresh and week in materialized.get("offline_evaluation", ()):
        return Plan(())
    built = _Built({name: set(weeks) for name, weeks in materialized.items()})
    return Plan(tuple(_evaluation_steps(week, [], built)))


def _evaluation_steps(week: str, later_targets: list[str], built: _Built) -> list[Step]:
    holdout = shift_week(week, 1)
    step = Step(EVALUATION_JOB, week, EVALUATION, f"holdout week {holdout} has landed")
    if holdout in later_targets:
        return [step]  # placed after the holdout's own week step by _place_evaluations
    ingest = [] if built.has("interactions", holdout) else [
        Step(DISCOVER_JOB, holdout, INGEST, f"holdout of week {week}'s evaluation")]
    built.add(holdout, *PER_WEEK_ASSETS)
    return [*ingest, step]


def _place_evaluations(steps: list[Step]) -> list[Step]:
    """Move each evaluation step whose holdout week is built by a later week step right after that step."""
    ordered: list[Step] = []
    waiting: dict[str, Step] = {}  # holdout week -> evaluation step
    week_steps = {s.week for s in steps if s.part == WEEK}
    for step in steps:
        holdout = shift_week(step.week, 1)
        if step.part == EVALUATION and holdout in week_steps and not _ingested_before(ordered, holdout):
            waiting[holdout] = step
            continue
        ordered.append(step)
        if step.part == WEEK and step.week in waiting:
            ordered.append(waiting.pop(step.week))
    return ordered + list(waiting.values())


def _ingested_before(steps: list[Step], week: str) -> bool:
    return any(s.week == week and s.part in (INGEST, WEEK) for s in steps)


def stopped_by_any(weeks: Iterable[str], failed: Collection[str]) -> str | None:
    """The earliest failed week at or before the last of ``weeks`` (None: nothing failed)."""
    weeks = sorted(weeks)
    earlier = sorted(w for w in failed if weeks and w <= weeks[-1])
    return earlier[0] if earlier else None


def stopped_by(week: str, earlier_runs: Mapping[str, str]) -> str | None:
    """Why a run of ``week`` must not start: an earlier week of the same backfill failed or was canceled.

    ``earlier_runs``: week -> status of the latest run of that week in the backfill ("SUCCESS",
    "FAILURE", "CANCELED", ...). None when the run may go on.
    """
    failed = sorted(w for w, status in earlier_runs.items() if w < week and status in ("FAILURE", "CANCELED"))
    if not failed:
        return None
    return (f"week {failed[0]} of this backfill failed, and week {week} builds on it (its ranker, windows and "
            f"exploration read the weeks before it): fix week {failed[0]} and backfill again from it")


def evaluations_due(closed_weeks: list[str], materialized: Mapping[str, Collection[str]]) -> list[str]:
    """Weeks of the recent history (the last ``HISTORY_WEEKS`` closed weeks that have a closed week after
    them) whose playlists and following week's interactions are materialized and that have no offline
    evaluation yet, oldest first. ``closed_weeks``: partition keys of the closed weeks, oldest first."""
    playlists = set(materialized.get("ranked_playlists", ()))
    listening = set(materialized.get("interactions", ()))
    evaluated = set(materialized.get("offline_evaluation", ()))
    recent = closed_weeks[:-1][-HISTORY_WEEKS:]  # the week after must have closed too
    return [w for w in recent if w in playlists and shift_week(w, 1) in listening and w not in evaluated]


def landed_weeks(lake_root: str) -> list[str]:
    """Week keys in the landing zone (a directory or ``s3://``), oldest first: the manifest's weeks (a
    simulated world), else the ``landing/events/week=<key>/`` folders. (Reads the landing zone: the
    input of :func:`plan_weeks`, not part of it.)"""
    from dw_assets.lake.landing_fs import read_manifest
    from dw_assets.lake.storage import open_lake

    landing = open_lake(str(lake_root)).landing_fs()
    manifest = read_manifest(landing)
    if manifest:
        return sorted(manifest["weeks"])
    return sorted(name.removeprefix("week=") for name in landing.list_folders("events") if name.startswith("week="))
