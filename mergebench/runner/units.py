"""Units of work as JSON specs that run anywhere: ``mergebench unit run SPEC.json``.

A unit is everything one piece of a benchmark run needs, written down: a **grid point** (merge one parameter
set, score it on the validation tasks) or an **evaluation** (a reference model, or a method's chosen point
merged again, on the evaluation tasks). Its inputs are Hub references (pinned to commits) or paths; its
outputs go to a **results location**: a local folder (the run folder itself, for the local and Ray
executors) or a path in a Hub dataset repo (for Hugging Face Jobs, whose disk is gone when they end).

Running a unit is idempotent: it first asks its results location for its record, and does nothing when
that record carries the unit's fingerprint (:func:`mergebench.work.is_current`); otherwise it works in a
scratch folder and publishes its outputs atomically (a folder: temp file + rename, the record last; a Hub
repo: one commit with every output). So a unit can be retried, re-attached or run twice at once without a
partial or mixed result. The record and fingerprint are the ones the driver checks
(:mod:`mergebench.runner.run`), so a run folder filled by units is resumed like one filled in-process.

A **Space submission** (:class:`SubmissionUnit`: merge a recipe or take an already merged Hub model, push the
merged model with its card, evaluate it with the spec's backend, append the scores to a results dataset) is
what the Space runs as a Hugging Face Job with the same command; its results file is what the Space's
leaderboard shows.

An **expert** (:class:`ExpertUnit`: fine-tune one base on one domain with one recipe, keep the expert in a folder
and/or push it to a model repo) is what ``mergebench train-experts`` (:mod:`mergebench.runner.experts`) hands
the same executors, one unit per expert.

>>> unit = load_unit(Path("unit.json"))                                # doctest: +SKIP
>>> run_unit(unit)                                                     # doctest: +SKIP
'done'
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mergebench.errors import ConfigError, MissingPackageError, UnitError
from mergebench.prompt import PROMPT_FORMAT_VERSION
from mergebench.runner.config import UnitKind
from mergebench.runner.point import GridPoint
from mergebench.scratch import folder_or_scratch, scratch_folder
from mergebench.work import Stage, atomic_file, is_current, sidecar_record, write_record

logger = logging.getLogger(__name__)

UNIT_KINDS: tuple[UnitKind | Literal["submission"], ...] = ("grid_point", "evaluation", "expert", "submission")
SPEC_VERSION = 1
HF_DATASETS = "hf://datasets/"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResultsLocation(_Strict):
    """Where a unit's outputs go: a local ``folder``, or ``prefix/`` in the Hub dataset ``repo``."""

    folder: str | None = None
    repo: str | None = None
    prefix: str = ""
    private: bool = False

    @model_validator(mode="after")
    def _one_place(self) -> ResultsLocation:
        if (self.folder is None) == (self.repo is None):
            raise ValueError("give exactly one of 'folder' or 'repo'")
        return self

    def describe(self, rel: str) -> str:
        """Where ``rel`` lives, for messages: a path, or ``hf://datasets/REPO/PREFIX/REL``."""
        if self.folder is not None:
            return str(Path(self.folder) / rel)
        return f"hf://datasets/{self.repo}/{self._in_repo(rel)}"

    def _in_repo(self, rel: str) -> str:
        return f"{self.prefix.strip('/')}/{rel}" if self.prefix.strip("/") else rel

    def fetch(self, rel: str, into: Path) -> Path | None:
        """``rel`` as a local file (the file itself for a folder, a download into ``into`` for a repo), or
        ``None`` if it does not exist."""
        if self.folder is not None:
            path = Path(self.folder) / rel
            return path if path.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            downloaded = hf_hub_download(self.repo or "", self._in_repo(rel), repo_type="dataset",
                                         local_dir=into)
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
            return None
        return Path(downloaded)

    @contextmanager
    def workspace(self) -> Iterator[Path]:
        """A folder to write outputs into at their relative paths: the folder itself, or a scratch folder for a
        repo (published by :meth:`publish`)."""
        if self.folder is not None:
            yield Path(self.folder)
            return
        with scratch_folder("unit") as scratch:
            yield scratch

    def publish(self, workspace: Path, rels: list[str], *, message: str) -> None:
        """Make the outputs ``rels`` (already written in ``workspace``) visible: nothing to do for a folder (they
        were written in place, atomically, the record last); one commit of all of them for a repo."""
        if self.folder is None:
            self.put({rel: (workspace / rel).read_bytes() for rel in rels}, message=message)

    def put(self, files: Mapping[str, bytes], *, message: str) -> None:
        """Write ``files`` (relative path → bytes): each atomically, in order, into a folder; one commit to a repo."""
        if self.folder is not None:
            for rel, data in files.items():
                with atomic_file(Path(self.folder) / rel) as tmp:
                    tmp.write_bytes(data)
            return
        from mergebench.hub.push import push_files

        push_files(self.repo or "", {self._in_repo(rel): data for rel, data in files.items()}, private=self.private,
                   commit_message=message)


