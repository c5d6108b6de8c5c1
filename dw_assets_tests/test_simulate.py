"""The synthetic music world: landing-zone contract, hidden behaviour, determinism."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import wave
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dw_assets.calendar import shift_week, week_bounds
from dw_assets.simulate import PRESETS, SimulationConfig, config_for, load_truth, respond, simulate

MALFORMED = (
    "bad_json", "missing_field", "wrong_type", "negative_ms_played", "absurd_ms_played",
    "ts_outside_week", "unknown_user", "unknown_track", "duplicate_event_id",
)  # fmt: skip
FIELD_TYPES = {
    "event_id": str, "user_id": int, "track_id": int, "ts": str, "ms_played": int,
    "reason_end": str, "saved": bool, "context": str, "position": int, "platform": str,
}  # fmt: skip
REASONS = {"trackdone", "fwdbtn", "backbtn", "endplay", "logout"}
PLATFORMS = {"ios", "android", "web", "desktop"}
CONTEXTS = {"album", "search", "radio", "discover_weekly"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    simulate(config_for("tiny"), root)
    return root


@pytest.fixture(scope="module")
def manifest(world) -> dict:
    return json.loads((world / "landing" / "manifest.json").read_text())


@pytest.fixture(scope="module")
def truth(world):
    return load_truth(world)


def _defects(
    line: str, start: dt.datetime, end: dt.datetime, users: set, tracks: set, seen: set
) -> list[str]:
    """Every contract violation of one landed line (an independent, strict reading of the landing-zone contract, docs/contracts.md)."""
    try:
        rec = json.loads(line)
    except ValueError:
        return ["bad_json"]
    if not isinstance(rec, dict):
        return ["bad_json"]
    found = []
    if any(k not in rec for k in FIELD_TYPES):
        found.append("missing_field")
    for key, kind in FIELD_TYPES.items():
        if key not in rec or (key == "position" and rec[key] is None):
            continue
        if type(rec[key]) is not kind:  # bool is not an int, "123" is not an int
            found.append("wrong_type")
            break
    ms = rec.get("ms_played")
    if type(ms) is int and ms < 0:
        found.append("negative_ms_played")
    if type(ms) is int and ms > 14_400_000:
        found.append("absurd_ms_played")
    if type(rec.get("ts")) is str:
        ts = dt.datetime.fromisoformat(rec["ts"])
        if not start <= ts < end:
            found.append("ts_outside_week")
    if type(rec.get("user_id")) is int and rec["user_id"] not in users:
        found.append("unknown_user")
    if type(rec.get("track_id")) is int and rec["track_id"] not in tracks:
        found.append("unknown_track")
    if not found:
        if rec["event_id"] in seen:
            found.append("duplicate_event_id")
        seen.add(rec["event_id"])
    return found


@pytest.fixture(scope="module")
def landed(world, manifest) -> dict:
    """Strictly checked lines of every week: valid events as a frame, malformed counts by kind."""
    users = pq.read_table(world / "landing/users/users.parquet").to_pandas()
    tracks = pq.read_table(world / "landing/catalog/tracks.parquet").to_pandas()
    user_set, track_set = set(users.user_id.tolist()), set(tracks.track_id.tolist())
    valid, malformed, multi = [], {}, 0
    for week in manifest["weeks"]:
        start, end = week_bounds(week)
        seen: set = set()
        counts = dict.fromkeys(MALFORMED, 0)
        for path in sorted((world / "landing/events" / f"week={week}").glob("*.jsonl")):
            for line in path.read_text().splitlines():
                found = _defects(line, start, end, user_set, track_set, seen)
                multi += len(found) > 1
                if found:
                    counts[found[0]] += 1
                else:
                    valid.append({**json.loads(line), "week": week})
        malformed[week] = counts
    events = pd.DataFrame(valid)
    events["ts"] = pd.to_datetime(events.ts, format="ISO8601")
    return {
        "events": events,
        "malformed": malformed,
        "multi_defect_lines": multi,
        "users": users,
        "tracks": tracks,
    }


def _humans(landed, manifest) -> pd.DataFrame:
    ev = landed["events"]
    hijacked = {s["user_id"] for week in manifest["hijacked_sessions"].values() for s in week}
    return ev[~ev.user_id.isin(manifest["bot_user_ids"]) & ~ev.user_id.isin(hijacked)]


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "timing.json"
    }


def test_same_seed_rebuilds_byte_identical_world_and_other_seed_differs(world, tmp_path):
    again = tmp_path / "again"
    simulate(config_for("tiny"), again)
    simulate(config_for("tiny"), again)  # re-running over an old world replaces it
    assert _file_hashes(again) == _file_hashes(world)
    other = tmp_path / "other"
    simulate(config_for("tiny", seed=8), other)
    a, b = _file_hashes(world), _file_hashes(other)
    assert a["landing/manifest.json"] != b["landing/manifest.json"]
    assert a["landing/catalog/tracks.parquet"] != b["landing/catalog/tracks.parquet"]


def test_landing_zone_follows_the_contract(world, manifest):
    land = world / "landing"
    cfg = PRESETS["tiny"]
    assert manifest["training_weeks"] == [shift_week(cfg.start_week, i) for i in range(cfg.weeks)]
    assert manifest["holdout_week"] == shift_week(cfg.start_week, cfg.weeks)
    assert manifest["weeks"] == manifest["training_weeks"] + [manifest["holdout_week"]]
    assert manifest["last_training_week"] == manifest["training_weeks"][-1]
    assert manifest["preset"] == "tiny" and manifest["config"]["users"] == cfg.users
    assert SimulationConfig(**manifest["config"]) == cfg
    for week in manifest["weeks"]:
        assert list((land / "events" / f"week={week}").glob("*.jsonl"))
        snap = pq.read_table(land / "playlists" / f"week={week}" / "part-00000.parquet")
        assert [(f.name, str(f.type)) for f in snap.schema] == [
            ("playlist_id", "int64"),
            ("user_id", "int64"),
            ("track_id", "int64"),
            ("pos", "int32"),
        ]
    tracks = pq.read_table(land / "catalog/tracks.parquet").schema
    assert [(f.name, str(f.type)) for f in tracks] == [
        ("track_id", "int64"),
        ("artist_id", "int64"),
        ("album_id", "int64"),
        ("genre", "string"),
        ("release_date", "date32[day]"),
        ("duration_ms", "int64"),
    ]
    users = pq.read_table(land / "users/users.parquet").schema
    assert [(f.name, str(f.type)) for f in users] == [
        ("user_id", "int64"),
        ("country", "string"),
        ("signup_date", "date32[day]"),
        ("birth_year", "int32"),
    ]
    wavs = list((land / "audio").rglob("*.wav"))
    assert len(wavs) == manifest["counts"]["audio_files"] == manifest["counts"]["tracks"]
    assert not list(land.rglob("truth*")), "ground truth must stay out of the landing zone"


def test_every_malformed_line_is_counted_in_the_manifest_with_its_reason(landed, manifest):
    assert landed["multi_defect_lines"] == 0, "each malformed line carries exactly one defect"
    assert landed["malformed"] == manifest["malformed_events"]
    assert sum(sum(c.values()) for c in landed["malformed"].values()) > 0
    ev = landed["events"]
    assert ev.groupby("week").size().to_dict() == manifest["counts"]["valid_events"]
    for week, counts in landed["malformed"].items():
        assert manifest["counts"]["lines"][week] == manifest["counts"]["valid_events"][week] + sum(
            counts.values()
        )
    assert set(ev.reason_end) <= REASONS and set(ev.platform) <= PLATFORMS
    assert ev.context.map(lambda c: c in CONTEXTS or c.startswith("playlist:")).all()
    with_position = ev.context.isin(["discover_weekly"]) | ev.context.str.startswith("playlist:")
    assert ev.position[with_position].notna().all() and ev.position[~with_position].isna().all()


def test_nobody_plays_before_signup_or_release(landed):
    ev, users, tracks = landed["events"], landed["users"], landed["tracks"]
    day = ev.ts.dt.tz_localize(None).dt.normalize()
    signup = pd.to_datetime(ev.user_id.map(users.set_index("user_id").signup_date))
    release = pd.to_datetime(ev.track_id.map(tracks.set_index("track_id").release_date))
    assert (signup <= day).all()
    assert (release <= day).all()


def test_new_releases_are_cold_in_their_week_and_played_later(world, landed, manifest):
    ev, tracks = landed["events"], landed["tracks"].set_index("track_id")
    played_after = set()
    for week in manifest["weeks"]:
        new = manifest["new_track_ids"][week]
        assert new
        assert (pd.to_datetime(tracks.release_date[new]) == pd.Timestamp(shift_week(week, 1))).all()
        for tid in new:
            upload = next((world / "landing/audio").glob(f"*/{tid}.wav")).parent.name
            assert week <= upload < shift_week(week, 1)
        assert not ev[(ev.week <= week) & ev.track_id.isin(new)].size
        played_after |= set(ev[(ev.week > week) & ev.track_id.isin(new)].track_id)
    assert len(played_after) >= 10


def test_new_users_join_mid_stream_and_some_have_no_history_in_their_first_week(landed, manifest):
    ev = landed["events"]
    silent_then_active = 0
    for week, next_week in pairwise(manifest["weeks"]):
        new = manifest["new_user_ids"][week]
        assert not ev[(ev.week < week) & ev.user_id.isin(new)].size
        silent = set(new) - set(ev[ev.week == week].user_id)
        silent_then_active += len(silent & set(ev[ev.week == next_week].user_id))
    assert silent_then_active >= 3


def test_popularity_is_heavy_tailed(landed, manifest, truth):
    plays = _humans(landed, manifest).track_id.value_counts()
    counts = np.zeros(len(truth.track_ids))
    counts[plays.index.to_numpy() - 1] = plays.to_numpy()
    top = np.sort(counts)[::-1][: len(counts) // 100].sum() / counts.sum()
    s = np.sort(counts)
    gini = ((2 * np.arange(1, len(s) + 1) - len(s) - 1) @ s) / (len(s) * s.sum())
    assert top > 0.15, f"top 1% of tracks get only {top:.0%} of plays"
    assert gini > 0.6


def test_skips_and_saves_follow_true_affinity(landed, manifest, truth):
    ev = _humans(landed, manifest)
    affinity = truth.affinity(ev.user_id.to_numpy(), ev.track_id.to_numpy())
    quintile = pd.qcut(affinity, 5, labels=False)
    early = (ev.ms_played < 10_000).groupby(quintile).mean()
    saved = ev.saved.groupby(quintile).mean()
    assert early[0] > 0.3 and early[4] < 0.05
    assert early.is_monotonic_decreasing
    assert saved[4] > 5 * saved[0]
    assert 0.1 < (ev.ms_played < 10_000).mean() < 0.4, "a realistic share of plays is skipped early"


def test_discovery_lists_carry_position_bias(landed, manifest):
    dw = _humans(landed, manifest)
    dw = dw[dw.context == "discover_weekly"]
    by_pos = dw.groupby("position").size()
    assert by_pos.index.min() == 1 and by_pos.index.max() <= 30
    assert by_pos[1] > 3 * by_pos[by_pos.index >= 20].mean()


def test_playlist_plays_point_at_real_playlist_entries(world, landed):
    ev = landed["events"]
    ev = ev[ev.context.str.startswith("playlist:")].head(2_000)
    assert len(ev) > 100
    for week, rows in ev.groupby("week"):
        snap = pd.read_parquet(world / "landing/playlists" / f"week={week}" / "part-00000.parquet")
        entry = snap.set_index(["playlist_id", "pos"]).track_id
        keys = list(
            zip(rows.context.str.split(":").str[1].astype(int), rows.position.astype(int), strict=True)
        )
        assert (entry.loc[keys].to_numpy() == rows.track_id.to_numpy()).all()
        owner = snap.groupby("playlist_id").user_id.first()
        assert (owner.loc[[k[0] for k in keys]].to_numpy() == rows.user_id.to_numpy()).all()


def test_bots_and_hijacked_sessions_are_inhuman(landed, manifest):
    ev = landed["events"]
    per_user = ev.groupby(["week", "user_id"]).size()
    bots = per_user[per_user.index.get_level_values(1).isin(manifest["bot_user_ids"])]
    humans = per_user[~per_user.index.get_level_values(1).isin(manifest["bot_user_ids"])]
    assert bots.median() > 10 * humans.median()
    bot_ev = ev[ev.user_id.isin(manifest["bot_user_ids"])].sort_values(["user_id", "ts"])
    assert bot_ev.ms_played.between(30_000, 35_000).all()
    gaps = bot_ev.groupby(["user_id", "week"]).ts.diff().dt.total_seconds()
    spread = gaps.groupby([bot_ev.user_id, bot_ev.week]).std()
    assert (spread < 1.0).all(), "bots stream with a near-constant period"
    assert bot_ev.groupby("week").size().to_dict() == manifest["bot_events"]
    for sessions in manifest["hijacked_sessions"].values():
        for s in sessions:
            start, end = pd.Timestamp(s["start"]), pd.Timestamp(s["end"])
            burst = ev[(ev.user_id == s["user_id"]) & ev.ts.between(start, end)]
            assert len(burst) == s["events"] >= 20
            assert burst.ms_played.between(30_000, 35_000).all()


def test_replayed_events_repeat_a_play_under_a_new_id(landed, manifest):
    ev = landed["events"]
    same = ev.drop(columns=["event_id"]).astype(str).duplicated()
    assert ev.event_id.is_unique
    assert same.groupby(ev.week).sum().to_dict() == manifest["replayed_events"]


def test_playlists_are_taste_coherent_and_only_grow(world, manifest, truth):
    snaps = [
        pd.read_parquet(world / "landing/playlists" / f"week={w}" / "part-00000.parquet")
        for w in manifest["weeks"]
    ]
    last = snaps[-1]
    assert last.playlist_id.nunique() == manifest["counts"]["playlists"]
    sizes = last.groupby("playlist_id").size()
    assert sizes.min() >= 10
    own = truth.affinity(last.user_id.to_numpy(), last.track_id.to_numpy()).mean()
    rng = np.random.default_rng(0)
    random_pairs = truth.affinity(rng.choice(last.user_id, 5000), rng.choice(truth.track_ids, 5000)).mean()
    assert own > random_pairs + 0.3
    genres = truth.track_genre[truth.track_index(last.track_id)]
    assert pd.Series(genres).groupby(last.playlist_id.to_numpy()).nunique().median() <= 3
    for before, after in pairwise(snaps):
        merged = before.merge(after, on=["playlist_id", "pos"], how="left", suffixes=("", "_after"))
        assert (merged.track_id == merged.track_id_after).all(), "entries never move or vanish"
        assert after.playlist_id.nunique() >= before.playlist_id.nunique()


def _log_spectrum(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)
    frames = x[: len(x) // 256 * 256].reshape(-1, 256) * np.hanning(256)
    return np.log(np.abs(np.fft.rfft(frames, axis=1)).mean(axis=0) + 1e-3)


def test_audio_parses_and_its_spectrum_reveals_the_genre(world, manifest, truth):
    bad = {tid for ids in manifest["bad_audio"].values() for tid in ids}
    paths = {int(p.stem): p for p in (world / "landing/audio").rglob("*.wav")}
    ids = np.array(sorted(set(paths) - bad))
    with wave.open(str(paths[ids[0]])) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (
            manifest["audio"]["sample_rate"],
            1,
            2,
        )
        assert w.getnframes() == round(manifest["audio"]["seconds"] * manifest["audio"]["sample_rate"])
    features = np.stack([_log_spectrum(paths[t]) for t in ids])
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    genre = truth.track_genre[truth.track_index(ids)]
    train = ids % 2 == 0
    centroids = {g: features[train & (genre == g)].mean(0) for g in np.unique(genre[train])}
    names = np.array(list(centroids))
    dist = ((features[~train, None, :] - np.stack(list(centroids.values()))[None]) ** 2).sum(-1)
    accuracy = (names[dist.argmin(1)] == genre[~train]).mean()
    majority = np.bincount(genre[train]).max() / train.sum()
    assert accuracy > majority + 0.25, (
        f"nearest-centroid accuracy {accuracy:.2f}, majority class {majority:.2f}"
    )


def test_broken_audio_is_broken_as_declared(world, manifest):
    files = {int(p.stem): p for p in (world / "landing/audio").rglob("*.wav")}
    bad = manifest["bad_audio"]
    assert all(len(bad[k]) >= 1 for k in ("corrupt", "truncated", "empty", "silent"))
    for tid in bad["empty"]:
        assert files[tid].stat().st_size == 0
    for tid in bad["corrupt"]:
        with pytest.raises((wave.Error, EOFError)):
            wave.open(str(files[tid])).close()
    for tid in bad["truncated"]:
        with wave.open(str(files[tid])) as w:
            declared = w.getnframes()
            assert len(w.readframes(declared)) < 2 * declared
    for tid in bad["silent"]:
        with wave.open(str(files[tid])) as w:
            assert not np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").any()


def test_respond_is_deterministic_and_driven_by_affinity(truth):
    humans = truth.user_ids[~truth.user_is_bot][:150]
    rng = np.random.default_rng(1)
    rows = []
    for user in humans:
        aff = truth.affinity(np.full(len(truth.track_ids), user), truth.track_ids)
        good = truth.track_ids[np.argsort(aff)[-15:]]
        bad = truth.track_ids[np.argsort(aff)[:15]]
        tracks = rng.permutation(np.r_[good, bad])
        rows += [(user, pos + 1, t) for pos, t in enumerate(tracks)]
    playlists = pd.DataFrame(rows, columns=["user_id", "position", "track_id"]).sample(frac=1, random_state=0)
    first = respond(truth, playlists, week="2026-02-02", seed=3)
    assert first.equals(respond(truth, playlists, week="2026-02-02", seed=3))
    assert not first.equals(respond(truth, playlists, week="2026-02-02", seed=4))
    assert (first[["user_id", "position", "track_id"]].to_numpy() == playlists.to_numpy()).all()
    assert list(first.columns) == [
        "user_id",
        "position",
        "track_id",
        "played",
        "ms_played",
        "skipped",
        "early_skip",
        "saved",
        "positive",
    ]
    played = first[first.played]
    high = truth.affinity(played.user_id, played.track_id) > 0.5
    assert played.early_skip[~high].mean() > 0.5 > 0.1 > played.early_skip[high].mean()
    assert (first.positive == (first.ms_played > 30_000) | first.saved).all()
    assert (first.ms_played[~first.played] == 0).all()
    # Attention decays: a listener reaches a position only after every earlier one.
    reach = first.sort_values(["user_id", "position"]).groupby("user_id").played
    assert reach.apply(lambda p: p.is_monotonic_decreasing).all()
    assert first.groupby("position").played.mean()[1] > first.groupby("position").played.mean()[30]
    # A user's reaction does not depend on who else is in the batch (draws keyed by user and position):
    # the same lists score the same alone, in another order, or beside other users' lists.
    some = playlists[playlists.user_id.isin(humans[:40])]
    alone = respond(truth, some, week="2026-02-02", seed=3)
    pd.testing.assert_frame_equal(alone, first.loc[some.index])
    # Common random numbers: another track in a slot meets the same listener mood there, so a better
    # track is never judged worse than the one it replaced.
    swapped = some.copy()
    swapped["track_id"] = [truth.track_ids[np.argmax(truth.affinity(np.full(len(truth.track_ids), u), truth.track_ids))]
                           for u in swapped.user_id]
    better = respond(truth, swapped, week="2026-02-02", seed=3)
    gain = truth.affinity(swapped.user_id, swapped.track_id) - truth.affinity(some.user_id, some.track_id)
    first_slot = (some.position == 1).to_numpy()
    assert (better.early_skip.to_numpy()[first_slot] <= alone.early_skip.to_numpy()[first_slot]).all() and (gain >= 0).all()


def test_config_for_applies_overrides_and_rejects_unknown_settings():
    cfg = config_for("tiny", seed=11, users=None, weeks=2)
    assert (cfg.seed, cfg.users, cfg.weeks, cfg.preset) == (11, PRESETS["tiny"].users, 2, "tiny")
    assert len(cfg.all_weeks) == 3 and cfg.holdout_week == "2026-01-19"
    with pytest.raises(TypeError):
        config_for("tiny", colour="blue")
    with pytest.raises(ValueError):
        config_for("tiny", start_week="2026-01-06")
