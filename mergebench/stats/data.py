"""Inputs of the statistics stages: which model, which rows, as which tensors.

An expert is a :class:`ModelSource` (a model resolved by :func:`mergebench.hub.models.resolve`: its shard
headers, commit and small files, never a downloaded copy) with a ``domain``; validation rows come as
``{domain: rows}``. Pairing is by that key only (:func:`rows_for`), never by list position, and every row must
carry the same ``domain``: the MergeBench reference paired four of five experts with another domain's data
(benchmark-spec §6.2).

Rows follow the project's chat schema ``{"id", "domain", "messages": [{"role", "content"}, ...]}`` and are
encoded with :func:`mergebench.prompt.encode_chat`, the one prompt format used everywhere.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mergebench.errors import MergeBenchError, StatisticsError
from mergebench.hub.models import ResolvedModel, resolve
from mergebench.hub.refs import Ref
from mergebench.paths import stats_cache_limit_bytes
from mergebench.prompt import IGNORE_INDEX, encode_chat
from mergebench.scratch import scratch_folder
from mergebench.stream.reader import CHUNK_BYTES

logger = logging.getLogger(__name__)

Row = Mapping[str, Any]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
SMALL_FILES = ("config.json", *TOKENIZER_FILES, "special_tokens_map.json", "merges.txt", "added_tokens.json",
               "chat_template.jinja", "chat_template.json")
"""What the statistics read of a model besides its weights: the config and the tokenizer."""
MiB = 1 << 20


@dataclass(frozen=True)
class ModelSource:
    """A resolved model (local folder or Hub repo pinned to a commit) and, for experts, its domain.

    Its weights are read through the merge's streaming sources; the cache key names them by commit
    (``model.sha``) or, for a local folder, by the fingerprint of its weight and config files.
    """

    model: ResolvedModel
    domain: str | None = None

    @classmethod
    def at(cls, path: Path | str, domain: str | None = None) -> ModelSource:
        """A local model folder, resolved (headers read, no weights)."""
        return cls(resolve(Ref.parse(str(path))), domain=domain)

    @property
    def name(self) -> str:
        return self.model.label


@dataclass(frozen=True)
class StatsOptions:
    """How to run a statistics stage (none of these changes the statistics beyond float rounding,
    except ``max_length``, which is part of the cache key)."""

    device: str = "cpu"
    batch_size: int = 8
    """Rows per forward pass (Gram and trained masks; Fisher needs one gradient per row)."""
    max_length: int = 1024
    """Tokens kept per row (the end is cut)."""
    chat_template: str | None = None
    """Template for tokenizers without one (see :data:`mergebench.prompt.CHATML_TEMPLATE`)."""
    tokenizer: Path | None = None
    """Folder of the tokenizer; default: each model's own tokenizer files."""
    threads: int | None = None
    """Read threads of the weight stream (``None``: :func:`mergebench.stream.reader.default_read_threads`)."""
    read_ahead_bytes: int = 256 * MiB
    """Weights read ahead of the layer being computed (the next layer arrives while this one runs)."""
    chunk_bytes: int = CHUNK_BYTES
    """Largest coalesced read (one HTTP Range request; :data:`mergebench.stream.reader.CHUNK_BYTES`)."""
    head_chunk_bytes: int = 128 * MiB
    """Float32 bytes of one block of vocabulary rows of the output head (logits are computed block by block)."""
    head_tokens: int = 8192
    """Tokens whose head gradients are held at once (Fisher, trained masks); the head is read once per group."""
    spill_bytes: int = 32 << 30
    """Disk for the activations a backward pass keeps (every layer's input of every row): rows are processed in
    groups that fit, each group reading the weights again."""
    cache_limit_bytes: int = field(default_factory=stats_cache_limit_bytes)
    """Bound of the statistics cache: after a stage, the least recently used files of other merges are deleted
    until the cache fits (``$MERGEBENCH_STATS_CACHE_GB``, default 20 GB)."""
    progress: bool = True


