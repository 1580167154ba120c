"""Stream tensors of several models in one order, with coalesced reads and a bounded read-ahead.

The merge visits tensors in a fixed order. For each model, consecutive tensors of that order that sit
back to back in the same shard are coalesced into one read of at most ``chunk_bytes`` (one HTTP Range
request on the Hub, one mapped region locally). Reads run on a small thread pool ahead of the
consumer, but never more than ``max_inflight_bytes`` are fetched and not yet consumed, which bounds
memory whatever the model size; network, disk and compute overlap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from mergebench.stream.buffers import BufferPool
from mergebench.stream.format import FileHeader, TensorEntry
from mergebench.stream.sources import ByteSource, HttpSource, LocalSource

logger = logging.getLogger(__name__)

MiB = 1 << 20
CHUNK_BYTES = 64 * MiB
"""Default largest coalesced read (one HTTP Range request), received into a reused buffer
(:mod:`mergebench.stream.buffers`). Before those buffers, 16 MiB reads were faster than 64 MiB ones (glibc serves
them from reused heap memory instead of fresh pages: per-tensor TIES from the loopback Hub on two cores 10.4 s
against 11.8 s) but the heap kept what it once held, and a one-pass global TIES peaked at 1.8–2.1 GB instead of 1.6,
above the benchmark family's streaming bound (1.86 GB); the buffer pool gets the speed with 64 MiB reads."""


def default_read_threads() -> int:
    """One read thread per core, at least 2 and at most 4.

    A thread receives the body of a Range request in 64 KiB pieces, each handled in Python with the GIL held,
    so more receivers than cores spend their CPU handing the GIL over (futex wake-ups and context switches were
    a fifth of a streaming profile); two keep a link busy while one waits on a request. On two cores, from the
    loopback Hub (medians of 2–3, informal): global TIES 15.9 s with 4 threads, 15.3 s with 2; per-tensor TIES
    12.1 and 11.8 s; local merges unchanged.
    """
    return max(2, min(4, os.cpu_count() or 2))


class _Located(Protocol):
    @property
    def local_path(self) -> Path | None: ...


class StreamModel(Protocol):
    """A model as the reader needs it (:class:`mergebench.hub.models.ResolvedModel` is one): its shard
    headers, where each tensor lives, and where to read the bytes (a local folder, else :meth:`url`)."""

    @property
    def ref(self) -> _Located: ...

    @property
    def label(self) -> str: ...

    @property
    def files(self) -> Mapping[str, FileHeader]: ...

    @property
    def weight_map(self) -> Mapping[str, str]: ...

    def tensor(self, name: str) -> TensorEntry: ...

    def url(self, filename: str) -> str: ...


def open_source(model: StreamModel, filename: str, *, buffers: BufferPool | None = None) -> ByteSource:
    """The byte source of one shard of ``model``: its local file (mmap), else its pinned URL (Range requests),
    receiving into ``buffers`` when given (a new buffer per read otherwise).

    For reads that are not whole tensors in visiting order (e.g. row blocks of one embedding matrix); whole
    tensors go through :class:`TensorStream`."""
    data_size = model.files[filename].data_size
    if model.ref.local_path is not None:
        return LocalSource(model.ref.local_path / filename, model=model.label, data_size=data_size)
    return HttpSource(model.url(filename), model=model.label, filename=filename, data_size=data_size,
                      buffers=buffers)


