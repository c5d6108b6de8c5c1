"""The FAISS index over the week's track embeddings, with its recall measured on real user vectors."""

import time

import numpy as np
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    Config,
    Output,
    multi_asset,
)

from dw_assets.embeddings.assets import embedding_versions
from dw_assets.lake.resources import LAYER_KEY
from dw_assets.lake.storage import Artifact, array_bytes, vectors_from
from dw_assets.partitions import weekly_partitions
from dw_assets.retrieval.ann import AnnConfig, build_index, measure

RECALL_CHECK = "ann_recall_at_500"


class FaissIndexConfig(Config):
    kind: str = AnnConfig.kind
    exact_below: int = AnnConfig.exact_below
    nprobe: int = AnnConfig.nprobe
    ef_search: int = AnnConfig.ef_search
    use_gpu: str = AnnConfig.use_gpu
    recall_k: int = 500
    recall_sample_users: int = 2_000
    min_recall: float = 0.95
    seed: int = AnnConfig.seed

    def settings(self) -> AnnConfig:
        return AnnConfig(kind=self.kind, exact_below=self.exact_below, nprobe=self.nprobe,
                         ef_search=self.ef_search, use_gpu=self.use_gpu, seed=self.seed)


@multi_asset(
    outs={"faiss_index": AssetOut(group_name="retrieval", metadata={LAYER_KEY: "models"}, dagster_type=Artifact,
                                  description="Inner-product ANN index over track_embeddings; exact below a size threshold.")},
    ins={"track_embeddings": AssetIn(dagster_type=Artifact), "user_embeddings": AssetIn(dagster_type=Artifact)},
    partitions_def=weekly_partitions,
    check_specs=[AssetCheckSpec(RECALL_CHECK, asset="faiss_index", blocking=True,
                                description="recall@500 vs exact search on a sample of real user vectors ≥ min_recall.")],
)
def faiss_index(context: AssetExecutionContext, config: FaissIndexConfig, track_embeddings: Artifact,
                user_embeddings: Artifact):
    version = embedding_versions(track_embeddings=track_embeddings, user_embeddings=user_embeddings)
    track_ids, track_vectors = vectors_from(track_embeddings)
    _, user_vectors = vectors_from(user_embeddings)
    started = time.perf_counter()
    index = build_index(track_ids, track_vectors, config.settings())
    build_s = time.perf_counter() - started
    rng = np.random.default_rng(config.seed)
    sample = user_vectors[rng.choice(len(user_vectors), size=min(config.recall_sample_users, len(user_vectors)),
                                     replace=False)]
    quality = measure(index, track_vectors, track_ids, sample, config.recall_k)
    recall = float(quality[f"recall@{config.recall_k}"])
    meta = {"model_version": version, "kind": index.kind, "on_gpu": index.on_gpu, "build_s": round(build_s, 2),
            **{k: v for k, v in quality.items() if np.isscalar(v)}}
    yield Output(
        Artifact(files={"index.bin": index.to_bytes(), "ids.npy": array_bytes(track_ids)}, meta=meta),
        output_name="faiss_index",
        metadata=meta,
    )
    yield AssetCheckResult(
        asset_key="faiss_index", check_name=RECALL_CHECK, passed=recall >= config.min_recall,
        severity=AssetCheckSeverity.ERROR,
        metadata={"recall": recall, "threshold": config.min_recall, "sample_users": len(sample), "kind": index.kind},
    )


retrieval_assets = [faiss_index]
