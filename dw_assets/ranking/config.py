"""The ranking domain's run config (Dagster ``Config``): the ranker's and the playlists'.

Shared by the ranking assets and the evaluation's control arm (``last_week_playlists`` builds week
W-1's playlists with the same settings), so neither asset module imports the other. The fields and
their defaults are the domain dataclasses' (``RankerConfig``, ``RerankConfig``, ``PlaylistSettings``)
through ``config_fields``: a field added there is run config here.
"""

from __future__ import annotations

from dw_assets.config_fields import config_fields
from dw_assets.ranking.batch import PlaylistSettings
from dw_assets.ranking.ranker import RankerConfig
from dw_assets.ranking.rerank import RerankConfig


class RankerAssetConfig(config_fields(
    RankerConfig,
    # The asset trains with one LightGBM thread: a fixed count gives the same model on every machine.
    exclude=["num_threads"],
)):
    def settings(self) -> RankerConfig:
        return self.to_domain(RankerConfig, num_threads=1)


class PlaylistsConfig(config_fields(
    RerankConfig, PlaylistSettings,
    # exploration_slots (an int or a range): the run config takes it as the range below.
    # rerank: PlaylistSettings' RerankConfig, built from this class's RerankConfig fields.
    exclude=["exploration_slots", "rerank"],
)):
    exploration_min: int = RerankConfig().exploration_range[0]
    exploration_max: int = RerankConfig().exploration_range[1]

    def rerank(self) -> RerankConfig:
        return self.to_domain(RerankConfig, exploration_slots=(self.exploration_min, self.exploration_max))

    def settings(self) -> PlaylistSettings:
        return self.to_domain(PlaylistSettings, rerank=self.rerank())
