"""Merges from a misbehaving loopback Hub: found by the probe campaign (benchmarks/probes.py).

- Every download cut after 20 kB: the shard *headers* were read with one non-resumable request for their
  first 100 kB (huggingface_hub's per-file metadata call), so such a link could never deliver a header.
- A stalled small file (config.json) hung the merge forever: small files were read without a timeout.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mergebench.fixtures import write_family_to_hub_root
from mergebench.merge import MergeOptions, merge

QUIET = MergeOptions(progress=False)
DOMAINS = ("math", "coding")


def _recipe(base: str, experts: list[str]) -> dict:
    return {"method": "task_arithmetic", "base_model": base, "models": [{"model": e} for e in experts]}


@pytest.mark.timeout(120)
def test_a_link_that_drops_every_20kB_still_delivers_headers_and_weights(hub, hub_root: Path, tiny_llama,
                                                                          tmp_path: Path) -> None:
    repos = write_family_to_hub_root(tiny_llama, hub_root)
    local = merge(_recipe(str(tiny_llama.base), [str(tiny_llama.experts[d]) for d in DOMAINS]), tmp_path / "local",
                  options=QUIET)
    hub.faults.drop_after_bytes(20_000, times=None, path_glob="*.safetensors")
    remote = merge(_recipe(repos["base"], [repos[d] for d in DOMAINS]), tmp_path / "remote", options=QUIET)
    files = sorted(p.name for p in local.out_dir.glob("*.safetensors"))
    assert files and all((local.out_dir / f).read_bytes() == (remote.out_dir / f).read_bytes() for f in files)


@pytest.mark.timeout(120)
def test_a_stalled_config_json_ends_in_an_error_not_a_hang(hub, hub_root: Path, tiny_llama, tmp_path: Path,
                                                            monkeypatch) -> None:
    repos = write_family_to_hub_root(tiny_llama, hub_root)
    monkeypatch.setenv("MERGEBENCH_READ_TIMEOUT", "0.5")
    hub.faults.stall_after_bytes(0, times=None, path_glob="config.json")
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            merge(_recipe(repos["base"], [repos["math"]]), tmp_path / "out", options=QUIET)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the merge hangs on a stalled config.json"
    assert outcome and outcome[0] is not None and "timed out" in str(outcome[0]).lower()
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["http_503_always", "http_404_shard", "stall_after_1000_always"])
def test_a_hub_that_never_delivers_ends_in_a_network_error_and_keeps_nothing_wrong(
        fault: str, hub, hub_root: Path, tiny_llama, tmp_path: Path, monkeypatch) -> None:
    """Found by the probe campaign after the header reads moved to the resumable source: these faults ended in
    raw tracebacks (OSError, HTTPStatusError), and a link trickling 1000 bytes per request crawled forever."""
    from mergebench.errors import NetworkError

    repos = write_family_to_hub_root(tiny_llama, hub_root)
    monkeypatch.setenv("MERGEBENCH_READ_TIMEOUT", "0.5")
    if fault == "http_503_always":
        hub.faults.http_error(503, times=None, path_glob="*.safetensors")
    elif fault == "http_404_shard":
        hub.faults.http_error(404, times=None, path_glob="model-00001-*")
    else:
        hub.faults.stall_after_bytes(1000, times=None, path_glob="*.safetensors")
    started = time.monotonic()
    with pytest.raises(NetworkError) as info:
        merge(_recipe(repos["base"], [repos["math"]]), tmp_path / "out", options=QUIET)
    assert time.monotonic() - started < 90
    assert info.value.hint and not (tmp_path / "out").exists()
    if fault == "http_404_shard":
        assert "HTTP 404" in str(info.value) and info.value.filename.startswith("model-00001-")
