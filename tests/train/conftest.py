"""One torch thread per training test: the suite shares two cores with other work, and torch's thread pool
spin-waits badly under contention (a tiny model trains ~20× slower with 2 threads on a busy 2-core machine)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
