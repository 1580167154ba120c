"""Statistics stages of the data-dependent methods: Gram matrices (RegMean), Fisher diagonals (Fisher
merging) and trained masks (Localize-and-Stitch), each computed per expert on its own domain's rows, one
decoder layer at a time from the merge's streaming sources (no model is downloaded or loaded whole).

Flow: ``paths = run_stage(spec.stats_stage(params), experts, rows, params, cache_dir=...)`` writes (or finds)
one safetensors file per expert; ``StatisticsReader(stage, paths).data_for(tensor_name)`` gives the
``MergeContext.data`` of one tensor during the merge.
"""

from mergebench.stats.cache import StatisticsReader, load_statistics, model_identity
from mergebench.stats.data import ModelSource, StatsOptions, rows_for
from mergebench.stats.runner import STAGE_CONFIGS, run_stage, stage_config

__all__ = ["STAGE_CONFIGS", "ModelSource", "StatisticsReader", "StatsOptions", "load_statistics", "model_identity",
           "rows_for", "run_stage", "stage_config"]
