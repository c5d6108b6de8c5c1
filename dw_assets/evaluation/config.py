"""The evaluation domain's run config (Dagster ``Config``) that more than the assets use: ``dw ab`` builds
the simulated A/B test's typed run config from it, so the command imports no asset module. The fields and
defaults are the domain dataclasses' through ``config_fields``."""

from __future__ import annotations

from dw_assets.config_fields import config_fields
from dw_assets.evaluation.ab import ABConfig
from dw_assets.evaluation.baselines import AlsConfig, ItemCfConfig
from dw_assets.evaluation.batch import EvaluationSample
from dw_assets.evaluation.north_star import NorthStarConfig

# Run-config names of the evaluation dataclasses' fields: `sample_users`, `als_factors`, ...
PREFIXES = {EvaluationSample: "sample_", AlsConfig: "als_", ItemCfConfig: "item_cf_", NorthStarConfig: "north_star_"}
# The evaluated users' settings; only the offline evaluation buckets users.
SAMPLE_FIELDS = {"prefix": PREFIXES, "exclude": ("sample_users_per_bucket",)}


class AbTestConfig(config_fields(EvaluationSample, ABConfig, **SAMPLE_FIELDS)):
    def sample(self) -> EvaluationSample:
        return self.to_domain(EvaluationSample)

    def settings(self) -> ABConfig:
        return self.to_domain(ABConfig)
