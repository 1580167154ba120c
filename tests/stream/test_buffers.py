"""The receive-buffer pool: a buffer is handed out again only once every view of it is gone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergebench.stream import buffers as buffers_module
from mergebench.stream.buffers import BufferPool

MiB = 1 << 20


def _address(view: memoryview) -> int:
    return np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0]


def test_a_buffer_is_reused_only_after_its_views_are_gone() -> None:
    pool = BufferPool(MiB, 8 * MiB)
    first = pool.take(1000)
    first[:4] = b"keep"
    address = _address(first)
    tensor = torch.frombuffer(first[:4], dtype=torch.uint8)[1:]  # a derived view keeps the buffer too
    del first
    second = pool.take(1000)
    assert _address(second) != address, "a buffer still viewed by a tensor was handed out again"
    assert bytes(tensor.numpy()) == b"eep"
    del tensor
    third = pool.take(500)
    assert _address(third) == address, "the free buffer was not reused"
    assert pool.nbytes == 2 * MiB


def _hold(view: memoryview, holder: str) -> memoryview | np.ndarray | torch.Tensor:
    """Bytes 8–16 of ``view`` held as ``holder``."""
    if holder == "numpy array":
        return np.frombuffer(view, dtype=np.uint8)[8:16]
    if holder == "torch tensor":
        return torch.frombuffer(view, dtype=torch.uint8)[8:16]
    return view[8:16]


@pytest.mark.parametrize("holder", ["memoryview slice", "numpy array", "torch tensor"])
def test_every_kind_of_view_keeps_a_buffer_in_use(holder: str) -> None:
    pool = BufferPool(MiB, 8 * MiB)
    view = pool.take(64)
    view[:] = bytes(range(64))
    address = _address(view)
    held = _hold(view, holder)
    del view
    for _ in range(3):
        other = pool.take(64)
        assert _address(other) != address
        other[:] = b"\xff" * 64  # overwriting any other buffer leaves the held bytes as they were
    assert bytes(np.asarray(held)) == bytes(range(8, 16))


def test_reads_larger_than_the_unit_get_their_own_buffer_and_free_ones_are_trimmed_to_the_limit() -> None:
    pool = BufferPool(MiB, 2 * MiB)
    views = [pool.take(MiB) for _ in range(4)] + [pool.take(3 * MiB)]
    assert [len(v) for v in views] == [MiB] * 4 + [3 * MiB]
    assert pool.nbytes == 7 * MiB
    del views
    pool.take(10)  # reuses one; of the four left free, only 2 MiB are kept (the largest goes first)
    assert pool.nbytes == 3 * MiB


def test_without_a_resizable_map_the_pool_hands_out_plain_buffers(monkeypatch) -> None:
    monkeypatch.setattr(buffers_module, "_can_probe", lambda: False)
    pool = BufferPool(MiB, 8 * MiB)
    view = pool.take(100)
    assert len(view) == 100 and isinstance(view.obj, bytearray)
    assert pool.nbytes == 0
