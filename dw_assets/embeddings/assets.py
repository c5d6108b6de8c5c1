"""Embedding assets: item2vec, the audio CNN, the two-tower model and its track/user vectors."""

import time

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    MetadataValue,
    Output,
    multi_asset,
)
from pyspark.sql import DataFrame

from dw_assets.calendar import shift_week, week_bounds
from dw_assets.config_fields import config_fields
from dw_assets.embeddings import audio as audio_model
from dw_assets.embeddings import audio_io, audio_spark, item2vec, two_tower
from dw_assets.embeddings.audio import AudioConfig, load_clips, log_mel, train_audio_model
from dw_assets.embeddings.audio_table import ASSET as AUDIO_VECTORS
from dw_assets.embeddings.audio_table import audio_features_table, audio_vectors_of, audio_vectors_table
from dw_assets.embeddings.item2vec import (
    Item2VecConfig,
    sampled_sentences,
    train_item2vec,
)
from dw_assets.embeddings.item_tower import track_embeddings_frame
from dw_assets.embeddings.two_tower import (
    TrainedTwoTower,
    TwoTowerConfig,
    build_examples,
    build_tower_features,
    tower_training_sample,
    train_two_tower,
    warm_start_cold_tracks,
)
from dw_assets.embeddings.two_tower_data import SERVING_SETTINGS, serving_version
from dw_assets.embeddings.user_tower import (
    user_embeddings_frame,
    user_embeddings_table,
    with_norm,
)
from dw_assets.embeddings.vector_table import driver_vectors_table, track_vectors_of, track_vectors_table
from dw_assets.lake.resources import LAYER_KEY, PER_PARTITION_KEY, LakeResource, PartitionInputs
from dw_assets.lake.storage import Artifact, vectors_artifact
from dw_assets.partitions import ONE_WEEK_PER_RUN, history_window, week_before, weekly_partitions
from dw_assets.versioning import model_version, table_version

GROUP = "embeddings"
MODELS = {LAYER_KEY: "models"}


def _out(description: str) -> AssetOut:
    return AssetOut(group_name=GROUP, metadata=MODELS, description=description, dagster_type=Artifact)


class Item2VecAssetConfig(config_fields(
    Item2VecConfig,
)):
    def settings(self) -> Item2VecConfig:
        return self.to_domain(Item2VecConfig)


@multi_asset(
    outs={"item2vec_embeddings": AssetOut(group_name=GROUP, metadata=MODELS, description=(
        "Skip-gram track vectors from a seeded sample of playlists and 12 weeks of listening sessions (caps in "
        "Item2VecConfig): a Parquet table (track_id, vector, model_version) sorted by track_id."))},
    ins={"user_playlists": AssetIn(), "interactions": AssetIn(partition_mapping=history_window)},
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
)
def item2vec_embeddings(
    context: AssetExecutionContext, config: Item2VecAssetConfig, user_playlists: DataFrame, interactions: DataFrame
):
    """Spark groups and samples the sentences (``item2vec.sampled_sentences``); the driver trains on the sample
    (the vectors are the model: per track, 100 M x 32 float32 = 12.8 GB at the target) and the executors write
    them as a table."""
    settings = config.settings()
    sentences, sampled = sampled_sentences(user_playlists, interactions, settings)
    result = train_item2vec(sentences, settings)
    version = model_version(context.partition_key, [settings], [item2vec])
    yield Output(
        driver_vectors_table(user_playlists.sparkSession, result.track_ids, result.vectors, version),
        output_name="item2vec_embeddings",
        metadata={"model_version": version, "tracks": len(result), **sampled,
                  **{k: v for k, v in result.stats.items() if np.isscalar(v)}},
    )


