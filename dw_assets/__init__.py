"""dw_assets: a weekly discovery-playlist platform built as Dagster assets."""

__version__ = "0.1.0"