class EvalOptions(_Strict):
    """How a unit runs its model for evaluation (``mergebench.eval.lighteval_wrapper.ModelOptions``) and judges
    its safety responses."""

    batch_size: int = 32
    dtype: str = "float32"
    backend: Literal["transformers", "vllm"] = "transformers"
    refusal_judge: str | None = None
    """A classifier's model id or folder (``allenai/wildguard``; a run's and the Space's units carry it pinned,
    ``org/name@sha``, so the unit judges with the commit its fingerprint names); ``None``: the rule-based judge
    (CPU default)."""


class MergeStep(_Strict):
    """Build the model to evaluate from a recipe first (a method's chosen grid point, or a submission)."""

    recipe: dict[str, Any]
    model_dir: str | None = None
    """Folder the merged model is (or goes) in, reused when it holds a model; ``None``: a scratch folder."""
    threads: int | None = None
    shard_size: int = 5_000_000_000


class _Unit(_Strict):
    spec_version: int = SPEC_VERSION
    label: str
    """What the stage log and the Jobs' labels call it (``math expert evaluation``)."""
    results: ResultsLocation
    path: str
    """The output file relative to ``results`` (``grid/<base>/<method>/<id>.json``, ``results/<base>/<x>.json``)."""
    weight: float = 1.0
    """Expected cost relative to one merge (the stage log's bar and ETA)."""

    @property
    def fingerprint(self) -> str:
        raise NotImplementedError

    @property
    def id(self) -> str:
        """16 hex digits of the fingerprint: the unit's name in file names and Jobs' labels."""
        return self.fingerprint[:16]

    RECORD_BESIDE: ClassVar[bool] = False
    """Whether the output (a results file, which cannot hold the unit's fingerprint) has its record beside it."""

    @property
    def record(self) -> str:
        """The file whose fingerprint says the unit is done (relative to ``results``)."""
        return str(sidecar_record(Path(self.path))) if self.RECORD_BESIDE else self.path

    def outputs(self) -> list[str]:
        """Every file the unit publishes, the record last."""
        return [self.path, self.record] if self.RECORD_BESIDE else [self.path]

    def is_done(self) -> bool:
        """Whether the results location holds this unit's record, made from exactly this unit."""
        with scratch_folder("unit-check") as tmp:
            record = self.results.fetch(self.record, tmp)
            return record is not None and is_current(record, self.fingerprint)

    def run(self, workspace: Path, *, progress: bool) -> None:
        raise NotImplementedError


class StageSpec(_Strict):
    """A :class:`mergebench.work.Stage` as JSON."""

    kind: str
    inputs: dict[str, Any]
    version: int = 1

    def stage(self) -> Stage:
        return Stage(self.kind, self.inputs, version=self.version)


