"""Genres, artists, albums and tracks with hidden style vectors.

Track style = normalize(genre centroid + artist offset + noise), so genre and
artist are real structure in the style space. The audible attributes (pitch,
harmonic timbre, brightness, tempo, articulation, noise) are functions of the
style and the genre, which is what lets an audio model recover the style of a
track nobody has played yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dw_assets.simulate.config import SimulationConfig, rng_for

GENRE_NAMES = (
    "pop", "rock", "hip-hop", "electronic", "r&b", "latin", "country", "metal",
    "jazz", "classical", "folk", "reggae", "soul", "blues", "punk", "ambient",
    "indie", "k-pop", "funk", "gospel", "house", "techno", "afrobeat", "world",
)  # fmt: skip
N_HARMONICS = 10
GENRE_SHARE_EXPONENT = 0.8  # artists per genre ~ rank^-0.8
ARTIST_SPREAD = 0.8  # norm of an artist's offset from its genre centroid
TRACK_SPREAD = 0.45  # norm of a track's own deviation
CROSS_GENRE_SHARE = 0.12  # tracks outside the artist's main genre
MEAN_ALBUM_TRACKS = 7.0
NEW_RELEASE_MEAN_TRACKS = 2.5  # weekly releases are mostly singles and EPs
NEW_ARTIST_SHARE = 0.3  # weekly releases by debut artists
CATALOG_YEARS = 10  # release dates of the initial catalog reach back this far
AUDIO_BACKFILL_DAYS = 28  # initial catalog audio uploaded in the weeks before start
GENRE_TIMBRE_SPREAD = 1.2  # harmonic log-amplitude differences between genres
STYLE_TIMBRE_SPREAD = 1.0  # ... and along style directions within a genre


@dataclass
class Genres:
    names: list[str]
    share: np.ndarray  # float64[G], share of artists
    centroid: np.ndarray  # float32[G, dim], unit vectors
    timbre: np.ndarray  # float32[G, N_HARMONICS], harmonic log-amplitudes
    tempo_bpm: np.ndarray  # float32[G]
    pitch_hz: np.ndarray  # float32[G], typical register
    brightness: np.ndarray  # float32[G], logit of typical brightness
    noisiness: np.ndarray  # float32[G], logit of typical noise share
    duration_s: np.ndarray  # float32[G], median track length


@dataclass
class Catalog:
    """All tracks ever released in the simulation, indexed by track index (track_id = index + 1)."""

    genre: np.ndarray  # int16[T]
    artist: np.ndarray  # int64[T], artist index
    album: np.ndarray  # int64[T], album index
    style: np.ndarray  # float32[T, dim], unit vectors
    popularity: np.ndarray  # float64[T], sums to 1
    duration_ms: np.ndarray  # int64[T]
    release_week: np.ndarray  # int16[T], -1 = initial catalog, i = released after week i
    release_date: np.ndarray  # datetime64[D][T]
    upload_date: np.ndarray  # datetime64[D][T], audio upload
    tempo_bpm: np.ndarray  # float32[T]
    brightness: np.ndarray  # float32[T] in (0, 1)
    pitch_hz: np.ndarray  # float32[T], fundamental
    timbre: np.ndarray  # float32[T, N_HARMONICS], harmonic log-amplitudes
    articulation: np.ndarray  # float32[T], envelope decay per beat (staccato > legato)
    noisiness: np.ndarray  # float32[T], share of noise in the mix
    is_fraud: np.ndarray  # bool[T], tracks pushed by stream-fraud bots
    artist_genre: np.ndarray  # int16[A]
    artist_popularity: np.ndarray  # float64[A]
    album_first: np.ndarray  # int64[n_albums], first track index of each album
    album_size: np.ndarray  # int64[n_albums]
    n_genres: int

    @property
    def track_id(self) -> np.ndarray:
        return np.arange(1, len(self.genre) + 1, dtype=np.int64)

    @property
    def n_tracks(self) -> int:
        return len(self.genre)

    @property
    def n_artists(self) -> int:
        return len(self.artist_genre)

    def new_releases(self, week_index: int) -> np.ndarray:
        """Track indices released after week ``week_index`` (audio uploaded during it)."""
        return np.flatnonzero(self.release_week == week_index)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_genres(config: SimulationConfig) -> Genres:
    rng = rng_for(config.seed, "genres")
    g = config.n_genres
    names = [GENRE_NAMES[i] if i < len(GENRE_NAMES) else f"genre-{i + 1}" for i in range(g)]
    share = 1.0 / np.arange(1, g + 1) ** GENRE_SHARE_EXPONENT
    # Natural harmonic roll-off plus a genre-specific signature.
    timbre = rng.normal(0.0, GENRE_TIMBRE_SPREAD, (g, N_HARMONICS)) - 0.3 * np.arange(N_HARMONICS)
    duration = rng.uniform(160.0, 260.0, g)
    long_form = np.isin(names, ["classical", "ambient", "jazz"])
    duration[long_form] *= 1.7
    duration[np.isin(names, ["punk"])] *= 0.7
    return Genres(
        names=names,
        share=share / share.sum(),
        centroid=normalize(rng.standard_normal((g, config.dim))),
        timbre=timbre.astype(np.float32),
        tempo_bpm=rng.uniform(70.0, 170.0, g).astype(np.float32),
        pitch_hz=(110.0 * 2.0 ** rng.uniform(0.0, 2.0, g)).astype(np.float32),
        brightness=rng.normal(0.0, 1.5, g).astype(np.float32),
        noisiness=rng.normal(-1.5, 1.0, g).astype(np.float32),
        duration_s=duration.astype(np.float32),
    )


@dataclass
class _StyleAudio:
    """Fixed projections from style space to audible attributes."""

    pitch: np.ndarray
    brightness: np.ndarray
    tempo: np.ndarray
    articulation: np.ndarray
    noisiness: np.ndarray
    harmonics: np.ndarray  # [N_HARMONICS, dim]


def _style_audio(config: SimulationConfig) -> _StyleAudio:
    rng = rng_for(config.seed, "style-to-audio")
    d = config.dim

    def direction() -> np.ndarray:
        return normalize(rng.standard_normal(d))

    return _StyleAudio(
        pitch=direction(),
        brightness=direction(),
        tempo=direction(),
        articulation=direction(),
        noisiness=direction(),
        harmonics=(rng.standard_normal((N_HARMONICS, d)) * STYLE_TIMBRE_SPREAD).astype(np.float32),
    )


class _Builder:
    """Accumulates artists and tracks; the catalog is generated once, up front."""

    def __init__(self, config: SimulationConfig, genres: Genres):
        self.config = config
        self.genres = genres
        self.projection = _style_audio(config)
        self.artist_genre: list[np.ndarray] = []
        self.artist_offset: list[np.ndarray] = []
        self.artist_pop: list[np.ndarray] = []
        self.artist_timbre: list[np.ndarray] = []
        self.parts: list[dict[str, np.ndarray]] = []
        self.n_artists = 0
        self.n_tracks = 0
        self.n_albums = 0

    def add_artists(self, rng: np.random.Generator, n: int) -> np.ndarray:
        g = self.genres
        self.artist_genre.append(rng.choice(len(g.names), size=n, p=g.share).astype(np.int16))
        off = rng.standard_normal((n, self.config.dim)) * (ARTIST_SPREAD / np.sqrt(self.config.dim))
        self.artist_offset.append(off.astype(np.float32))
        self.artist_pop.append(rng.lognormal(0.0, 1.0, n))
        self.artist_timbre.append(rng.normal(0.0, 0.35, (n, N_HARMONICS)).astype(np.float32))
        ids = np.arange(self.n_artists, self.n_artists + n)
        self.n_artists += n
        return ids

    def add_tracks(
        self,
        rng: np.random.Generator,
        artist: np.ndarray,
        new_album: np.ndarray,
        release_week: int,
        release_date: np.ndarray,
        upload_date: np.ndarray,
    ) -> None:
        """Tracks in album order; ``new_album`` flags the first track of each album."""
        n = len(artist)
        g = self.genres
        a_genre = np.concatenate(self.artist_genre)
        a_off = np.concatenate(self.artist_offset)
        a_pop = np.concatenate(self.artist_pop)
        a_timbre = np.concatenate(self.artist_timbre)
        genre = a_genre[artist].copy()
        cross = rng.random(n) < CROSS_GENRE_SHARE
        genre[cross] = rng.choice(len(g.names), size=int(cross.sum()), p=g.share)
        noise = rng.standard_normal((n, self.config.dim)) * (TRACK_SPREAD / np.sqrt(self.config.dim))
        style = normalize(g.centroid[genre] + a_off[artist] + noise)
        pareto = np.minimum(rng.pareto(self.config.popularity_tail, n) + 1.0, 1e4)
        popularity = a_pop[artist] * pareto
        duration_s = g.duration_s[genre] * rng.lognormal(0.0, 0.3, n)
        duration_ms = (np.clip(duration_s, 60.0, 900.0) * 1000).astype(np.int64) + rng.integers(0, 1000, n)

        p = self.projection
        # Each audible attribute = the genre's typical value moved along one style direction.
        tempo = g.tempo_bpm[genre] * 2.0 ** (0.8 * (style @ p.tempo)) * rng.lognormal(0.0, 0.04, n)
        brightness = _sigmoid(g.brightness[genre] + 3.0 * (style @ p.brightness))
        pitch = g.pitch_hz[genre] * 2.0 ** np.clip(1.5 * (style @ p.pitch), -1.0, 1.0)
        articulation = 2.0 + 10.0 * _sigmoid(4.0 * (style @ p.articulation))
        noisiness = 0.02 + 0.4 * _sigmoid(g.noisiness[genre] + 3.0 * (style @ p.noisiness))
        timbre = g.timbre[genre] + a_timbre[artist] + style @ p.harmonics.T

        album = self.n_albums + np.cumsum(new_album) - 1
        self.n_albums += int(new_album.sum())
        self.parts.append(
            dict(
                genre=genre.astype(np.int16),
                artist=artist.astype(np.int64),
                album=album.astype(np.int64),
                style=style,
                popularity=popularity,
                duration_ms=duration_ms,
                release_week=np.full(n, release_week, dtype=np.int16),
                release_date=release_date.astype("datetime64[D]"),
                upload_date=upload_date.astype("datetime64[D]"),
                tempo_bpm=np.clip(tempo, 50.0, 220.0).astype(np.float32),
                brightness=brightness.astype(np.float32),
                pitch_hz=pitch.astype(np.float32),
                timbre=timbre.astype(np.float32),
                articulation=articulation.astype(np.float32),
                noisiness=noisiness.astype(np.float32),
            )
        )
        self.n_tracks += n

    def build(self, fraud_artists: np.ndarray) -> Catalog:
        cols = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        cols["popularity"] = cols["popularity"] / cols["popularity"].sum()
        album = cols["album"]
        first = np.flatnonzero(np.r_[True, album[1:] != album[:-1]])
        return Catalog(
            **cols,
            is_fraud=np.isin(cols["artist"], fraud_artists),
            artist_genre=np.concatenate(self.artist_genre),
            artist_popularity=np.concatenate(self.artist_pop),
            album_first=first.astype(np.int64),
            album_size=np.diff(np.r_[first, len(album)]).astype(np.int64),
            n_genres=len(self.genres.names),
        )


def _artist_track_counts(rng: np.random.Generator, total: int) -> np.ndarray:
    """Power-law tracks per artist (many one-hit artists, a few with hundreds)."""
    counts = np.minimum(np.floor(rng.pareto(1.3, max(total, 16)) * 3.0) + 1, 300).astype(np.int64)
    cut = int(np.searchsorted(np.cumsum(counts), total))
    counts = counts[: cut + 1].copy()
    counts[-1] -= counts.sum() - total
    return counts[counts > 0]


def _album_starts(rng: np.random.Generator, artist: np.ndarray, mean_tracks: float) -> np.ndarray:
    starts = rng.random(len(artist)) < 1.0 / mean_tracks
    starts[np.r_[True, artist[1:] != artist[:-1]]] = True
    return starts


def make_catalog(config: SimulationConfig, genres: Genres) -> Catalog:
    """Initial catalog plus the new releases of every week (holdout included)."""
    rng = rng_for(config.seed, "catalog")
    b = _Builder(config, genres)
    start = np.datetime64(config.start_week, "D")

    counts = _artist_track_counts(rng, config.tracks)
    initial_artists = b.add_artists(rng, len(counts))
    # A couple of obscure artists whose tracks the stream-fraud bots push.
    small = np.flatnonzero((counts >= 2) & (counts <= 6))
    n_fraud = min(len(small), max(2, len(counts) // 2000))
    fraud = rng.choice(small, size=n_fraud, replace=False) if n_fraud else np.array([], dtype=np.int64)
    b.artist_pop[0][fraud] = 1e-3
    artist = np.repeat(initial_artists, counts)
    starts = _album_starts(rng, artist, MEAN_ALBUM_TRACKS)
    # Release dates skew recent; every track of an album shares its album's date.
    album_age = 1 + np.floor(rng.random(int(starts.sum())) ** 2.5 * 365 * CATALOG_YEARS).astype(np.int64)
    release = start - album_age[np.cumsum(starts) - 1].astype("timedelta64[D]")
    upload = start - (1 + rng.integers(0, AUDIO_BACKFILL_DAYS, len(artist))).astype("timedelta64[D]")
    b.add_tracks(rng, artist, starts, -1, release, upload)

    for i, key in enumerate(config.all_weeks):
        _add_week_releases(config, b, rng_for(config.seed, "releases", i), i, np.datetime64(key, "D"))
    return b.build(fraud)


def _add_week_releases(
    config: SimulationConfig, b: _Builder, rng: np.random.Generator, week_index: int, monday: np.datetime64
) -> None:
    n = config.new_tracks_per_week
    if n <= 0:
        return
    sizes = rng.geometric(1.0 / NEW_RELEASE_MEAN_TRACKS, n)
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), n)) + 1].copy()
    sizes[-1] -= sizes.sum() - n
    n_albums = len(sizes)
    debut = rng.random(n_albums) < NEW_ARTIST_SHARE
    pop = np.concatenate(b.artist_pop)
    album_artist = rng.choice(len(pop), size=n_albums, p=pop / pop.sum())
    album_artist[debut] = b.add_artists(rng, int(debut.sum()))
    artist = np.repeat(album_artist, sizes)
    starts = np.zeros(n, dtype=bool)
    starts[np.r_[0, np.cumsum(sizes)[:-1]]] = True
    # Uploaded during the week, released the Monday after it.
    upload = monday + rng.integers(0, 7, n).astype("timedelta64[D]")
    release = np.full(n, monday + np.timedelta64(7, "D"))
    b.add_tracks(rng, artist, starts, week_index, release, upload)


def available_tracks(catalog: Catalog, week_index: int) -> np.ndarray:
    """Tracks playable during week ``week_index``: released on or before its Monday."""
    return np.flatnonzero(catalog.release_week < week_index)
