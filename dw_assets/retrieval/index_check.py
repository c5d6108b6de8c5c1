"""The FAISS index's recall check and search tuning settings, Dagster-free (``faiss_index`` and
``dw bench inference`` both take them from here)."""

from __future__ import annotations

from dataclasses import dataclass

from dw_assets.retrieval.candidates import CandidateConfig


@dataclass(frozen=True)
class RecallCheckConfig:
    recall_k: int = CandidateConfig.total  # the depth the candidates search at
    recall_sample_users: int = 2_000  # real user vectors the check measures on (and as many again for tuning)
    min_recall: float = 0.95  # the blocking check's threshold: recall@recall_k vs exact search
    # Approximate indexes: the cheapest nprobe / efSearch reaching tune_recall on the second user sample.
    tune_recall: float = 0.97

    def __post_init__(self) -> None:
        if self.recall_k < 1 or self.recall_sample_users < 1:
            raise ValueError(f"recall_k and recall_sample_users must be >= 1, got {self.recall_k}, "
                             f"{self.recall_sample_users}")
        for name in ("min_recall", "tune_recall"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
