"""The torch device the embedding models train and embed on (audio CNN, two-tower)."""

from __future__ import annotations

import torch


def device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
