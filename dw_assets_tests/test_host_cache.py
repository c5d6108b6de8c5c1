"""The host cache of shipped model sets: written once per digest even when processes race, memory-mapped by
every reader, old digests pruned; shipped candidate models opened from it search like the shipped bytes, and
on Spark (the tiny world's lake) give the candidates the in-memory models give.

Fast: small files and real processes (multiprocessing); the Spark test reuses the session's ``tiny_world_run``.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dw_assets.lake import host_cache
from dw_assets.lake.host_cache import is_mapped
from dw_assets.retrieval.ann import AnnConfig, AnnIndex, build_index, clustered_vectors
from dw_assets.retrieval.batch import shipped_models
from dw_assets.retrieval.candidates import CandidateModels, generate_candidates
from dw_assets_tests.host_cache_race import race
from dw_assets_tests.test_candidates import CONFIG, world  # noqa: F401 (the module's world fixture)


def test_racing_processes_write_a_digest_once_and_all_read_it_complete(tmp_path):
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(4), context.Queue()
    log = str(tmp_path / "writers.log")
    workers = [context.Process(target=race, args=(str(tmp_path / "cache"), log, start, out)) for _ in range(4)]
    for worker in workers:
        worker.start()
    sums = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert len(Path(log).read_text().split()) == 1  # one writer, the three others waited and found it
    assert sums == [float(np.arange(1_000).sum())] * 4
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == ["digest0001"]


def test_a_complete_digest_is_not_written_again_and_a_failed_write_leaves_nothing(tmp_path):
    calls = []
    first = host_cache.materialize("abc", lambda folder: calls.append(folder) or (folder / "x").write_text("1"),
                                   tmp_path)
    again = host_cache.materialize("abc", lambda folder: calls.append(folder), tmp_path)
    assert first == again == tmp_path / "abc" and len(calls) == 1 and host_cache.cached("abc", tmp_path)

    def broken(folder: Path) -> None:
        (folder / "half").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        host_cache.materialize("def", broken, tmp_path)
    assert not host_cache.cached("def", tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ValueError, match="cache key"):
        host_cache.materialize("../escape", lambda folder: None, tmp_path)


def test_only_the_newest_digests_are_kept(tmp_path):
    for i, key in enumerate(["k1", "k2", "k3", "k4"]):
        host_cache.materialize(key, lambda folder: None, tmp_path, keep=2)
        os.utime(tmp_path / key, (1_000 + i, 1_000 + i))  # distinct, ordered use times
    host_cache.materialize("k1", lambda folder: None, tmp_path, keep=2)  # k1 is gone: written again, newest
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["k1", "k4"]


def test_the_cache_root_is_a_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("DW_MODEL_CACHE_DIR", str(tmp_path / "models"))
    assert host_cache.cache_root() == tmp_path / "models"
    monkeypatch.delenv("DW_MODEL_CACHE_DIR")
    assert host_cache.cache_root().name == "dw-model-cache"


@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "ivf_pq", "hnsw"])
@pytest.mark.parametrize("shards", [1, 2])
def test_a_memory_mapped_index_searches_like_the_index_in_memory(tmp_path, kind, shards):
    ids = np.arange(3_000, dtype=np.int64) * 7 + 1
    vectors = clustered_vectors(3_000, 16, clusters=10, seed=3)
    queries = clustered_vectors(50, 16, clusters=10, seed=4)
    config = AnnConfig(kind=kind, nlist=16, nprobe=4, pq_m=4, hnsw_m=8, ef_search=64, shards=shards, threads=1,
                       use_gpu="never")
    index = build_index(ids, vectors, config)
    AnnIndex.unpack(index.to_bytes(), tmp_path, "shipped")  # the bytes as a worker unpacks them
    mapped = AnnIndex.open(tmp_path, "shipped")
    expected = index.search(queries, 40)
    for got in (mapped.search(queries, 40), AnnIndex.open(tmp_path, "shipped", mmap=False).search(queries, 40)):
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert len(mapped) == len(index) and mapped.kind == index.kind
    parts = mapped.parts if shards > 1 else [mapped]
    files = [str(tmp_path / (f"shipped.{i}" if shards > 1 else "shipped")) for i in range(len(parts))]
    maps = Path("/proc/self/maps").read_text()
    if kind in ("flat", "ivf_flat", "ivf_pq"):  # the vectors / lists are pages of the file, not copies
        assert all(f"{name}.faiss" in maps for name in files)
    assert all(isinstance(p.ids, np.ndarray) and not p.ids.flags.owndata for p in parts)


def test_models_from_the_host_cache_give_the_shipped_bytes_candidates(world, tmp_path):  # noqa: F811
    w = world
    ivf = AnnConfig(kind="ivf_flat", nlist=8, nprobe=4, use_gpu="never", threads=1)
    for models in (w["models"], CandidateModels.build(
            build_index(w["track_ids"], w["tt"], AnnConfig(kind="ivf_flat", nlist=16, nprobe=4, shards=2, threads=1,
                                                           use_gpu="never")),
            w["warm_ids"], w["warm_vectors"], w["new_ids"], w["audio"], neighbour_config=ivf, neighbour_table=8)):
        blob = models.to_bytes()
        expected = generate_candidates(w["users"], CandidateModels.from_bytes(blob), CONFIG)
        reads = []
        key = f"k{len(blob)}"
        for _ in range(2):  # a second worker of the host finds the copy: the shipped bytes are not read
            cached = shipped_models(key, lambda blob=blob, reads=reads: reads.append(1) or blob,
                                    tmp_path)
            pd.testing.assert_frame_equal(generate_candidates(w["users"], cached, CONFIG), expected,
                                          check_exact=True)
        assert len(reads) == 1
        assert is_mapped(cached.item2vec_vectors) and is_mapped(cached.neighbours)


def test_spark_candidates_through_the_host_cache_equal_the_in_memory_models_on_the_tiny_world(tiny_world_run, spark):
    """run_candidates (Python workers: the host cache, memory-mapped) == generate_candidates over the models
    loaded from the same bytes in this process, and == the candidates the week's run stored."""
    import json

    from dw_assets.ingest.spark import payload_key
    from dw_assets.lake.storage import Lake
    from dw_assets.partitions import history_window_weeks
    from dw_assets.retrieval.batch import candidate_models, candidate_users, run_candidates
    from dw_assets.retrieval.candidates import CANDIDATE_COLUMNS, CandidateConfig

    week = json.loads((tiny_world_run / "landing" / "manifest.json").read_text())["last_training_week"]
    lake = Lake(str(tiny_world_run))
    table = lambda layer, name, weeks=(week,): lake.read_spark(spark, [  # noqa: E731
        lake.uri(layer, name, w) for w in weeks if lake.exists(lake.uri(layer, name, w))])
    models = candidate_models(lake.read_artifact(lake.uri("models", "faiss_index", week)),
                              lake.read_frame(lake.uri("models", "item2vec_embeddings", week)),
                              table("models", "audio_vectors"), lake.read_frame(lake.uri("gold", "track_stats", week)),
                              "test")
    users = candidate_users(table("models", "user_embeddings"), table("gold", "user_profiles"),
                            table("silver", "interactions", history_window_weeks(week)))
    blob, settings = models.to_bytes(), CandidateConfig(faiss_threads=1)
    got = run_candidates(spark, users, blob, settings, 8).toPandas()
    got = got.sort_values("user_id", kind="stable").reset_index(drop=True)  # a user's rows stay in merge order
    expected = generate_candidates(users.toPandas(), CandidateModels.from_bytes(blob), settings)
    assert len(got) > 1_000
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert host_cache.cached(payload_key(blob))  # the workers' copy (Spark's workers share this host's root)
    stored = lake.read_frame(lake.uri("gold", "candidates", week))[list(CANDIDATE_COLUMNS)]
    by_pair = ["user_id", "track_id"]
    pd.testing.assert_frame_equal(stored.sort_values(by_pair).reset_index(drop=True),
                                  got.sort_values(by_pair).reset_index(drop=True), check_exact=True, check_dtype=False)
