"""Candidate retrieval: approximate nearest-neighbour search over track embeddings."""
