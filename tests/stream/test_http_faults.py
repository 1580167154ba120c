"""HttpSource against a misbehaving loopback Hub: stalls time out and resume, drops cost only the bytes in flight.

Every test that could hang on a regression runs its read under a bound (``pytest.mark.timeout`` or a thread
join), so a missing timeout fails the test instead of freezing the suite.
"""

from __future__ import annotations

import http.server
import logging
import threading
import time

import numpy as np
import pytest
import torch
from huggingface_hub import hf_hub_url
from safetensors.numpy import save_file

from mergebench.errors import ConfigError, CorruptFileError
from mergebench.hubserver import LoopbackHub
from mergebench.stream.buffers import BufferPool
from mergebench.stream.format import header_length
from mergebench.stream.sources import HttpSource

REPO = "org/streamed"
FILE = "big.safetensors"
SIZE = 4 * 1024 * 1024 + 12_345  # several MiB, not a multiple of any chunk size
IN_FLIGHT = 64 * 1024  # what one socket read may hold: the most a drop may cost beyond the bytes received


@pytest.fixture
def shard(hub: LoopbackHub) -> tuple[bytes, int]:
    """A one-tensor shard on the Hub: ``(data section, offset of the data section in the file)``."""
    folder = hub.repo_dir(REPO)
    folder.mkdir(parents=True)
    data = np.random.default_rng(0).integers(0, 256, SIZE, dtype=np.uint8)
    save_file({"w": data}, str(folder / FILE))
    with open(folder / FILE, "rb") as f:
        start = 8 + header_length(f.read(8))
    return data.tobytes(), start


def _source(hub: LoopbackHub, **kwargs: object) -> HttpSource:
    """A source whose 8-byte header-length read is done, so faults armed next hit the tensor reads."""
    source = HttpSource(hf_hub_url(REPO, FILE, endpoint=hub.url), model=REPO, filename=FILE, data_size=SIZE,
                        backoff=0.01, **kwargs)  # type: ignore[arg-type]
    source.read(0, 0)
    hub.stats.reset()
    return source


def _read_in_thread(source: HttpSource, limit: float) -> bytes | BaseException:
    """``source.read`` of everything, or what it raised; fails the test if it has not ended within ``limit`` s."""
    outcome: list[bytes | BaseException] = []

    def run() -> None:
        try:
            outcome.append(bytes(source.read(0, SIZE)))
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"the read still hangs after {limit}s"
    return outcome[0]


@pytest.mark.timeout(20)
def test_a_stalled_body_times_out_and_resumes_at_the_byte_reached(hub, shard, monkeypatch, caplog) -> None:
    data, start = shard
    monkeypatch.setenv("MERGEBENCH_READ_TIMEOUT", "0.5")
    source = _source(hub)
    stall = hub.faults.stall_after_bytes(300_000, times=1, path_glob=FILE)  # silent until the server stops
    with caplog.at_level(logging.WARNING, logger="mergebench.stream.sources"):
        assert bytes(source.read(0, SIZE)) == data
    assert stall.fired == 1 and hub.stats.count("GET", FILE) == 2
    assert hub.stats.bytes_for(FILE) == SIZE  # the retry asked for the rest only
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "stalled" in warning and FILE in warning and REPO in warning
    assert f"byte {start + 300_000}" in warning


def test_a_permanent_stall_ends_with_a_clear_error_in_bounded_time(hub, shard) -> None:
    source = _source(hub, read_timeout=0.3, retries=2)
    hub.faults.stall_after_bytes(0, times=None, path_glob=FILE)  # headers, then silence, on every request
    began = time.monotonic()
    error = _read_in_thread(source, limit=10)
    assert isinstance(error, OSError), error
    assert time.monotonic() - began < 5  # 3 attempts of 0.3 s and two short back-offs
    message = str(error)
    assert FILE in message and REPO in message and "stalled" in message and "3 attempts" in message
    assert hub.stats.count("GET", FILE) == 3


