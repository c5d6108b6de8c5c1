"""The landed event-log format: JSON lines as a Kafka sink would write them,
plus injected malformed lines (exactly one defect each, so a validator can
classify every one unambiguously)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dw_assets.simulate.behaviour import REASONS
from dw_assets.simulate.events import CONTEXTS, DAY, PLAYLIST, Plays
from dw_assets.simulate.population import PLATFORMS

MALFORMED_KINDS = (
    "bad_json",
    "missing_field",
    "wrong_type",
    "negative_ms_played",
    "absurd_ms_played",
    "ts_outside_week",
    "unknown_user",
    "unknown_track",
    "duplicate_event_id",
)
EVENT_FIELDS = (
    "event_id", "user_id", "track_id", "ts", "ms_played",
    "reason_end", "saved", "context", "position", "platform",
)  # fmt: skip
# ``position`` may be null, so only the other keys are ever dropped (unambiguous "missing").
DROPPABLE_FIELDS = tuple(f for f in EVENT_FIELDS if f != "position")
MAX_MS_PLAYED = 14_400_000  # 4 hours
DUPLICATE_LAG = 500  # a duplicate lands at most this many lines after its original
ID_MIX = 0x9E3779B1  # odd multiplier: a bijection on 32-bit sequence numbers


@dataclass
class LandedWeek:
    """A week's landed lines, rendered lazily in file order (a whole big week would not fit in memory)."""

    plays: Plays  # valid plays, in file order
    week_index: int
    bad_lines: list[str]  # malformed lines, ordered by anchor
    bad_anchor: np.ndarray  # int64: a bad line lands right before valid line `anchor`
    malformed: dict[str, int]

    @property
    def valid(self) -> int:
        return len(self.plays)

    @property
    def n_lines(self) -> int:
        return self.valid + len(self.bad_lines)

    def chunks(self, valid_per_chunk: int) -> Iterator[list[str]]:
        """Consecutive runs of lines with about ``valid_per_chunk`` valid lines each (at least one run)."""
        n = self.valid
        bounds = list(range(0, n, valid_per_chunk)) + [n]
        if n == 0:
            yield list(self.bad_lines)
            return
        for a, b in itertools.pairwise(bounds):
            valid = render(self.plays.take(slice(a, b)), event_ids(self.week_index, np.arange(a, b)))
            lo = int(np.searchsorted(self.bad_anchor, a))
            hi = len(self.bad_anchor) if b == n else int(np.searchsorted(self.bad_anchor, b))
            # Valid line j sorts at 2j+1, a bad line anchored at j at 2j: right before it.
            key = np.r_[2 * np.arange(a, b) + 1, 2 * self.bad_anchor[lo:hi]]
            merged = valid + self.bad_lines[lo:hi]
            yield [merged[i] for i in np.argsort(key, kind="stable").tolist()]


def event_ids(week_index: int, seq: np.ndarray) -> list[str]:
    """Unique, deterministic, non-sequential-looking ids."""
    mixed = ((seq.astype(np.uint64) * np.uint64(ID_MIX) + np.uint64(week_index)) % np.uint64(2**32)).tolist()
    return [f"ev-{week_index:03d}-{m:08x}" for m in mixed]


def iso_ms(ts_ms: np.ndarray) -> list[str]:
    """ms since epoch -> '2026-01-05T13:04:05.123Z'."""
    return [s + "Z" for s in np.datetime_as_string(ts_ms.astype("datetime64[ms]"), unit="ms").tolist()]


def _contexts(plays: Plays) -> list[str]:
    names = np.array(CONTEXTS, dtype=object)[plays.context]
    in_list = np.flatnonzero(plays.context == PLAYLIST)
    names[in_list] = [f"playlist:{p + 1}" for p in plays.playlist[in_list].tolist()]
    return names.tolist()


def render(plays: Plays, ids: list[str]) -> list[str]:
    """One JSON object per play, keys in EVENT_FIELDS order, no spaces."""
    ts = np.datetime_as_string(plays.ts_ms.astype("datetime64[ms]"), unit="ms").tolist()
    pos = [str(p) if p else "null" for p in plays.position.tolist()]
    saved = ["true" if s else "false" for s in plays.saved.tolist()]
    reason, platform = REASONS, PLATFORMS
    cols = zip(
        ids,
        (plays.user + 1).tolist(),
        (plays.track + 1).tolist(),
        ts,
        plays.ms_played.tolist(),
        plays.reason.tolist(),
        saved,
        _contexts(plays),
        pos,
        plays.platform.tolist(),
        strict=True,
    )
    return [
        f'{{"event_id":"{e}","user_id":{u},"track_id":{t},"ts":"{s}Z","ms_played":{m},'
        f'"reason_end":"{reason[r]}","saved":{v},"context":"{c}","position":{p},"platform":"{platform[f]}"}}'
        for e, u, t, s, m, r, v, c, p, f in cols
    ]


