"""The lake: Parquet partitions and model artifacts under one root (local or S3)."""
