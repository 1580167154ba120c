"""The benchmark configuration (``BENCH.yaml``), validated as a whole before any work.

```yaml
name: my-bench
output: runs/my-bench                 # default: runs/<name>; relative paths are relative to this file
bases:
  - name: llama-3.2-3b                # label used in file names (default: the model's last path part)
    model: org/Llama-3.2-3B           # org/name[@rev] or ./local/dir
    experts: {instruction: org/x_instruction, math: org/x_math, multilingual: ..., coding: ..., safety: ...}
    multitask: org/x_all              # optional: the multi-task baseline
data: {math: org/mergebench-math, ...}  # validation rows per domain, for RegMean / Fisher / trained L&S
methods:                              # default: all eight, each with its registered search grid
  - {method: ties, parameters: {top_k: 0.2}, grid: {scaling: [0.6, 1.0]}}
  - {method: localize_stitch, label: localize_stitch (trained), parameters: {mode: trained}}
validation: {suites: [validation]}     # what a grid point is scored on (normalised by the experts)
evaluation: {suites: [domains, forgetting]}
eval_data: null                       # mergebench-eval repo or folder; null = the packaged sets
refusal_judge: null                   # safety judge: null = rule-based (CPU default), or a classifier id or folder
                                      # (allenai/wildguard, the paper's, GPU); results name it
merge: {dtype: null}
push: {results: org/mergebench-results, models: org}   # optional
keep_models: true                     # keep each method's chosen merged model on disk
executor: {kind: local}               # or ray / hf-jobs: where grid points and evaluations run (see below)
```

``executor`` (``mergebench run --executor`` overrides ``kind``; :mod:`mergebench.runner.executors`):

```yaml
executor:
  kind: hf-jobs                       # local (default: in this process) | ray | hf-jobs
  max_concurrent: 8                   # units in flight at once
  retries: 2                          # relaunches of a failed unit before the run stops
  results_repo: me/mergebench-runs    # hf-jobs: the dataset units publish to (runs/<name>/...)
  ray: {address: null, num_cpus: null, resources: {grid_point: {cpus: 1, gpus: 0}, evaluation: {cpus: 1, gpus: 1}}}
  hf_jobs:
    image: hf.co/spaces/me/mergebench # a Docker image or Space with `mergebench` installed
    flavors: {grid_point: a10g-large, evaluation: a10g-large}
    timeout: 2h
    namespace: null                   # default: the token's user; an organisation bills it instead
```

Unknown keys are errors, and every problem (unknown method or parameter, grid values out of range, a
missing expert or data domain, an unknown task) is reported at once, naming where it is.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from mergebench.domains import DOMAINS
from mergebench.errors import ConfigError, MergeBenchError, RefError
from mergebench.hub.refs import Ref
from mergebench.merge.plan import DEFAULT_SHARD_SIZE
from mergebench.merge.recipe import read_yaml


def resolve_under(root: Path, value: str) -> Path:
    """``value`` (``~`` expanded) if absolute, else resolved against ``root``: how a configuration file's relative
    paths mean "next to this file"."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvalSettings(_Strict):
    """Which tasks to run (suites and/or task names) and how."""

    suites: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    max_samples: int | None = Field(None, ge=1)
    dtype: str = "float32"
    batch_size: int = Field(32, ge=1)

    def task_names(self) -> list[str]:
        """The resolved ``mb_*`` task names, suites first, without duplicates (unknown names raise)."""
        from mergebench.eval.tasks import resolve_tasks

        names = [s.name for suite in self.suites for s in resolve_tasks(suite, None)]
        if self.tasks:
            names += [s.name for s in resolve_tasks(None, self.tasks)]
        return list(dict.fromkeys(names))


class BaseEntry(_Strict):
    name: str | None = None
    model: str
    experts: dict[str, str]
    multitask: str | None = None

    @property
    def label(self) -> str:
        """File-system name of the base (its ``name``, else the model's last path part)."""
        return self.name or self.model.rstrip("/").split("@")[0].rsplit("/", 1)[-1]


class MethodEntry(_Strict):
    method: str
    label: str | None = None
    """Row label; needed when one method appears twice (e.g. Localize-and-Stitch dataless and trained)."""
    parameters: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] | None = None
    """Values to search; ``None``: the method's registered grid (minus keys fixed in ``parameters``)."""

    @property
    def key(self) -> str:
        """File-system name of the method's row (label or method name)."""
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in (self.label or self.method)).strip("_")

    def search_grid(self) -> dict[str, list[Any]]:
        from mergebench import methods

        if self.grid is not None:
            return {k: list(v) for k, v in self.grid.items()}
        registered = methods.get(self.method).grid
        return {k: list(v) for k, v in registered.items() if k not in self.parameters}

    def points(self) -> list[dict[str, Any]]:
        """Every parameter set of the grid (fixed parameters merged in), in a stable order, keys sorted (so a
        configuration read from YAML or built in Python labels its rows the same way)."""
        grid = self.search_grid()
        keys = list(grid)
        return [dict(sorted({**self.parameters, **dict(zip(keys, values, strict=True))}.items()))
                for values in itertools.product(*(grid[k] for k in keys))]


