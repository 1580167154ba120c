"""Statistics files: one safetensors file per (expert, stage), keyed by tensor name, cached by content.

File: ``{cache_dir}/{stage}/{key}.safetensors`` with ``key`` the :func:`mergebench.work.fingerprint_of` of a
JSON document holding the stage, the file format version, the prompt format version, the model's identity
(its commit, or the local fingerprint of its weight and config files), the base's identity (``mask`` only),
the sha256 of the rows used, and every parameter that changes the numbers. The safetensors metadata repeats
those fields (``mergebench.*``) so a file explains itself. Files are written to a temporary name and renamed,
so a crash never leaves a truncated file under a valid key.

Writing is in place (:func:`open_statistics`): every tensor's name, dtype and shape is known before the
stage runs, so the header is written first and the file sized (zeros); the stage then writes each layer's
statistics (or adds a group of rows' share to them, or fills a block of an embedding's rows) at its offset as
soon as it has them and frees them. The result is an ordinary safetensors file.

Loading for a merge is lazy (:class:`StatisticsReader`): statistics can be larger than the model (RegMean's
Gram matrices are Σ in² per linear layer), so only one tensor's statistics per expert are read at a time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from mergebench.errors import StatisticsError
from mergebench.prompt import PROMPT_FORMAT_VERSION
from mergebench.stats.data import ModelSource
from mergebench.stats.spill import read_into, write_at
from mergebench.stream.format import DTYPE_NAMES, FileHeader, element_size, encode_header, header_length, parse_header
from mergebench.work import atomic_file, fingerprint_of, folder_fingerprint

logger = logging.getLogger(__name__)

FORMAT = "mergebench-stats/1"
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json")


def model_identity(source: ModelSource) -> str:
    """``rev:<sha>`` for a Hub model pinned to a commit, else the local folder's fingerprint of its weight and
    config files (:func:`mergebench.work.folder_fingerprint`, the one scheme every stage uses for local inputs)."""
    model = source.model
    if model.sha:
        return f"rev:{model.sha}"
    folder = model.ref.local_path
    assert folder is not None  # a resolved model is either pinned to a commit or a local folder
    names = sorted(name for name in model.file_list if "/" not in name and name.endswith(MODEL_FILE_SUFFIXES))
    return folder_fingerprint(folder, names)


def prune_cache(cache_dir: Path, *, keep: Collection[Path], limit_bytes: int) -> list[Path]:
    """Delete the least recently used statistics files under ``cache_dir`` until it holds at most
    ``limit_bytes``, never one of ``keep`` (the files the running merge reads); returns the deleted paths.

    Why: every new expert, validation set or parameter is a new key, so a cache that is never pruned grows by a
    stage's statistics per merge (about 8 GB per MergeBench-Tiny run). A reused file is touched
    (:func:`touch`), so the files deleted are those no recent merge read. Temporary files of a stage being
    written (``.NAME.*.tmp``) are not statistics files and are left alone."""
    files = []
    for path in cache_dir.glob("*/[!.]*.safetensors"):
        with contextlib.suppress(FileNotFoundError):  # another process may prune at the same time
            stat = path.stat()
            files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    protected = {Path(p).resolve() for p in keep}
    removed = []
    for _, size, path in sorted(files):
        if total <= limit_bytes:
            break
        if path.resolve() in protected:
            continue
        path.unlink(missing_ok=True)
        total -= size
        removed.append(path)
    if removed:
        logger.info("statistics cache %s: deleted %d least recently used file(s) to stay within %.1f GB",
                    cache_dir, len(removed), limit_bytes / 1e9)
    return removed


def touch(path: Path) -> None:
    """Mark a cached file as just used (its modification time orders :func:`prune_cache`)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def cache_key(document: Mapping[str, Any]) -> str:
    """The statistics file's key: :func:`mergebench.work.fingerprint_of` of ``document`` plus format versions."""
    return fingerprint_of({**document, "format": FORMAT, "prompt_format": PROMPT_FORMAT_VERSION})


def cache_path(cache_dir: Path, stage: str, key: str) -> Path:
    return Path(cache_dir) / stage / f"{key}.safetensors"


Entry = tuple[str, torch.dtype, tuple[int, ...]]
"""A statistics tensor to be written: name, dtype, shape."""


