"""Activations parked on disk between layers, so memory holds one batch of them at a time.

A layer-wise pass keeps, for every validation row, the hidden states entering the next layer (and a backward
pass every layer's input and the gradient flowing down): ``rows × tokens × hidden × 4`` bytes per layer, 16 GB
for 1000 rows of 1024 tokens at 8B. They are written once and read back once or twice, in the order they were
written: an append-only file per set of tensors, read back with ``pread``, is all that takes. Written pages sit
in the OS page cache, not in the process's memory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Hashable
from pathlib import Path
from types import TracebackType

import torch
from torch import Tensor


def write_at(fd: int, offset: int, tensor: Tensor) -> int:
    """Write ``tensor``'s bytes (CPU, contiguous) at ``offset`` of file ``fd``; returns the byte count."""
    data = tensor.detach().to("cpu").contiguous()
    raw = data.view(-1).view(torch.uint8).numpy().data if data.numel() else memoryview(b"")
    done = 0
    while done < len(raw):
        done += os.pwrite(fd, raw[done:], offset + done)
    return len(raw)


def read_into(fd: int, offset: int, out: Tensor) -> Tensor:
    """Fill ``out`` (CPU, contiguous) with the bytes at ``offset`` of file ``fd``; returns ``out``."""
    raw = out.view(-1).view(torch.uint8).numpy().data if out.numel() else memoryview(bytearray())
    done = 0
    while done < len(raw):
        got = os.preadv(fd, [raw[done:]], offset + done)
        if not got:
            raise OSError(f"file ends at byte {offset + done}, inside a tensor of {len(raw)} bytes at {offset}")
        done += got
    return out


class Spill:
    """Tensors by key, on disk: ``put`` appends, ``get`` reads back a fresh CPU tensor; the file is deleted on
    :meth:`close` (or at the end of a ``with`` block).

    >>> with Spill(tmp_path) as spill:                                  # doctest: +SKIP
    ...     spill.put(("row", 0), torch.ones(2, 3))
    ...     spill.get(("row", 0)).shape
    torch.Size([2, 3])
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".spill-", dir=folder)
        self._fd = fd
        os.unlink(name)  # the open descriptor keeps the data; nothing is left behind after a crash
        self._index: dict[Hashable, tuple[int, torch.dtype, tuple[int, ...]]] = {}
        self._end = 0
        self.bytes_written = 0

    def put(self, key: Hashable, tensor: Tensor) -> None:
        written = write_at(self._fd, self._end, tensor)
        self._index[key] = (self._end, tensor.dtype, tuple(tensor.shape))
        self._end += written
        self.bytes_written += written

    def get(self, key: Hashable) -> Tensor:
        offset, dtype, shape = self._index[key]
        return read_into(self._fd, offset, torch.empty(shape, dtype=dtype))

    def __contains__(self, key: Hashable) -> bool:
        return key in self._index

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    __del__ = close  # a spill dropped on an error path still gives its disk back

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