class MergeSettings(_Strict):
    dtype: str | None = None
    shard_size: int = Field(DEFAULT_SHARD_SIZE, ge=1 << 20)
    threads: int | None = Field(None, ge=1)
    """Read threads of each merge (``None``: one per core of the machine it runs on, 2–4)."""


class PushSettings(_Strict):
    results: str | None = None
    """Results dataset (``org/mergebench-results``) every results file is pushed to (one row per task and identity:
    pushing again replaces rows, never adds copies)."""
    models: str | None = None
    """Namespace the chosen merged models are pushed to, as ``<namespace>/<base>-<method>``, each followed by its
    scores (``.eval_results/*.yaml`` and the card's ``model-index``) when ``eval_data`` is a Hub dataset."""
    private: bool = False


UnitKind = Literal["grid_point", "evaluation", "expert"]
"""A grid point (merge + validation evaluation), an evaluation, or an expert's training
(:mod:`mergebench.runner.units`)."""
T = TypeVar("T")


def _per_kind(value: T) -> dict[UnitKind, T]:
    return {"grid_point": value, "evaluation": value, "expert": value}


class UnitResources(_Strict):
    """What one unit asks of a Ray cluster."""

    cpus: float = Field(1.0, ge=0)
    gpus: float = Field(0.0, ge=0)


class RaySettings(_Strict):
    address: str | None = None
    """``ray://host:10001`` or ``auto`` to join a running cluster; ``None``: start a local one (``ray.init()``)."""
    num_cpus: int | None = Field(None, ge=1)
    """Logical CPUs of a *local* cluster (default: this machine's); ignored with ``address``."""
    resources: dict[UnitKind, UnitResources] = Field(default_factory=lambda: _per_kind(UnitResources()))


class HfJobsSettings(_Strict):
    image: str | None = None
    """Docker image or Space (``hf.co/spaces/org/name``) whose environment has ``mergebench`` installed."""
    command: list[str] = Field(default_factory=lambda: ["mergebench"], min_length=1)
    """How the image runs MergeBench (e.g. ``[uv, run, --with, "mergebench @ git+https://…", mergebench]``)."""
    flavors: dict[UnitKind, str] = Field(default_factory=lambda: _per_kind("a10g-large"))
    """Flavor per unit kind: a GPU (``a10g-large`` 24 GB, ``l40sx1`` 48 GB, ``a100-large`` 80 GB) for 7-9B models."""
    timeout: str = "2h"
    """Longest a unit may run (``30m``, ``2h``, or seconds); the service stops it then."""
    namespace: str | None = None
    """Who runs (and pays for) the Jobs: the token's user by default, or an organisation."""
    poll_seconds: float = Field(10.0, gt=0)


class ExecutorSettings(_Strict):
    """Where the units of a run (grid points, evaluations; experts' trainings) run; see
    :mod:`mergebench.runner.executors`."""

    kind: Literal["local", "ray", "hf-jobs"] = "local"
    max_concurrent: int = Field(4, ge=1)
    retries: int = Field(1, ge=0)
    results_repo: str | None = None
    """Dataset repo the units publish their outputs to (needed by hf-jobs, whose disk does not outlive a Job)."""
    private: bool = True
    ray: RaySettings = RaySettings()
    hf_jobs: HfJobsSettings = HfJobsSettings()

    def with_overrides(self, kind: str | None = None, *, address: str | None = None,
                       max_concurrent: int | None = None) -> ExecutorSettings:
        """These settings with the command line's choices (``--executor``, ``--address``, ``--max-concurrent``) in
        place of the file's; ``None`` keeps the file's value. Shared by ``mergebench run`` and ``train-experts``.

        Raises:
            ConfigError: an unknown executor or a limit below 1.
        """
        executor = self.model_dump()
        if kind is not None:
            executor["kind"] = kind
        if max_concurrent is not None:
            executor["max_concurrent"] = max_concurrent
        if address is not None:
            executor["ray"]["address"] = address
        try:
            return ExecutorSettings.model_validate(executor)
        except pydantic.ValidationError as e:
            raise ConfigError(f"Invalid executor option: {e.errors()[0]['msg']}.",
                              hint="--executor is local, ray or hf-jobs; --max-concurrent is at least 1.") from e


def default_methods() -> list[MethodEntry]:
    """All registered methods with their registered grids, plus trained Localize-and-Stitch as its own row."""
    from mergebench import methods

    entries = [MethodEntry(method=spec.name) for spec in methods.REGISTRY]
    entries.append(MethodEntry(method="localize_stitch", label="localize_stitch (trained)",
                               parameters={"mode": "trained"}))
    return entries


