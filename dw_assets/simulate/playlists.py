"""User-made playlists: taste-coherent (1-2 genres of the owner's mix, high
affinity), 10-50 tracks, created and extended week by week."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dw_assets.simulate.catalog import Catalog
from dw_assets.simulate.discovery import TrackSampler, mix_genres, ranked_picks
from dw_assets.simulate.population import Population

MIN_TRACKS, MAX_TRACKS, MEDIAN_TRACKS = 10, 50, 22
SECOND_GENRE_SHARE = 0.4
GROWING_SHARE = 0.1  # playlists that get 1-3 tracks appended in a week
PICKINESS = 6  # candidates considered per kept track: own playlists are selective


@dataclass
class PlaylistBook:
    """Every playlist so far (playlist_id = index + 1) and its entries in append order."""

    owner: np.ndarray  # int64[P], user index
    genres: np.ndarray  # int64[P, 2], -1 = single-genre playlist
    size: np.ndarray  # int64[P]
    entry_list: np.ndarray  # int64[E]
    entry_track: np.ndarray  # int64[E]
    entry_pos: np.ndarray  # int32[E], 1-based

    @classmethod
    def empty(cls) -> PlaylistBook:
        i = np.zeros(0, dtype=np.int64)
        return cls(i, np.zeros((0, 2), dtype=np.int64), i, i, i, np.zeros(0, dtype=np.int32))

    @property
    def n_playlists(self) -> int:
        return len(self.owner)

    def snapshot(self) -> pd.DataFrame:
        """All playlists as landed: playlist_id, user_id, track_id, pos (int64, int64, int64, int32)."""
        order = np.lexsort((self.entry_pos, self.entry_list))
        lists = self.entry_list[order]
        return pd.DataFrame(
            {
                "playlist_id": lists + 1,
                "user_id": self.owner[lists] + 1,
                "track_id": self.entry_track[order] + 1,
                "pos": self.entry_pos[order],
            }
        )

    def index(self) -> PlaylistIndex:
        order = np.lexsort((self.entry_pos, self.entry_list))
        by_owner = np.argsort(self.owner, kind="stable")
        return PlaylistIndex(
            tracks=self.entry_track[order],
            list_start=np.searchsorted(self.entry_list[order], np.arange(self.n_playlists)),
            list_size=self.size.copy(),
            owner_lists=by_owner,
            owner_sorted=self.owner[by_owner],
        )


@dataclass
class PlaylistIndex:
    """Read-only view of a snapshot for fast lookups while simulating a week."""

    tracks: np.ndarray  # entries sorted by (playlist, pos)
    list_start: np.ndarray
    list_size: np.ndarray
    owner_lists: np.ndarray  # playlist indices sorted by owner
    owner_sorted: np.ndarray

    def count(self, users: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.owner_sorted, users, "right") - np.searchsorted(self.owner_sorted, users)

    def pick(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random playlist of each user (who must own at least one)."""
        lo = np.searchsorted(self.owner_sorted, users)
        n = self.count(users)
        return self.owner_lists[lo + (rng.random(len(users)) * n).astype(np.int64)]


def _sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = np.round(rng.lognormal(np.log(MEDIAN_TRACKS), 0.45, n))
    return np.clip(raw, MIN_TRACKS, MAX_TRACKS).astype(np.int64)


def create_playlists(
    book: PlaylistBook,
    pop: Population,
    catalog: Catalog,
    sampler: TrackSampler,
    owners: np.ndarray,
    rng: np.random.Generator,
) -> PlaylistBook:
    """A new playlist per entry of ``owners`` (user indices), appended to the book."""
    if len(owners) == 0:
        return book
    first = mix_genres(pop, owners, rng, explore=0.0)
    second = mix_genres(pop, owners, rng, explore=0.0)
    second[(second == first) | (rng.random(len(owners)) >= SECOND_GENRE_SHARE)] = -1
    genres = np.stack([first, second], axis=1)
    lists, tracks = ranked_picks(
        pop, catalog, sampler, owners, _sizes(rng, len(owners)), rng, genres=genres, oversample=PICKINESS
    )
    # A niche genre can run out of distinct candidates: such a list is never saved.
    full = np.bincount(lists, minlength=len(owners)) >= MIN_TRACKS
    owners, genres = owners[full], genres[full]
    kept = full[lists]
    lists, tracks = (np.cumsum(full) - 1)[lists[kept]], tracks[kept]
    # A user's own track order is not sorted by taste: shuffle within each list.
    order = np.lexsort((rng.random(len(lists)), lists))
    lists, tracks = lists[order], tracks[order]
    pos = (np.arange(len(lists)) - np.searchsorted(lists, lists) + 1).astype(np.int32)
    base = book.n_playlists
    return PlaylistBook(
        owner=np.r_[book.owner, owners],
        genres=np.r_[book.genres, genres],
        size=np.r_[book.size, np.bincount(lists, minlength=len(owners))],
        entry_list=np.r_[book.entry_list, lists + base],
        entry_track=np.r_[book.entry_track, tracks],
        entry_pos=np.r_[book.entry_pos, pos],
    )


def grow_playlists(
    book: PlaylistBook, pop: Population, catalog: Catalog, sampler: TrackSampler, rng: np.random.Generator
) -> PlaylistBook:
    """Append 1-3 fitting tracks (not already in it) to a random tenth of the playlists."""
    grow = np.flatnonzero(rng.random(book.n_playlists) < GROWING_SHARE)
    if len(grow) == 0:
        return book
    want = rng.integers(1, 4, len(grow))
    lists, tracks = ranked_picks(
        pop, catalog, sampler, book.owner[grow], want * 3, rng, genres=book.genres[grow], oversample=PICKINESS
    )
    lists = grow[lists]
    present = np.isin(
        lists * catalog.n_tracks + tracks, book.entry_list * catalog.n_tracks + book.entry_track
    )
    lists, tracks = lists[~present], tracks[~present]
    rank = np.arange(len(lists)) - np.searchsorted(lists, lists)
    keep = rank < np.repeat(want, np.bincount(np.searchsorted(grow, lists), minlength=len(grow)))
    lists, tracks, rank = lists[keep], tracks[keep], rank[keep]
    size = book.size.copy()
    pos = (size[lists] + rank + 1).astype(np.int32)
    np.add.at(size, lists, 1)
    return PlaylistBook(
        owner=book.owner,
        genres=book.genres,
        size=size,
        entry_list=np.r_[book.entry_list, lists],
        entry_track=np.r_[book.entry_track, tracks],
        entry_pos=np.r_[book.entry_pos, pos],
    )
