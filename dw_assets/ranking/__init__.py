"""Ranking: candidate features, the LightGBM ranker, and re-ranking into 30-track playlists."""