class EvaluationUnit(_Unit):
    """Evaluate one model on some tasks into ``path``, with the stage record beside it."""

    kind: Literal["evaluation"] = "evaluation"
    stage: StageSpec
    """What the results are built from (the driver's :meth:`mergebench.runner.run._Run.evaluation_stage`)."""
    model: str | None = None
    """A Hub id (``org/name[@rev]``) or a folder; ``None`` when ``merge`` builds the model."""
    merge: MergeStep | None = None
    tasks: list[str]
    max_samples: int | None = None
    eval_data: str | None = None
    options: EvalOptions = EvalOptions()
    model_info: dict[str, Any] = Field(default_factory=dict)
    cost: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_model(self) -> EvaluationUnit:
        if (self.model is None) == (self.merge is None):
            raise ValueError("give exactly one of 'model' or 'merge'")
        return self

    @property
    def fingerprint(self) -> str:
        return self.stage.stage().fingerprint

    RECORD_BESIDE: ClassVar[bool] = True

    def run(self, workspace: Path, *, progress: bool) -> None:
        from mergebench.eval import evaluate
        from mergebench.eval.lighteval_wrapper import ModelOptions

        with self._model() as model:
            evaluate(model, tasks=self.tasks, max_samples=self.max_samples, out=workspace / self.path,
                     eval_data=self.eval_data, backend=self.options.backend,
                     refusal_judge=self.options.refusal_judge, model_info=self.model_info,
                     options=ModelOptions(batch_size=self.options.batch_size, dtype=self.options.dtype),
                     cost=self.cost, progress=progress)
        write_record(workspace / self.record, self.stage.stage())

    @contextmanager
    def _model(self) -> Iterator[str]:
        """The model to evaluate: ``model``, or ``merge``'s folder (merged first unless it holds a model)."""
        if self.merge is None:
            yield str(self.model)
            return
        from mergebench.merge.engine import merge
        from mergebench.merge.options import MergeOptions

        options = MergeOptions(threads=self.merge.threads, shard_size=self.merge.shard_size, resume=True,
                               progress=False)
        with folder_or_scratch(self.merge.model_dir, "merge") as model_dir:
            if not (model_dir / "config.json").is_file():  # the merge is deterministic: do it again
                shutil.rmtree(model_dir, ignore_errors=True)
                merge(self.merge.recipe, model_dir, options=options)
            yield str(model_dir)


class PointSpec(_Strict):
    """A :class:`mergebench.runner.point.GridPoint` as JSON."""

    base: str
    method_key: str
    recipe: dict[str, Any]
    validation_tasks: tuple[str, ...]
    eval_settings: dict[str, Any] = Field(default_factory=dict)
    fingerprints: dict[str, str] = Field(default_factory=dict)


class GridPointUnit(_Unit):
    """Merge one grid point and score it on the validation tasks (:func:`mergebench.runner.point.run_point`)."""

    kind: Literal["grid_point"] = "grid_point"
    point: PointSpec
    experts_validation: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Each expert's results document (what the validation score is normalised by)."""
    model_dir: str | None = None
    """Where the merged model goes (the run folder, so the winner is not merged twice); ``None``: scratch."""
    threads: int | None = None
    shard_size: int = 5_000_000_000
    eval_data: str | None = None
    options: EvalOptions = EvalOptions()

    @property
    def fingerprint(self) -> str:
        return self.grid_point().fingerprint

    def grid_point(self) -> GridPoint:
        return GridPoint(**self.point.model_dump())

    def run(self, workspace: Path, *, progress: bool) -> None:
        from mergebench.eval.lighteval_wrapper import ModelOptions
        from mergebench.eval.results import results_from_dict
        from mergebench.merge.options import MergeOptions
        from mergebench.runner.point import run_point

        experts = {d: results_from_dict(doc, f"{d} expert results") for d, doc in self.experts_validation.items()}
        with folder_or_scratch(self.model_dir, "point") as model_dir:
            run_point(self.grid_point(), model_dir=model_dir, record_path=workspace / self.path,
                      experts_validation=experts,  # type: ignore[arg-type]  # domains as read from JSON
                      merge_options=MergeOptions(threads=self.threads, shard_size=self.shard_size, resume=True,
                                                 progress=False),
                      eval_options=ModelOptions(batch_size=self.options.batch_size, dtype=self.options.dtype),
                      eval_data=self.eval_data, refusal_judge=self.options.refusal_judge, progress=progress)


