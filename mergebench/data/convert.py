"""Per-source converters from each Hub dataset's own schema to the project schema.

A converter is a pure function ``(row, ctx) -> Converted | None``: ``None`` means the row is filtered out
on purpose (another language, an unsafe response), and is counted, never silently lost. Converters read
cells through :func:`~mergebench.data.schema.cell_text`, so a bad cell fails with the source and row.
They are registered by source key, one per :class:`~mergebench.data.sources.SourceSpec`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mergebench.data.schema import cell_text, check_messages
from mergebench.data.seen import FirstSeen, digest64
from mergebench.data.sources import AYA_LANGUAGES, SourceSpec
from mergebench.errors import DataError


@dataclass(frozen=True)
class RowContext:
    """Where a row comes from: used in ids and in every error message."""

    spec: SourceSpec
    revision: str
    index: int  # row index in the source split at ``revision`` (before any sampling)

    def text(self, row: dict, column: str, *, allow_empty: bool = False) -> str | None:
        col = next(c for c in self.spec.columns if c.name == column)
        return cell_text(row.get(column), spec=self.spec, column=col, row=self.index, revision=self.revision,
                         allow_empty=allow_empty or col.nullable)


@dataclass(frozen=True)
class Converted:
    """One converted conversation, before it gets its id and source."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    language: str
    native_id: str | None = None


Converter = Callable[[dict, RowContext], Converted | None]
CONVERTERS: dict[str, Converter] = {}


def converter(key: str) -> Callable[[Converter], Converter]:
    """Register the converter of source ``key`` (one per source, no duplicates)."""

    def wrap(fn: Converter) -> Converter:
        if key in CONVERTERS:
            raise ValueError(f"Converter for '{key}' registered twice.")
        CONVERTERS[key] = fn
        return fn

    return wrap


def _pair(user: str | None, assistant: str | None, language: str = "en") -> Converted:
    # Only non-nullable columns are paired, and RowContext.text raises on a null there: never None.
    assert user is not None and assistant is not None
    return Converted((("user", user), ("assistant", assistant)), language)


@converter("tulu3-personas-if")
def _tulu(row: dict, ctx: RowContext) -> Converted:
    native_id = ctx.text(row, "id")
    ctx.text(row, "prompt")
    msgs = check_messages(row.get("messages"), spec=ctx.spec, row=ctx.index, revision=ctx.revision)
    return Converted(tuple((m["role"], m["content"]) for m in msgs), "en", native_id)


@converter("dart-math-hard")
def _dart(row: dict, ctx: RowContext) -> Converted:
    return _pair(ctx.text(row, "query"), ctx.text(row, "response"))


@converter("numinamath-tir")
def _numina(row: dict, ctx: RowContext) -> Converted:
    # `messages` repeats problem/solution; it is validated (schema fidelity) but the two text columns are used.
    check_messages(row.get("messages"), spec=ctx.spec, row=ctx.index, revision=ctx.revision)
    return _pair(ctx.text(row, "problem"), ctx.text(row, "solution"))


@converter("aya")
def _aya(row: dict, ctx: RowContext) -> Converted | None:
    code = ctx.text(row, "language_code")
    inputs, targets = ctx.text(row, "inputs"), ctx.text(row, "targets")
    if code not in AYA_LANGUAGES:
        return None
    return _pair(inputs, targets, AYA_LANGUAGES[code])


@converter("magicoder-evol-instruct")
def _magicoder(row: dict, ctx: RowContext) -> Converted:
    return _pair(ctx.text(row, "instruction"), ctx.text(row, "response"))


@converter("wildguardmix")
def _wildguard(row: dict, ctx: RowContext) -> Converted | None:
    prompt = ctx.text(row, "prompt")
    response = ctx.text(row, "response")
    harm, refusal = ctx.text(row, "prompt_harm_label"), ctx.text(row, "response_refusal_label")
    response_harm = ctx.text(row, "response_harm_label")
    if not response or response_harm != "unharmful":
        return None
    wanted = {"harmful": "refusal", "unharmful": "compliance"}.get(harm or "")
    if wanted is None or refusal != wanted:
        return None
    return _pair(prompt, response)


@converter("wildjailbreak")
def _wildjailbreak(row: dict, ctx: RowContext) -> Converted:
    vanilla = ctx.text(row, "vanilla", allow_empty=True)
    adversarial = ctx.text(row, "adversarial", allow_empty=True)
    ctx.text(row, "data_type")
    prompt = adversarial if adversarial and adversarial.strip() else vanilla
    if not prompt or not prompt.strip():
        ctx.text(row, "vanilla")  # raises: neither prompt column has text
    return _pair(prompt, ctx.text(row, "completion"))


