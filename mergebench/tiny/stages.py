"""What each MergeBench-Tiny stage was built from, so that a stage is reused only when nothing it depends on changed.

A finished stage folder holds ``mergebench-tiny-stage.json``::

    {"stage": "expert", "fingerprint": "<sha256>", "inputs": {...}}

``fingerprint`` is :func:`mergebench.work.fingerprint_of` of ``{"stage": ..., "version": STAGE_VERSION, **inputs}``;
the inputs name everything the stage is built from: its configuration (the data sizes and seed, the training
recipe's every field, the benchmark configuration), the fingerprints of the stages it reads, and the versions
of the code and formats involved. A downstream stage includes its inputs' fingerprints, so a change anywhere
upstream (new data rows, another learning rate) rebuilds everything after it and nothing before it.

The record is written atomically, after the stage's files; a folder without a readable record (an
interrupted stage, or one made by an older MergeBench that only left a marker file) is built again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mergebench.work import fingerprint_of, write_atomic

RECORD = "mergebench-tiny-stage.json"
STAGE_VERSION = 1
"""Bump when a stage's layout changes in a way its inputs do not show, so that every Tiny stage is rebuilt."""


def stage_fingerprint(stage: str, inputs: dict[str, Any]) -> str:
    """The key a stage is reused by: a digest of its name, :data:`STAGE_VERSION` and ``inputs``."""
    return fingerprint_of({"stage": stage, "version": STAGE_VERSION, **inputs})


def recorded_fingerprint(folder: Path) -> str | None:
    """The fingerprint ``folder`` was built from, or ``None`` (no record, or an unreadable one)."""
    try:
        record = json.loads((Path(folder) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("fingerprint") if isinstance(record, dict) else None


def is_current(folder: Path, fingerprint: str) -> bool:
    """Whether ``folder`` is a finished stage built from exactly ``fingerprint``."""
    return recorded_fingerprint(folder) == fingerprint


def write_record(folder: Path, stage: str, inputs: dict[str, Any]) -> str:
    """Record (atomically) that ``folder`` holds ``stage`` built from ``inputs``; returns the fingerprint."""
    fingerprint = stage_fingerprint(stage, inputs)
    record = {"stage": stage, "fingerprint": fingerprint, "inputs": inputs}
    write_atomic(Path(folder) / RECORD, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    return fingerprint
