"""The assets' run config comes from the domain dataclasses: same fields, same defaults.

Fast: imports the asset modules, builds no job and runs nothing. A field hand-copied into a Config
class with another default, a dataclass field missing from its asset's run config, or an asset
config not listed here (with the fields it adds) fails.
"""

import dataclasses
import inspect
import typing

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
from dw_assets.evaluation.assets import (
    LastWeekPlaylistsConfig,
    MonitoringConfig,
    OfflineEvaluationConfig,
    RetrievalEvaluationConfig,
    SampleConfig,
)
from dw_assets.evaluation.baselines import AlsConfig, ItemCfConfig
from dw_assets.evaluation.batch import EvaluationSample
from dw_assets.evaluation.config import AbTestConfig
from dw_assets.evaluation.monitoring import batch_window_sla, prediction_drift, volume_anomaly
from dw_assets.evaluation.north_star import NorthStarConfig
from dw_assets.ingest.assets import InteractionsConfig, RawPlayEventsConfig, UserProfilesConfig
from dw_assets.ingest.bronze import build_bronze
from dw_assets.ingest.interactions import InteractionRules
from dw_assets.ingest.profiles import ProfileRules
from dw_assets.ranking.batch import PlaylistSettings
from dw_assets.ranking.config import PlaylistsConfig, RankerAssetConfig
from dw_assets.ranking.ranker import RankerConfig
from dw_assets.ranking.rerank import RerankConfig
from dw_assets.retrieval.assets import CandidatesConfig, FaissIndexConfig
from dw_assets.retrieval.candidates import CandidateConfig
from dw_assets.serving.assets import PublishConfig
from dw_assets.serving.publish import PublishSettings

