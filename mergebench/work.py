"""Resumable, atomic units of work: what a result was built from, and writing it so no reader sees half.

Every stage that writes something a later run may reuse (a merged model, a statistics file, a grid
point's record, a Tiny stage, a data build, an evaluation's results) uses these helpers:

- :func:`atomic_folder` / :func:`atomic_file` / :func:`write_atomic`: build beside the destination, then
  swap in with one rename. Readers never see a half-written result, and a failure leaves the previous
  content (if any) untouched; a folder that a killed build left beside it is removed by the next build
  (:mod:`mergebench.scratch`).
- :func:`file_fingerprint` / :func:`folder_fingerprint` / :func:`path_fingerprint`: what a local input
  was, so a stage is reused only when its inputs have not changed (Hub inputs are identified by commit
  sha, :mod:`mergebench.hub.refs`).
- :func:`fingerprint_of`: one digest of everything a stage is built from (inputs' shas or fingerprints,
  recipe, settings, code version), the key a stage is resumed or skipped by.
- :class:`Stage` / :func:`write_record` / :func:`is_current`: the one resume decision. A finished stage
  leaves a small JSON record (``{"stage", "fingerprint", "inputs", "outputs"}``) written atomically *after*
  its output; a later run skips the stage only when that record's fingerprint equals the fingerprint of
  what the stage would be built from now. A missing, unreadable or different record means "build again".
- :func:`read_jsonl`: the rows of a JSON Lines file (plain or ``.gz``), the one reader every layer uses.

A local file's fingerprint is its **size, modification time (ns) and an XXH3-128 hash of 16 evenly
spaced 64 KiB samples plus its first and last 64 KiB**. It catches every ordinary rewrite (a save updates
the mtime; an in-place edit that restores the mtime is caught when it touches a sampled block) while
reading about a megabyte per file instead of a pass over a multi-GB shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import xxhash

from mergebench.scratch import disown, owned_folder

SAMPLES = 16
SAMPLE_BYTES = 64 << 10


@contextlib.contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target``, on error it is removed.

    >>> with atomic_folder(Path("out/model")) as tmp:  # doctest: +SKIP
    ...     (tmp / "config.json").write_text("{}")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    kin = f".{glob.escape(target.name)}."
    for old in target.parent.glob(f"{kin}old-*"):  # a killed swap's previous version
        shutil.rmtree(old, ignore_errors=True)  # (or a live swap's, which removes it next): never read again
    with owned_folder(target.parent, f".{target.name}.", kin=f"{kin}*") as tmp:
        yield tmp
        disown(tmp)
        tmp.chmod(0o755)  # mkdtemp (and safetensors) create owner-only modes; a published folder is shared
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if target.exists():  # move the old folder aside first: the target name is never missing for long
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (mode 0644), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates owner-only files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (synced to disk first), so that readers see the old or the new file."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def file_fingerprint(path: Path) -> str:
    """``size:mtime_ns:xxh3`` of one file (see the module docstring for what the hash covers)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        size = st.st_size
        digest = xxhash.xxh3_128()
        offsets = {0, max(0, size - SAMPLE_BYTES)} | {i * size // SAMPLES for i in range(SAMPLES)}
        for offset in sorted(offsets):
            digest.update(os.pread(f.fileno(), SAMPLE_BYTES, offset))
    return f"{size}:{st.st_mtime_ns}:{digest.hexdigest()}"


def folder_fingerprint(folder: Path, names: Iterable[str] | None = None) -> str:
    """A digest of the fingerprints of ``names`` in ``folder`` (default: every file under it, by relative path)."""
    folder = Path(folder)
    if names is None:
        names = (str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(f"{name}={file_fingerprint(folder / name)};".encode())
    return "local:" + digest.hexdigest()[:32]


def path_fingerprint(path: Path) -> str:
    """A file's or a folder's fingerprint (``local:...``), whichever ``path`` is."""
    path = Path(path)
    if path.is_dir():
        return folder_fingerprint(path)
    return "local:" + hashlib.sha256(file_fingerprint(path).encode()).hexdigest()[:32]


def fingerprint_of(document: Any) -> str:
    """sha256 of the canonical JSON of ``document``: everything a stage is built from, as one key."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Stage:
    """A unit of work, identified by everything it is built from.

    Args:
        kind: what the stage makes (``"expert"``, ``"evaluation"``, ``"merge"``, ...).
        inputs: everything the output depends on: inputs' commit shas or local fingerprints, the recipe, the
            settings. JSON-able (anything else is keyed by its ``str``).
        version: bump when the stage's output changes in a way ``inputs`` do not show (a new layout or code
            path), so that every record written before is out of date.

    >>> Stage("evaluation", {"model": "rev:abc", "tasks": ["mb_gsm8k"]}).fingerprint  # doctest: +SKIP
    """

    kind: str
    inputs: Mapping[str, Any]
    version: int = 1

    @property
    def fingerprint(self) -> str:
        return fingerprint_of({"stage": self.kind, "version": self.version, **self.inputs})


def read_record(record: Path) -> dict[str, Any] | None:
    """The JSON object in ``record``, or ``None`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(record).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def recorded_fingerprint(record: Path) -> str | None:
    """The ``fingerprint`` field of ``record`` (a stage record or any resume state that carries one)."""
    data = read_record(record)
    found = data.get("fingerprint") if data else None
    return found if isinstance(found, str) else None


def is_current(record: Path, fingerprint: str) -> bool:
    """Whether ``record`` says its stage was finished from exactly ``fingerprint``: the one skip decision."""
    return recorded_fingerprint(record) == fingerprint


def write_record(record: Path, stage: Stage, outputs: Mapping[str, Any] | None = None) -> str:
    """Record (atomically, after the stage's output is in place) that ``stage`` is finished; returns its
    fingerprint. ``outputs`` are measurements worth keeping with it (timings, peak memory)."""
    fingerprint = stage.fingerprint
    document = {"stage": stage.kind, "fingerprint": fingerprint, "inputs": dict(stage.inputs),
                "outputs": dict(outputs or {})}
    write_atomic(record, json.dumps(document, indent=1, sort_keys=True, default=str) + "\n")
    return fingerprint


def sidecar_record(output: Path) -> Path:
    """Where the record of a stage whose output is ``output`` lives when the output cannot hold it (a results
    file, a merged model that is published as it is): ``.NAME.stage.json`` beside it (hidden, so folder
    listings and ``*.json`` readers that skip dot-files ignore it)."""
    output = Path(output)
    return output.with_name(f".{output.name}.stage.json")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file (``.gz`` compressed or not); blank lines are skipped."""
    path = Path(path)
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
