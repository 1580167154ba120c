"""``mergebench hub serve`` with fault options, run in a subprocess and observed with a plain HTTP client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from mergebench.cli.hub import hub_app
from tests._hub_fixtures import hub_subprocess

REPO = "org/faulty"
BLOB = bytes(range(256)) * 40  # 10 240 bytes


@pytest.fixture
def root(hub_root: Path) -> Path:
    folder = hub_root / "models" / REPO
    folder.mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(BLOB)
    (folder / "config.json").write_text("{}")
    return hub_root


@contextlib.contextmanager
def serve(root: Path, *options: str) -> Iterator[tuple[str, list[str]]]:
    """The server in a subprocess with ``options``; yields its URL and its stderr up to the URL."""
    startup: list[str] = []
    with hub_subprocess(root, *options, startup=startup) as url:
        yield url, startup


def _url(base: str, filename: str = "weights.safetensors") -> str:
    return f"{base}/{REPO}/resolve/main/{filename}"


def _received(url: str, timeout: float = 5.0) -> tuple[bytes, Exception | None]:
    """The body bytes that arrived, and the error that ended the download early (``None`` if complete)."""
    received = bytearray()
    try:
        with httpx.stream("GET", url, timeout=timeout) as r:
            r.raise_for_status()
            for chunk in r.iter_bytes():
                received += chunk
    except httpx.HTTPError as e:
        return bytes(received), e
    return bytes(received), None


@pytest.mark.timeout(60)
def test_http_error_then_drop_then_recovery(root) -> None:
    options = ("--http-error", "503", "--drop-after-bytes", "1000", "--fault-times", "1",
               "--fault-path", "*.safetensors")
    with serve(root, *options) as (url, stderr):
        assert any("Fault armed: HTTP 503" in line for line in stderr)
        assert any("Fault armed: connection cut after 1000 body bytes" in line for line in stderr)
        assert httpx.get(_url(url, "config.json")).content == b"{}"  # not matched by --fault-path
        first = httpx.get(_url(url))
        assert first.status_code == 503 and first.json() == {"error": "Injected fault: HTTP 503."}
        data, error = _received(_url(url))
        assert data == BLOB[:1000] and isinstance(error, httpx.RemoteProtocolError)
        assert _received(_url(url)) == (BLOB, None)  # each fault hit one request, then expired


@pytest.mark.timeout(60)
def test_stall_on_every_request_until_the_server_stops(root) -> None:
    with serve(root, "--stall-after-bytes", "500", "--fault-times", "0") as (url, stderr):
        assert any("silence after 500 body bytes until the server stops, on every request" in line
                   for line in stderr)
        for _ in range(2):
            data, error = _received(_url(url), timeout=0.5)
            assert data == BLOB[:500] and isinstance(error, httpx.ReadTimeout)


@pytest.mark.parametrize("options, message", [
    (["--http-error", "302"], "--http-error"),
    (["--stall-seconds", "1"], "--stall-seconds needs --stall-after-bytes"),
    (["--fault-times", "-1"], "--fault-times"),
])
def test_bad_fault_options_are_usage_errors(tmp_path, options, message) -> None:
    result = CliRunner().invoke(hub_app, ["serve", str(tmp_path), "--port", "0", *options],
                                env={"COLUMNS": "200"})  # the message on one line of the error box
    assert result.exit_code == 2 and message in result.output


@pytest.mark.timeout(60)
def test_rate_limit_with_retry_after_and_a_short_body_from_the_command_line(root) -> None:
    options = ("--http-error", "429", "--retry-after", "2", "--short-body", "240", "--fault-times", "1",
               "--fault-path", "*.safetensors")
    with serve(root, *options) as (url, stderr):
        assert any("Fault armed: HTTP 429 instead of the answer with Retry-After: 2" in line for line in stderr)
        assert any("Fault armed: bodies 240 bytes short" in line for line in stderr)
        limited = httpx.get(_url(url))
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "2"
        assert _received(_url(url)) == (BLOB[:-240], None)  # short, and nothing at the HTTP level says so
        assert _received(_url(url)) == (BLOB, None)


def test_retry_after_needs_http_error(root) -> None:
    result = CliRunner().invoke(hub_app, ["serve", str(root), "--retry-after", "1"])
    assert result.exit_code == 2 and "--retry-after needs --http-error" in result.output


@pytest.mark.timeout(60)
def test_body_faults_reach_api_answers_of_the_method_asked_for(root) -> None:
    options = ("--drop-after-bytes", "10", "--fault-method", "*", "--fault-times", "1", "--fault-path", "/api/models/*")
    with serve(root, *options) as (url, stderr):
        assert any("Fault armed: connection cut after 10 body bytes, on 1 request(s) matching '/api/models/*'" in line
                   for line in stderr)
        assert _received(_url(url)) == (BLOB, None)  # a file download outside --fault-path
        data, error = _received(f"{url}/api/models/{REPO}")
        assert len(data) == 10 and isinstance(error, httpx.RemoteProtocolError)
        whole = httpx.get(f"{url}/api/models/{REPO}")
        assert whole.status_code == 200 and whole.json()["id"] == REPO
    with serve(root, "--http-error", "503", "--fault-method", "post", "--fault-path", "/api/models/*") as (url, stderr):
        assert any("on 1 request(s) matching POST '/api/models/*'" in line for line in stderr)
        assert httpx.get(f"{url}/api/models/{REPO}").status_code == 200  # a GET: not the method asked for