@dataclass
class _Chunk:
    model: int
    filename: str
    begin: int
    end: int
    first_position: int
    tensors: list[str] = field(default_factory=list)
    future: Future[memoryview] | None = None

    @property
    def size(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class StreamItem:
    """One tensor: its name and the raw bytes of each requested model (``None`` where not requested)."""

    name: str
    raw: tuple[memoryview | None, ...]


class TensorStream:
    """Iterate ``(name, raw bytes per model)`` over ``order``.

    Args:
        models: the resolved models, in a fixed order (index = position in ``raw``).
        order: ``(tensor name, indices of the models whose bytes are needed)`` in visiting order.
        threads: read workers (network or page-in), so I/O overlaps compute; ``None``: :func:`default_read_threads`.
        max_inflight_bytes: read-ahead budget; at least one chunk is always allowed.
        chunk_bytes: largest coalesced read; a tensor larger than this is read alone.
        progress: an optional tqdm bar advanced by bytes read.
    """

    def __init__(self, models: Sequence[StreamModel], order: Sequence[tuple[str, Sequence[int]]], *,
                 threads: int | None = None, max_inflight_bytes: int = 512 * MiB,
                 chunk_bytes: int = CHUNK_BYTES,
                 progress: tqdm | None = None) -> None:
        self._models = models
        self._order = list(order)
        self._threads = max(1, default_read_threads() if threads is None else threads)
        self._max_inflight = max_inflight_bytes
        self.progress = progress
        self._sources: dict[tuple[int, str], ByteSource] = {}
        self._chunks = self._plan_chunks(chunk_bytes)
        # what is read ahead, plus the chunk being consumed: the steady state needs no new buffer
        self._buffers = BufferPool(chunk_bytes, max_inflight_bytes + chunk_bytes)

    def _plan_chunks(self, chunk_bytes: int) -> list[_Chunk]:
        chunks: list[_Chunk] = []
        current: dict[int, _Chunk] = {}
        for position, (name, needed) in enumerate(self._order):
            for m in needed:
                model = self._models[m]
                filename = model.weight_map[name]
                entry = model.files[filename].tensors[name]
                c = current.get(m)
                if c and c.filename == filename and c.end == entry.begin and c.size + entry.nbytes <= chunk_bytes:
                    c.end = entry.end
                else:
                    c = _Chunk(m, filename, entry.begin, entry.end, position)
                    current[m] = c
                    chunks.append(c)
                c.tensors.append(name)
        chunks.sort(key=lambda c: (c.first_position, c.model))
        return chunks

    @property
    def bytes_to_read(self) -> int:
        return sum(c.size for c in self._chunks)

    def _source(self, m: int, filename: str) -> ByteSource:
        key = (m, filename)
        if key not in self._sources:
            self._sources[key] = open_source(self._models[m], filename, buffers=self._buffers)
        return self._sources[key]

    def _read(self, chunk: _Chunk) -> memoryview:
        return self._source(chunk.model, chunk.filename).read(chunk.begin, chunk.end)

    def __iter__(self) -> Iterator[StreamItem]:
        chunk_of = {(c.model, name): c for c in self._chunks for name in c.tensors}
        remaining = {id(c): len(c.tensors) for c in self._chunks}
        inflight = 0
        next_submit = 0
        finished: list[_Chunk] = []
        n_models = len(self._models)
        pool = ThreadPoolExecutor(self._threads, thread_name_prefix="mergebench-read")
        done = False
        try:
            for name, needed in self._order:
                while next_submit < len(self._chunks) and (
                    inflight == 0 or inflight + self._chunks[next_submit].size <= self._max_inflight
                ):
                    c = self._chunks[next_submit]
                    c.future = pool.submit(self._read, c)
                    inflight += c.size
                    next_submit += 1
                raw: list[memoryview | None] = [None] * n_models
                for m in needed:
                    c = chunk_of[(m, name)]
                    if c.future is None:  # not yet submitted: the budget is taken by earlier chunks
                        c.future = pool.submit(self._read, c)
                        inflight += c.size
                        next_submit = max(next_submit, self._chunks.index(c) + 1)
                    view = c.future.result()
                    entry = self._models[m].tensor(name)
                    raw[m] = view[entry.begin - c.begin: entry.end - c.begin]
                    remaining[id(c)] -= 1
                    if remaining[id(c)] == 0:
                        inflight -= c.size
                        c.future = None  # drop our reference; the slice keeps what is still used
                        finished.append(c)
                        if self.progress is not None:
                            self.progress.update(c.size)
                yield StreamItem(name, tuple(raw))
                for c in finished:  # the consumer is done with the previous item's bytes
                    self._source(c.model, c.filename).release(c.begin, c.end)
                finished.clear()
            done = True
        finally:
            # Stopped early (an error in the consumer, or the iterator dropped): do not wait for reads in flight.
            # This may run as a finalizer in any thread, at any point (a generator in a reference cycle is closed
            # by the garbage collector), where joining the read threads can deadlock with the interpreter's own
            # thread locks; an abandoned read ends on its own (sources time out) and its bytes are dropped.
            pool.shutdown(wait=done, cancel_futures=True)
            for source in self._sources.values():
                source.close()