@dataclass(frozen=True)
class Sample:
    """One encoded row."""

    row_id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def response_tokens(self) -> int:
        """Tokens that carry a loss (predicted from the previous position)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def rows_for(expert: ModelSource, rows: Mapping[str, Sequence[Row]], num_samples: int) -> list[Row]:
    """The first ``num_samples`` rows of the expert's own domain; :class:`StatisticsError` if impossible."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise StatisticsError(f"num_samples must be an integer ≥ 1, got {num_samples!r}.",
                              hint="Set the method's 'num_samples' parameter to the rows per expert, e.g. 1000.")
    if not expert.domain:
        raise StatisticsError(f"Model '{expert.name}' has no domain, so it cannot be paired with its own data.",
                              hint="Add 'domain: <key>' to the model's entry in the recipe.")
    own = rows.get(expert.domain)
    if not own:
        available = ", ".join(sorted(k for k, v in rows.items() if v)) or "none"
        raise StatisticsError(f"No validation rows for domain '{expert.domain}' (model '{expert.name}'); "
                              f"rows are available for: {available}.",
                              hint="Give this domain's validation split in the recipe's 'data:' mapping.")
    selected = list(own[:num_samples])
    schema = "Rows follow the chat schema {\"id\", \"domain\", \"messages\": [{\"role\", \"content\"}, ...]}."
    for i, row in enumerate(selected):
        if not isinstance(row, Mapping):
            raise StatisticsError(f"Row {i} of domain '{expert.domain}' is a {type(row).__name__}, not an object: "
                                  f"{_clip(row)}.", hint=f"Fix the domain's validation data. {schema}")
        if row.get("domain") != expert.domain:
            raise StatisticsError(f"Row {i} ({row.get('id')!r}) given for domain '{expert.domain}' belongs to "
                                  f"domain {row.get('domain')!r}; model '{expert.name}' must only see its own data.",
                                  hint=f"Map '{expert.domain}' in the recipe's 'data:' to that domain's own "
                                       "validation split; every row needs its 'domain' field.")
        messages = row.get("messages")
        if not messages:
            raise StatisticsError(f"Row {i} ({row.get('id')!r}) of domain '{expert.domain}' has no messages.",
                                  hint=f"Fix the domain's validation data. {schema}")
        if not isinstance(messages, list):
            raise StatisticsError(f"Row {i} ({row.get('id')!r}) of domain '{expert.domain}' has 'messages' of type "
                                  f"{type(messages).__name__}, not a list: {_clip(messages)}.",
                                  hint=f"Fix the domain's validation data. {schema}")
    if len(selected) < num_samples:
        logger.warning("Domain '%s' has %d validation rows; num_samples = %d asks for more, using all %d.",
                       expert.domain, len(selected), num_samples, len(selected))
    return selected


