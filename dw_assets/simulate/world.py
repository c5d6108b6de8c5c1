"""Entry points: generate a world into a landing zone, and answer
"how would these users respond to these playlists" from its hidden truth."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dw_assets.simulate.anomalies import bot_plays, clear_around, hijacked_plays, replays
from dw_assets.simulate.audio import AudioWriter, audio_batches, choose_bad_audio
from dw_assets.simulate.behaviour import LISTENER, ListenerModel, Outcomes, listen, reach
from dw_assets.simulate.catalog import make_catalog, make_genres
from dw_assets.simulate.config import KeyedDraws, SimulationConfig, rng_for, row_keys
from dw_assets.simulate.discovery import TrackSampler
from dw_assets.simulate.events import (
    DAY,
    Favourites,
    Plays,
    seed_favourites,
    simulate_listening,
    week_bounds_ms,
)
from dw_assets.simulate.landing import MALFORMED_KINDS, LandedWeek, iso_ms, land_week
from dw_assets.simulate.playlists import PlaylistBook, create_playlists, grow_playlists
from dw_assets.simulate.population import make_population
from dw_assets.simulate.tables import write_playlists, write_tracks, write_users
from dw_assets.simulate.truth import Truth, load_truth

__all__ = ["simulate", "respond", "load_truth"]

OLD_ENOUGH_MS = 4 * DAY  # events moved before the week stay after signup and release
PARALLEL_AUDIO_SAMPLES = 50_000_000  # below this, starting worker processes costs more than it saves
MAX_AUDIO_WORKERS = 4


def _ids(idx: np.ndarray) -> list[int]:
    return (np.asarray(idx, dtype=np.int64) + 1).tolist()


def simulate(
    config: SimulationConfig,
    out_dir: str | Path,
    progress: Callable[[str], None] | None = None,
    audio_workers: int | None = None,
) -> dict:
    """Write the landing zone (``out_dir/landing``) and hidden truth (``out_dir/simulator``).

    Replaces any world previously written there. Returns the manifest, plus
    ``elapsed_s`` and per-stage ``timings_s`` (also in ``simulator/timing.json``;
    kept out of manifest.json so that file is byte-identical for a config).
    ``audio_workers``: background processes rendering audio while events are
    simulated (default: one per spare core for big worlds, none for tiny
    ones); the output is identical either way.
    """
    t_start = time.perf_counter()
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    out = Path(out_dir)
    landing, hidden = out / "landing", out / "simulator"
    cleanup = _discard([landing, hidden])
    landing.mkdir(parents=True)
    weeks = config.all_weeks

    say(f"building the world: {config.users} users, {config.tracks} tracks, {len(weeks)} weeks")
    t = time.perf_counter()
    genres = make_genres(config)
    catalog = make_catalog(config, genres)
    pop = make_population(config, genres)
    bad_audio = choose_bad_audio(config, catalog)
    timings["world_s"] = time.perf_counter() - t

    say(f"synthesizing {catalog.n_tracks} audio clips in the background")
    t = time.perf_counter()
    if audio_workers is None:
        samples = catalog.n_tracks * config.audio_seconds * config.sample_rate
        # The main process stays busy with events: leave it one core.
        spare = min(MAX_AUDIO_WORKERS, (os.cpu_count() or 1) - 1)
        audio_workers = max(1, spare) if samples > PARALLEL_AUDIO_SAMPLES else 0
    audio = AudioWriter(audio_batches(config, catalog, bad_audio), landing / "audio", audio_workers)
    timings["audio_start_s"] = time.perf_counter() - t

    say("writing the track catalog and user directory")
    t = time.perf_counter()
    write_tracks(catalog, genres.names, landing / "catalog" / "tracks.parquet")
    write_users(pop, landing / "users" / "users.parquet")
    timings["parquet_s"] = time.perf_counter() - t

    rng = rng_for(config.seed, "history")
    initial = np.flatnonzero(~pop.is_bot & (pop.signup_week < 0))
    owners = np.repeat(initial, rng.poisson(config.playlists_per_user, len(initial)))
    book = create_playlists(PlaylistBook.empty(), pop, catalog, TrackSampler(catalog, 0), owners, rng)
    favourites = Favourites(catalog.n_tracks)
    seed_favourites(favourites, pop, catalog, rng, (book.owner[book.entry_list], book.entry_track))

    release_ms = catalog.release_date.astype("datetime64[ms]").astype(np.int64)
    manifest_weeks: dict[str, dict] = {
        k: {} for k in ("lines", "valid", "malformed", "replayed", "bots", "hijacked")
    }
    t_events = t_write = 0.0
    for i, key in enumerate(weeks):
        say(f"week {key} ({i + 1}/{len(weeks)}{', holdout' if i == config.weeks else ''}): listening")
        t = time.perf_counter()
        rng = rng_for(config.seed, "week", i)
        start, end = week_bounds_ms(config, i)
        human = simulate_listening(config, pop, catalog, book.index(), favourites, i, rng)
        bots = bot_plays(pop, catalog, i, start, rng, config.bot_min_plays, config.bot_max_plays)
        hijacked, bursts = hijacked_plays(pop, catalog, i, start, config.hijacked_sessions_per_week, rng)
        human = clear_around(human, bursts)
        liked = Outcomes(human.ms_played, human.reason, human.saved).positive
        favourites.add(human.user[liked], human.track[liked])
        replayed = replays(human, config.replay_rate, rng)
        plays = Plays.concat([human, bots, hijacked, replayed])
        plays = plays.take(np.argsort(plays.ts_ms, kind="stable"))
        old_enough = (pop.signup_ms[plays.user] <= start - OLD_ENOUGH_MS) & (
            release_ms[plays.track] <= start - OLD_ENOUGH_MS
        )
        landed = land_week(
            plays, i, start, end, pop.n_users, catalog.n_tracks, old_enough, config.bad_event_rate, rng
        )
        # Playlists change at the end of the week, from tracks already released by its Monday.
        sampler = TrackSampler(catalog, i)
        book = grow_playlists(book, pop, catalog, sampler, rng)
        active = np.unique(human.user)
        book = create_playlists(
            book, pop, catalog, sampler, active[rng.random(len(active)) < config.new_playlist_rate], rng
        )
        t_events += time.perf_counter() - t

        t = time.perf_counter()
        _write_lines(landed, landing / "events" / f"week={key}", config.lines_per_file)
        write_playlists(book.snapshot(), landing / "playlists" / f"week={key}" / "part-00000.parquet")
        t_write += time.perf_counter() - t
        manifest_weeks["lines"][key] = landed.n_lines
        manifest_weeks["valid"][key] = landed.valid
        manifest_weeks["malformed"][key] = landed.malformed
        manifest_weeks["replayed"][key] = len(replayed)
        manifest_weeks["bots"][key] = len(bots)
        manifest_weeks["hijacked"][key] = [
            {
                "user_id": u + 1,
                "start": iso_ms(np.array([a]))[0],
                "end": iso_ms(np.array([b]))[0],
                "events": n,
            }
            for u, a, b, n in bursts
        ]
    timings["events_s"] = t_events
    timings["events_write_s"] = t_write

    say("saving the hidden ground truth")
    _truth(config, genres, pop, catalog).save(hidden)

    say("waiting for audio clips")
    t = time.perf_counter()
    n_audio = audio.finish()
    timings["audio_wait_s"] = time.perf_counter() - t

    cleanup.join()
    manifest = {
        "seed": config.seed,
        "preset": config.preset,
        "config": config.to_dict(),
        "start_week": config.start_week,
        "weeks": weeks,
        "training_weeks": config.training_weeks,
        "last_training_week": config.training_weeks[-1],
        "holdout_week": config.holdout_week,
        "genres": genres.names,
        "counts": {
            "users": pop.n_users,
            "tracks": catalog.n_tracks,
            "artists": catalog.n_artists,
            "playlists": book.n_playlists,
            "audio_files": n_audio,
            "lines": manifest_weeks["lines"],
            "valid_events": manifest_weeks["valid"],
        },
        "malformed_events": manifest_weeks["malformed"],
        "replayed_events": manifest_weeks["replayed"],
        "bot_user_ids": _ids(np.flatnonzero(pop.is_bot)),
        "bot_events": manifest_weeks["bots"],
        "hijacked_sessions": manifest_weeks["hijacked"],
        "new_track_ids": {k: _ids(catalog.new_releases(i)) for i, k in enumerate(weeks)},
        "new_user_ids": {k: _ids(pop.new_users(i)) for i, k in enumerate(weeks)},
        "bad_audio": bad_audio,
        "audio": {"sample_rate": config.sample_rate, "seconds": config.audio_seconds},
        "malformed_kinds": list(MALFORMED_KINDS),
    }
    (landing / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    timings["total_s"] = time.perf_counter() - t_start
    timings = {k: round(v, 3) for k, v in timings.items()}
    (hidden / "timing.json").write_text(
        json.dumps({"elapsed_s": timings["total_s"], "timings_s": timings}, indent=2)
    )
    say(f"done in {timings['total_s']:.1f} s")
    return {**manifest, "elapsed_s": timings["total_s"], "timings_s": timings}


def _discard(folders: list[Path]) -> threading.Thread:
    """Move a previous world aside at once and delete it in the background (tens of thousands of files)."""
    doomed = []
    for folder in folders:
        if folder.exists():
            aside = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex}")
            folder.rename(aside)
            doomed.append(aside)

    def delete() -> None:
        for folder in doomed:
            shutil.rmtree(folder, ignore_errors=True)

    thread = threading.Thread(target=delete, daemon=True)
    thread.start()
    return thread


def _write_lines(landed: LandedWeek, folder: Path, per_file: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for part, lines in enumerate(landed.chunks(per_file)):
        text = "\n".join(lines) + "\n" if lines else ""
        (folder / f"part-{part:05d}.jsonl").write_bytes(text.encode())


def _truth(config, genres, pop, catalog) -> Truth:
    mix = np.zeros((pop.n_users, len(genres.names)), dtype=np.float32)
    rows = np.repeat(np.arange(pop.n_users), pop.mix_genre.shape[1])
    g = pop.mix_genre.ravel()
    np.add.at(mix, (rows[g >= 0], g[g >= 0]), pop.mix_weight.ravel()[g >= 0])
    return Truth(
        config=config,
        genres=genres.names,
        genre_centroid=genres.centroid,
        user_ids=pop.user_id,
        user_taste=pop.taste,
        user_genre_mix=mix,
        user_is_bot=pop.is_bot,
        user_activity=pop.activity,
        track_ids=catalog.track_id,
        track_style=catalog.style,
        track_genre=catalog.genre,
        track_artist_id=catalog.artist + 1,
        track_popularity=catalog.popularity,
        track_duration_ms=catalog.duration_ms,
        track_release_week=catalog.release_week,
        track_tempo_bpm=catalog.tempo_bpm,
        track_brightness=catalog.brightness,
    )


def respond(
    truth: Truth, playlists: pd.DataFrame, week: str | None = None, seed: int = 0,
    model: ListenerModel = LISTENER,
) -> pd.DataFrame:
    """Simulated reaction of users to delivered playlists (for offline A/B tests).

    ``playlists``: columns user_id, position (1-based), track_id. Each user
    listens top-down with attention decaying by position and after skips,
    and reacts to each reached track with the same model as the logs.
    Returns one row per input row, in input order and with its index: user_id, position,
    track_id, played, ms_played (int64), skipped, early_skip, saved,
    positive (ms_played > 30 s or saved). Deterministic for (input, week, seed, model); a row's random
    draws depend only on (week, seed, its user and position), not on the other rows of the batch.
    ``model``: the listener's parameters; the default is the model the logs were made with, and a
    perturbed copy (``dataclasses.replace``) asks how a different listener would respond, with
    the same random draws. Several seeds or models on the same lists: :func:`listening` once, then
    ``Listening.outcomes`` per play (the same numbers).
    """
    heard = listening(truth, playlists)
    frame = pd.DataFrame({"user_id": heard.users, "position": heard.position, "track_id": heard.tracks},
                         index=playlists.index)
    for name, values in heard.outcomes(week, seed, model).items():
        frame[name] = values
    return frame


@dataclass(frozen=True)
class Listening:
    """What ``respond`` needs of a set of list rows whatever the seed and listener model: the rows in
    (user, position, track) order, their draw keys, true affinities and durations."""

    users: np.ndarray  # int64, input order
    position: np.ndarray
    tracks: np.ndarray
    sorted_users: np.ndarray  # the rows in (user, position, track) order
    sorted_position: np.ndarray
    back: np.ndarray  # sorted row of each input row
    keys: np.ndarray  # uint64 draw key per sorted row (user, position)
    affinity: np.ndarray  # float32 per sorted row
    duration_ms: np.ndarray  # per sorted row

    def outcomes(self, week: str | None = None, seed: int = 0, model: ListenerModel = LISTENER
                 ) -> dict[str, np.ndarray]:
        """``respond``'s outcome columns (played, ms_played, skipped, early_skip, saved, positive) in input order."""
        u, p = self.sorted_users, self.sorted_position
        rng = KeyedDraws(seed, "respond", zlib.crc32((week or "").encode()), self.keys)
        outcome = listen(self.affinity, self.duration_ms, p, rng, model)
        played = reach(u, p, outcome, rng, model)
        ms = np.where(played, outcome.ms_played, 0).astype(np.int64)
        saved = played & outcome.saved
        result = {
            "played": played,
            "ms_played": ms,
            "skipped": played & outcome.skipped,
            "early_skip": played & outcome.early_skip,
            "saved": saved,
            "positive": played & ((ms > 30_000) | saved),
        }
        return {name: values[self.back] for name, values in result.items()}


def listening(truth: Truth, playlists: pd.DataFrame) -> Listening:
    """The seed- and model-independent part of ``respond`` for ``playlists`` (user_id, position, track_id)."""
    users = playlists["user_id"].to_numpy(dtype=np.int64)
    position = playlists["position"].to_numpy(dtype=np.int64)
    tracks = playlists["track_id"].to_numpy(dtype=np.int64)
    order = np.lexsort((tracks, position, users))
    u, p, t = users[order], position[order], tracks[order]
    # The listener's draws are keyed by (user, position): a user meets the same mood at each slot in every
    # system's list, so comparisons between systems are paired and identical lists score identically.
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return Listening(users, position, tracks, u, p, back, row_keys(u, p), truth.affinity(u, t),
                     truth.track_duration_ms[truth.track_index(t)])