class StatisticsFile:
    """An open statistics file being filled (see :func:`open_statistics`): tensors or blocks of their rows are
    written, added to or read back at their offsets."""

    def __init__(self, fd: int, data_start: int, entries: Sequence[Entry], *, owned: bool = False) -> None:
        self._fd = fd
        self._owned = owned
        self._layout: dict[str, tuple[int, torch.dtype, tuple[int, ...]]] = {}
        offset = data_start
        for name, dtype, shape in entries:
            self._layout[name] = (offset, dtype, shape)
            offset += math.prod(shape) * element_size(DTYPE_NAMES[dtype])

    @property
    def names(self) -> list[str]:
        return list(self._layout)

    def close(self) -> None:
        """Close the file if this object opened it (:func:`scratch_statistics`)."""
        if self._owned and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _span(self, name: str, row: int, rows: int | None) -> tuple[int, torch.dtype, tuple[int, ...]]:
        offset, dtype, shape = self._layout[name]
        if rows is None:
            return offset, dtype, shape
        row_bytes = math.prod(shape[1:]) * element_size(DTYPE_NAMES[dtype])
        return offset + row * row_bytes, dtype, (rows, *shape[1:])

    def write(self, name: str, values: Tensor, row: int = 0) -> None:
        """Store ``values``: the whole tensor, or (``row`` > 0 or fewer rows) its rows from ``row`` on."""
        _, dtype, shape = self._layout[name]
        rows = None if tuple(values.shape) == shape and row == 0 else values.shape[0]
        offset, dtype, expected = self._span(name, row, rows)
        if tuple(values.shape) != expected:
            raise ValueError(f"statistics '{name}': {tuple(values.shape)} written where {expected} belongs")
        write_at(self._fd, offset, values.to(dtype))

    def read(self, name: str, row: int = 0, rows: int | None = None) -> Tensor:
        """The stored tensor (or ``rows`` of its rows from ``row``)."""
        offset, dtype, shape = self._span(name, row, rows)
        return read_into(self._fd, offset, torch.empty(shape, dtype=dtype))

    def add(self, name: str, values: Tensor, row: int = 0) -> None:
        """Add ``values`` to the stored tensor (or to its rows from ``row``): statistics summed over groups."""
        rows = None if tuple(values.shape) == self._layout[name][2] and row == 0 else values.shape[0]
        self.write(name, self.read(name, row, rows).add_(values.detach().to("cpu")), row)

    def add_rows(self, name: str, rows: Tensor, values: Tensor) -> None:
        """Add ``values[k]`` to row ``rows[k]`` of the stored tensor (``rows`` sorted and unique)."""
        for start, end in _runs(rows):
            self.add(name, values[start:end], int(rows[start]))

    def gather(self, name: str, rows: Tensor) -> Tensor:
        """Rows ``rows`` (sorted and unique) of the stored tensor."""
        parts = [self.read(name, int(rows[start]), end - start) for start, end in _runs(rows)]
        return torch.cat(parts) if parts else self.read(name, 0, 0)


def _runs(rows: Tensor) -> list[tuple[int, int]]:
    """``(start, end)`` positions of the runs of consecutive values in sorted ``rows``."""
    values = rows.tolist()
    runs, start = [], 0
    for k in range(1, len(values) + 1):
        if k == len(values) or values[k] != values[k - 1] + 1:
            runs.append((start, k))
            start = k
    return runs


@contextlib.contextmanager
def open_statistics(path: Path, entries: Sequence[Entry], metadata: Mapping[str, Any]) -> Iterator[StatisticsFile]:
    """Create the statistics file ``path`` holding ``entries`` (all zeros), yield it to be filled, and on success
    flush it and rename it into place; on error nothing is left at ``path``.

    ``metadata`` values are stored as strings (JSON for non-strings) under ``mergebench.<key>``."""
    meta = {"format": "pt", "mergebench.format": FORMAT,
            **{f"mergebench.{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
               for k, v in metadata.items()}}
    prefix = encode_header([(name, DTYPE_NAMES[dtype], shape) for name, dtype, shape in entries], meta)
    size = len(prefix) + sum(math.prod(shape) * element_size(DTYPE_NAMES[dtype]) for _, dtype, shape in entries)
    with atomic_file(path) as tmp, open(tmp, "r+b") as f:
        f.write(prefix)
        f.truncate(size)  # a sparse file: untouched entries read as zeros
        f.flush()
        yield StatisticsFile(f.fileno(), len(prefix), entries)
        os.fsync(f.fileno())
    logger.info("wrote %d statistics tensors to %s", len(entries), path)


