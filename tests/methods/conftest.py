"""Method and statistics tests run single-threaded: their tensors are tiny, and on a shared machine torch's
intra-op threads spin-wait for busy cores (measured: 7 s single-threaded vs 80 s with 2 contended threads)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _grad_mode_on() -> Iterator[None]:
    """The tests' own autograd references need grad mode, which importing lighteval switches off globally."""
    with torch.enable_grad():
        yield
