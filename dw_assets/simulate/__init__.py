"""The synthetic music world: a landing zone the pipeline ingests, plus hidden truth for tests and A/B."""

from dw_assets.simulate.config import PRESETS, SimulationConfig, config_for
from dw_assets.simulate.truth import Truth, load_truth
from dw_assets.simulate.world import respond, simulate

__all__ = ["PRESETS", "SimulationConfig", "Truth", "config_for", "load_truth", "respond", "simulate"]
