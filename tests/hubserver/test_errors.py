"""Bad input: missing root, repos, files and revisions, malformed requests; the server keeps serving."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from mergebench.errors import ConfigError
from mergebench.hubserver import LoopbackHub
from tests._hub_fixtures import hub_subprocess

REPO = "org/here"


@pytest.fixture
def repo(hub: LoopbackHub) -> Path:
    folder = hub.repo_dir(REPO)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"x": 1}')
    return folder


def _raw(hub: LoopbackHub, data: bytes) -> bytes:
    """Send bytes on a fresh socket and return everything the server answers before closing."""
    host, port = hub.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_missing_root_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist or is not a folder") as info:
        LoopbackHub(tmp_path / "nowhere")
    assert "mkdir -p" in info.value.hint
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError):
        LoopbackHub(tmp_path / "file")


def test_port_in_use_is_a_config_error(hub) -> None:
    port = int(hub.url.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match=f"Cannot serve the loopback Hub on 127.0.0.1:{port}") as info:
        LoopbackHub(hub.root, port=port).start()
    assert "--port 0" in info.value.hint
    assert hub.client_env() == {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_DISABLE_XET": "1"}


def test_missing_repo_revision_and_file_raise_the_client_errors(hub, repo) -> None:
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/absent")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/absent", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info(REPO)  # exists as a model only
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="v1.0")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="0" * 40)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.json")
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree(REPO, path_in_repo="no/such/folder"))
    assert not api.file_exists(REPO, "missing.json") and api.file_exists(REPO, "config.json")
    assert hf_hub_download(REPO, "config.json")  # and the server is fine


def test_error_headers_on_head_and_get(hub, repo) -> None:
    sha = HfApi().model_info(REPO).sha
    missing = httpx.head(hf_hub_url(REPO, "missing.json", endpoint=hub.url))
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == sha
    bad_rev = httpx.get(hf_hub_url(REPO, "config.json", revision="nope", endpoint=hub.url))
    assert bad_rev.status_code == 404 and bad_rev.headers["X-Error-Code"] == "RevisionNotFound"
    assert "Invalid rev id: 'nope'" in bad_rev.json()["error"]
    no_repo = httpx.get(f"{hub.url}/api/models/org/absent")
    assert no_repo.status_code == 404 and no_repo.headers["X-Error-Code"] == "RepoNotFound"
    canonical = httpx.get(f"{hub.url}/gpt2/resolve/main/config.json")
    assert canonical.headers["X-Error-Code"] == "RepoNotFound"


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("GET", "/api/nothing-here", {}, 404),
    ("DELETE", "/org/here/resolve/main/config.json", {}, 405),
    ("POST", "/api/models/org/here/commit/main", {"content": b"not json\n"}, 400),
    ("POST", "/api/models/org/here/commit/main", {"content": b'{"key": "teleport", "value": {}}\n'}, 400),
    ("POST", "/api/models/org/here/commit/main",
     {"content": b'{"key": "file", "value": {"path": "../escape.txt", "content": "eA=="}}\n'}, 400),
    ("POST", "/api/models/org/here/commit/main",
     {"content": b'{"key": "file", "value": {"path": "ok.txt", "content": "%%%"}}\n'}, 400),
    ("POST", "/api/models/org/here/commit/main",
     {"content": b'{"key": "lfsFile", "value": {"path": "w.bin", "oid": "' + b"a" * 64 + b'", "size": 1}}\n'}, 404),
    ("POST", "/api/models/org/here/preupload/main", {"json": {"files": "x"}}, 400),
    ("POST", "/api/repos/create", {"content": b"{"}, 400),
    ("PUT", "/api/lfs-upload/" + "a" * 64, {"content": b"abc", "params": {"size": "3"}}, 400),  # wrong sha256
    ("GET", "/org/here/resolve/main/..%2F..%2Fetc%2Fpasswd", {}, 404),
])
def test_malformed_requests_get_http_errors(hub, repo, method, path, kwargs, status) -> None:
    r = httpx.request(method, hub.url + path, **kwargs)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert sorted(p.name for p in repo.iterdir()) == ["config.json"]  # nothing written
    assert httpx.get(hf_hub_url(REPO, "config.json", endpoint=hub.url)).content == b'{"x": 1}'


@pytest.mark.parametrize("target", [
    b"/api/models/%2E%2E/%2E%2E/tree/main?recursive=true",
    b"/%2E%2E/%2E%2E/resolve/main/etc%2Fpasswd",
    b"/api/datasets/%2E%2E/models",
])
def test_dot_dot_repo_ids_do_not_escape_the_root(hub, repo, target) -> None:
    answer = _raw(hub, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404") and b"X-Error-Code: RepoNotFound" in answer
    with pytest.raises(ConfigError, match="is not a repo id"):
        hub.repo_dir("../escape")


def test_broken_http_is_refused_and_the_server_survives(hub, repo) -> None:
    # An unparseable request line has no HTTP version, so the answer is HTTP/0.9 style: the body only.
    assert _raw(hub, b"GET /x HTTP/1.1 extra\r\n\r\n") == b'{"error": "Bad request version (\'extra\')"}'
    huge_header = _raw(hub, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert huge_header.startswith(b"HTTP/1.1 431")
    bad_length = _raw(hub, b"POST /api/validate-yaml HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    assert bad_length.startswith(b"HTTP/1.1 400") and b"Invalid Content-Length" in bad_length
    bad_chunks = _raw(hub, b"POST /api/validate-yaml HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert bad_chunks.startswith(b"HTTP/1.1 400")
    assert _raw(hub, b"PATCH / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 501")
    payload = b'{"content": "---\\nlicense: mit\\n---\\n"}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:10], payload[10:]))
    chunked = _raw(hub, b"POST /api/validate-yaml HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                        b"Connection: close\r\n\r\n" + chunks + b"0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 200"), chunked
    assert httpx.get(hf_hub_url(REPO, "config.json", endpoint=hub.url)).status_code == 200


def test_a_crashing_handler_is_a_500_and_the_server_keeps_serving(hub, repo, monkeypatch) -> None:
    import mergebench.hubserver.server as server

    real = server.dispatch

    def flaky(req, store):
        if req.path.endswith("boom"):
            raise RuntimeError("kaboom")
        return real(req, store)

    monkeypatch.setattr(server, "dispatch", flaky)
    r = httpx.get(f"{hub.url}/boom")
    assert r.status_code == 500 and "RuntimeError: kaboom" in r.json()["error"]
    assert HfApi().model_info(REPO).id == REPO


def test_serve_command_in_a_subprocess(hub_root, tmp_path) -> None:
    (hub_root / "models" / "org" / "cli").mkdir(parents=True)
    (hub_root / "models" / "org" / "cli" / "a.txt").write_text("served by the CLI")
    with hub_subprocess(hub_root) as url:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/org/cli/resolve/main/a.txt").text == "served by the CLI"
        assert HfApi(endpoint=url).model_info("org/cli").siblings[0].rfilename == "a.txt"
    missing = subprocess.run([sys.executable, "-m", "mergebench.cli.hub", "serve", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert "Error: The loopback Hub root" in missing.stderr and "Hint: Create it" in missing.stderr


def test_a_client_hanging_up_is_not_a_traceback_but_a_server_bug_still_is(hub: LoopbackHub, capsys, caplog) -> None:
    """socketserver printed a traceback to stderr for every client that reset its connection (found by the slow
    fuzz run: it mixed into the output of the command hosting the server)."""
    from mergebench.hubserver.server import _Server

    server = next(s for s in vars(hub).values() if isinstance(s, _Server))
    for hang_up in (ConnectionResetError(104, "Connection reset by peer"), BrokenPipeError(32, "Broken pipe")):
        try:
            raise hang_up
        except OSError:
            server.handle_error(None, ("127.0.0.1", 40000))
    assert capsys.readouterr().err == "" and not [r for r in caplog.records if r.levelname == "ERROR"]
    try:
        raise KeyError("a bug")
    except KeyError:
        server.handle_error(None, ("127.0.0.1", 40001))
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "error while serving" in record.getMessage() and record.exc_info is not None
