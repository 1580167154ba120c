"""Training data for an expert: each domain's ``train`` split, pinned, tokenised in the one prompt format.

A source is what ``mergebench data build`` writes: a local dataset folder (parquet splits ``train`` and
``validation`` with the card's ``configs``) or a Hub dataset ``org/name[@revision]``. Hub revisions are
resolved to a commit sha first and the split is loaded at that sha with ``datasets.load_dataset`` (the real
client path), so the expert's card records exactly the data it saw; a local folder is recorded by the
SHA-256 of its parquet files.

Rows are tokenised with :func:`mergebench.prompt.encode_chat` — the chat template with labels only on the
assistant responses — the same function validation statistics and evaluation use. The trainer receives
``input_ids`` + ``labels`` and never re-tokenises, so the response-only loss is decided here and only here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from mergebench.data.schema import ROLES
from mergebench.data.sources import get_domain
from mergebench.domains import DOMAINS
from mergebench.errors import ConfigError, DataError, RefError
from mergebench.hub.refs import Ref, pin
from mergebench.prompt import CHATML_TEMPLATE, IGNORE_INDEX, encode_chat
from mergebench.work import folder_fingerprint

logger = logging.getLogger(__name__)

MULTITASK = "all"
"""The ``domain`` of the multi-task baseline: one model on the union of the five domains' training sets."""


@dataclass(frozen=True)
class DataSource:
    """One domain's training data, pinned: a Hub dataset at commit ``revision``, or a local folder by digest."""

    domain: str
    text: str
    repo_id: str | None
    revision: str
    path: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.revision[:12]}" if self.repo_id else str(self.path)


@dataclass(frozen=True)
class DomainStats:
    """What one domain contributed: rows used, rows dropped (no response token left after cutting), tokens."""

    rows: int
    rows_dropped: int
    tokens: int
    response_tokens: int


def expected_domains(domain: str) -> tuple[str, ...]:
    """The domains whose data an expert of ``domain`` trains on (all five for :data:`MULTITASK`)."""
    return DOMAINS if domain == MULTITASK else (get_domain(domain).name,)


def resolve_sources(domain: str, data: Mapping[str, str | Path], *, api: HfApi | None = None
                    ) -> dict[str, DataSource]:
    """Check that ``data`` maps exactly the needed domains, and pin every source.

    Raises:
        ConfigError: an unknown domain, or a domain missing from (or extra in) ``data``.
        DataError: a local folder that does not exist, a Hub repo or revision that does not exist.
    """
    needed = expected_domains(domain)
    missing = [d for d in needed if d not in data]
    extra = [d for d in data if d not in needed]
    if missing or extra:
        what = "; ".join(filter(None, [f"missing {missing}" if missing else "", f"not used {extra}" if extra else ""]))
        raise ConfigError(f"Training data for domain '{domain}' must map exactly {list(needed)} to a source ({what}).",
                          hint="Pass --data DOMAIN=FOLDER_OR_ORG/NAME for each of them.")
    return {d: resolve_source(d, data[d], api=api) for d in needed}


def resolve_source(domain: str, source: str | Path, *, api: HfApi | None = None) -> DataSource:
    """Pin one source: a local dataset folder (by digest) or ``org/name[@revision]`` (to a commit sha)."""
    text = str(source)
    try:
        ref = Ref.parse(f"./{text}" if isinstance(source, Path) and not source.is_absolute() else text,
                        repo_type="dataset", local="dir")
    except RefError as e:
        raise DataError(f"Training data '{text}' for '{domain}' is not a dataset folder or repo: {e}", source=text,
                        hint="Pass the folder written by `mergebench data build DOMAIN --out DIR`, or org/name.") from e
    if ref.local_path is not None:
        files = [str(p.relative_to(ref.local_path)) for p in split_files(ref.local_path, "train")]
        return DataSource(domain, text, None, folder_fingerprint(ref.local_path, files), ref.local_path)
    try:
        pinned = pin(ref, api=api)
    except RevisionNotFoundError as e:
        raise DataError(f"Training data for '{domain}': revision '{ref.revision}' does not exist in dataset repo "
                        f"'{ref.repo_id}'.", source=text, hint="Pass a branch, tag or commit sha that exists.") from e
    except RepositoryNotFoundError as e:
        raise DataError(f"Training data for '{domain}': dataset repo '{ref.repo_id}' does not exist (or is private).",
                        source=text, hint=f"Build and push it: mergebench data build {domain} --out DIR "
                                          f"--push-to {ref.repo_id}") from e
    assert pinned.sha is not None  # a Hub repo pins to a commit sha
    return DataSource(domain, text, ref.repo_id, pinned.sha)


def split_files(folder: Path, split: str) -> list[Path]:
    """The parquet files of ``split`` in a dataset folder (``data/{split}-00000-of-0000n.parquet``)."""
    return sorted(p for p in folder.rglob(f"{split}-*.parquet") if p.is_file())