class SubmissionUnit(_Unit):
    """A Space submission: merge ``recipe`` (or take the merged Hub ``model``), push the merged model with its card
    to ``push_to``, evaluate it into ``path`` (with the record beside it), and append the scores to
    ``results_repo``. Each step is announced in the log as ``== step ==`` (the Space shows the latest as the
    job's stage). The Space's job id (``submission``) is part of the fingerprint: each submission is its own
    unit, and a Job launched twice for it publishes the same results."""

    kind: Literal["submission"] = "submission"
    submission: str
    """The Space's job id."""
    recipe: dict[str, Any] | None = None
    model: str | None = None
    """An already merged Hub model (``org/name``); ``None`` when ``recipe`` builds it."""
    push_to: str | None = None
    """Model repo the merged model (with its card) is pushed to; ``None``: not pushed (its id is then its folder)."""
    tasks: list[str] = Field(default_factory=list)
    suite: str | None = None
    """Used when ``tasks`` is empty."""
    max_samples: int | None = None
    eval_data: str | None = None
    options: EvalOptions = EvalOptions()
    """``options.backend``: ``vllm`` on GPU hardware, ``transformers`` on CPU."""
    model_info: dict[str, Any] = Field(default_factory=dict)
    results_repo: str | None = None
    """Results dataset the scores are appended to (:func:`mergebench.eval.results.push_results`)."""
    threads: int | None = None

    @model_validator(mode="after")
    def _one_model(self) -> SubmissionUnit:
        if (self.model is None) == (self.recipe is None):
            raise ValueError("give exactly one of 'model' or 'recipe'")
        if not self.tasks and not self.suite:
            raise ValueError("give 'tasks' or 'suite'")
        return self

    def stage(self) -> Stage:
        return Stage("submission", self.model_dump(mode="json", exclude={"label", "results", "path", "weight"}))

    @property
    def fingerprint(self) -> str:
        return self.stage().fingerprint

    RECORD_BESIDE: ClassVar[bool] = True

    def run(self, workspace: Path, *, progress: bool) -> None:
        from mergebench.eval import evaluate
        from mergebench.eval.lighteval_wrapper import ModelOptions

        info = dict(self.model_info)
        with scratch_folder("submission") as scratch:
            model, cost = self._model(scratch / "model", info, progress=progress)
            logger.info("== evaluating ==")
            results = evaluate(model, suite=None if self.tasks else self.suite, tasks=self.tasks or None,
                               backend=self.options.backend, max_samples=self.max_samples, out=workspace / self.path,
                               eval_data=self.eval_data, refusal_judge=self.options.refusal_judge,
                               model_info=info, cost=cost,
                               options=ModelOptions(batch_size=self.options.batch_size, dtype=self.options.dtype),
                               progress=progress)
        if self.results_repo:
            from mergebench.eval.results import push_results

            logger.info("== pushing the results ==")
            push_results(self.results_repo, results)
        write_record(workspace / self.record, self.stage())

    def _model(self, folder: Path, info: dict[str, Any], *, progress: bool) -> tuple[str, dict[str, Any] | None]:
        """The model to evaluate and the merge's cost; a merged model is pushed first (``info`` then names it)."""
        if self.recipe is None:
            return str(self.model), None
        from mergebench.merge.engine import merge
        from mergebench.merge.options import MergeOptions

        logger.info("== merging ==")
        result = merge(self.recipe, folder, options=MergeOptions(threads=self.threads, resume=True, progress=progress))
        info.setdefault("id", str(folder))
        if self.push_to:
            from mergebench.hub.push import push_folder

            logger.info("== pushing the merged model ==")
            url = push_folder(folder, self.push_to, commit_message=f"MergeBench Space submission {self.submission}")
            info.update(id=self.push_to, revision=url.rstrip("/").rsplit("/", 1)[-1])
        # parameters chosen by the submitter: no validation search
        return str(folder), {"merge_seconds": round(result.seconds, 3),
                             "merge_peak_memory_bytes": result.peak_rss_bytes, "validation_seconds": 0.0}