# Each asset config: the fields it adds beyond its dataclasses' (aliases kept for existing run
# configs, and the asset's own settings) with their defaults. Every asset's config class is here
# (test_every_asset_config_is_listed), and none has a default of its own for a dataclass field.
CLASSES = {
    Item2VecAssetConfig: {},
    AudioAssetConfig: {"vector_files": False, "max_problem_examples": 1_000},
    TwoTowerAssetConfig: {},
    TrackEmbeddingsConfig: {},
    InteractionsConfig: {"session_gap_minutes": InteractionRules.session_gap_s // 60},
    UserProfilesConfig: {},
    PublishConfig: {"keep_weeks": None},
    RankerAssetConfig: {},
    PlaylistsConfig: {"exploration_min": RerankConfig().exploration_range[0],
                      "exploration_max": RerankConfig().exploration_range[1]},
    # tower_embeddings' serving settings (in the index's version) and the clip length
    NewTrackVectorsConfig: {"clip_seconds": None,
                            "popularity_weight": TwoTowerConfig.popularity_weight,
                            "query_centroid": TwoTowerConfig.query_centroid},
    FaissIndexConfig: {},
    CandidatesConfig: {"partitions": CandidateConfig.min_partitions},
    SampleConfig: {},
    RetrievalEvaluationConfig: {"k": CandidateConfig.total},
    OfflineEvaluationConfig: {"k": RerankConfig.playlist_size},
    AbTestConfig: {},
    # the control arm: PlaylistsConfig's extras, CandidatesConfig's partition floor (prefixed) and the user
    # vectors' serving settings (tower_embeddings', in W-1's index's version)
    LastWeekPlaylistsConfig: {"exploration_min": RerankConfig().exploration_range[0],
                              "exploration_max": RerankConfig().exploration_range[1],
                              "candidates_partitions": CandidateConfig.min_partitions,
                              "popularity_weight": TwoTowerConfig.popularity_weight,
                              "query_centroid": TwoTowerConfig.query_centroid},
    # the drift's sample (DriftSample); the thresholds are the check functions' keyword defaults
    MonitoringConfig: {"psi_warn": parameter_default(prediction_drift, "warn"),
                       "psi_error": parameter_default(prediction_drift, "error"),
                       "volume_max_change": parameter_default(volume_anomaly, "max_ratio_change"),
                       **{name: parameter_default(batch_window_sla, name)
                          for name in ("target_users", "cluster_cores", "window_hours")}},
}
# Asset configs with no dataclass behind them: each default is a domain function's keyword default
# (parameter_default) or a setting of the asset itself.
PLAIN = {
    RawPlayEventsConfig: {"allow_empty_week"},
}


def _asset_config_classes() -> dict[type, list[str]]:
    """{the Config class an asset's function takes: the assets' op names}, over the whole code location."""
    from dw_assets.definitions import defs

    found: dict[type, list[str]] = {}
    for assets_def in defs.resolve_asset_graph().assets_defs:
        fn = assets_def.op.compute_fn
        fn = getattr(fn, "decorated_fn", fn)
        if "config" in inspect.signature(fn).parameters:
            found.setdefault(typing.get_type_hints(fn)["config"], []).append(assets_def.op.name)
    return found


def test_every_asset_config_is_listed():
    """A new asset config is checked here: listed in CLASSES (derived) or PLAIN (no dataclass behind it)."""
    found = _asset_config_classes()
    unlisted = {c.__name__: ops for c, ops in found.items() if c not in CLASSES and c not in PLAIN}
    assert not unlisted, f"asset configs not in CLASSES/PLAIN: {unlisted}"
    assert set(PLAIN) | set(CLASSES) == set(found), "listed but no asset takes it"
    for config_class in found:
        assert issubclass(config_class, DomainConfig) == (config_class in CLASSES), config_class.__name__


def _dataclass_default(f: dataclasses.Field):
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return list(value) if isinstance(value, tuple) else value  # a tuple is a list in the run config


@pytest.mark.parametrize("config_class", list(CLASSES), ids=lambda c: c.__name__)
def test_no_asset_config_redeclares_a_dataclass_field_with_another_default(config_class):
    """One source of defaults: a field named as one of its dataclasses' fields (by its run-config name,
    prefix and all, or by the dataclass's own name), excluded fields included, has the dataclass's default.
    A run-config name wins over a bare one (AbTestConfig's ``seed`` is ABConfig's, not EvaluationSample's)."""
    domains = config_class.__domains__
    bare = {f.name: (d, f) for d in domains for f in dataclasses.fields(d)}
    named = {config_class.field_name(d, f.name): (d, f) for d in domains for f in dataclasses.fields(d)}
    fields = config_class.model_fields
    for name, (domain, f) in {**bare, **named}.items():
        if name not in fields or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            continue
        default = _dataclass_default(f)
        assert fields[name].default == default, (
            f"{config_class.__name__}.{name} = {fields[name].default!r}, {domain.__name__}.{f.name} = "
            f"{default!r}: the default lives in the dataclass")


@pytest.mark.parametrize("config_class", list(CLASSES), ids=lambda c: c.__name__)
def test_every_asset_config_has_its_dataclass_fields_with_their_defaults(config_class):
    extras = CLASSES[config_class]
    derived = domain_defaults(config_class)
    fields = config_class.model_fields
    assert set(fields) == set(derived) | set(extras), (
        f"missing {sorted(set(derived) | set(extras) - set(fields))}, "
        f"undeclared {sorted(set(fields) - set(derived) - set(extras))}")
    for name, default in {**derived, **extras}.items():
        assert fields[name].default == default, (name, fields[name].default, default)


def test_plain_asset_configs_take_their_defaults_from_the_domain_functions():
    assert set(RawPlayEventsConfig.model_fields) == PLAIN[RawPlayEventsConfig]
    monitoring = MonitoringConfig()
    assert (monitoring.psi_warn, monitoring.psi_error) == (parameter_default(prediction_drift, "warn"),
                                                           parameter_default(prediction_drift, "error"))
    assert monitoring.volume_max_change == parameter_default(volume_anomaly, "max_ratio_change")
    assert (monitoring.target_users, monitoring.cluster_cores, monitoring.window_hours) == tuple(
        parameter_default(batch_window_sla, name) for name in ("target_users", "cluster_cores", "window_hours"))


def test_the_asset_configs_build_the_dataclasses_the_assets_ran_with():
    assert Item2VecAssetConfig().settings() == Item2VecConfig(epochs=6)
    assert AudioAssetConfig().settings(embedding_dim=48) == AudioConfig(embedding_dim=48, epochs=10,
                                                                        max_warm_tracks=10_000)
    assert TwoTowerAssetConfig().settings() == TwoTowerConfig()
    assert (TwoTowerConfig.epochs, TwoTowerConfig.max_examples) == (1, 1_000_000)  # what the asset trained with
    assert RankerAssetConfig().settings() == RankerConfig(num_threads=1)
    assert PlaylistsConfig().settings() == PlaylistSettings(
        rerank=RerankConfig(exploration_slots=RerankConfig().exploration_range))
    assert InteractionsConfig().rules() == InteractionRules()
    assert InteractionsConfig(session_gap_minutes=45).rules().session_gap_s == 45 * 60
    assert UserProfilesConfig().rules() == ProfileRules()
    assert PublishConfig().settings() == PublishSettings()
    assert RawPlayEventsConfig().allow_empty_week is parameter_default(build_bronze, "allow_empty_week")
    # The evaluations: what they built by hand before, field for field (the north star's lists are k long).
    offline = OfflineEvaluationConfig()
    assert offline.sample() == EvaluationSample() and offline.als() == AlsConfig()
    assert offline.item_cf() == ItemCfConfig() and offline.north_star() == NorthStarConfig(playlist_size=30)
    assert OfflineEvaluationConfig(k=10, north_star_seeds=[4, 5]).north_star() == NorthStarConfig(
        seeds=(4, 5), playlist_size=10)
    assert OfflineEvaluationConfig(sample_users_per_bucket=9).sample().users_per_bucket == 9
    assert RetrievalEvaluationConfig(als_seed=3).als() == AlsConfig(seed=3)
    assert RetrievalEvaluationConfig().sample() == SampleConfig().sample() == EvaluationSample()
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
    with pytest.raises(TypeError, match="defaults"):  # an asset default for a field: the dataclass holds it
        config_fields(Rules, exclude=["slots"], defaults={"seed": 8})
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

    from dw_assets.automation.runner import op_config, with_serving_settings
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
    # tower_embeddings' serving settings reach the assets that serve the same vectors, unless they set their own
    served = with_serving_settings({"tower_embeddings": {"config": {"query_centroid": 0.3, "popularity_weight": 0.5}},
                        "last_week_playlists": {"config": {"popularity_weight": 0.7, "seed": 2}}})
    assert served["last_week_playlists"]["config"] == {"query_centroid": 0.3, "popularity_weight": 0.7, "seed": 2}
    assert served["new_track_vectors"]["config"] == {"query_centroid": 0.3, "popularity_weight": 0.5}
    assert validate_run_config(job, {"ops": ops})