def load_split(source: DataSource, *, split: str = "train") -> Any:
    """The ``split`` of a pinned source as a ``datasets.Dataset``, checked for a ``messages`` column.

    A local folder's parquet files are read straight into memory: ``load_dataset(folder)`` caches by folder
    *name*, so two different ``math/`` folders would silently share the first one's rows.

    Raises:
        DataError: the split does not exist, is empty, or has no ``messages`` column.
    """
    import datasets
    import pyarrow.parquet as pq
    from datasets.exceptions import DataFilesNotFoundError

    hint = "Point --data at a dataset built by `mergebench data build`, which has 'train' and 'validation' splits."
    if source.path is not None:
        files = split_files(source.path, split)
        if not files:
            raise DataError(f"Training data for '{source.domain}' ({source.path}) has no '{split}' split "
                            f"(no {split}-*.parquet file).", source=source.text, hint=hint)
        dataset = datasets.Dataset(pa_concat([pq.read_table(f) for f in files]))
    else:
        try:
            dataset = datasets.load_dataset(source.repo_id, split=split, revision=source.revision)
        except (ValueError, FileNotFoundError, DataFilesNotFoundError) as e:
            raise DataError(f"Training data for '{source.domain}' ({source.label}) has no usable '{split}' split: "
                            f"{e}", source=source.text, hint=hint) from e
    if "messages" not in dataset.column_names or len(dataset) == 0:
        problem = "no rows" if "messages" in dataset.column_names else f"columns {dataset.column_names}"
        raise DataError(f"The '{split}' split of {source.label} has {problem}; it needs rows with 'messages'.",
                        source=source.text, hint="Rebuild it with `mergebench data build`.")
    return dataset


def pa_concat(tables: list[Any]) -> Any:
    """One Arrow table from a split's shards (a single shard as it is)."""
    import pyarrow as pa

    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def resolve_chat_template(template: str | None) -> str | None:
    """``chatml`` → :data:`~mergebench.prompt.CHATML_TEMPLATE`; anything else as given."""
    return CHATML_TEMPLATE if template == "chatml" else template


def encode_split(dataset: Any, tokenizer: Any, *, max_length: int, chat_template: str | None = None,
                 max_rows: int | None = None, seed: int = 42, num_proc: int | None = None,
                 domain: str = "") -> tuple[Any, DomainStats]:
    """Tokenise a split with :func:`~mergebench.prompt.encode_chat` into ``input_ids`` + ``labels`` columns.

    A seeded sample of ``max_rows`` rows is taken first when the split is larger. Rows left with no response
    token after cutting to ``max_length`` carry no loss and are dropped (counted in the stats).
    """
    import pyarrow.compute as pc

    if max_rows is not None and len(dataset) > max_rows:
        dataset = dataset.shuffle(seed=seed).select(range(max_rows))
    template = resolve_chat_template(chat_template)
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"The tokenizer of '{getattr(tokenizer, 'name_or_path', '?')}' has no chat template.",
                          hint="Set chat_template: chatml in the training config (base models often ship none).")

    def encode(row: dict) -> dict:
        for message in row["messages"]:
            if message.get("role") not in ROLES:
                raise DataError(f"A message of row '{row.get('id')}' has role {message.get('role')!r}.",
                                source=domain, hint=f"Roles must be one of {ROLES}.")
        ids, labels = encode_chat(tokenizer, row["messages"], max_length=max_length, chat_template=template)
        return {"input_ids": ids, "labels": labels,
                "response_tokens": sum(label != IGNORE_INDEX for label in labels)}

    encoded = dataset.map(encode, remove_columns=dataset.column_names, num_proc=num_proc,
                          desc=f"Tokenising {domain or 'rows'}")
    # Counted in Arrow: a paper-size split holds hundreds of millions of token ids.
    table = encoded.with_format("arrow")[:]
    has_response = pc.greater(table.column("response_tokens"), 0)
    kept = encoded.filter(lambda n: n > 0, input_columns="response_tokens", num_proc=num_proc)
    stats = DomainStats(rows=len(kept), rows_dropped=len(encoded) - len(kept),
                        tokens=pc.sum(pc.filter(pc.list_value_length(table.column("input_ids")), has_response)
                                      ).as_py() or 0,
                        response_tokens=pc.sum(table.column("response_tokens")).as_py() or 0)
    kept = kept.remove_columns("response_tokens")
    if stats.rows == 0:
        raise DataError(f"No row of '{domain}' keeps a response token within max_length={max_length}.",
                        source=domain, hint="Raise max_length in the training config.")
    return kept, stats


def build_train_dataset(sources: Mapping[str, DataSource], tokenizer: Any, *, max_length: int,
                        chat_template: str | None, max_rows: int | None, seed: int, num_proc: int | None,
                        splits: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, DomainStats]]:
    """The tokenised union of every source's ``train`` split (one domain for an expert, five for ``all``).

    ``splits`` are already loaded splits by domain (loaded before the model, so data errors come first).
    """
    import datasets

    parts, stats = [], {}
    for domain, source in sources.items():
        split = splits[domain] if splits is not None else load_split(source)
        part, stats[domain] = encode_split(split, tokenizer, max_length=max_length, chat_template=chat_template,
                                           max_rows=max_rows, seed=seed, num_proc=num_proc, domain=domain)
        parts.append(part)
        logger.info("%s: %d rows, %d tokens (%d on responses) from %s", domain, stats[domain].rows,
                    stats[domain].tokens, stats[domain].response_tokens, source.label)
    return (parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)), stats