@pytest.mark.timeout(20)
def test_drops_every_300kB_cost_only_the_bytes_in_flight(hub, shard) -> None:
    data, _ = shard
    source = _source(hub)  # the default retry budget (5) is far below the ~15 drops of this range
    hub.faults.drop_after_bytes(300_000, times=None, path_glob=FILE)
    assert bytes(source.read(0, SIZE)) == data
    assert hub.stats.count("GET", FILE) == -(-SIZE // 300_000)
    assert SIZE <= hub.stats.bytes_for(FILE) <= SIZE + IN_FLIGHT
    middle = bytes(source.read(1_000_001, 2_500_000))
    assert middle == data[1_000_001:2_500_000]


def test_attempts_without_progress_are_bounded(hub, shard) -> None:
    source = _source(hub, retries=2)
    hub.faults.drop_after_bytes(0, times=None, path_glob=FILE)
    error = _read_in_thread(source, limit=10)
    assert isinstance(error, OSError) and "3 attempts" in str(error) and "0/" in str(error), error
    assert hub.stats.count("GET", FILE) == 3


def test_timeouts_come_from_arguments_then_environment(monkeypatch) -> None:
    def timeout(**kwargs: float) -> tuple[float | None, float | None]:
        t = HttpSource("http://127.0.0.1:9/x", model="m", filename="f", data_size=0, **kwargs).timeout
        return t.connect, t.read

    for name in ("MERGEBENCH_READ_TIMEOUT", "MERGEBENCH_CONNECT_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    assert timeout() == (10.0, 30.0)
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "45")  # huggingface_hub's own knob for downloads
    assert timeout() == (10.0, 45.0)
    monkeypatch.setenv("MERGEBENCH_READ_TIMEOUT", "7.5")
    monkeypatch.setenv("MERGEBENCH_CONNECT_TIMEOUT", "2")
    assert timeout() == (2.0, 7.5)
    assert timeout(connect_timeout=1, read_timeout=3) == (1, 3)
    monkeypatch.setenv("MERGEBENCH_READ_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="MERGEBENCH_READ_TIMEOUT='soon'"):
        timeout()
    with pytest.raises(ConfigError, match="read_timeout"):
        timeout(read_timeout=0)


def test_trailing_bytes_after_the_last_tensor_on_the_hub_are_rejected(hub, shard) -> None:
    with open(hub.repo_dir(REPO) / FILE, "ab") as f:
        f.write(b"\0" * 16)
    source = HttpSource(hf_hub_url(REPO, FILE, endpoint=hub.url), model=REPO, filename=FILE, data_size=SIZE)
    with pytest.raises(CorruptFileError, match="has 16 bytes after its last tensor"):
        source.read(0, 8)


class _WrongRangeHandler(http.server.BaseHTTPRequestHandler):
    """Answers every Range request with bytes from offset 0 but a 206 status: a broken proxy."""

    def do_GET(self) -> None:
        body = bytes(range(256)) * 4
        first, _, last = self.headers["Range"].removeprefix("bytes=").partition("-")
        n = int(last) - int(first) + 1
        self.send_response(206)
        self.send_header("Content-Range", f"bytes 0-{n - 1}/{len(body)}")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(body[:n])

    def log_message(self, *args: object) -> None:
        pass


def test_an_answer_for_another_range_is_never_stored_as_the_requested_bytes() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WrongRangeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/file.safetensors"
        source = HttpSource(url, model="org/x", filename="file.safetensors", data_size=10)
        with pytest.raises(CorruptFileError, match=r"Range request for byte 100 .* with bytes from 0"):
            source._fetch(100, 110)
    finally:
        server.shutdown()


@pytest.mark.timeout(30)
def test_a_rate_limit_is_waited_out_as_retry_after_asks(hub, shard) -> None:
    """Before, a 429's Retry-After was ignored: quick back-offs (0.01 s doubling, 0.3 s in all here) spent the
    whole retry budget while the Hub was still refusing, and the read failed. Now each retry waits at least what
    the server asked, so a rate limit that lifts after a second is waited out."""
    data, _ = shard
    source = _source(hub)
    hub.faults.http_error(429, times=None, path_glob="*.safetensors", retry_after=0.6)
    threading.Timer(1.0, hub.faults.clear).start()  # the rate limit lifts after 1 s
    started = time.monotonic()
    assert _read_in_thread(source, 20) == data
    assert time.monotonic() - started >= 1.0


def test_a_hub_call_waits_out_retry_after_too(hub, shard) -> None:
    """Small files (configs, indexes) are retried by :func:`mergebench.hub.retry.with_retries`: while the Hub
    rate-limits for 2 s asking for 2.5 s, one wait of 2.5 s replaces the 0.2/0.4/0.8/1.6 s back-off that asked
    five times."""
    from mergebench.hub.retry import get_bytes

    (hub.repo_dir(REPO) / "config.json").write_text('{"ok": 1}')
    hub.faults.http_error(429, times=None, path_glob="config.json", retry_after=2.5)
    threading.Timer(2.0, hub.faults.clear).start()
    hub.stats.reset()
    assert get_bytes(hf_hub_url(REPO, "config.json", endpoint=hub.url)) == b'{"ok": 1}'
    assert hub.stats.count("GET", "config.json") == 2


@pytest.mark.parametrize(("value", "seconds"), [("2", 2.0), ("0.5", 0.5), ("-3", 0.0), ("1e9", 300.0),
                                                ("soon", None), ("nan", None), ("", None)])
def test_retry_after_values(value: str, seconds: float | None) -> None:
    from mergebench.stream.sources import retry_after_seconds

    assert retry_after_seconds({"Retry-After": value}) == seconds


def test_retry_after_as_an_http_date() -> None:
    import email.utils

    from mergebench.stream.sources import retry_after_seconds

    wait = retry_after_seconds({"retry-after": email.utils.formatdate(time.time() + 30, usegmt=True)})
    assert wait is not None and 25 <= wait <= 31
    assert retry_after_seconds({}) is None


@pytest.mark.timeout(20)
def test_pooled_reads_resume_into_their_buffer_and_never_overwrite_a_range_still_viewed(hub, shard) -> None:
    """Ranges received into a BufferPool over real HTTP: a dropped connection resumes into the same buffer, a
    buffer still viewed is not handed to the next read, and once its views are gone it is."""
    data, _ = shard
    pool = BufferPool(SIZE, 4 * SIZE)
    source = _source(hub, buffers=pool)
    drop = hub.faults.drop_after_bytes(1_000_000, times=1, path_glob=FILE)
    first = source.read(0, SIZE)
    assert drop.fired == 1 and bytes(first) == data
    held = torch.frombuffer(first, dtype=torch.uint8)[100:200]  # a tensor made from the range keeps it in use
    address = held.data_ptr() - 100
    del first
    second = source.read(SIZE // 2, SIZE)
    assert bytes(second) == data[SIZE // 2:]
    assert bytes(held.numpy()) == data[100:200], "a range still viewed was overwritten by the next read"
    assert pool.nbytes == 2 * SIZE
    del held, second
    third = source.read(0, 1000)
    assert bytes(third) == data[:1000]
    assert torch.frombuffer(third, dtype=torch.uint8).data_ptr() == address, "the free buffer was not reused"
    assert pool.nbytes == 2 * SIZE
