"""The loopback Hub's shared link (``hub.link``, ``mergebench hub serve --link-rate``): one rate for every body at
once, unlike the ``throttle`` fault, which slows each answer on its own."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import hf_hub_url

from mergebench.hubserver import LoopbackHub
from mergebench.hubserver.link import Link
from tests._hub_fixtures import hub_subprocess

REPO = "org/linked"
BLOB = bytes(range(256)) * 40  # 10 240 bytes
RATE = 20_480  # bytes/s: one BLOB takes 0.5 s of the link


@pytest.fixture
def repo_root(hub_root: Path) -> Path:
    folder = hub_root / "models" / REPO
    folder.mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(BLOB)
    return hub_root


def _timed_downloads(url: str, count: int) -> float:
    """Seconds for ``count`` downloads of BLOB at once, each checked byte for byte."""
    bodies: list[bytes] = []

    def get() -> None:
        bodies.append(httpx.get(hf_hub_url(REPO, "weights.safetensors", endpoint=url), timeout=30).content)

    threads = [threading.Thread(target=get) for _ in range(count)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    assert bodies == [BLOB] * count
    return seconds


def test_concurrent_downloads_share_the_link_where_the_throttle_fault_slows_each_alone(repo_root) -> None:
    with LoopbackHub(repo_root) as hub:
        hub.link.rate = RATE
        assert _timed_downloads(hub.url, 1) >= 0.45
        assert _timed_downloads(hub.url, 2) >= 0.95  # 20 480 bytes through one 20 480 B/s link
        hub.link.rate = None
        hub.faults.throttle(RATE, times=2)
        assert _timed_downloads(hub.url, 2) < 0.95  # two answers at RATE each: about 0.5 s
        assert _timed_downloads(hub.url, 1) < 0.45  # unlimited again
        assert hub.stats.bytes_for("*.safetensors") == 6 * len(BLOB)


def test_the_command_line_sets_the_link_rate(repo_root) -> None:
    startup: list[str] = []
    with hub_subprocess(repo_root, "--link-rate", str(RATE), startup=startup) as url:
        assert any(f"Link: {RATE} bytes/s" in line for line in startup), startup
        assert _timed_downloads(url, 2) >= 0.95


def test_a_link_books_slices_after_each_other_and_refuses_a_rate_that_is_not_positive() -> None:
    link = Link(1000.0)
    assert link.slice_bytes(1 << 20) == 10 and Link().slice_bytes(1 << 20) == 1 << 20  # 10 ms of the link
    started = time.monotonic()
    for _ in range(30):
        link.wait(10)
    assert time.monotonic() - started >= 0.28  # 300 bytes at 1000 B/s, the first slice leaving at once
    for bad in (0.0, -5.0):
        with pytest.raises(ValueError, match="must be > 0"):
            Link(bad)
