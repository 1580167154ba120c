"""Fault injection and request accounting, observed with a raw HTTP client and with the real Hub client."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError

from mergebench.hubserver import LoopbackHub

REPO = "org/faulty"


@pytest.fixture
def blob(hub: LoopbackHub) -> bytes:
    data = bytes(range(256)) * 40  # 10 240 bytes
    folder = hub.repo_dir(REPO)
    folder.mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(data)
    (folder / "config.json").write_text("{}")
    return data


@pytest.fixture
def blob_repo_root(hub_root: Path) -> Path:
    """The ``blob`` repo written into ``hub_root`` for a server started by the test itself."""
    folder = hub_root / "models" / REPO
    folder.mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(bytes(range(256)) * 40)
    return hub_root


def _get(hub: LoopbackHub, filename: str = "weights.safetensors", **kwargs: object) -> httpx.Response:
    return httpx.get(hf_hub_url(REPO, filename, endpoint=hub.url), **kwargs)


def test_drop_after_bytes_cuts_the_body_once(hub, blob) -> None:
    rule = hub.faults.drop_after_bytes(1000, times=1, path_glob="*.safetensors")
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), \
            httpx.stream("GET", hf_hub_url(REPO, "weights.safetensors", endpoint=hub.url)) as r:
        assert r.status_code == 200 and r.headers["Content-Length"] == str(len(blob))
        for chunk in r.iter_bytes():
            received += chunk
    assert bytes(received) == blob[:1000]
    assert rule.fired == 1 and hub.faults.rules == []
    assert _get(hub).content == blob  # expired after one use
    assert _get(hub, "config.json").content == b"{}"
    assert hub.stats.bytes_for("*.safetensors") == 1000 + len(blob)


def test_drop_only_matches_its_glob(hub, blob) -> None:
    hub.faults.drop_after_bytes(0, times=None, path_glob="config.json")
    assert _get(hub).content == blob
    with pytest.raises(httpx.RemoteProtocolError):
        _get(hub, "config.json")
    hub.faults.clear()
    assert _get(hub, "config.json").content == b"{}"


def test_hf_hub_download_resumes_after_a_drop(hub, blob) -> None:
    # The client reads 10 MiB chunks and keeps only whole chunks: a drop past the first chunk resumes with
    # a Range request; the bytes of the unfinished chunk are fetched twice, everything else once.
    chunk = 10 * 1024 * 1024
    big = blob * (chunk // len(blob) + 20)
    (hub.repo_dir(REPO) / "big.bin").write_bytes(big)
    hub.faults.drop_after_bytes(chunk + 5000, times=1, path_glob="big.bin")
    path = hf_hub_download(REPO, "big.bin")
    assert Path(path).read_bytes() == big
    assert hub.stats.count("GET", "big.bin") == 2
    assert hub.stats.bytes_for("big.bin") == len(big) + 5000


def test_http_error_then_recovery(hub, blob) -> None:
    rule = hub.faults.http_error(503, times=2, path_glob="*.safetensors")
    first, second, third = _get(hub), _get(hub), _get(hub)
    assert (first.status_code, second.status_code, third.status_code) == (503, 503, 200)
    assert first.json() == {"error": "Injected fault: HTTP 503."} and third.content == blob
    assert rule.fired == 2
    hub.faults.http_error(500, times=1, path_glob="/api/models/*", method="GET")
    with pytest.raises(HfHubHTTPError) as info:
        HfApi().model_info(REPO)
    assert info.value.response.status_code == 500
    assert HfApi().model_info(REPO).id == REPO


def test_delay_slows_each_chunk_until_cleared(hub, blob) -> None:
    hub.faults.delay(0.15, path_glob="*.safetensors")
    start = time.monotonic()
    assert _get(hub).content == blob
    slow = time.monotonic() - start
    assert slow >= 0.3  # before the headers and before the one body chunk
    hub.faults.clear()
    start = time.monotonic()
    assert _get(hub).content == blob
    assert time.monotonic() - start < slow


def test_stall_sends_the_first_bytes_then_nothing_until_the_client_times_out(hub, blob) -> None:
    rule = hub.faults.stall_after_bytes(1000, times=1, path_glob="*.safetensors")
    received = bytearray()
    with pytest.raises(httpx.ReadTimeout), httpx.stream(
            "GET", hf_hub_url(REPO, "weights.safetensors", endpoint=hub.url), timeout=0.3) as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            received += chunk
    assert bytes(received) == blob[:1000] and rule.fired == 1
    assert _get(hub).content == blob  # expired after one use


def test_a_timed_stall_pauses_then_sends_the_rest(hub, blob) -> None:
    hub.faults.stall_after_bytes(0, seconds=0.3, path_glob="*.safetensors")
    start = time.monotonic()
    assert _get(hub).content == blob
    assert time.monotonic() - start >= 0.3


def test_a_file_that_shrinks_while_served_cuts_the_connection_and_counts_only_what_was_sent(hub, blob) -> None:
    """File bodies leave by ``sendfile``: a file cut short under the server ends in a cut connection, never in
    a body padded or misaligned, and the byte count stays exact."""
    hub.faults.stall_after_bytes(4000, seconds=0.5, times=1, path_glob="*.safetensors")
    path = hub.repo_dir(REPO) / "weights.safetensors"
    received = bytearray()

    def truncate() -> None:
        time.sleep(0.2)  # inside the stall: 4000 bytes sent, the rest not yet
        with path.open("r+b") as f:
            f.truncate(6000)

    cutter = threading.Thread(target=truncate)
    with pytest.raises(httpx.RemoteProtocolError), \
            httpx.stream("GET", hf_hub_url(REPO, "weights.safetensors", endpoint=hub.url)) as r:
        assert r.headers["Content-Length"] == str(len(blob))
        cutter.start()
        for chunk in r.iter_bytes():
            received += chunk
    cutter.join()
    assert bytes(received) == blob[:6000]
    assert hub.stats.bytes_for("*.safetensors") == 6000


def test_stopping_the_server_ends_a_stall(blob_repo_root) -> None:
    outcome: list[BaseException | bytes] = []
    with LoopbackHub(blob_repo_root) as hub:
        hub.faults.stall_after_bytes(100, times=None)
        url = hf_hub_url(REPO, "weights.safetensors", endpoint=hub.url)

        def read() -> None:
            try:
                outcome.append(httpx.get(url, timeout=None).content)
            except httpx.HTTPError as e:
                outcome.append(e)

        client = threading.Thread(target=read, daemon=True)
        client.start()
        time.sleep(0.3)
        assert client.is_alive() and hub.faults.rules[0].fired == 1
    client.join(5)
    assert not client.is_alive() and isinstance(outcome[0], httpx.RemoteProtocolError)


def test_stats_count_requests_and_bytes_and_reset(hub, blob) -> None:
    hub.stats.reset()
    _get(hub, headers={"Range": "bytes=0-99"})
    _get(hub, headers={"Range": "bytes=-10"})
    httpx.head(hf_hub_url(REPO, "weights.safetensors", endpoint=hub.url))
    path = f"/{REPO}/resolve/main/weights.safetensors"
    assert hub.stats.requests == {("GET", path): 2, ("HEAD", path): 1}
    assert hub.stats.bytes_served == {path: 110}
    assert hub.stats.count("GET", "*.safetensors") == 2 and hub.stats.count(path_glob="*.json") == 0
    hub.stats.reset()
    assert hub.stats.requests == {} and hub.stats.bytes_for() == 0


def test_fault_arguments_are_checked(hub) -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        hub.faults.http_error(302)
    with pytest.raises(ValueError, match="times must be"):
        hub.faults.drop_after_bytes(10, times=0)
    with pytest.raises(ValueError, match="n >= 0"):
        hub.faults.drop_after_bytes(-1)
    with pytest.raises(ValueError, match="n >= 0"):
        hub.faults.stall_after_bytes(-1)
    with pytest.raises(ValueError, match="seconds >= 0 or None"):
        hub.faults.stall_after_bytes(0, seconds=-1)


def test_http_error_can_carry_retry_after(hub, blob) -> None:
    hub.faults.http_error(429, times=1, path_glob="*.safetensors", retry_after=1.5)
    first, second = _get(hub), _get(hub)
    assert first.status_code == 429 and first.headers["Retry-After"] == "1.5"
    assert second.status_code == 200 and "Retry-After" not in second.headers and second.content == blob


def test_throttle_limits_the_body_rate(hub, blob) -> None:
    hub.faults.throttle(4096, times=1, path_glob="*.safetensors")  # 10 240 bytes at 4 KiB/s: at least 2 s
    started = time.monotonic()
    slow = _get(hub)
    slow_seconds = time.monotonic() - started
    assert slow.content == blob and slow_seconds >= 2.0
    started = time.monotonic()
    assert _get(hub).content == blob and time.monotonic() - started < slow_seconds  # expired after one request


def test_short_body_lies_consistently_and_a_ranged_read_sees_the_gap(hub, blob) -> None:
    hub.faults.short_body(1000, times=2, path_glob="*.safetensors")
    whole = _get(hub)
    assert whole.status_code == 200 and int(whole.headers["Content-Length"]) == len(blob) - 1000
    assert whole.content == blob[:-1000]  # nothing at the HTTP level says it is short
    ranged = _get(hub, headers={"Range": "bytes=2000-5999"})
    assert ranged.status_code == 206 and ranged.headers["Content-Range"] == f"bytes 2000-5999/{len(blob)}"
    assert ranged.content == blob[2000:5000]  # 3000 bytes for a promised 4000
    assert _get(hub).content == blob


def test_a_short_body_is_refused_by_hf_hub_download_and_the_retry_is_whole(hub, blob, tmp_path) -> None:
    """The size the HEAD answer promised is what the client checks, not the lying GET's Content-Length."""
    hub.faults.short_body(1000, times=1, path_glob="*.safetensors")
    with pytest.raises(OSError, match="Consistency check failed"):
        hf_hub_download(REPO, "weights.safetensors", cache_dir=tmp_path, endpoint=hub.url)
    path = hf_hub_download(REPO, "weights.safetensors", cache_dir=tmp_path, endpoint=hub.url)
    assert Path(path).read_bytes() == blob
