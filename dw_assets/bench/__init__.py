"""Benchmarks behind ``dw bench``: pure functions returning JSON-ready rows, plus their click commands.

``ann_bench``: FAISS retrieval (exact, IVF-Flat, IVF-PQ + re-rank, HNSW) at catalog scale, every
queries/s figure beside its recall against exact search. ``stages``: pipeline stage throughput.
"""
