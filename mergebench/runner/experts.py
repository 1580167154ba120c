"""Train the experts of a plan as units: ``mergebench train-experts PLAN.yaml [--executor local|ray|hf-jobs]``.

A plan names bases, domains, the training data, a recipe and where the experts go. Each (base, domain) becomes
one :class:`~mergebench.runner.units.ExpertUnit`, its base and data pinned to commits (or local fingerprints)
before anything runs, and the units go to the executors a benchmark run uses (:mod:`mergebench.runner.executors`):
one after the other in this process (``local``, the default), as Ray tasks (``executor.ray.resources.expert``),
or as Hugging Face Jobs on ``executor.hf_jobs.flavors.expert``, billed at the flavor's price × running time.

```yaml
name: paper-experts                     # the run: its folder (runs/<name>) and, on Jobs, its label
output: runs/paper-experts              # default runs/<name>: units/, experts/<name>.json records, jobs/
bases: [meta-llama/Llama-3.2-3B, google/gemma-2-2b]     # org/name[@rev] or ./folder
domains: [instruction, math, multilingual, coding, safety, all]   # the default; all = the multi-task baseline
data: my-org/mergebench-{domain}        # a template, or {math: ./build/math, coding: org/x, ...}
recipe: paper                           # paper, tiny or a YAML file; `overrides:` replaces single keys
push_to: my-org/{base}_{domain}         # model repos; and/or `out: experts/{base}_{domain}` (local folders)
processes: 8                            # `accelerate launch` processes per expert (the GPUs of one machine)
accelerate_config: ../configs/accelerate/deepspeed_zero3.yaml   # carried in each unit's spec
executor:                               # as in BENCH.yaml (mergebench/runner/config.py)
  kind: hf-jobs
  results_repo: my-org/mergebench-runs
  hf_jobs: {image: hf.co/spaces/my-org/mergebench, flavors: {expert: a100x8}, timeout: 12h}
```

Relative paths are relative to the plan's folder. Started again, the command trains only the experts whose
record (``<output>/experts/<name>.json``) is missing or was made from other inputs; on Jobs, records are
published to ``executor.results_repo`` and copied back, and a restarted driver re-attaches to Jobs still running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from mergebench.domains import DOMAINS
from mergebench.errors import ConfigError, MergeBenchError
from mergebench.hub.refs import Pin, RepoType, pin, short_name
from mergebench.merge.recipe import read_yaml
from mergebench.runner.config import ExecutorSettings, resolve_under
from mergebench.runner.executors import Executor, make_executor, results_location
from mergebench.runner.progress import StageLog
from mergebench.runner.units import ExpertUnit, ResultsLocation, problem_lines, run_unit, write_spec
from mergebench.train.config import TrainConfig, load_train_config
from mergebench.train.data import MULTITASK, expected_domains
from mergebench.work import is_current, read_record

logger = logging.getLogger(__name__)

PLAN_FORMAT = "The plan format, with an example, is in docs/training.md and the mergebench.runner.experts docstring."


class TrainPlan(BaseModel):
    """The experts to train and where (see the module docstring); validated as a whole before any work."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "experts"
    output: str | None = None
    bases: list[str] = Field(min_length=1)
    domains: list[str] = Field(default_factory=lambda: [*DOMAINS, MULTITASK])
    data: str | dict[str, str]
    """``org/mergebench-{domain}`` (a template), or each domain's source."""
    recipe: str = "paper"
    overrides: dict[str, Any] = Field(default_factory=dict)
    out: str | None = None
    """Expert folders, ``{base}`` and ``{domain}`` filled in: on this machine (local) or the workers' (ray)."""
    push_to: str | None = None
    """Model repos, ``{base}`` and ``{domain}`` filled in (needed on Jobs, whose disk is gone when they end)."""
    private: bool = False
    processes: int = Field(1, ge=1)
    accelerate_config: str | None = None
    executor: ExecutorSettings = ExecutorSettings()
    root: Path = Field(default=Path("."), exclude=True)
    """Folder relative paths are resolved against (the plan file's folder)."""

    @field_validator("data", "out", "push_to")
    @classmethod
    def _fillable(cls, value: str | dict[str, str] | None, info: ValidationInfo) -> str | dict[str, str] | None:
        """A template that cannot be filled in is refused with the plan, not in the middle of the experts."""
        fields = {"domain": "math"} if info.field_name == "data" else {"base": "b", "domain": "math"}
        if isinstance(value, str):
            try:
                value.format(**fields)
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"cannot fill in '{value}' ({type(e).__name__}: {e}); only "
                                 f"{' and '.join('{' + k + '}' for k in fields)} can be used") from e
        return value

    @classmethod
    def from_dict(cls, data: Any, *, root: Path | None = None, source: str = "training plan") -> TrainPlan:
        """Validate a mapping: unknown keys, bad values and every semantic problem (:meth:`check`) at once.

        Raises:
            ConfigError: what is wrong, naming each entry.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"The {source} must be a YAML mapping, got {type(data).__name__}.",
                              hint=PLAN_FORMAT)
        try:
            plan = cls.model_validate({**data, "root": Path(root or ".").resolve()})
        except pydantic.ValidationError as e:
            raise ConfigError(f"Invalid {source}:\n{problem_lines(e)}",
                              hint=PLAN_FORMAT) from e
        plan.check()
        return plan

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainPlan:
        path = Path(path)
        return cls.from_dict(read_yaml(path, what="Training plan"), root=path.parent, source=f"training plan '{path}'")

    def with_executor(self, kind: str | None = None, *, address: str | None = None,
                      max_concurrent: int | None = None) -> TrainPlan:
        """This plan with the command line's executor choices in place of the file's (``None`` keeps them)."""
        executor = self.executor.with_overrides(kind, address=address, max_concurrent=max_concurrent)
        plan = self.model_copy(update={"executor": executor})
        plan.check()
        return plan

    @property
    def output_dir(self) -> Path:
        return self._path(self.output or f"runs/{self.name}")

    def _path(self, value: str) -> Path:
        return resolve_under(self.root, value)

    def train_config(self) -> TrainConfig:
        """The recipe with its overrides (a file is relative to the plan's folder)."""
        recipe = str(self._path(self.recipe)) if Path(self.recipe).suffix else self.recipe
        return load_train_config(recipe, **self.overrides)

    def sources(self, domain: str) -> dict[str, str]:
        """The data ``domain``'s expert trains on, each domain's source as written (all five for ``all``)."""
        needed = expected_domains(domain)
        if isinstance(self.data, str):
            return {d: self.data.format(domain=d) for d in needed}
        return {d: self.data[d] for d in needed if d in self.data}

    def check(self) -> None:
        """Every problem a plan can have before anything is pinned or trained, as one :class:`ConfigError`."""
        problems: list[str] = []
        for domain in self.domains:
            try:
                missing = sorted(set(expected_domains(domain)) - set(self.sources(domain)))
            except MergeBenchError as e:
                problems.append(f"domains: {e.message}")
                continue
            if missing:
                problems.append(f"data: nothing for {', '.join(missing)} (needed by the {domain} expert)")
        names = [short_name(b) for b in self.bases]
        problems += [f"bases: two bases are named '{n}'; expert names ({n}_<domain>) must differ"
                     for n in sorted({n for n in names if names.count(n) > 1})]
        if self.out is None and self.push_to is None:
            problems.append("give 'out' (expert folders) or 'push_to' (model repos), or both")
        experts = [{"base": n, "domain": d} for n in names for d in self.domains]
        for key, template in (("out", self.out), ("push_to", self.push_to)):
            if template is not None and len({template.format(**e) for e in experts}) < len(experts):
                problems.append(f"{key}: '{template}' puts several experts in one place; use {{base}} and {{domain}}")
        kind = self.executor.kind
        if kind == "hf-jobs" and (self.out is not None or self.push_to is None):
            problems.append("hf-jobs: a Job's disk is gone when it ends; give 'push_to' and no 'out'")
        if kind == "hf-jobs" and "expert" not in self.executor.hf_jobs.flavors:
            problems.append("executor.hf_jobs.flavors: no 'expert' flavor (e.g. a100x8 for the paper's recipe)")
        if kind == "ray" and "expert" not in self.executor.ray.resources:
            problems.append("executor.ray.resources: no 'expert' entry (e.g. {cpus: 8, gpus: 8})")
        if self.accelerate_config is not None and not self._path(self.accelerate_config).is_file():
            problems.append(f"accelerate_config: '{self.accelerate_config}' is not a file")
        try:
            self.train_config().gradient_accumulation(self.processes)
        except MergeBenchError as e:
            problems.append(f"recipe: {e.message}")
        if problems:
            raise ConfigError("Invalid training plan:\n" + "\n".join(f"  - {p}" for p in problems),
                              hint=f"Fix these entries. {PLAN_FORMAT}")

    def units(self, results: ResultsLocation) -> list[ExpertUnit]:
        """One unit per (base, domain), every base and dataset pinned once (a Hub revision → its commit sha)."""
        pins: dict[tuple[str, RepoType], Pin] = {}

        def pinned(ref: str, repo_type: RepoType) -> Pin:
            if (ref, repo_type) not in pins:
                pins[ref, repo_type] = pin(ref, repo_type=repo_type, base_dir=self.root)
            return pins[ref, repo_type]

        recipe = self.train_config().model_dump(mode="json")
        accelerate = self._path(self.accelerate_config).read_text(encoding="utf-8") if self.accelerate_config else None
        units = []
        for base in self.bases:
            for domain in self.domains:
                name, fields = f"{short_name(base)}_{domain}", {"base": short_name(base), "domain": domain}
                base_pin = pinned(base, "model")
                data = {d: pinned(source, "dataset") for d, source in self.sources(domain).items()}
                units.append(ExpertUnit(
                    label=f"{name} expert", results=results, path=f"experts/{name}.json", name=name,
                    base=base_pin.loadable, domain=domain, data={d: p.loadable for d, p in data.items()},
                    identities={p.ref.text: p.identity for p in (base_pin, *data.values())}, recipe=recipe,
                    out_dir=str(self._path(self.out.format(**fields))) if self.out else None,
                    push_to=self.push_to.format(**fields) if self.push_to else None, private=self.private,
                    processes=self.processes, accelerate_config=accelerate))
        return units


@dataclass(frozen=True)
class ExpertOutcome:
    """One expert after ``train-experts``: ``status`` is ``trained`` (now) or ``already trained``; ``usd`` what its
    Jobs cost (every attempt; ``None`` off Jobs)."""

    expert: str
    status: str
    kept: str
    steps: int
    final_loss: float
    seconds: float
    usd: float | None


def train_experts(plan: TrainPlan, *, stages: StageLog | None = None) -> list[ExpertOutcome]:
    """Train every expert of ``plan`` whose record is missing, on ``plan.executor``; the others are left alone.

    Raises:
        ConfigError: a setting the executor needs is missing or wrong.
        UnitError: experts failed after their retries (the others are trained and kept).
    """
    stages = stages or StageLog()
    run_dir = plan.output_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    local = plan.executor.kind == "local"
    location = ResultsLocation(folder=str(run_dir)) if local else results_location(plan.executor, run_dir,
                                                                                     name=plan.name)
    units = plan.units(location)
    stages.plan(sum(u.weight for u in units), len(units))
    for unit in units:
        write_spec(unit, run_dir / "units")
    todo = [u for u in units if not is_current(run_dir / u.record, u.fingerprint)]
    logger.info("%d of %d experts to train on the %s executor (records: %s)", len(todo), len(units),
                plan.executor.kind, location.describe("experts/"))
    trained = {u.id for u in todo}
    for unit in units:
        if unit.id not in trained:
            stages.reused(unit.label, weight=unit.weight, why="already trained")
    if local:
        for unit in todo:
            with stages.stage(unit.label, weight=unit.weight, done="trained"):
                run_unit(unit)
        return [_outcome(unit, run_dir, unit.id in trained, None) for unit in units]
    with make_executor(plan.executor, run_dir, name=plan.name) as executor:
        executor.run(todo, stages)
        return [_outcome(unit, run_dir, unit.id in trained, executor) for unit in units]


def _outcome(unit: ExpertUnit, run_dir: Path, trained: bool, executor: Executor | None) -> ExpertOutcome:
    outputs = (read_record(run_dir / unit.record) or {}).get("outputs", {})
    return ExpertOutcome(expert=unit.name, status="trained" if trained else "already trained",
                         kept=unit.push_to or str(unit.out_dir), steps=outputs.get("steps", 0),
                         final_loss=outputs.get("final_loss", float("nan")), seconds=outputs.get("seconds", 0.0),
                         usd=executor.cost([unit.id]) if executor else None)
