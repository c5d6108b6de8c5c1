"""The ranking domain's run config (Dagster ``Config``): the ranker's and the playlists'.

Shared by the ranking assets and the evaluation's control arm (``last_week_playlists`` builds week
W-1's playlists with the same settings), so neither asset module imports the other. Defaults come from
the domain dataclasses (``RankerConfig``, ``RerankConfig``).
"""

from __future__ import annotations

from dagster import Config

from dw_assets.ranking.batch import PlaylistSettings
from dw_assets.ranking.ranker import RankerConfig
from dw_assets.ranking.rerank import RerankConfig


class RankerAssetConfig(Config):
    objective: str = RankerConfig.objective
    label_scheme: str = RankerConfig.label_scheme
    training_rows: str = RankerConfig.training_rows
    num_leaves: int = RankerConfig.num_leaves
    learning_rate: float = RankerConfig.learning_rate
    n_estimators: int = RankerConfig.n_estimators
    max_training_users: int = RankerConfig.max_training_users
    sample_users: int = RankerConfig.sample_users  # drawn in Spark (seeded hash) before anything is collected
    sample_rows: int = RankerConfig.sample_rows
    seed: int = RankerConfig.seed

    def settings(self) -> RankerConfig:
        return RankerConfig(objective=self.objective, label_scheme=self.label_scheme,
                            training_rows=self.training_rows, num_leaves=self.num_leaves,
                            learning_rate=self.learning_rate, n_estimators=self.n_estimators,
                            max_training_users=self.max_training_users, sample_users=self.sample_users,
                            sample_rows=self.sample_rows, seed=self.seed, num_threads=1)


class PlaylistsConfig(Config):
    mmr_lambda: float = RerankConfig.mmr_lambda
    calibration_lambda: float = RerankConfig.calibration_lambda
    max_per_artist: int = RerankConfig.max_per_artist
    exploration_min: int = RerankConfig().exploration_range[0]
    exploration_max: int = RerankConfig().exploration_range[1]
    seed: int = RerankConfig.seed
    fallback_per_country: int = PlaylistSettings.fallback_per_country
    users_per_task: int = PlaylistSettings.users_per_task  # Spark tasks hold this many users' candidates at once

    def rerank(self) -> RerankConfig:
        return RerankConfig(mmr_lambda=self.mmr_lambda, calibration_lambda=self.calibration_lambda,
                            max_per_artist=self.max_per_artist,
                            exploration_slots=(self.exploration_min, self.exploration_max), seed=self.seed)

    def settings(self) -> PlaylistSettings:
        return PlaylistSettings(rerank=self.rerank(), fallback_per_country=self.fallback_per_country,
                                users_per_task=self.users_per_task)
