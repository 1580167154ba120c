"""Loopback Hub fixtures (registered as a plugin by ``tests/conftest.py``).

``hub`` runs a :class:`~mergebench.hubserver.LoopbackHub` over ``hub_root`` and points this process's
``huggingface_hub`` (and ``datasets``, if imported) at it, so tests just call ``HfApi()``, ``hf_hub_download``
or ``snapshot_download``. The client reads ``HF_ENDPOINT`` once, at import, into module constants; the fixture
patches those constants as well as the environment, and everything is restored afterwards. The Hub cache
(``HF_HOME``/``HF_HUB_CACHE``) is a fresh temporary folder per test, and ``HF_TOKEN`` a dummy token.

For the ``hf`` CLI or other subprocesses: ``hub_env(hub.url, home)``; to run the server itself in another
process (e.g. to test ``mergebench hub serve``): ``with hub_subprocess(root) as url: ...``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mergebench.hub.endpoint import endpoint_env, use_endpoint
from mergebench.hubserver import LoopbackHub

DUMMY_TOKEN = "hf_loopbackDummyTokenForTests0000000"


def hub_env(url: str, hf_home: Path) -> dict[str, str]:
    """Environment variables that point a ``huggingface_hub`` subprocess at ``url`` with a private cache."""
    return endpoint_env(url, hf_home, token=DUMMY_TOKEN)


@pytest.fixture
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty loopback-Hub tree; put repos in ``hub_root/models/ORG/NAME`` (or ``datasets/``, ``spaces/``)."""
    return tmp_path_factory.mktemp("hub-root")


@pytest.fixture
def hub(hub_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackHub]:
    """A running loopback Hub over ``hub_root``, with this process's client pointed at it."""
    with LoopbackHub(hub_root) as server, use_endpoint(server.url, hf_home=tmp_path_factory.mktemp("hf-home"),
                                                          token=DUMMY_TOKEN):
        yield server


@contextlib.contextmanager
def hub_subprocess(root: Path, *options: str, timeout: float = 30.0,
                   startup: list[str] | None = None) -> Iterator[str]:
    """Run ``python -m mergebench.cli.hub serve ROOT --port 0 OPTIONS`` and yield its URL; stopped on exit.

    ``startup``, when given, receives the server's stderr lines up to the URL (e.g. its armed faults)."""
    cmd = [sys.executable, "-m", "mergebench.cli.hub", "serve", str(root), "--port", "0", *options]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url, deadline, seen = None, time.monotonic() + timeout, []
        assert proc.stderr is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if match := re.search(r"export HF_ENDPOINT=(http://\S+)", line):
                url = match.group(1)
        if url is None:
            raise RuntimeError("The loopback Hub subprocess did not start:\n" + "".join(seen))
        if startup is not None:
            startup.extend(seen)
        stderr = proc.stderr
        threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()  # never let the pipe fill
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