class ExpertUnit(_Unit):
    """Train one expert: one base × one domain (``all``: the multi-task baseline) × one recipe, with
    :func:`mergebench.train.train_expert`, into ``out_dir`` and/or pushed to ``push_to``. The record (``path``,
    ``experts/<name>.json``: the manifest's measurements) is written after the expert is saved and pushed, so a
    unit stopped mid-training trains again and a finished one never does.

    The spec is made with its inputs pinned (:mod:`mergebench.runner.experts`): ``base`` and ``data`` name commits
    (``org/name@sha``) or absolute folders and ``identities`` what each one was (commit or content fingerprint), so
    the unit trains the same expert wherever it runs, and any change of input, recipe or destination is a new
    unit. With ``processes`` > 1 it trains under ``accelerate launch`` on that many GPUs of its machine (a
    multi-GPU Jobs flavor), with ``accelerate_config`` (the text of an accelerate config file, e.g. DeepSpeed
    ZeRO-3) carried in the spec because a Job sees only its image."""

    kind: Literal["expert"] = "expert"
    name: str
    """``<base name>_<domain>``: the expert folder's name, which its manifest and card record."""
    base: str
    domain: str
    data: dict[str, str]
    """Domain → dataset (all five for ``all``)."""
    identities: dict[str, str]
    """Each input reference (``base``, every ``data`` value) → its :attr:`mergebench.hub.refs.Pin.identity`."""
    recipe: dict[str, Any]
    """Every field of the :class:`mergebench.train.TrainConfig` (a recipe name would change with the package)."""
    out_dir: str | None = None
    """The expert folder, replaced when the unit runs; ``None``: a scratch folder (``push_to`` keeps the expert)."""
    push_to: str | None = None
    private: bool = False
    processes: int = Field(1, ge=1)
    accelerate_config: str | None = None

    @model_validator(mode="after")
    def _kept_somewhere(self) -> ExpertUnit:
        if self.out_dir is None and self.push_to is None:
            raise ValueError("give 'out_dir' or 'push_to' (or both): the expert must be kept somewhere")
        return self

    def stage(self) -> Stage:
        """What the expert is built from (how many processes train it is not part of it)."""
        inputs = self.model_dump(mode="json", include={"name", "base", "domain", "data", "identities", "recipe",
                                                       "out_dir", "push_to"})
        return Stage("expert", {**inputs, "prompt_format_version": PROMPT_FORMAT_VERSION})

    @property
    def fingerprint(self) -> str:
        return self.stage().fingerprint

    def run(self, workspace: Path, *, progress: bool) -> None:
        from mergebench.train.card import read_manifest

        with folder_or_scratch(self.out_dir, "expert", name=self.name) as out_dir:
            self._train(out_dir, progress=progress)
            manifest = read_manifest(out_dir)
        stats = manifest["stats"]
        write_record(workspace / self.path, self.stage(), outputs={
            **{key: stats[key] for key in ("steps", "train_tokens", "final_loss", "train_seconds", "seconds")},
            "base_revision": manifest["base"]["revision"],
            "data_revisions": {d: source["revision"] for d, source in manifest["data"].items()},
            "out_dir": self.out_dir, "pushed_to": self.push_to})

    def _train(self, out_dir: Path, *, progress: bool) -> None:
        """Train into ``out_dir`` (and push): in this process, or under ``accelerate launch`` with ``processes``."""
        from mergebench.train.config import train_config_from_dict

        config = train_config_from_dict(self.recipe, source=f"{self.label} recipe")
        if self.processes == 1:
            from mergebench.train import train_expert

            train_expert(base=self.base, domain=self.domain, data=self.data, out_dir=out_dir, config=config,
                         push_to=self.push_to, private=self.private, overwrite=True, progress=progress)
            return
        accelerate = shutil.which("accelerate")
        if accelerate is None:
            raise MissingPackageError(f"{self.label}: training on {self.processes} processes needs `accelerate`, "
                                      "which is not on PATH.", package="accelerate",
                                      hint="Install MergeBench's requirements in the image (accelerate comes with "
                                           "them), or set processes: 1.")
        with scratch_folder("launch") as tmp:
            recipe = tmp / "recipe.yaml"
            recipe.write_text(config.to_yaml(), encoding="utf-8")
            command = [accelerate, "launch", "--num_processes", str(self.processes)]
            if self.accelerate_config:
                (tmp / "accelerate.yaml").write_text(self.accelerate_config, encoding="utf-8")
                command += ["--config_file", str(tmp / "accelerate.yaml")]
            command += ["-m", "mergebench.cli", "train", "--base", self.base, "--domain", self.domain,
                        *(arg for domain, source in self.data.items() for arg in ("--data", f"{domain}={source}")),
                        "--out", str(out_dir), "--config", str(recipe), "--overwrite",
                        *(["--push-to", self.push_to] if self.push_to else []),
                        *(["--private"] if self.private else [])]
            logger.info("%s: %s", self.label, shlex.join(command))
            code = subprocess.run(command, check=False).returncode
        if code:
            raise UnitError(f"{self.label}: `accelerate launch` exited with code {code}.", units=[self.label],
                            hint="Its processes' output is above (in a Job: the Job's log).")


UnitSpec = GridPointUnit | EvaluationUnit | ExpertUnit
"""A unit the executors take: of a benchmark run, or an expert's training."""
AnyUnit = GridPointUnit | EvaluationUnit | ExpertUnit | SubmissionUnit
"""Any unit (the type of a parsed spec)."""
_ADAPTER: pydantic.TypeAdapter[AnyUnit] = pydantic.TypeAdapter(Annotated[AnyUnit, Field(discriminator="kind")])


