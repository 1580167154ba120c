"""Receive buffers reused from one read to the next, so streaming from the Hub does not pay for fresh memory.

Why: a range received from the Hub is copied into a buffer of its size. A fresh buffer of many MB is memory the
kernel maps anew, a page fault per 4 KiB on first write, and glibc gives blocks of 32 MiB or more back to the kernel
when they are freed, so a stream of 64 MiB reads faults on every byte it receives (about a second of CPU for 5 GB).
Here a buffer whose every view is gone is handed to the next read instead.

When is a buffer free? Each is an anonymous ``mmap``; a consumer holds it through views (the memoryview returned,
its slices, tensors or arrays made from them), and while any exists the map has exported buffers. ``mmap.resize``
refuses to run then (``BufferError``), so resizing a map to its own size is an exact, cheap test (0.3 µs) that
nothing still reads it: a buffer is never reused under a live view, whatever holds it and for however long.
"""

from __future__ import annotations

import mmap
import threading


class BufferPool:
    """Buffers for received ranges, reused once nothing views them; at most ``limit_bytes`` of them kept free.

    Args:
        unit_bytes: the size a buffer is made with (or the read's, if larger), so that any free buffer fits any
            read up to it: reads of a stream vary in size (the last chunk of a shard is short), and buffers made
            to measure were reused for only half the reads. Pages past what a read fills are never touched, so
            they cost address space, not memory.
        limit_bytes: free buffers beyond this many bytes are unmapped (new ones are made whenever no free one
            fits, so a consumer holding views never waits; what is in use is bounded by the reader's budget).
    """

    def __init__(self, unit_bytes: int, limit_bytes: int) -> None:
        self._unit = unit_bytes
        self._limit = limit_bytes
        self._maps: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self._reuse = _can_probe()

    def take(self, nbytes: int) -> memoryview:
        """A writable view of ``nbytes`` bytes, of a free buffer when one fits (the smallest), else of a new one.
        Its old contents are left as they are: the caller overwrites every byte it reads."""
        if not self._reuse:
            return memoryview(bytearray(nbytes))
        with self._lock:
            free = [m for m in self._maps if _unused(m)]
            fits = [m for m in free if len(m) >= nbytes]
            if fits:
                chosen = min(fits, key=len)
            else:
                chosen = mmap.mmap(-1, max(self._unit, nbytes, 1))
                self._maps.append(chosen)
            self._trim([m for m in free if m is not chosen])
            return memoryview(chosen)[:nbytes]

    @property
    def nbytes(self) -> int:
        """Bytes of all buffers made and not unmapped, in use or free."""
        with self._lock:
            return sum(len(m) for m in self._maps)

    def _trim(self, free: list[mmap.mmap]) -> None:
        """Unmap free buffers, largest first, until those left free are within the limit."""
        kept = sum(len(m) for m in free)
        for m in sorted(free, key=len, reverse=True):
            if kept <= self._limit:
                break
            kept -= len(m)
            self._maps.remove(m)
            m.close()


def _can_probe() -> bool:
    """Whether this platform resizes anonymous maps (Linux does; without ``mremap`` Python cannot, and the pool
    hands out plain ``bytearray`` buffers instead)."""
    probe = mmap.mmap(-1, mmap.PAGESIZE)
    try:
        probe.resize(len(probe))
    except (OSError, SystemError, ValueError):
        return False
    finally:
        probe.close()
    return True


def _unused(buffer: mmap.mmap) -> bool:
    """Whether no view of ``buffer`` exists (see the module docstring)."""
    try:
        buffer.resize(len(buffer))
    except BufferError:
        return False
    return True