def _dumps(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"))


def _wrong_type(rec: dict, rng: np.random.Generator) -> dict:
    """Exactly one field with a JSON type the contract does not allow."""
    variants = (
        ("user_id", lambda r: f"u{r['user_id']}"),
        ("user_id", lambda r: str(r["user_id"])),  # digits in a string are still a string
        ("track_id", lambda r: str(r["track_id"])),
        ("ms_played", lambda r: "abc"),
        ("ms_played", lambda r: r["ms_played"] + 0.5),
        ("saved", lambda r: "yes"),
        ("saved", lambda r: int(r["saved"])),
        ("ts", lambda r: 1_767_600_000_000),
        ("position", lambda r: str(r["position"] or 3)),
        ("event_id", lambda r: 12345),
    )
    field, make = variants[int(rng.integers(len(variants)))]
    rec[field] = make(rec)
    return rec


@dataclass
class _WeekContext:
    week_index: int
    start: int
    end: int
    n_users: int
    n_tracks: int
    old_enough: np.ndarray  # bool per valid play: user and track predate the week by days


def _malformed_line(kind: str, rec: dict, ctx: _WeekContext, rng: np.random.Generator) -> str:
    if kind == "bad_json":
        text = _dumps(rec)
        if rng.random() < 0.5:
            return text[: int(rng.integers(10, len(text) - 1))]  # truncated mid-object
        return text.replace(":", "=", 1)
    if kind == "missing_field":
        del rec[DROPPABLE_FIELDS[int(rng.integers(len(DROPPABLE_FIELDS)))]]
    elif kind == "wrong_type":
        rec = _wrong_type(rec, rng)
    elif kind == "negative_ms_played":
        rec["ms_played"] = -int(rng.integers(1, 100_000))
    elif kind == "absurd_ms_played":
        rec["ms_played"] = MAX_MS_PLAYED + int(rng.integers(1, 100_000_000))
    elif kind == "unknown_user":
        rec["user_id"] = ctx.n_users + int(rng.integers(1, 1_000_000))
    elif kind == "unknown_track":
        rec["track_id"] = ctx.n_tracks + int(rng.integers(1, 1_000_000))
    else:
        raise ValueError(kind)
    return _dumps(rec)


def _record(plays: Plays, i: int, event_id: str, ts_ms: int | None = None) -> dict:
    pos = int(plays.position[i])
    ctx = CONTEXTS[plays.context[i]]
    return {
        "event_id": event_id,
        "user_id": int(plays.user[i]) + 1,
        "track_id": int(plays.track[i]) + 1,
        "ts": iso_ms(np.array([plays.ts_ms[i] if ts_ms is None else ts_ms]))[0],
        "ms_played": int(plays.ms_played[i]),
        "reason_end": REASONS[plays.reason[i]],
        "saved": bool(plays.saved[i]),
        "context": f"playlist:{plays.playlist[i] + 1}" if plays.context[i] == PLAYLIST else ctx,
        "position": pos if pos else None,
        "platform": PLATFORMS[plays.platform[i]],
    }


def land_week(
    plays: Plays,
    week_index: int,
    start: int,
    end: int,
    n_users: int,
    n_tracks: int,
    old_enough: np.ndarray,
    bad_rate: float,
    rng: np.random.Generator,
) -> LandedWeek:
    """Lines of one week: ``plays`` (already in ts order) plus malformed lines mixed in."""
    n_valid = len(plays)
    n_bad = int(round(n_valid * bad_rate / (1.0 - bad_rate))) if n_valid else 0
    counts = rng.multinomial(n_bad, np.full(len(MALFORMED_KINDS), 1.0 / len(MALFORMED_KINDS)))
    ctx = _WeekContext(week_index, start, end, n_users, n_tracks, old_enough)
    fresh_ids = iter(event_ids(week_index, np.arange(n_valid, n_valid + n_bad)))
    bad_lines: list[str] = []
    anchors: list[int] = []
    for kind, count in zip(MALFORMED_KINDS, counts.tolist(), strict=True):
        templates = rng.choice(n_valid, size=count, replace=count > n_valid) if count else []
        for t in np.asarray(templates, dtype=np.int64).tolist():
            if kind == "duplicate_event_id":  # the exact line again, a little later in the stream
                bad_lines.append(render(plays.take([t]), event_ids(week_index, np.array([t])))[0])
                anchors.append(min(n_valid, t + 1 + int(rng.integers(DUPLICATE_LAG))))
                continue
            if kind == "ts_outside_week":
                bad_lines.append(_dumps(_record(plays, t, next(fresh_ids), _outside(ctx, t, plays, rng))))
            else:
                bad_lines.append(_malformed_line(kind, _record(plays, t, next(fresh_ids)), ctx, rng))
            anchors.append(int(rng.integers(0, n_valid + 1)))
    order = np.argsort(np.asarray(anchors, dtype=np.int64), kind="stable")
    return LandedWeek(
        plays=plays,
        week_index=week_index,
        bad_lines=[bad_lines[i] for i in order.tolist()],
        bad_anchor=np.asarray(anchors, dtype=np.int64)[order],
        malformed=dict(zip(MALFORMED_KINDS, counts.tolist(), strict=True)),
    )


def _outside(ctx: _WeekContext, t: int, plays: Plays, rng: np.random.Generator) -> int:
    """A ts just outside the week; before it only if user and track already existed then."""
    if ctx.old_enough[t] and rng.random() < 0.5:
        return ctx.start - int(rng.integers(1_000, 3 * DAY))
    return ctx.end + int(rng.integers(0, 3 * DAY))
