"""Offline evaluation: the discovery holdout, retrieval metrics and baselines."""
