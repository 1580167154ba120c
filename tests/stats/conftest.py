"""Statistics tests run single-threaded: their tensors are tiny, and on a shared machine torch's intra-op
threads spin-wait for busy cores (see tests/methods/conftest.py)."""

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
