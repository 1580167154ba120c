"""Merge arithmetic on cache-sized chunks, on every core, with buffers reused from chunk to chunk.

Why: a whole tensor converted to a float32 stack ``[n, *shape]`` (650 MB for five experts' embeddings of a
0.4B model) goes through main memory once per operation, and every fresh buffer is page-faulted in by the
kernel. A chunk of 128 Ki entries per model (3 MB for six models) stays in the CPU's L2 cache together with
the method's temporaries, its buffers are allocated once per thread, and independent chunks run in parallel.
Results are bit-identical to the whole-tensor computation when every entry goes through the same float32
operations in the same order. Elementwise operations do; a reduction over the expert dimension does only if it
adds in expert order: ``torch.sum`` does for up to four experts, but with five or more it sums a row's last
(width mod 32–64) columns in another order than the others, so the result of an entry depends on the chunk's
width (TIES adds explicitly, in one fused loop: :func:`mergebench.methods.kernels.ties_delta`).

While a :class:`ChunkPool` is open, torch's own intra-op threads are set to 1: the pool's threads are the
parallelism, and OpenMP workers spin-waiting for a core on a shared machine measured twice as slow as a
single thread, where Python threads simply wait their turn.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import torch

CHUNK_ENTRIES = 1 << 17
"""Entries per model in one chunk: 512 KiB of float32 per model. With TIES' arithmetic in one fused loop
(:mod:`mergebench.methods.kernels`) the per-chunk cost of the Python calls around it decides: on a 126M
family (medians of 5, in one process) 128 Ki took 2.1 s per-tensor TIES against 2.9 s at 64 Ki and 2.0 s at
256 Ki, and Task Arithmetic 0.9 s against 1.2 and 0.8 s. 128 Ki keeps six models' chunks within a 4 MB L2."""


class ChunkPool:
    """Run ``fn(start, end)`` over the chunks of a flat range on ``threads`` threads; use as a context manager.

    Each thread owns float32 buffers for one chunk of the base and of the ``n`` experts
    (:meth:`buffers`), reused for every chunk it runs.

    Args:
        n_experts: rows of the expert stack.
        chunk: entries per chunk (per model).
        threads: worker threads; ``None`` = one per CPU core. ``1`` runs chunks in the caller's thread.
    """

    def __init__(self, n_experts: int, *, chunk: int = CHUNK_ENTRIES, threads: int | None = None) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be ≥ 1 entry, got {chunk}")
        self.n = n_experts
        self.chunk = chunk
        self.threads = max(1, threads or os.cpu_count() or 1)
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._torch_threads = 0

    def __enter__(self) -> ChunkPool:
        self._torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        if self.threads > 1:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mergebench-compute")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        torch.set_num_threads(self._torch_threads)

    def buffers(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This thread's float32 ``base [length]`` and contiguous ``stack [n, length]`` (``length ≤ chunk``)."""
        local = self._local
        if getattr(local, "base", None) is None:
            local.base = torch.empty(self.chunk, dtype=torch.float32)
            local.stack = torch.empty(self.n * self.chunk, dtype=torch.float32)
        return local.base[:length], local.stack[: self.n * length].view(self.n, length)

    def run(self, numel: int, fn: Callable[[int, int], None]) -> None:
        """Call ``fn(start, end)`` for every chunk of ``range(numel)``; returns when all are done.

        The first exception raised by a chunk is raised here, after the other chunks have finished."""
        spans = [(s, min(numel, s + self.chunk)) for s in range(0, numel, self.chunk)]
        if self._pool is None or len(spans) == 1:
            for s, e in spans:
                fn(s, e)
            return
        futures = [self._pool.submit(fn, s, e) for s, e in spans]
        errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error
