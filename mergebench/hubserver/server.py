"""The loopback Hub's HTTP server: stdlib ``ThreadingHTTPServer``, one thread per connection, HTTP/1.1.

A real socket (not a mocked transport) so that the unmodified ``huggingface_hub`` client, the ``hf`` CLI in
a subprocess, ``datasets`` and ``transformers`` all talk to it through ``HF_ENDPOINT``. Faults and accounting
are applied here, where the bytes leave: a handler exception becomes a JSON 500 and the server keeps going.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from mergebench.errors import ConfigError
from mergebench.hubserver.faults import FaultRule, Faults, Stats
from mergebench.hubserver.jobs import cancel_running
from mergebench.hubserver.link import Link
from mergebench.hubserver.routes import dispatch
from mergebench.hubserver.store import REPO_TYPES, RequestError, Store
from mergebench.hubserver.wire import CHUNK, Body, Request, Response, error_response, json_response

logger = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], hub: LoopbackHub) -> None:
        self.hub = hub
        self.stopping = threading.Event()  # set by LoopbackHub.stop(): ends injected stalls
        self.connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        with self._conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[no-untyped-def]
        with self._conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        """A client that hangs up mid-request (a reset or a broken pipe: it gave up, timed out or was killed) is
        the client's business, logged at debug level; anything else is a server bug, logged with its traceback.
        (socketserver's default prints every one to stderr, where it mixed into the output of the process
        hosting the server.)"""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            logger.debug("loopback Hub: %s hung up: %s", client_address, error)
            return
        logger.exception("loopback Hub: error while serving %s", client_address)

    def close_connections(self) -> None:
        """Cut idle keep-alive connections too, so no handler thread outlives the server."""
        with self._conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Cut(Exception):
    """Raised to drop the connection mid-body (fault injection, or the file shrank under us)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 300  # idle keep-alive connections end eventually even if nobody stops the server
    disable_nagle_algorithm = True
    """TCP_NODELAY, as web servers set it: with Nagle's algorithm a small body written after its headers waits for
    the client's delayed ACK of them, about 40 ms per answer (a 64 KiB Range read took 11 ms on four threads)."""

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, unknown method) as JSON, like every other error."""
        self.close_connection = True
        text = message or self.responses.get(code, ("Error",))[0]
        body = json.dumps({"error": f"{text}: {explain}" if explain else text}).encode()
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _handle(self) -> None:
        hub = self.server.hub
        method, delay, body, path, injected = self.command, None, None, self.path, False
        try:
            body = Body(self.rfile, self.headers)
            req = Request.parse(method, self.path, self.headers, body, hub.url)
            path = req.path
            hub.stats.record_request(method, path)
            delay = hub.faults.take("delay", method, path)
            if delay is not None:
                time.sleep(delay.seconds)
            if (rule := hub.faults.take("error", method, path)) is not None:
                retry = {} if rule.retry_after is None else {"Retry-After": f"{rule.retry_after:g}"}
                response = json_response({"error": f"Injected fault: HTTP {rule.status}."}, rule.status, retry)
                injected = True
            else:
                response = dispatch(req, hub.store)
        except RequestError as e:
            response = error_response(e)
        except Exception as e:  # one bad request must not take the server down
            logger.exception("loopback Hub: %s %s failed", method, path)
            response = json_response({"error": f"Internal error of the loopback Hub: {type(e).__name__}: {e}"}, 500)
        if body is None or not body.drain():
            self.close_connection = True
        try:
            self._send(response, method, path, delay, body_faults=not injected)
        except _Cut:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as e:
            logger.debug("client went away during %s %s: %s", method, path, e)
            self.close_connection = True
        finally:
            response.close()

    def _send(self, response: Response, method: str, path: str, delay: FaultRule | None, *,
              body_faults: bool = True) -> None:
        """Headers, then the body in chunks, with the body faults armed for this request (unless ``body_faults``
        is false: an injected error is the request's fault): a file download or an API answer alike (a Job
        launched whose answer is lost is a fault clients must survive too). A file's chunks go by ``sendfile``,
        from the page cache to the socket without passing through Python: serving 4.8 GB took 3.9–4.4 s of CPU
        instead of 4.4–4.7 s (most of it is the kernel's copy into the loopback socket either way)."""
        if response.file is not None:
            source, start, length = response.file, response.file_start, response.file_length
        else:
            source, start, length = io.BytesIO(response.body), 0, len(response.body)
        faults = self.server.hub.faults
        short = faults.take("short", method, path) if body_faults and method != "HEAD" else None
        if short is not None:
            logger.info("fault: serving %s %s %d bytes short, with a Content-Length to match", method, path,
                        short.short_by)
            length = max(0, length - short.short_by)
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if method == "HEAD":
            return
        drop, stall, throttle = ((faults.take("drop", method, path), faults.take("stall", method, path),
                                  faults.take("throttle", method, path)) if body_faults else (None, None, None))
        source.seek(start)
        # the Hub's shared link, and a throttled answer's own link at the fault's rate: slices paced the same way
        links = [self.server.hub.link, *([Link(throttle.rate)] if throttle is not None else [])]
        sent, stats = 0, self.server.hub.stats
        while sent < length:
            n = min(CHUNK, length - sent)
            for link in links:
                n = link.slice_bytes(n)
            if drop is not None:
                n = min(n, drop.after_bytes - sent)
                if n <= 0:
                    logger.info("fault: dropping %s %s after %d bytes", method, path, sent)
                    raise _Cut
            if stall is not None:
                if sent >= stall.after_bytes:
                    self._stall(stall, method, path, sent)
                    stall = None
                else:
                    n = min(n, stall.after_bytes - sent)
            if delay is not None:
                time.sleep(delay.seconds)
            for link in links:
                link.wait(n)
            if response.file is not None:
                stats.record_bytes(path, n)  # before the write: a client never has bytes not yet counted
                done = self.connection.sendfile(source, start + sent, n)
                if done < n:
                    stats.record_bytes(path, done - n)
            else:
                data = source.read(n)
                done = len(data)
                self.wfile.write(data)
            if not done:
                logger.warning("%s shrank while being served; cutting the connection", path)
                raise _Cut
            sent += done

    def _stall(self, rule: FaultRule, method: str, path: str, sent: int) -> None:
        """Hold the connection open and silent (flushed, so the client has every byte sent so far)."""
        logger.info("fault: stalling %s %s after %d bytes for %s", method, path, sent,
                    "ever" if rule.pause is None else f"{rule.pause}s")
        self.wfile.flush()
        if self.server.stopping.wait(rule.pause):
            raise _Cut


class LoopbackHub:
    """A Hub on 127.0.0.1 serving the repo folders under ``root``; start it with ``with`` (background thread).

    Point the client at ``url`` with ``HF_ENDPOINT`` and ``HF_HUB_DISABLE_XET=1`` (``client_env()``), and
    patch ``huggingface_hub.constants.ENDPOINT`` if the client was imported already (it reads the variable
    once). ``faults``, ``stats`` and ``link`` (a shared rate limit, :mod:`.link`) can be changed while it runs.

    >>> with LoopbackHub(Path("hub")) as hub:                                     # doctest: +SKIP
    ...     hub.repo_dir("org/model")            # Path("hub/models/org/model")
    ...     HfApi(endpoint=hub.url).model_info("org/model").sha

    Raises:
        ConfigError: ``root`` is not an existing folder, or the port cannot be bound.
    """

    def __init__(self, root: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ConfigError(
                f"The loopback Hub root '{root}' does not exist or is not a folder.",
                hint=f"Create it and put repos in {root}/models/ORG/NAME (datasets/, spaces/ likewise), "
                     f"e.g. `mkdir -p {root}/models`.",
            )
        self.root = root.resolve()
        self.host, self.port = host, port
        self.store = Store(self.root)
        self.faults = Faults()
        self.stats = Stats()
        self.link = Link()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` once bound (the real port when started with ``port=0``)."""
        if self._server is None:
            raise RuntimeError("The loopback Hub is not running: use `with LoopbackHub(root) as hub:` or start().")
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # an AF_INET/AF_INET6 server's address
        return f"http://{host}:{port}"

    def repo_dir(self, repo_id: str, repo_type: str = "model") -> Path:
        """The folder backing a repo (it may not exist yet)."""
        if repo_type not in REPO_TYPES:
            raise ConfigError(f"Unknown repo type '{repo_type}'.", hint=f"Use one of {sorted(REPO_TYPES)}.")
        try:
            return self.store.repo_dir(repo_type, repo_id)
        except RequestError:
            raise ConfigError(f"'{repo_id}' is not a repo id of the form 'org/name'.",
                              hint="Use letters, digits, '-', '_' and '.', e.g. 'mergebench-fixtures/tiny-llama'.",
                              ) from None

    def client_env(self) -> dict[str, str]:
        """Environment variables pointing a ``huggingface_hub`` process (e.g. ``hf``) at this server."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1"}

    def _bind(self) -> _Server:
        if self._server is None:
            try:
                self._server = _Server((self.host, self.port), self)
            except OSError as e:
                raise ConfigError(f"Cannot serve the loopback Hub on {self.host}:{self.port}: {e.strerror or e}.",
                                  hint="Pick another port, or --port 0 for any free one.") from e
        return self._server

    def start(self) -> LoopbackHub:
        """Serve in a daemon thread; returns ``self``."""
        server = self._bind()
        if self._thread is None:
            self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                            name=f"loopback-hub-{self.url}", daemon=True)
            self._thread.start()
            logger.info("loopback Hub serving %s at %s", self.root, self.url)
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (Ctrl-C)."""
        server = self._bind()
        try:
            server.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:
            logger.info("loopback Hub interrupted")
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving, close every connection, release the port and cancel the Jobs still running (no Job
        process outlives the server). Safe to call twice."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.stopping.set()
        if thread is not None:
            server.shutdown()
            thread.join(timeout=10)
        server.close_connections()
        server.server_close()
        self._server = self._thread = None
        cancel_running(self.store)

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def serve(root: Path, host: str = "127.0.0.1", port: int = 8000, *,
          ready: Callable[[LoopbackHub], None] | None = None) -> None:
    """Serve ``root`` until interrupted (blocking, for the CLI); ``ready(hub)`` runs once the port is bound."""
    hub = LoopbackHub(root, host=host, port=port)
    hub._bind()
    logger.info("loopback Hub serving %s at %s", hub.root, hub.url)
    logger.info("export HF_ENDPOINT=%s HF_HUB_DISABLE_XET=1", hub.url)
    if ready is not None:
        ready(hub)
    hub.serve_forever()