class AudioAssetConfig(config_fields(
    AudioConfig,
    exclude=["embedding_dim"],  # item2vec's dimension: the model is trained to land in that space
)):
    # The artifact also carries ids.npy / vectors.npy, collected from audio_vectors (12.8 GB on the driver at
    # 100 M tracks): for tools that still read that older form; the pipeline reads the table.
    vector_files: bool = False
    max_problem_examples: int = 1_000  # unusable clips listed in the artifact and the check (all are counted)

    def settings(self, embedding_dim: int) -> AudioConfig:
        return self.to_domain(AudioConfig, embedding_dim=embedding_dim)


@multi_asset(
    outs={
        "audio_embeddings": _out("Audio CNN on log-mel spectrograms, trained to land in the item2vec space: the "
                                 "model, its report and the unusable clips; the vectors are audio_vectors."),
        "audio_vectors": AssetOut(group_name=GROUP, metadata=MODELS, description=(
            "Audio CNN vector of every track with a usable clip: a Parquet table (track_id, vector, "
            "model_version) computed and written by the Spark executors, sorted by track_id.")),
        "audio_features": AssetOut(group_name=GROUP, metadata=MODELS, description=(
            "The audio encoder's output for every usable clip (track_id, location, features, encoder_version): "
            "what the next weeks with the same encoder refit their embedding head on, embedding only new clips.")),
    },
    ins={
        "track_catalog": AssetIn(),
        "item2vec_embeddings": AssetIn(),
        # The week before's model and encoder features (a self-dependency; none for a first week): kept while
        # its encoder is younger than encoder_weeks.
        "previous_audio": AssetIn(key="audio_embeddings", partition_mapping=week_before,
                                  metadata={PER_PARTITION_KEY: "artifact"}),
        "previous_features": AssetIn(key="audio_features", partition_mapping=week_before,
                                     metadata={PER_PARTITION_KEY: "spark"}),
    },
    # Written in this order: the model, then the features (computed with its encoder), then the vectors (its
    # head over the features). The week before's feeds each as named (no output depends on a later one).
    internal_asset_deps={
        "audio_embeddings": {AssetKey(k) for k in ("track_catalog", "item2vec_embeddings", "audio_embeddings")},
        "audio_features": {AssetKey(k) for k in ("track_catalog", "audio_embeddings", "audio_features")},
        "audio_vectors": {AssetKey(k) for k in ("track_catalog", "item2vec_embeddings", "audio_embeddings",
                                                "audio_features")},
    },
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
    check_specs=[AssetCheckSpec("audio_files_readable", asset="audio_embeddings",
                                description="Corrupt, truncated, empty or silent clips are reported and skipped.")],
)
def audio_embeddings(
    context: AssetExecutionContext,
    config: AudioAssetConfig,
    lake: LakeResource,
    track_catalog: DataFrame,
    item2vec_embeddings: pd.DataFrame,
    previous_audio: PartitionInputs,
    previous_features: PartitionInputs,
):
    """The executors list the landed clips and keep the catalog's (``audio_spark.landed_clips``). A week that
    trains an encoder (the first, or every ``encoder_weeks``) trains the CNN on the driver on a seeded-hash
    sample of warm tracks' clips (``audio_spark.training_clips``) and embeds every track's clip on the
    executors. A week that keeps the week before's encoder (``audio_spark.refit_week``) embeds only the clips
    its features lack (the week's uploads: ~700 k of 100 M at the target) and refits the embedding head on the
    stored features of a seeded-hash sample of warm tracks. Both write every track's vector (``audio_vectors``)
    and features (``audio_features``) from the executors. The driver holds the model, the training sample,
    the genres and counts."""
    started = time.perf_counter()
    week = context.partition_key
    target_ids, target_vectors = track_vectors_of(item2vec_embeddings, "item2vec_embeddings")
    settings = config.settings(embedding_dim=target_vectors.shape[1])
    _, week_end = week_bounds(week)
    landing = lake.landing()
    reader = audio_spark.ClipReader.of(landing)
    catalog = track_catalog.select(F.col("track_id").cast("long"), "genre")
    listed = audio_spark.landed_clips(landing, reader, until=week_end.date(), spark=track_catalog.sparkSession)
    listed = listed.join(catalog.select("track_id"), "track_id", "left_semi").persist()
    before = shift_week(week, -1)
    kept = None
    if before in previous_audio and before in previous_features:
        artifact = previous_audio[before]
        kept = audio_spark.kept_encoder(artifact.meta, artifact.files.get("model.pt"), week, settings)
    item2vec_version = table_version(item2vec_embeddings, "item2vec_embeddings")
    if kept is None:
        clips = audio_spark.partitioned_clips(listed, listed.count())
        sample = audio_spark.training_clips(clips, target_ids, settings.clips_to_read, settings.seed)
        batch = load_clips(sample, settings, read=landing.read_location)
        mels = log_mel(batch, settings)
        batch.clips.clear()  # training reads the spectrograms only: drop the raw clips
        genres = _sampled_genres(catalog, batch.track_ids)
        genre_names = [r["genre"] for r in catalog.where(F.col("genre").isNotNull()).select("genre").distinct().collect()]
        model = train_audio_model(mels, batch.track_ids, (target_ids, target_vectors), genres, settings,
                                  genre_names=sorted(genre_names))
        del mels
        version = model_version(week, [settings], [audio_model, audio_io, audio_spark], [item2vec_version])
        encoder = {"encoder_week": week, "encoder_version": version, "clip_samples": int(batch.length)}
        embedded = audio_spark.embedded_frame(clips, model, settings, batch.length, reader).persist()
        good = embedded.where(F.col("problem").isNull())
        features = good.select("track_id", "location", "features")
        vectors_table, training = audio_vectors_table(embedded, version), len(sample)
        release = embedded.unpersist
    else:
        refit = audio_spark.refit_week(listed, previous_features[before], kept, (target_ids, target_vectors),
                                       settings, reader)
        model, embedded, features = refit.model, refit.embedded, refit.features
        version = model_version(week, [settings], [audio_model, audio_io, audio_spark], [item2vec_version, kept.version])
        encoder = {"encoder_week": kept.week, "encoder_version": kept.version, "clip_samples": kept.clip_samples}
        vectors_table, training = track_vectors_table(refit.vectors(), version), refit.training_tracks
        release = refit.release
    by_problem, problems = audio_spark.embedded_problems(embedded, config.max_problem_examples)
    seen = features.select("track_id").unionByName(embedded.select("track_id"))
    no_clip = catalog.select("track_id").join(seen, "track_id", "left_anti")
    missing = no_clip.count()
    missing_examples = [int(r[0]) for r in no_clip.orderBy("track_id").limit(config.max_problem_examples).collect()]
    embedded_count = int(features.count())
    clips_read = int(embedded.count())
    files = {"model.pt": model.to_bytes()}
    meta = {"model_version": version, "report": model.report, "problems": problems.to_dict("records"),
            "problems_by_kind": by_problem, "no_clip": missing_examples, "no_clip_tracks": missing,
            "training_clips": training, "tracks_embedded": embedded_count, "clips_read": clips_read,
            "encoder_settings": settings.encoder_settings(), **encoder}
    if config.vector_files:
        track_ids, vectors = audio_vectors_of(vectors_table)
        artifact = vectors_artifact(track_ids, vectors, meta, **files)
    else:
        artifact = Artifact(files=files, meta=meta)
    report = {k: v for k, v in model.report.items() if np.isscalar(v)}
    yield Output(
        artifact,
        output_name="audio_embeddings",
        metadata={"model_version": version, "tracks_embedded": embedded_count, "training_clips": training,
                  "clips_read": clips_read, "encoder_week": encoder["encoder_week"],
                  **report, "elapsed_s": round(time.perf_counter() - started, 1)},
    )
    yield Output(audio_features_table(features, encoder["encoder_version"]), output_name="audio_features",
                 metadata={"encoder_version": encoder["encoder_version"], "encoder_week": encoder["encoder_week"],
                           "tracks": embedded_count})
    yield Output(vectors_table, output_name="audio_vectors",
                 metadata={"model_version": version, "tracks": embedded_count})
    release()  # the IO manager has written the tables
    listed.unpersist()
    yield AssetCheckResult(
        asset_key="audio_embeddings", check_name="audio_files_readable", passed=not by_problem and not missing,
        severity=AssetCheckSeverity.WARN,
        metadata={"skipped_by_problem": MetadataValue.json(by_problem), "catalog_tracks_without_clip": missing,
                  "skipped": MetadataValue.md(problems.head(50).to_markdown(index=False)) if by_problem else "none"},
    )