def scratch_statistics(folder: Path, entries: Sequence[Entry]) -> StatisticsFile:
    """A :class:`StatisticsFile` of ``entries`` (zeros) that is never kept: an unlinked file in ``folder`` for
    intermediate tensors too large for memory (trained masks' gradients and logits between epochs), given back
    by :meth:`StatisticsFile.close`."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".scratch-", dir=folder)
    os.unlink(name)
    try:
        os.ftruncate(fd, sum(math.prod(shape) * element_size(DTYPE_NAMES[dtype]) for _, dtype, shape in entries))
    except OSError:
        os.close(fd)
        raise
    return StatisticsFile(fd, 0, entries, owned=True)


def load_statistics(path: Path) -> dict[str, Tensor]:
    """Every tensor of one statistics file (small models and tests; merges use :class:`StatisticsReader`)."""
    from safetensors.torch import load_file

    return load_file(path)


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


class StatisticsReader:
    """Per-tensor statistics of all experts, read lazily: ``reader.get(name)`` → ``[n, ...]`` or ``None``.

    >>> reader = StatisticsReader("gram", paths)                   # doctest: +SKIP
    >>> ctx_data = reader.data_for("model.layers.0.mlp.up_proj.weight")  # {"gram": ExpertRows [n, in, in]} or {}

    Args:
        stage: the ``ctx.data`` key (``"gram"``, ``"fisher"``, ``"mask"``).
        paths: one file per expert, in the order of the merge's stack.

    Raises:
        StatisticsError: a file is missing, holds another stage, or the experts' tensor names differ.
    """

    def __init__(self, stage: str, paths: Sequence[Path]) -> None:
        self.stage = stage
        self.paths = [Path(p) for p in paths]
        self._files = []
        for path in self.paths:
            if not path.is_file():
                raise StatisticsError(f"Statistics file '{path}' does not exist.",
                                      hint="Run the statistics stage again (the cache may have been cleared).")
            try:
                f = safe_open(path, framework="pt")
                found = (f.metadata() or {}).get("mergebench.stage")
            except Exception as e:  # safetensors raises its own error type for truncated or garbled files
                raise StatisticsError(f"Statistics file '{path}' cannot be read ({type(e).__name__}: {e}).",
                                      hint="Delete the file and merge again: the statistics stage recomputes it."
                                      ) from e
            if found != stage:
                raise StatisticsError(f"Statistics file '{path}' holds stage {found!r}, not '{stage}'.",
                                      hint=f"Pass the '{stage}' statistics of each expert, in the merge's order.")
            self._files.append(f)
        self._layouts = [_layout(path) for path in self.paths]
        names = [set(f.keys()) for f in self._files]
        if any(n != names[0] for n in names[1:]):
            odd = sorted(set.union(*names) - set.intersection(*names))[:5]
            raise StatisticsError(f"The experts' '{stage}' statistics cover different tensors (e.g. {odd}).",
                                  hint="Recompute the statistics; experts must share the base architecture.")
        self.names = frozenset(names[0]) if names else frozenset()
        for name in sorted(self.names):
            shapes = [tuple(f.get_slice(name).get_shape()) for f in self._files]
            if any(shape != shapes[0] for shape in shapes[1:]):
                listed = ", ".join(f"{s} in '{p}'" for s, p in zip(shapes, self.paths, strict=True))
                raise StatisticsError(f"The experts' '{stage}' statistics of tensor '{name}' have different shapes: "
                                      f"{listed}.", hint="Delete these statistics files and merge again: the "
                                      "statistics stage recomputes them. Experts must share the base architecture.")

    def get(self, name: str) -> Tensor | None:
        """``[n, *stat_shape]`` statistics of tensor ``name`` (stacked over experts), or ``None``."""
        rows = self.rows(name)
        if rows is None:
            return None
        stacked = torch.empty(rows.shape, dtype=rows.dtype)
        for expert, row in enumerate(stacked):
            rows.read_into(expert, row)  # straight into the stack: no per-expert copy beside it
        return stacked

    def rows(self, name: str) -> ExpertRows | None:
        """Tensor ``name``'s statistics, read one expert at a time when iterated, or ``None``."""
        if name not in self.names:
            return None
        entry = self._layouts[0][1].tensors[name]
        return ExpertRows([(path, start + header.tensors[name].begin)
                           for path, (start, header) in zip(self.paths, self._layouts, strict=True)],
                          entry.shape, entry.torch_dtype)

    def data_for(self, name: str) -> dict[str, ExpertRows]:
        """``{stage: rows}`` for :attr:`MergeContext.data`, or ``{}`` when the tensor has no statistics."""
        rows = self.rows(name)
        return {} if rows is None else {self.stage: rows}


class ExpertRows:
    """One tensor's statistics of every expert (``shape`` ``[n, *S]``), each expert's row read from its file when
    the iteration reaches it: a merge that consumes them one expert at a time holds one row, never the stack
    (the :class:`mergebench.methods.registry.PerExpert` protocol; RegMean's five Grams of Llama-3.1-8B's
    down-projection are 4.1 GB stacked)."""

    def __init__(self, locations: Sequence[tuple[Path, int]], shape: Sequence[int], dtype: torch.dtype) -> None:
        self.locations = list(locations)
        """``(file, offset of the tensor's first byte)`` per expert."""
        self.shape = torch.Size((len(self.locations), *shape))
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.locations)

    def read_into(self, expert: int, out: Tensor) -> None:
        """Read expert ``expert``'s row into ``out`` (``shape[1:]``, ``dtype``)."""
        path, offset = self.locations[expert]
        fd = os.open(path, os.O_RDONLY)
        try:
            read_into(fd, offset, out)
        finally:
            os.close(fd)

    def __iter__(self) -> Iterator[Tensor]:
        for expert in range(len(self)):
            row = torch.empty(self.shape[1:], dtype=self.dtype)
            self.read_into(expert, row)
            yield row
            del row  # the caller holds it for as long as it needs it


def _layout(path: Path) -> tuple[int, FileHeader]:
    """``(first data byte, parsed header)`` of a safetensors file (already opened once by ``safe_open``)."""
    with open(path, "rb") as f:
        n = header_length(f.read(8))
        return 8 + n, parse_header(f.read(n))
