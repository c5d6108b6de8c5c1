"""The assets' run config comes from the domain dataclasses: same fields, same defaults.

Fast: imports the asset modules, builds no job and runs nothing. A field hand-copied into a Config
class with another default, a dataclass field missing from its asset's run config, or a new asset
default not declared here fails.
"""

import dataclasses

import pytest
from dagster import Config, RunConfig, asset, materialize

from dw_assets.config_fields import DomainConfig, config_fields, domain_defaults, parameter_default
from dw_assets.embeddings.assets import (
    AudioAssetConfig,
    Item2VecAssetConfig,
    TrackEmbeddingsConfig,
    TwoTowerAssetConfig,
)
from dw_assets.embeddings.audio import AudioConfig
from dw_assets.embeddings.incremental_assets import NewTrackVectorsConfig
from dw_assets.embeddings.item2vec import Item2VecConfig
from dw_assets.embeddings.two_tower import TwoTowerConfig
from dw_assets.ingest.assets import InteractionsConfig, RawPlayEventsConfig, UserProfilesConfig
from dw_assets.ingest.bronze import build_bronze
from dw_assets.ingest.interactions import InteractionRules
from dw_assets.ingest.profiles import ProfileRules
from dw_assets.ranking.batch import PlaylistSettings
from dw_assets.ranking.config import PlaylistsConfig, RankerAssetConfig
from dw_assets.ranking.ranker import RankerConfig
from dw_assets.ranking.rerank import RerankConfig
from dw_assets.serving.assets import PublishConfig
from dw_assets.serving.publish import PublishSettings

