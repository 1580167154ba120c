"""The evaluation sets' upstream Hub datasets: the pin table, one converter per upstream schema, the loader.

:mod:`.table` says where each config of ``mergebench-eval`` comes from (repo, config, split, commit, license,
row count, and the upstream task definition that names them); :mod:`.convert` turns each upstream schema into
the task schema; :mod:`.load` pins, checks and loads them. ``mergebench data eval-sets --from-hub`` runs it
(:func:`mergebench.data.evalrepo.build_eval_repo`).
"""

from __future__ import annotations

from mergebench.data.upstream.table import REPOS, TASK_SOURCES, Part, TaskSource, UpstreamRepo

__all__ = ["REPOS", "TASK_SOURCES", "Part", "TaskSource", "UpstreamRepo"]
