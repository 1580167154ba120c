"""Run a statistics stage for every expert, one expert (one decoder layer of it) in memory at a time, with a
content-keyed cache.

>>> experts = [ModelSource(resolve(Ref.parse("org/expert")), domain="math")]            # doctest: +SKIP
>>> paths = run_stage("gram", experts, rows, params, cache_dir=Path("~/.cache/mergebench/stats"))  # doctest: +SKIP
>>> reader = StatisticsReader("gram", paths)                                                 # doctest: +SKIP

``experts`` are :class:`ModelSource` objects (resolved models: weights are streamed, never downloaded) with
their ``domain``; ``rows`` is ``{domain: rows}``. Each expert runs on the first ``num_samples`` rows of *its
own* domain (:func:`~mergebench.stats.data.rows_for`). The returned list has one file per expert, in the order
given, ready for :class:`StatisticsReader`. Models are run layer by layer (:mod:`mergebench.stats.layered`);
activations are parked in a temporary folder beside the cache files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergebench.errors import StatisticsError
from mergebench.stats.cache import (
    cache_key,
    cache_path,
    model_identity,
    open_statistics,
    prune_cache,
    read_metadata,
    touch,
)
from mergebench.stats.data import (
    ModelSource,
    Row,
    Sample,
    StatsOptions,
    batches,
    encode_rows,
    load_tokenizer,
    pad_token_id,
    rows_for,
    small_files,
    with_responses,
)
from mergebench.stats.fisher import FisherConfig, compute_fisher, fisher_entries
from mergebench.stats.gram import GramConfig, compute_gram, gram_entries
from mergebench.stats.layered import CheckpointWeights, LayeredModel
from mergebench.stats.masks import MaskConfig, mask_entries, train_masks
from mergebench.stats.spill import Spill
from mergebench.work import fingerprint_of

logger = logging.getLogger(__name__)

STAGE_CONFIGS: dict[str, type] = {"gram": GramConfig, "fisher": FisherConfig, "mask": MaskConfig}
"""Stage name (= ``MethodSpec.data_stats`` = ``ctx.data`` key) → its configuration dataclass."""


def stage_config(stage: str, params: Any, **extra: Any) -> Any:
    """The stage's configuration from a method's parameters (fields picked by name) plus ``extra``.

    ``params`` is a :class:`~mergebench.methods.Params` instance or a mapping.
    """
    if stage not in STAGE_CONFIGS:
        raise StatisticsError(f"Unknown statistics stage '{stage}'; expected one of {sorted(STAGE_CONFIGS)}.",
                              hint="Use the stage a method declares: MethodSpec.stats_stage(params).")
    cls = STAGE_CONFIGS[stage]
    values = dict(params) if isinstance(params, Mapping) else dataclasses.asdict(params)
    values.update(extra)
    names = {f.name for f in dataclasses.fields(cls)}
    config = cls(**{k: v for k, v in values.items() if k in names})
    num_samples = config.num_samples
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise StatisticsError(f"The '{stage}' statistics need num_samples ≥ 1 rows per expert, got {num_samples!r}.",
                              hint="Set the method's 'num_samples' parameter to an integer ≥ 1 (the paper: 1000).")
    return config


def run_stage(stage: str, experts: Sequence[ModelSource], rows: Mapping[str, Sequence[Row]], params: Any, *,
              cache_dir: Path, base: ModelSource | None = None, merge_embeddings: bool = False,
              options: StatsOptions | None = None) -> list[Path]:
    """Compute (or find in the cache) one statistics file per expert.

    Args:
        stage: ``"gram"``, ``"fisher"`` or ``"mask"`` (``MethodSpec.stats_stage(params)``).
        experts: the experts, each with its ``domain``; the list order is the merge's stack order.
        rows: validation rows per domain key.
        params: the method's parameters (``num_samples``, and for masks ``sparsity``, ``sigmoid_bias`` ...).
        cache_dir: root of the statistics cache.
        base: the base model (required for ``"mask"``).
        merge_embeddings: the recipe's flag; whether the embeddings and head get masks or Fisher diagonals
            (``"mask"``, ``"fisher"``; Grams are of the decoder layers' linear layers only).
        options: device, batch size, max length, tokenizer/template overrides, streaming and spill budgets.

    Returns:
        One safetensors path per expert, in the order of ``experts``.

    Raises:
        StatisticsError: a model without a domain, a domain without rows, rows of another domain or not in the
        chat schema, a missing base for ``"mask"``, a model or tokenizer that cannot be loaded, no usable token.
    """
    options = options or StatsOptions()
    extra = {"merge_embeddings": merge_embeddings} if stage in ("mask", "fisher") else {}
    config = stage_config(stage, params, **extra)
    if stage == "mask" and base is None:
        raise StatisticsError("The 'mask' statistics stage needs the base model.",
                              hint="Pass base=ModelSource(<base folder>) to run_stage.")
    selected = [rows_for(expert, rows, config.num_samples) for expert in experts]  # fail before any work
    base_id = model_identity(base) if stage == "mask" and base is not None else None
    paths = []
    for expert, expert_rows in zip(experts, selected, strict=True):
        document = {"stage": stage, "model": model_identity(expert), "base": base_id, "domain": expert.domain,
                    "rows": fingerprint_of(expert_rows), "num_rows": len(expert_rows),
                    "config": dataclasses.asdict(config), "max_length": options.max_length,
                    "chat_template": options.chat_template,
                    "tokenizer": str(options.tokenizer) if options.tokenizer else None}
        path = cache_path(cache_dir, stage, cache_key(document))
        if _readable(path, stage):
            logger.info("%s statistics of %s (%s): cached at %s", stage, expert.name, expert.domain, path)
            touch(path)
        else:
            logger.info("%s statistics of %s on %d '%s' rows", stage, expert.name, len(expert_rows), expert.domain)
            job = Job(expert, base, expert_rows, options, path, {**document, "model_label": expert.name})
            COMPUTE[stage](job, config)
        paths.append(path)
    prune_cache(cache_dir, keep=paths, limit_bytes=options.cache_limit_bytes)
    return paths


def _readable(path: Path, stage: str) -> bool:
    """A cached file is reused only if it opens as a statistics file of ``stage``; a damaged one is recomputed."""
    if not path.is_file():
        return False
    try:
        found = read_metadata(path).get("mergebench.stage")
    except Exception as e:  # safetensors raises its own error type for truncated or garbled files
        logger.warning("Cached statistics file %s is unreadable (%s: %s); computing it again.", path,
                       type(e).__name__, e)
        return False
    if found != stage:
        logger.warning("Cached statistics file %s holds stage %r, not %r; computing it again.", path, found, stage)
        return False
    return True


@dataclass(frozen=True)
class Job:
    """One expert's statistics to compute: the models, its rows, the options, where the file goes."""

    expert: ModelSource
    base: ModelSource | None
    rows: Sequence[Row]
    options: StatsOptions
    path: Path
    metadata: dict[str, Any]

    @contextlib.contextmanager
    def prepared(self, model: ModelSource) -> Iterator[tuple[LayeredModel, Any, Path]]:
        """``model``'s skeleton, the expert's tokenizer and a temporary folder (beside the statistics file) for
        spilled activations."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with small_files(self.expert.model) as expert_files, small_files(model.model) as files, \
                tempfile.TemporaryDirectory(prefix=".work-", dir=self.path.parent) as work:
            tokenizer = load_tokenizer(self.expert, expert_files, self.options)
            yield LayeredModel(model.model, files, self.options), tokenizer, Path(work)

    def samples(self, tokenizer: Any, *, responses: bool) -> list[Sample]:
        samples = encode_rows(tokenizer, self.rows, self.options, self.expert.domain)
        return with_responses(samples, self.expert.domain) if responses else samples


def _gram(job: Job, config: GramConfig) -> None:
    with job.prepared(job.expert) as (lm, tokenizer, work):
        samples = job.samples(tokenizer, responses=False)
        rows = list(batches(samples, job.options.batch_size, pad_token_id(tokenizer), job.options.device))
        with open_statistics(job.path, gram_entries(lm), job.metadata) as out:
            compute_gram(lm, CheckpointWeights(lm), rows, out, work)


def _fisher(job: Job, config: FisherConfig) -> None:
    with job.prepared(job.expert) as (lm, tokenizer, work):
        samples = job.samples(tokenizer, responses=True)
        with open_statistics(job.path, fisher_entries(lm, config.merge_embeddings), job.metadata) as out:
            compute_fisher(lm, CheckpointWeights(lm), samples, out, pad_id=pad_token_id(tokenizer),
                           spill=lambda: Spill(work))


def _mask(job: Job, config: MaskConfig) -> None:
    if job.base is None:
        raise StatisticsError("The 'mask' statistics stage needs the base model.",
                              hint="Pass base=ModelSource(<base>) to run_stage.")
    with job.prepared(job.base) as (lm, tokenizer, work):
        samples = job.samples(tokenizer, responses=True)
        with open_statistics(job.path, mask_entries(lm, job.expert.model, config), job.metadata) as out:
            train_masks(lm, job.expert.model, samples, config, out, pad_id=pad_token_id(tokenizer),
                        spill=lambda: Spill(work), scratch=work)


COMPUTE: dict[str, Callable[[Job, Any], None]] = {"gram": _gram, "fisher": _fisher, "mask": _mask}