@dataclass(frozen=True)
class ConvertResult:
    rows: list[dict[str, Any]]
    filtered: int


class SourceConverter:
    """Converts one source's ``(index, row)`` pairs to project rows, batch after batch; counts the rows filtered out.

    Ids are ``{key}-{native id}`` or ``{key}-{split}-{index:07d}``; an id an earlier row of the source already took
    (a native id repeated upstream) becomes ``{id}-r{index}``, stably. Which ids are taken is remembered as one
    64-bit digest per row (:class:`~mergebench.data.seen.FirstSeen`), not as the ids themselves.
    """

    def __init__(self, spec: SourceSpec, *, domain: str, revision: str) -> None:
        self.spec, self.domain, self.revision = spec, domain, revision
        self.filtered = 0
        self._convert = CONVERTERS[spec.key]
        self._taken = FirstSeen()  # id digest → the row index that took it

    def convert(self, rows: Iterable[tuple[int, dict]]) -> list[dict[str, Any]]:
        """The project rows of one batch, in order (failing on the first bad cell, naming source and row)."""
        spec = self.spec
        out: list[dict[str, Any]] = []
        indices: list[int] = []
        for index, row in rows:
            conv = self._convert(row, RowContext(spec, self.revision, index))
            if conv is None:
                self.filtered += 1
                continue
            row_id = f"{spec.key}-{conv.native_id}" if conv.native_id else f"{spec.key}-{spec.split}-{index:07d}"
            out.append({"id": row_id, "source": spec.repo_id, "language": conv.language, "domain": self.domain,
                        "messages": [{"role": r, "content": c} for r, c in conv.messages]})
            indices.append(index)
        self._take_ids(out, indices)
        return out

    def _take_ids(self, rows: list[dict[str, Any]], indices: list[int]) -> None:
        keys = digest64(r["id"] for r in rows)
        if len(np.unique(keys)) == len(keys) and (self._taken.get(keys) < 0).all():
            self._taken.add(keys, np.array(indices))
            return
        for row, index in zip(rows, indices, strict=True):  # rare: one by one, since a renamed id is taken too
            key = digest64([row["id"]])
            if self._taken.get(key)[0] >= 0:
                row["id"] = f"{row['id']}-r{index}"
                key = digest64([row["id"]])
            self._taken.add(key, np.array([index]))


def convert_rows(spec: SourceSpec, rows: Iterable[tuple[int, dict]], *, domain: str, revision: str) -> ConvertResult:
    """Convert ``(index, row)`` pairs of one source to project rows at once (one batch of :class:`SourceConverter`)."""
    converter = SourceConverter(spec, domain=domain, revision=revision)
    out = converter.convert(rows)
    return ConvertResult(out, converter.filtered)


def iter_batches(dataset: Any, indices: Sequence[int], *, spec: SourceSpec, revision: str,
                 batch_size: int = 1000) -> Iterator[list[tuple[int, dict]]]:
    """``(original index, row dict)`` pairs for the selected rows of a ``datasets.Dataset``, ``batch_size`` at a time.

    Only one batch is turned into Python objects at a time; the dataset itself stays a memory-mapped Arrow table.
    Arrow readers (JSON Lines in particular) may accept bytes that are not UTF-8 and fail only when a row is
    turned into Python strings; such a batch is re-read row by row and column by column to name the row and
    column at fault.
    """
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        try:
            batch = dataset[chunk]  # a range or a list of indices: always a dict of columns
        except UnicodeDecodeError:
            _raise_bad_row(dataset, chunk, spec=spec, revision=revision)
            raise
        columns = list(batch)
        yield [(index, {c: batch[c][j] for c in columns}) for j, index in enumerate(chunk)]


def _raise_bad_row(dataset: Any, chunk: Sequence[int], *, spec: SourceSpec, revision: str) -> None:
    for index in chunk:
        row = dataset.select([index])
        for column in row.column_names:
            try:
                row.select_columns([column])[0]
            except UnicodeDecodeError as e:
                raise DataError(f"Source {spec.label(revision)}, row {index}, column '{column}' is not valid UTF-8 "
                                f"({e.reason} at byte {e.start}: {e.object[max(0, e.start - 12):e.end + 12]!r}).",
                                source=spec.key, row=index,
                                hint="Re-encode the source as UTF-8 and upload it as a new revision.") from e