def problem_lines(error: pydantic.ValidationError) -> str:
    """Every problem pydantic found, one ``  - where: what`` line each: a spec or plan reports them all at once."""
    return "\n".join(f"  - {'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}" for err in error.errors())


def unit_from_json(text: str, source: str = "unit spec") -> AnyUnit:
    """Parse a unit spec; every problem is reported at once.

    Raises:
        ConfigError: not JSON, an unknown ``kind``, a missing or unknown field.
    """
    try:
        return _ADAPTER.validate_json(text)
    except pydantic.ValidationError as e:
        raise ConfigError(f"Invalid {source}:\n{problem_lines(e)}",
                          hint=f"A unit spec is the JSON a run or the Space writes (kind: {', '.join(UNIT_KINDS)}); "
                               "see `mergebench unit run --help`.") from e


def load_unit(spec: str | Path) -> AnyUnit:
    """A unit from a JSON file, or from the JSON text itself (what a Job's command line carries).

    Raises:
        ConfigError: the file does not exist, or the spec is invalid.
    """
    text = str(spec)
    if text.lstrip().startswith("{"):
        return unit_from_json(text, "unit spec given inline")
    if text.startswith(HF_DATASETS):
        return unit_from_json(_read_hub_file(text), f"unit spec '{text}'")
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"Unit spec '{path}' does not exist.",
                          hint="Give the path of a unit's JSON spec (a run writes them under units/), or the JSON "
                               "text itself.")
    return unit_from_json(path.read_text(encoding="utf-8"), f"unit spec '{path}'")


def _read_hub_file(url: str) -> str:
    """The text of ``hf://datasets/ORG/NAME/PATH`` (the latest revision)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    parts = url[len(HF_DATASETS):].split("/", 2)
    if len(parts) != 3:
        raise ConfigError(f"'{url}' is not a file of a Hub dataset.", hint="Use hf://datasets/ORG/NAME/PATH.")
    try:
        return Path(hf_hub_download(f"{parts[0]}/{parts[1]}", parts[2], repo_type="dataset")).read_text("utf-8")
    except (EntryNotFoundError, RepositoryNotFoundError) as e:
        raise ConfigError(f"Unit spec '{url}' not found on the Hub ({type(e).__name__}).",
                          hint="Check the repo and path, and that HF_TOKEN can read the repo.") from e


def spec_json(unit: AnyUnit) -> str:
    """The unit as compact JSON (what ``mergebench unit run`` reads)."""
    return unit.model_dump_json(exclude_defaults=False)


def run_unit(unit: AnyUnit, *, progress: bool = False) -> Literal["done", "skipped"]:
    """Run ``unit`` unless its record is there already; outputs are published atomically (see the module
    docstring). Returns ``"skipped"`` or ``"done"``."""
    if unit.is_done():
        logger.info("%s: already done (%s)", unit.label, unit.results.describe(unit.record))
        return "skipped"
    with unit.results.workspace() as workspace:
        unit.run(workspace, progress=progress)
        unit.results.publish(workspace, unit.outputs(), message=f"MergeBench unit {unit.id}: {unit.label}")
    logger.info("%s: done (%s)", unit.label, unit.results.describe(unit.record))
    return "done"


def write_spec(unit: AnyUnit, folder: Path) -> Path:
    """Save ``unit``'s spec as ``folder/<id>.json`` (atomically); returns the path."""
    path = Path(folder) / f"{unit.id}.json"
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(json.loads(spec_json(unit)), indent=1) + "\n", encoding="utf-8")
    return path


def collect(unit: UnitSpec, folder: Path) -> None:
    """Copy the outputs ``unit`` published to a Hub repo into ``folder`` (the run folder), the record last, each
    atomically: the driver then finds the unit done, as if it had run in place."""
    if unit.results.folder is not None and Path(unit.results.folder).resolve() == Path(folder).resolve():
        return
    with scratch_folder("unit-collect") as tmp:
        for rel in unit.outputs():
            source = unit.results.fetch(rel, tmp)
            if source is None:
                raise ConfigError(f"{unit.label}: {unit.results.describe(rel)} is missing although the unit is done.",
                                  hint="Someone removed files of the results repo: delete its record too and run "
                                       "again, so that the unit runs again.")
            with atomic_file(Path(folder) / rel) as target:
                shutil.copyfile(source, target)