def _sampled_genres(catalog: DataFrame, track_ids: np.ndarray) -> dict[int, str]:
    """{track_id: genre} of ``track_ids`` (the training sample: at most ``max_training_clips``), joined in Spark."""
    wanted = catalog.sparkSession.createDataFrame(pd.DataFrame({"track_id": np.asarray(track_ids, np.int64)}),
                                                  "track_id long")
    rows = catalog.join(wanted, "track_id", "left_semi").where(F.col("genre").isNotNull()).collect()
    return {int(r["track_id"]): r["genre"] for r in rows}


class TwoTowerAssetConfig(config_fields(
    TwoTowerConfig,
    exclude=SERVING_SETTINGS,  # tower_embeddings' settings (TrackEmbeddingsConfig), not the training's
)):
    def settings(self) -> TwoTowerConfig:
        return self.to_domain(TwoTowerConfig)


@multi_asset(
    outs={"two_tower_model": _out("User tower x item tower, sampled softmax with in-batch + hard negatives and logQ correction.")},
    ins={
        "interactions": AssetIn(partition_mapping=history_window),
        "user_profiles": AssetIn(),
        "track_stats": AssetIn(),
        "audio_vectors": AssetIn(),
    },
    # The audio model beside its vectors: one op makes both, so a selection of this asset's upstream
    # (e.g. the ranker-training part of a week) must reach both.
    deps=["audio_embeddings"],
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
)
def two_tower_model(
    context: AssetExecutionContext,
    config: TwoTowerAssetConfig,
    interactions: DataFrame,
    user_profiles: DataFrame,
    track_stats: pd.DataFrame,
    audio_vectors: DataFrame,
):
    """Trains on a seeded sample of users drawn in Spark (``two_tower.tower_training_sample``); the model file
    holds vocabularies, per-track inputs and weights, no user. Every track's audio vector is an item-tower
    input, so the driver loads the whole ``audio_vectors`` table: per track by design (12.8 GB at 100 M
    tracks, as the model's other per-track inputs)."""
    settings = config.settings()
    audio_ids, audio_matrix = audio_vectors_of(audio_vectors)
    sample = tower_training_sample(interactions, user_profiles, settings)
    features = build_tower_features(sample.interactions, sample.profiles, track_stats, audio_ids, audio_matrix,
                                    context.partition_key, settings, countries=sample.countries)
    examples = build_examples(sample.interactions, features, settings)
    trained = train_two_tower(features, examples, settings)
    trained.report["sample"] = sample.stats
    version = model_version(context.partition_key, [settings], [two_tower], [table_version(audio_vectors, AUDIO_VECTORS)])
    report = trained.report
    yield Output(
        # cold_neighbours in the meta: what serving's warm starts take (trained_cold_neighbours), without the model file.
        Artifact(files={"two_tower.bin": trained.to_bytes()},
                 meta={"model_version": version, "cold_neighbours": settings.cold_neighbours, "report": report}),
        output_name="two_tower_model",
        metadata={"model_version": version,
                  **{k: v for k, v in report.items() if np.isscalar(v) and not isinstance(v, str) or k == "device"}},
    )


