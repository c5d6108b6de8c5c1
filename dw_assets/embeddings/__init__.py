"""Track and user embeddings: item2vec, audio CNN, two-tower."""
