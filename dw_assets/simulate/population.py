"""Listeners: countries, signups, activity and hidden taste; plus bot accounts.

A user's taste is a normalized mix of 1-3 genre centroids plus personal
noise, and the same mix drives which genres they browse, so listening
histories have a realistic genre distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dw_assets.simulate.catalog import Genres, normalize
from dw_assets.simulate.config import SimulationConfig, rng_for

COUNTRIES = ("US", "BR", "GB", "DE", "MX", "FR", "SE", "IN", "JP", "ES", "CA", "AU", "NL", "PL", "IT", "AR")
UTC_OFFSET_H = np.array([-5, -3, 0, 1, -6, 1, 1, 5, 9, 1, -5, 10, 1, 1, 1, -3], dtype=np.int64)
PLATFORMS = ("ios", "android", "web", "desktop")
PLATFORM_SHARE = np.array([0.35, 0.4, 0.1, 0.15])
MAX_MIX = 3  # genres in a taste mix
TASTE_NOISE = 0.5  # norm of the personal deviation from the genre mix
COUNTRY_GENRE_SPREAD = 0.6  # how much genre popularity varies between countries
CURRENT_YEAR = 2026
MAX_ACTIVITY = 250.0  # plays per week of the heaviest human listeners


@dataclass
class Population:
    """All accounts ever created in the simulation (user_id = index + 1)."""

    country: np.ndarray  # int8[U], index into COUNTRIES
    signup_ms: np.ndarray  # int64[U], signup time, ms since epoch
    signup_week: np.ndarray  # int16[U], -1 = before the first week
    birth_year: np.ndarray  # int32[U], 0 = unknown
    taste: np.ndarray  # float32[U, dim], unit vectors
    mix_genre: np.ndarray  # int16[U, MAX_MIX], -1 padded
    mix_weight: np.ndarray  # float32[U, MAX_MIX], rows sum to 1
    activity: np.ndarray  # float32[U], mean plays per active week
    platform: np.ndarray  # int8[U], preferred platform
    is_bot: np.ndarray  # bool[U]
    dormant: np.ndarray  # bool[U], new users who play nothing in their signup week

    @property
    def user_id(self) -> np.ndarray:
        return np.arange(1, len(self.country) + 1, dtype=np.int64)

    @property
    def n_users(self) -> int:
        return len(self.country)

    def new_users(self, week_index: int) -> np.ndarray:
        return np.flatnonzero(self.signup_week == week_index)


def _ms(day: np.datetime64) -> int:
    return int(np.datetime64(day, "ms").astype(np.int64))


def make_population(config: SimulationConfig, genres: Genres) -> Population:
    rng = rng_for(config.seed, "population")
    n0 = config.users + config.bots
    n_new = config.new_users_per_week * (config.weeks + 1)
    n = n0 + n_new
    start = _ms(np.datetime64(config.start_week, "D"))
    day, week = 86_400_000, 7 * 86_400_000

    country_share = 1.0 / np.arange(1, len(COUNTRIES) + 1) ** 1.1
    country = rng.choice(len(COUNTRIES), size=n, p=country_share / country_share.sum()).astype(np.int8)

    is_bot = np.zeros(n, dtype=bool)
    is_bot[rng.choice(n0, size=config.bots, replace=False)] = True
    signup_week = np.full(n, -1, dtype=np.int16)
    signup_week[n0:] = np.repeat(np.arange(config.weeks + 1), config.new_users_per_week)
    # Existing users joined over the past years (recent ones more likely); bots recently.
    signup = start - (day + (rng.random(n) ** 2 * 6 * 365 * day)).astype(np.int64)
    signup[is_bot] = start - rng.integers(7 * day, 120 * day, int(is_bot.sum()))
    signup[n0:] = start + signup_week[n0:].astype(np.int64) * week + rng.integers(0, week, n_new)
    dormant = np.zeros(n, dtype=bool)
    dormant[n0:] = rng.random(n_new) < config.dormant_new_user_share

    age = np.clip(rng.normal(29.0, 11.0, n), 13, 85).astype(np.int32)
    birth_year = np.where(rng.random(n) < 0.08, 0, CURRENT_YEAR - age).astype(np.int32)

    mix_genre, mix_weight = _taste_mix(rng, country, genres, n)
    taste = np.zeros((n, config.dim), dtype=np.float32)
    for slot in range(MAX_MIX):
        g = mix_genre[:, slot]
        taste += np.where(g[:, None] >= 0, genres.centroid[np.maximum(g, 0)], 0.0) * mix_weight[:, slot, None]
    taste = normalize(taste + rng.standard_normal(taste.shape) * (TASTE_NOISE / np.sqrt(config.dim)))

    activity = np.minimum(
        rng.lognormal(np.log(config.plays_per_user_week), config.activity_sigma, n), MAX_ACTIVITY
    )
    platform = rng.choice(len(PLATFORMS), size=n, p=PLATFORM_SHARE).astype(np.int8)
    return Population(
        country=country,
        signup_ms=signup,
        signup_week=signup_week,
        birth_year=birth_year,
        taste=taste,
        mix_genre=mix_genre,
        mix_weight=mix_weight.astype(np.float32),
        activity=activity.astype(np.float32),
        platform=platform,
        is_bot=is_bot,
        dormant=dormant,
    )


def _taste_mix(
    rng: np.random.Generator, country: np.ndarray, genres: Genres, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """1-3 distinct genres per user, the first drawn from the country's genre preferences."""
    n_g = len(genres.names)
    pref = genres.share[None, :] * rng.lognormal(0.0, COUNTRY_GENRE_SPREAD, (len(COUNTRIES), n_g))
    pref /= pref.sum(axis=1, keepdims=True)
    cum = np.cumsum(pref, axis=1)
    u = rng.random(n)
    primary = (u[:, None] > cum[country]).sum(axis=1)
    k = rng.choice([1, 2, 3], size=n, p=[0.35, 0.4, 0.25])
    k = np.minimum(k, n_g)
    # Further genres by global share, rejecting repeats with a few redraws.
    mix = np.full((n, MAX_MIX), -1, dtype=np.int16)
    mix[:, 0] = np.minimum(primary, n_g - 1)
    for slot in range(1, MAX_MIX):
        g = rng.choice(n_g, size=n, p=genres.share)
        for _ in range(8):
            clash = (g[:, None] == mix[:, :slot]).any(axis=1)
            if not clash.any():
                break
            g[clash] = rng.choice(n_g, size=int(clash.sum()), p=genres.share)
        keep = (slot < k) & ~(g[:, None] == mix[:, :slot]).any(axis=1)
        mix[keep, slot] = g[keep]
    weight = rng.gamma(2.0, 1.0, (n, MAX_MIX)) * (mix >= 0)
    weight[:, 0] += 1.0  # the primary genre dominates
    return mix, weight / weight.sum(axis=1, keepdims=True)