class TrackEmbeddingsConfig(config_fields(TwoTowerConfig, include=SERVING_SETTINGS)):
    """The serving-time settings of the two-tower dataclass: the weight of the popularity term in the track
    vectors (used when the model was trained with ``popularity_term``) and the history centroid's share of the
    user vectors. They are part of the vectors' version (``serving_version``): ``new_track_vectors`` and
    ``last_week_playlists`` must be given the same ones. The cold tracks' warm start uses the model's own
    ``cold_neighbours`` (``two_tower_model``'s run config), the one it was trained with."""


@multi_asset(
    outs={
        "track_embeddings": AssetOut(group_name=GROUP, metadata=MODELS, description=(
            "Item-tower vector of every catalog track (cold tracks warm-started from audio neighbours): a Parquet "
            "table (track_id, vector, model_version) computed and written by the Spark executors, sorted by "
            "track_id.")),
        "user_embeddings": AssetOut(group_name=GROUP, metadata=MODELS, description=(
            "User-tower vector of every user with history: a Parquet table (user_id, user_vector, model_version) "
            "computed and written by the Spark executors, sorted by user_id.")),
    },
    ins={"two_tower_model": AssetIn(dagster_type=Artifact), "user_profiles": AssetIn(), "track_stats": AssetIn()},
    partitions_def=weekly_partitions,
    backfill_policy=ONE_WEEK_PER_RUN,
)
def tower_embeddings(
    context: AssetExecutionContext,
    config: TrackEmbeddingsConfig,
    two_tower_model: Artifact,
    user_profiles: DataFrame,
    track_stats: pd.DataFrame,
):
    """Both towers in ``mapInPandas`` on the executors: the item tower over chunks of track rows
    (``item_tower.track_embeddings_frame``, 100 M rows at the target) and the user tower over partitions of
    profiles (``user_tower.user_embeddings_frame``, 500 M rows), each written as Parquet from the executors.
    The driver holds the model: it warm-starts the cold tracks' ids (per track) and ships the result."""
    trained = TrainedTwoTower.from_bytes(two_tower_model.files["two_tower.bin"])
    cold = track_stats.loc[track_stats["is_cold"], "track_id"].to_numpy(np.int64)
    neighbours = trained.config.cold_neighbours  # as training showed warm starts (id_dropout)
    cold_stats = warm_start_cold_tracks(trained, cold, neighbours)
    version = serving_version(two_tower_model.model_version, config, cold_neighbours=neighbours)
    serving = {name: getattr(config, name) for name in SERVING_SETTINGS} | {"cold_neighbours": neighbours}
    n_tracks = len(trained.features.track_ids)
    # The serving weight of the popularity term is a knob: only the track vectors move with it.
    tracks = track_embeddings_frame(user_profiles.sparkSession, trained.to_bytes(), n_tracks,
                                    config.popularity_weight).persist()
    # 500 M rows at the target: computed and written on the executors, never collected.
    vectors = user_embeddings_frame(user_profiles, two_tower_model.files["two_tower.bin"],
                                    config.query_centroid).persist()
    stats = with_norm(vectors).agg(F.count("*").alias("users"),
                                   F.percentile_approx("norm", 0.5).alias("norm_p50")).first()
    yield Output(
        track_vectors_table(tracks, version),
        output_name="track_embeddings",
        metadata={"model_version": version, "two_tower_version": two_tower_model.model_version, **serving,
                  "tracks": n_tracks, "cold_tracks": int(len(cold)),
                  **{k if k.startswith("cold") else f"cold_{k}": v for k, v in cold_stats.items() if np.isscalar(v)}},
    )
    tracks.unpersist()  # the IO manager has written the table
    yield Output(
        user_embeddings_table(vectors, version),
        output_name="user_embeddings",
        metadata={"model_version": version, "two_tower_version": two_tower_model.model_version, **serving,
                  "users": int(stats["users"]),
                  "norm_p50": float(stats["norm_p50"]) if stats["norm_p50"] is not None else 0.0},
    )
    vectors.unpersist()


embedding_assets = [item2vec_embeddings, audio_embeddings, two_tower_model, tower_embeddings]