# Each asset config: the fields it adds beyond its dataclasses' (aliases kept for existing run
# configs, and the asset's own settings), and the defaults where the asset departs from the dataclass.
CLASSES = {
    Item2VecAssetConfig: ({}, {}),
    AudioAssetConfig: ({"vector_files": False, "max_problem_examples": 1_000}, {}),
    TwoTowerAssetConfig: ({}, {"epochs": 1, "max_examples": 1_000_000}),
    TrackEmbeddingsConfig: ({}, {}),
    InteractionsConfig: ({"session_gap_minutes": InteractionRules.session_gap_s // 60}, {}),
    UserProfilesConfig: ({}, {}),
    PublishConfig: ({"keep_weeks": None}, {}),
    RankerAssetConfig: ({}, {}),
    PlaylistsConfig: ({"exploration_min": RerankConfig().exploration_range[0],
                       "exploration_max": RerankConfig().exploration_range[1]}, {}),
    NewTrackVectorsConfig: ({"cold_neighbours": TwoTowerConfig.cold_neighbours, "clip_seconds": None}, {}),
}


@pytest.mark.parametrize("config_class", list(CLASSES), ids=lambda c: c.__name__)
def test_every_asset_config_has_its_dataclass_fields_with_their_defaults(config_class):
    extras, asset_defaults = CLASSES[config_class]
    derived = domain_defaults(config_class)
    fields = config_class.model_fields
    assert set(fields) == set(derived) | set(extras), (
        f"missing {sorted(set(derived) | set(extras) - set(fields))}, "
        f"undeclared {sorted(set(fields) - set(derived) - set(extras))}")
    assert dict(config_class.__asset_defaults__) == asset_defaults
    for name, default in {**derived, **asset_defaults, **extras}.items():
        assert fields[name].default == default, (name, fields[name].default, default)


def test_the_asset_configs_build_the_dataclasses_the_assets_ran_with():
    assert Item2VecAssetConfig().settings() == Item2VecConfig(epochs=6)
    assert AudioAssetConfig().settings(embedding_dim=48) == AudioConfig(embedding_dim=48, epochs=10,
                                                                        max_warm_tracks=10_000)
    assert TwoTowerAssetConfig().settings() == TwoTowerConfig(epochs=1, max_examples=1_000_000)
    assert RankerAssetConfig().settings() == RankerConfig(num_threads=1)
    assert PlaylistsConfig().settings() == PlaylistSettings(
        rerank=RerankConfig(exploration_slots=RerankConfig().exploration_range))
    assert InteractionsConfig().rules() == InteractionRules()
    assert InteractionsConfig(session_gap_minutes=45).rules().session_gap_s == 45 * 60
    assert UserProfilesConfig().rules() == ProfileRules()
    assert PublishConfig().settings() == PublishSettings()
    assert RawPlayEventsConfig().allow_empty_week is parameter_default(build_bronze, "allow_empty_week")
    # A tuple is a list in the run config and a tuple again in the dataclass.
    ranker = RankerAssetConfig(outcome_values=[0, 1, 2, 3, 4], seed=3).settings()
    assert ranker.outcome_values == (0, 1, 2, 3, 4) and ranker.seed == 3
    assert AudioAssetConfig(channels=[8, 16]).settings(embedding_dim=8).channels == (8, 16)


@dataclasses.dataclass(frozen=True)
class NewRules:  # stands for a domain dataclass that gains fields
    window: int = 3
    bands: tuple[float, ...] = (0.5, 1.0)
    cap: int | None = None


class NewRulesConfig(config_fields(NewRules)):  # module level: Dagster resolves the asset's annotation
    pass


@asset
def uses_rules(config: NewRulesConfig) -> NewRules:
    return config.to_domain(NewRules)


def test_a_new_dataclass_field_is_run_config_without_another_edit():
    assert set(NewRulesConfig.model_fields) == {"window", "bands", "cap"}
    result = materialize([uses_rules], run_config=RunConfig(ops={"uses_rules": NewRulesConfig(bands=[2.0], cap=9)}))
    assert result.output_for_node("uses_rules") == NewRules(bands=(2.0,), cap=9)


def test_the_launchpad_explains_a_field_with_its_comment_in_the_dataclass():
    assert Item2VecAssetConfig.model_fields["window"].description == "positions either side of the centre track"
    assert "Warm tracks whose clips the driver reads" in AudioAssetConfig.model_fields["max_training_clips"].description
    assert NewRulesConfig.model_fields["window"].description is None  # no comment, no description


def test_what_the_run_config_cannot_hold_is_refused_naming_the_field():
    @dataclasses.dataclass(frozen=True)
    class Rules:
        slots: int | tuple[int, int] = 0
        seed: int = 7

    with pytest.raises(TypeError, match="Rules.slots"):
        config_fields(Rules)
    assert set(config_fields(Rules, exclude=["slots"]).model_fields) == {"seed"}
    with pytest.raises(ValueError, match="dataclass's own"):
        config_fields(Rules, exclude=["slots"], defaults={"seed": 7})
    with pytest.raises(TypeError, match="not fields"):
        config_fields(Rules, exclude=["slots", "sede"])
    prefixed = config_fields(Rules, exclude=["sample_slots"], prefix={Rules: "sample_"})
    assert set(prefixed.model_fields) == {"sample_seed"}
    assert prefixed(sample_seed=3).to_domain(Rules) == Rules(seed=3)


def test_domain_configs_are_dagster_configs():
    for config_class in CLASSES:
        assert issubclass(config_class, DomainConfig) and issubclass(config_class, Config)


def test_typed_run_config_of_every_asset_config_is_valid_for_the_weekly_job():
    """What `dw ab` and the runner pass (``RunConfig`` of Config objects, every field filled, tuples as
    lists, None where a field is optional) is what the job's config schema takes."""
    from dagster import validate_run_config

    from dw_assets.automation.runner import op_config
    from dw_assets.definitions import defs

    job = defs.resolve_job_def("weekly_discover_job")
    typed = RunConfig(ops={
        "item2vec_embeddings": Item2VecAssetConfig(epochs=2), "audio_embeddings": AudioAssetConfig(channels=[8, 16]),
        "two_tower_model": TwoTowerAssetConfig(max_examples=None), "tower_embeddings": TrackEmbeddingsConfig(),
        "raw_play_events": RawPlayEventsConfig(), "interactions": InteractionsConfig(), "user_profiles": UserProfilesConfig(),
        "ranker_model": RankerAssetConfig(outcome_values=[0, 1, 2, 3, 4]), "ranked_playlists": PlaylistsConfig(),
        "published_playlists": PublishConfig(keep_weeks=3)})
    ops = op_config(typed)
    assert ops["item2vec_embeddings"]["config"]["epochs"] == 2
    assert op_config({"x": {"config": {"epochs": 1}}}) == {"x": {"config": {"epochs": 1}}}  # dicts still work
    assert validate_run_config(job, {"ops": ops})