def _clip(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def small_files(model: ResolvedModel) -> Iterator[Path]:
    """A folder with the model's config and tokenizer files: its own folder when local; for a Hub model a
    temporary folder they are copied into from the pinned commit (never into the Hub cache)."""
    if model.ref.local_path is not None:
        yield model.ref.local_path
        return
    with scratch_folder("model-files") as tmp:
        for name in SMALL_FILES:
            if name in model.file_list:
                model.copy_file(name, tmp / name)
        yield tmp


def load_tokenizer(model: ModelSource, folder: Path, options: StatsOptions) -> Any:
    """The tokenizer that encodes the rows: ``options.tokenizer``, else the model's own (files in ``folder``,
    see :func:`small_files`).

    Raises:
        StatisticsError: it cannot be loaded (no tokenizer files, a broken config).
    """
    from transformers import AutoTokenizer

    source = Path(options.tokenizer or folder)
    shown = options.tokenizer or model.name
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError ... for unusable folders
        if source.is_dir() and not any((source / name).is_file() for name in TOKENIZER_FILES):
            hint = (f"Statistics encode each expert's rows with its own tokenizer: put its tokenizer files "
                    f"(tokenizer.json, tokenizer_config.json) in '{shown}'.")
        else:
            hint = f"Check the tokenizer files and config.json of '{shown}' (AutoTokenizer must load them)."
        raise StatisticsError(f"Cannot load the tokenizer of model '{model.name}' to encode its validation rows: "
                              f"{type(e).__name__}: {first_line(e)}", hint=hint) from e


def first_line(error: BaseException, limit: int = 300) -> str:
    """The gist of a library error (transformers' messages can run to pages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines[:3]) if lines else repr(error)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def encode_rows(tokenizer: Any, rows: Sequence[Row], options: StatsOptions, domain: str | None = None
                ) -> list[Sample]:
    """Each row's token ids and labels (:func:`mergebench.prompt.encode_chat`); rows that give no token are skipped.

    Raises:
        StatisticsError: a row cannot be encoded (malformed messages, no chat template), or no row gives a token.
    """
    samples = []
    for i, row in enumerate(rows):
        try:
            ids, labels = encode_chat(tokenizer, row["messages"], max_length=options.max_length,
                                      chat_template=options.chat_template)
        except MergeBenchError as e:
            raise StatisticsError(f"Row {i} ({row.get('id')!r}) of domain '{domain}' cannot be encoded: {e}",
                                  hint=e.hint or "Rows follow the chat schema: 'messages' is a list of "
                                                 "{\"role\", \"content\"} objects.") from e
        if ids:
            samples.append(Sample(str(row.get("id", i)), ids, labels))
    if rows and not samples:
        raise StatisticsError(f"No row of domain '{domain}' gives a single token.",
                              hint="Check the rows' messages and the tokenizer's chat template.")
    return samples


def require_responses(samples: Sequence[Sample]) -> None:
    """Loss-based stages divide by the response-token count: every sample needs one (see :func:`with_responses`)."""
    empty = [s.row_id for s in samples if s.response_tokens == 0]
    if empty or not samples:
        raise StatisticsError(f"{len(empty)} of {len(samples)} sample(s) have no response token (e.g. {empty[:3]}); "
                              "loss-based statistics need at least one sample, each with a response.",
                              hint="Filter the samples with mergebench.stats.data.with_responses() first.")


def with_responses(samples: Sequence[Sample], domain: str | None) -> list[Sample]:
    """Samples that have at least one response token (loss-based stages); warns about the others."""
    kept = [s for s in samples if s.response_tokens > 0]
    if len(kept) < len(samples):
        logger.warning("%d of %d rows of domain '%s' have no response token within max_length; skipped.",
                       len(samples) - len(kept), len(samples), domain)
    if not kept:
        raise StatisticsError(f"No row of domain '{domain}' has a response token within max_length.",
                              hint="Increase max_length or check the rows' assistant messages.")
    return kept


@dataclass(frozen=True)
class Batch:
    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]


def collate(samples: Sequence[Sample], pad_id: int, device: str | torch.device = "cpu") -> Batch:
    """Right-padded ``[B, T]`` tensors; padding has attention 0 and label ``-100``."""
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(samples):
        ids[i, : len(s.input_ids)] = torch.tensor(s.input_ids)
        mask[i, : len(s.input_ids)] = 1
        labels[i, : len(s.labels)] = torch.tensor(s.labels)
    return Batch(ids.to(device), mask.to(device), labels.to(device))


def batches(samples: Sequence[Sample], batch_size: int, pad_id: int, device: str | torch.device) -> Iterator[Batch]:
    for start in range(0, len(samples), batch_size):
        yield collate(samples[start:start + batch_size], pad_id, device)


def pad_token_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad) if pad is not None else 0


def per_sample_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """``[B]`` mean next-token NLL over each sample's response tokens (samples need ≥ 1 such token)."""
    shifted = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), shifted,
                                            ignore_index=IGNORE_INDEX, reduction="none")
    counts = (shifted != IGNORE_INDEX).sum(1)
    return nll.sum(1) / counts
