"""The project's training-data schema, and checks of source tables against their declared schema.

Every MergeBench training row, whatever its source, is::

    {"id": str, "source": str, "language": str, "domain": str,
     "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}

``id`` is unique within a dataset and stable across rebuilds of the same source revision; ``source`` is
the Hub id of the dataset the row came from; ``language`` is an ISO 639-1 code; ``messages`` alternate
user/assistant turns (an optional system turn first) and end with the assistant turn the loss is on.

Source checks run before any work: a source whose columns are missing or of the wrong type is rejected
as a whole (naming the source and the columns), and a bad cell (``None`` where not allowed, text that
is not valid UTF-8, an empty message) is rejected naming the source and its row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mergebench.data.sources import Column, SourceSpec
from mergebench.errors import DataError

ROLES = ("system", "user", "assistant")
SCHEMA_DOC: dict[str, str] = {
    "id": "string — unique, stable row id: '{source key}-{native id}' or '{source key}-{split}-{row index}'",
    "source": "string — Hub id of the source dataset, e.g. 'hkust-nlp/dart-math-hard'",
    "language": "string — ISO 639-1 language code of the conversation",
    "domain": "string — one of instruction, math, multilingual, coding, safety",
    "messages": "list of {role: system|user|assistant, content: string}; ends with the assistant turn",
}


def features():
    """The ``datasets.Features`` of the project schema (imported lazily: ``datasets`` is slow to import)."""
    from datasets import Features, List, Value

    return Features({
        "id": Value("string"), "source": Value("string"), "language": Value("string"),
        "domain": Value("string"),
        "messages": List({"role": Value("string"), "content": Value("string")}),
    })


def _feature_kind(feature: Any) -> str:
    """Classify a ``datasets`` feature as one of the :data:`~mergebench.data.sources.ColumnKind` values."""
    from datasets import LargeList, List, Sequence, Value

    if isinstance(feature, Value):
        if feature.dtype in ("string", "large_string"):
            return "string"
        if feature.dtype in ("binary", "large_binary"):
            return "binary"
        return feature.dtype
    if isinstance(feature, (List, LargeList, Sequence)):
        inner = feature.feature
        if isinstance(inner, Value) and inner.dtype in ("string", "large_string"):
            return "string_list"
        if isinstance(inner, Mapping) and {"role", "content"} <= set(inner):
            return "messages"
        return "list"
    if isinstance(feature, list) and feature:  # legacy [feature] notation
        return _feature_kind(List(feature[0]))
    return type(feature).__name__


def _compatible(kind: str, expected: str) -> bool:
    # Binary text columns are accepted here and decoded (or rejected) row by row; a column of nulls only
    # (arrow type "null") is accepted for nullable columns by the caller.
    return kind == expected or (expected == "string" and kind == "binary")


def check_columns(spec: SourceSpec, features: Mapping[str, Any], *, revision: str) -> None:
    """Reject a source whose table lacks a required column or holds one of the wrong type."""
    present = list(features)
    missing = [c.name for c in spec.columns if c.name not in features]
    if missing:
        raise DataError(
            f"Source {spec.label(revision)} lacks required column(s) {missing}; it has {present}.",
            source=spec.key,
            hint=f"Point --source {spec.key}=ORG/NAME at a dataset with columns {list(spec.required_columns)}.",
        )
    wrong = []
    for col in spec.columns:
        kind = _feature_kind(features[col.name])
        if not (_compatible(kind, col.kind) or (col.nullable and kind == "null")):
            wrong.append(f"'{col.name}' is {kind}, expected {col.kind}")
    if wrong:
        raise DataError(f"Source {spec.label(revision)} has columns of the wrong type: {'; '.join(wrong)}.",
                        source=spec.key, hint="The source's schema changed: pin an older --source-revision.")


def cell_text(value: Any, *, spec: SourceSpec, column: Column | str, row: int, revision: str,
              allow_empty: bool = True) -> str | None:
    """A cell as ``str``: ``None`` only if the column is nullable; bytes must decode as UTF-8.

    Raises:
        DataError: naming the source, row and column, with a preview of the offending value.
    """
    col = column if isinstance(column, Column) else Column(column, "string", "")
    where = f"Source {spec.label(revision)}, row {row}, column '{col.name}'"
    if value is None:
        if col.nullable:
            return None
        raise DataError(f"{where} is null.", source=spec.key, row=row)
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            bad = bytes(value)[max(0, e.start - 10):e.end + 10]
            raise DataError(f"{where} is not valid UTF-8 (byte {e.start}: {bad!r}).", source=spec.key, row=row,
                            hint="Re-encode the source as UTF-8 and upload it as a new revision.") from e
    if not isinstance(value, str):
        raise DataError(f"{where} is {type(value).__name__} {value!r:.60}, expected text.", source=spec.key, row=row)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates, e.g. from a JSON "\udcff" escape
        raise DataError(f"{where} is not valid UTF-8 text (unpaired surrogate at character {e.start}: "
                        f"{value[max(0, e.start - 10):e.end + 10]!r}).", source=spec.key, row=row) from e
    if not allow_empty and not value.strip():
        raise DataError(f"{where} is empty.", source=spec.key, row=row)
    return value


def check_messages(messages: Any, *, spec: SourceSpec, row: int, revision: str,
                   column: str = "messages") -> list[dict[str, str]]:
    """Validate a chat: roles known, contents non-empty UTF-8, at least one user turn, assistant last."""
    where = f"Source {spec.label(revision)}, row {row}, column '{column}'"
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where} is not a non-empty list of messages: {messages!r:.80}", source=spec.key, row=row)
    out = []
    for turn in messages:
        role = turn.get("role") if isinstance(turn, Mapping) else None
        if role not in ROLES:
            raise DataError(f"{where} has a turn with role {role!r}; expected one of {ROLES}.",
                            source=spec.key, row=row)
        content = cell_text(turn.get("content"), spec=spec, column=f"{column}[].content", row=row,
                            revision=revision, allow_empty=False)
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in out):
        raise DataError(f"{where} must contain a user turn and end with an assistant turn; roles are "
                        f"{[m['role'] for m in out]}.", source=spec.key, row=row)
    return out
