"""Run a statistics stage for every expert, one expert in memory at a time, with a content-keyed cache.

>>> paths = run_stage("gram", experts, rows, params, cache_dir=Path("~/.cache/mergebench/stats"))  # doctest: +SKIP
>>> reader = StatisticsReader("gram", paths)                                                 # doctest: +SKIP

``experts`` are :class:`ModelSource` objects with their ``domain``; ``rows`` is ``{domain: rows}``. Each
expert runs on the first ``num_samples`` rows of *its own* domain (:func:`~mergebench.stats.data.rows_for`).
The returned list has one file per expert, in the order given, ready for :class:`StatisticsReader`.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mergebench.errors import StatisticsError
from mergebench.stats.cache import cache_key, cache_path, model_identity, read_metadata, write_statistics
from mergebench.stats.data import (
    ModelSource,
    Row,
    StatsOptions,
    batches,
    encode_rows,
    load_model,
    load_tokenizer,
    pad_token_id,
    rows_for,
    with_responses,
)
from mergebench.stats.fisher import FisherConfig, compute_fisher
from mergebench.stats.gram import GramConfig, compute_gram
from mergebench.stats.masks import MaskConfig, task_vectors, train_masks
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
        merge_embeddings: the recipe's flag; decides which tensors get masks (``"mask"`` only).
        options: device, batch size, max length, tokenizer/template overrides.

    Returns:
        One safetensors path per expert, in the order of ``experts``.

    Raises:
        StatisticsError: a model without a domain, a domain without rows, rows of another domain or not in the
        chat schema, a missing base for ``"mask"``, a model or tokenizer that cannot be loaded, no usable token.
    """
    options = options or StatsOptions()
    extra = {"merge_embeddings": merge_embeddings} if stage == "mask" else {}
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
        else:
            logger.info("%s statistics of %s on %d '%s' rows", stage, expert.name, len(expert_rows), expert.domain)
            tensors = COMPUTE[stage](expert, expert_rows, config, options, base)
            write_statistics(path, tensors, {**document, "model_label": expert.name})
            del tensors
            gc.collect()
        paths.append(path)
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


def _gram(expert: ModelSource, rows: Sequence[Row], config: GramConfig, options: StatsOptions,
          base: ModelSource | None) -> dict:
    tokenizer = load_tokenizer(expert, options)
    samples = encode_rows(tokenizer, rows, options, expert.domain)
    model = load_model(expert, options)
    return compute_gram(model, batches(samples, options.batch_size, pad_token_id(tokenizer), options.device))


def _fisher(expert: ModelSource, rows: Sequence[Row], config: FisherConfig, options: StatsOptions,
            base: ModelSource | None) -> dict:
    tokenizer = load_tokenizer(expert, options)
    samples = with_responses(encode_rows(tokenizer, rows, options, expert.domain), expert.domain)
    model = load_model(expert, options)
    return compute_fisher(model, samples, pad_id=pad_token_id(tokenizer), device=options.device)


def _mask(expert: ModelSource, rows: Sequence[Row], config: MaskConfig, options: StatsOptions,
          base: ModelSource | None) -> dict:
    from mergebench.methods.common import is_embedding

    if base is None:
        raise StatisticsError("The 'mask' statistics stage needs the base model.",
                              hint="Pass base=ModelSource(<base folder>) to run_stage.")
    tokenizer = load_tokenizer(expert, options)
    samples = with_responses(encode_rows(tokenizer, rows, options, expert.domain), expert.domain)
    base_model = load_model(base, options)
    expert_model = load_model(expert, options)
    deltas = task_vectors(base_model, expert_model,
                          lambda name: config.merge_embeddings or not is_embedding(name))
    del expert_model
    gc.collect()
    return train_masks(base_model, deltas, samples, config, pad_id=pad_token_id(tokenizer),
                       batch_size=options.batch_size, device=options.device)


COMPUTE: dict[str, Callable[..., dict]] = {"gram": _gram, "fisher": _fisher, "mask": _mask}
