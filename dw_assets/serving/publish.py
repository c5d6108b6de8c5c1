"""Publishing a week of playlists: write it all, verify it, flip ``current_week``, keep N weeks.

The order is the store's consistency contract: readers follow the ``current_week`` pointer,
which moves only after the whole week is written and verified, so a failed or partial publish
leaves last week live. Re-publishing a week replaces it (same inputs -> same stored playlists).

A publisher killed at any step (SIGKILL included; ``test_crash_safety`` kills one at each) leaves:
mid-write or before the flip, last week live and the new week absent or written-but-not-live;
after the flip, the new week live and retention not yet applied. Re-running ``publish_week`` with
the same week completes it: the week is rewritten whole (the killed write's leftovers and the
superseded version are reclaimed, nothing is duplicated), made live, and old weeks dropped.

Retention: ``keep_weeks`` weeks are kept (the newest written ones, plus the live one). It is the
argument when given, else the store URL's ``keep_weeks`` option, else ``DEFAULT_KEEP_WEEKS``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from dw_assets.serving.stores import PlaylistStore, Progress, check_week, validate_playlists

DEFAULT_KEEP_WEEKS = 4


def retention_weeks(store: PlaylistStore, keep_weeks: int | None = None) -> int:
    """The weeks to keep: ``keep_weeks`` if given, else the store URL's ``keep_weeks``, else 4."""
    value = next(v for v in (keep_weeks, store.keep_weeks, DEFAULT_KEEP_WEEKS) if v is not None)
    if value < 1:
        raise ValueError("keep_weeks must be at least 1")
    return int(value)


class InjectedFailure(RuntimeError):
    """Raised by ``publish_week(fail_after_users=N)`` once N users are written: a simulated crash."""


def verification_sample(playlists: pd.DataFrame, users: int = 64) -> pd.DataFrame:
    """The rows of up to ``users`` users spread evenly over the sorted user ids (deterministic:
    the same week always checks the same users, first and last included)."""
    ids = np.unique(playlists["user_id"].to_numpy(np.int64))
    if len(ids) > users:
        ids = ids[np.linspace(0, len(ids) - 1, users).round().astype(np.int64)]
    return playlists[playlists["user_id"].isin(ids)]


def _abort_after(limit: int, progress: Progress | None) -> Progress:
    written = 0

    def update(users: int) -> None:
        nonlocal written
        written += users
        if progress is not None:
            progress(users)
        if written >= limit:
            raise InjectedFailure(f"injected failure after {written} users written")

    return update


def publish_week(store: PlaylistStore, week: str, playlists: pd.DataFrame, keep_weeks: int | None = None,
                 fail_after_users: int | None = None, *, make_live: bool | None = None,
                 sample_users: int = 64, progress: Progress | None = None) -> dict:
    """Write ``week``'s playlists to ``store``, verify, make the week live, apply retention.

    playlists: one row per (user_id, position) with the PLAYLIST_COLUMNS of ``stores``.
    keep_weeks: written weeks to keep (the newest ones); the live week is never dropped. None: the
        store URL's ``keep_weeks``, else DEFAULT_KEEP_WEEKS. Refused (ValueError, before anything is
        written) when the store's values expire sooner than that retention needs.
    fail_after_users: raise InjectedFailure once that many users are written (after a write
        batch commits, before the week is registered): the previous week stays live.
    make_live: None (default) flips the pointer unless a newer week is already live, so
        re-running an old partition never rolls serving back; True forces the flip (rollback);
        False only writes and verifies.
    progress: called with the users written by each batch (e.g. ``tqdm.update``).

    Returns stats: week, users, rows, seconds, write_seconds, verify_seconds, users_per_s (write
    throughput), live (whether this publish flipped the pointer to ``week``), live_week, keep_weeks,
    kept_weeks, dropped_weeks.
    """
    check_week(week)
    keep_weeks = retention_weeks(store, keep_weeks)
    store.check_retention(keep_weeks)
    validate_playlists(playlists)
    if playlists.empty:
        raise ValueError(f"no playlists to publish for week {week}: refusing to make an empty week live")
    started = time.perf_counter()
    users = int(playlists["user_id"].nunique())
    if fail_after_users is not None:
        progress = _abort_after(fail_after_users, progress)

    written = store.write_week(week, playlists, progress=progress)
    write_seconds = time.perf_counter() - started
    verify_started = time.perf_counter()
    store.verify_week(week, users, verification_sample(playlists, sample_users))
    verify_seconds = time.perf_counter() - verify_started

    live = store.current_week()
    flip = make_live if make_live is not None else (live is None or week >= live)
    if flip:
        store.set_current_week(week)
        live = week

    weeks = store.weeks()
    kept = set(weeks[-keep_weeks:]) | {live}
    dropped = [w for w in weeks if w not in kept]
    for old in dropped:
        store.drop_week(old)

    seconds = time.perf_counter() - started
    return {
        "week": week, "users": written, "rows": len(playlists), "seconds": round(seconds, 3),
        "write_seconds": round(write_seconds, 3), "verify_seconds": round(verify_seconds, 3),
        "users_per_s": round(written / write_seconds, 1) if write_seconds > 0 else float("inf"),
        "live": bool(flip), "live_week": live, "keep_weeks": keep_weeks,
        "kept_weeks": sorted(w for w in kept if w is not None),
        "dropped_weeks": dropped,
    }