class BenchConfig(_Strict):
    name: str
    output: str | None = None
    bases: list[BaseEntry] = Field(min_length=1)
    data: dict[str, str] = Field(default_factory=dict)
    methods: list[MethodEntry] = Field(default_factory=default_methods)
    validation: EvalSettings = EvalSettings(suites=["validation"])
    evaluation: EvalSettings = EvalSettings(suites=["domains", "forgetting"])
    eval_data: str | None = None
    refusal_judge: str | None = None
    """The safety tasks' judge in every evaluation of the run (validation points included): ``None``, the
    rule-based judge (CPU, no model; results label it as the CPU default), or a classifier's model id or folder
    (``allenai/wildguard``, the paper's judge: a GPU), pinned once per run (a Hub revision → its commit sha) and
    loaded at that commit once per evaluation. Part of every evaluation's fingerprint, by commit or folder
    fingerprint, so results scored by another judge or another commit of it are never reused."""
    merge: MergeSettings = MergeSettings()
    push: PushSettings | None = None
    keep_models: bool = True
    executor: ExecutorSettings = ExecutorSettings()
    root: Path = Field(default=Path("."), exclude=True)
    """Folder relative paths are resolved against (the YAML file's folder)."""

    def with_executor(self, kind: str | None = None, *, address: str | None = None,
                      max_concurrent: int | None = None) -> BenchConfig:
        """This configuration with the command line's executor choices (``--executor``, ``--address``,
        ``--max-concurrent``) in place of the file's; ``None`` keeps the file's value."""
        executor = self.executor.with_overrides(kind, address=address, max_concurrent=max_concurrent)
        return self.model_copy(update={"executor": executor})

    @property
    def output_dir(self) -> Path:
        return self.resolve_path(self.output or f"runs/{self.name}")

    def resolve_path(self, value: str) -> Path:
        return resolve_under(self.root, value)

    def model_ref(self, ref: str) -> str:
        """A local folder as an absolute path; a Hub id (``org/name[@rev]``) unchanged."""
        local = ref.startswith((".", "/", "~")) or (self.root / ref).exists()
        return str(self.resolve_path(ref)) if local else ref

    def base_id(self, base: BaseEntry) -> str:
        """The base as results and leaderboards name it: its Hub id, or its label for a local folder."""
        return base.model.split("@")[0] if self.model_ref(base.model) == base.model else base.label

    def data_ref(self, ref: str) -> str:
        return str(self.resolve_path(ref)) if ref.endswith(".jsonl") or (self.root / ref).exists() else ref

    @classmethod
    def from_dict(cls, data: Any, *, root: Path | None = None, source: str = "benchmark configuration"
                  ) -> BenchConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"The {source} must be a YAML mapping, got {type(data).__name__}.",
                              hint="Write it as `key: value` lines (name:, bases:, ...); see the BENCH.yaml format in "
                                   "`mergebench run --help` and the README.")
        try:
            config = cls.model_validate({**data, "root": Path(root or ".").resolve()})
        except pydantic.ValidationError as e:
            problems = "\n".join(f"  - {'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}"
                                 for err in e.errors())
            raise ConfigError(f"Invalid {source}:\n{problems}",
                              hint="See the BENCH.yaml format in `mergebench run --help` and the README.") from e
        config.check()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> BenchConfig:
        path = Path(path)
        return cls.from_dict(read_yaml(path, what="Benchmark configuration"), root=path.parent,
                             source=f"benchmark configuration '{path}'")

    def check(self) -> None:
        """Every semantic problem at once, as one :class:`ConfigError`."""
        from mergebench import methods

        problems: list[str] = []
        for i, base in enumerate(self.bases):
            unknown = sorted(set(base.experts) - set(DOMAINS))
            missing = [d for d in DOMAINS if d not in base.experts]
            if unknown:
                problems.append(f"bases[{i}].experts: unknown domain(s) {', '.join(unknown)} "
                                f"(domains: {', '.join(DOMAINS)})")
            if missing:
                problems.append(f"bases[{i}].experts: no expert for {', '.join(missing)}")
        labels = [m.key for m in self.methods]
        for dup in sorted({k for k in labels if labels.count(k) > 1}):
            problems.append(f"methods: '{dup}' appears twice; give one of them a distinct 'label:'")
        for i, entry in enumerate(self.methods):
            try:
                spec = methods.get(entry.method)
                points = entry.points()
                for values in points:
                    params = spec.make_params(values)
                    if spec.stats_stage(params):
                        absent = [d for d in DOMAINS if d not in self.data]
                        if absent:
                            problems.append(f"methods[{i}] ({entry.key}) needs validation data; 'data:' has "
                                            f"nothing for {', '.join(absent)}")
                            break
            except MergeBenchError as e:
                problems.append(f"methods[{i}] ({entry.key}): {e.message}")
        if self.refusal_judge is not None:
            try:
                Ref.parse(self.refusal_judge, repo_type="model", base_dir=self.root)
            except RefError as e:
                problems.append(f"refusal_judge: {e.message} Leave it out (null) for the rule-based judge, the CPU "
                                "default")
        for section in ("validation", "evaluation"):
            try:
                if not getattr(self, section).task_names():
                    problems.append(f"{section}: no tasks (give 'suites:' or 'tasks:')")
            except MergeBenchError as e:
                problems.append(f"{section}: {e.message}")
        if problems:
            raise ConfigError("Invalid benchmark configuration:\n" + "\n".join(f"  - {p}" for p in problems),
                              hint="Fix these entries; `mergebench methods ls` lists methods, parameters and grids, "
                                   "`mergebench eval --list` the tasks and suites.")
