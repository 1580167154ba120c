"""What two MergeBench-Tiny runs on one machine agree on, byte for byte, and the settings that make them agree.

**Settings** (:func:`deterministic`, around the whole run). Every random draw is seeded: the generated rows
(:class:`~mergebench.tiny.pipeline.TinyConfig` ``seed``), the experts' training (the recipe's ``seed``: data
order and sampling), DARE's drop masks (its ``seed``), evaluation (``mergebench.eval.run.SEED``). On top of that
torch runs with deterministic algorithms (an operation without a deterministic implementation raises instead
of varying) and with one intra-op thread count for the whole run: a matrix product summed by another number of
threads rounds differently (about 1e-5 on a logit of SmolLM2), which a fine-tune and every score downstream
inherit. The count is part of what the experts and the benchmark run are built from, so a run resumed with
another count rebuilds them instead of mixing the two.

**What "identical results files" means** (:func:`score_view`). A results file also holds measurements and
names of things on disk, which differ between two runs by nature: the run's id and dates, each task's
``seconds`` and ``finished_at``, the ``cost`` block (merge, validation and evaluation wall-clock, peak memory),
and the model's ``id``, ``revision``, ``experts`` and ``grid_point`` (local paths, and fingerprints of local
folders that include file modification times), and the packaged evaluation data's temporary folder. Everything
else must be equal: per task the status, score, every metric, its standard error, the number of items and
empty answers, ``outputs_sha256`` (a digest of every answer's log-probabilities, so equal digests mean the
models answered alike), the data's provenance and the task version; the settings; the model's role, domain,
method, parameters, label, base and validation score. :func:`write_score_digests` writes one sha-256 per
results file of this view, and of all of them together, to ``run/score-digests.json``: two runs are
reproducible when those files are equal.

Across machines the numbers are not expected to be equal: another CPU family runs other kernels (AVX-512 or
AVX2 matrix products), whose rounding a 16-step fine-tune amplifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mergebench.eval.results import Results, load_results
from mergebench.work import write_atomic

logger = logging.getLogger(__name__)

DIGESTS = "score-digests.json"
"""The file :func:`write_score_digests` writes into the runner's output folder."""
MODEL_FIELDS = ("role", "domain", "method", "parameters", "label", "base_model", "validation_score")
"""The model block's fields that say what was scored (the others name paths and local fingerprints)."""
MEASURED_TASK_FIELDS = ("seconds", "finished_at")
"""A task result's measurements: left out of :func:`score_view`."""


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Run the enclosed code with torch's deterministic algorithms and ``threads`` intra-op threads, then restore."""
    import torch

    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


def torch_threads() -> int:
    """torch's intra-op thread count now: its default (the physical cores, or ``OMP_NUM_THREADS``), or what
    :func:`deterministic` set; stages record it among what they are built from."""
    import torch

    return int(torch.get_num_threads())


def score_view(results: Results) -> dict[str, Any]:
    """The parts of a results file two reproducible runs must agree on (see the module docstring)."""
    tasks = {name: {k: v for k, v in asdict(task).items() if k not in MEASURED_TASK_FIELDS}
             for name, task in results.tasks.items()}
    return {"schema_version": results.schema_version, "run_status": results.run.get("status"),
            "model": {k: results.model[k] for k in MODEL_FIELDS if k in results.model},
            "settings": results.settings,
            "eval_data": {k: results.eval_data.get(k) for k in ("kind", "revision")},
            "tasks": tasks}


def score_digest(results: Results | Path) -> str:
    """sha-256 of :func:`score_view` as canonical JSON (sorted keys, no spaces, UTF-8)."""
    view = score_view(results if isinstance(results, Results) else load_results(results))
    text = json.dumps(view, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def score_digests(results_dir: Path) -> dict[str, str]:
    """Results file (relative to ``results_dir``) → :func:`score_digest`, for every results file under it (the
    runner's ``results/`` folder; hidden files, such as the evaluations' stage records, are not results)."""
    files = sorted(p for p in Path(results_dir).rglob("*.json") if not p.name.startswith("."))
    return {str(path.relative_to(results_dir)): score_digest(path) for path in files}


def write_score_digests(run_dir: Path, results_dir: Path) -> Path:
    """Write ``run_dir/score-digests.json``: each results file's :func:`score_digest` and one over all of them."""
    digests = score_digests(results_dir)
    document = {"about": "sha-256 of each results file without its measurements and local paths "
                         "(mergebench.tiny.reproducibility.score_view); equal files = reproducible runs",
                "all": hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest(), "files": digests}
    path = Path(run_dir) / DIGESTS
    write_atomic(path, json.dumps(document, indent=1, sort_keys=True) + "\n")
    logger.info("score digests of %d results files: %s", len(digests), document["all"])
    return path

