"""HTTP details of the loopback Hub that are not about repos: request bodies, ranges, responses, errors.

Kept apart from the routes so that each route reads as "what the Hub answers", and from the server so that
the socket handling (faults, streaming) has one small place.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from mergebench.hubserver.store import RequestError

CHUNK = 1 << 20
JSON_TYPE = "application/json; charset=utf-8"
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class Body:
    """A request body read incrementally, from ``Content-Length`` or ``Transfer-Encoding: chunked``.

    Uploads can be hundreds of MB: routes stream them (:meth:`iter_chunks`, :meth:`readline`) instead of
    holding them in memory.
    """

    def __init__(self, rfile: BinaryIO | io.BufferedIOBase, headers: Message) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._buf = b""
        self._chunk_left = 0
        self._done = False
        length = headers.get("Content-Length")
        self._remaining = 0
        if not self._chunked and length is not None:
            if not length.strip().isdigit():
                self._done = True
                raise RequestError(400, f"Invalid Content-Length header: '{length}'.")
            self._remaining = int(length)
        self._done = not self._chunked and self._remaining == 0

    def _raw(self, n: int) -> bytes:
        """Up to ``n`` bytes of the body, fewer only at its end (``b""``)."""
        if self._done:
            return b""
        if not self._chunked:
            data = self._rfile.read(min(n, self._remaining))
            if not data:
                self._done = True
                raise RequestError(400, "The request body ended before its Content-Length.")
            self._remaining -= len(data)
            self._done = self._remaining == 0
            return data
        if self._chunk_left == 0:
            line = self._rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                self._chunk_left = int(line, 16)
            except ValueError:
                self._done = True
                raise RequestError(400, f"Invalid chunk size line in a chunked body: {line[:40]!r}.") from None
            if self._chunk_left == 0:
                while self._rfile.readline(1024).strip():  # trailers, then the final empty line
                    pass
                self._done = True
                return b""
        data = self._rfile.read(min(n, self._chunk_left))
        if not data:
            self._done = True
            raise RequestError(400, "The chunked request body ended early.")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._rfile.readline(1024)  # the CRLF closing the chunk
        return data

    def read(self, n: int) -> bytes:
        if self._buf:
            data, self._buf = self._buf[:n], self._buf[n:]
            return data
        return self._raw(n)

    def iter_chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        while data := self.read(size):
            yield data

    def readline(self, limit: int) -> bytes:
        """One line including its ``\\n`` (the last one may lack it); 413 if longer than ``limit``."""
        while b"\n" not in self._buf:
            data = self._raw(CHUNK)
            if not data:
                line, self._buf = self._buf, b""
                return line
            self._buf += data
            if len(self._buf) > limit and b"\n" not in self._buf:
                raise RequestError(413, f"A line of the request body is longer than {limit} bytes.")
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def read_all(self, limit: int = 64 << 20) -> bytes:
        parts, total = [], 0
        for data in self.iter_chunks():
            total += len(data)
            if total > limit:
                raise RequestError(413, f"Request body larger than {limit} bytes.")
            parts.append(data)
        return b"".join(parts)

    def drain(self, limit: int = CHUNK) -> bool:
        """Discard what is left (at most ``limit`` bytes). ``False``: the connection must be closed."""
        self._buf = b""
        try:
            total = 0
            while data := self._raw(CHUNK):
                total += len(data)
                if total > limit:
                    return False
        except (RequestError, OSError):
            return False
        return True


@dataclass
class Request:
    """A parsed request. ``segments`` are the URL path's segments, each percent-decoded once."""

    method: str
    path: str
    segments: list[str]
    query: dict[str, list[str]]
    headers: Message
    body: Body
    base_url: str

    @classmethod
    def parse(cls, method: str, target: str, headers: Message, body: Body, default_base: str) -> Request:
        try:
            parts = urlsplit(target)
        except ValueError:
            raise RequestError(400, f"Cannot parse the request target {target[:100]!r}.") from None
        raw = [s for s in parts.path.split("/")]
        while raw and raw[-1] == "":
            raw.pop()
        segments = [unquote(s) for s in raw[1:]] if raw and raw[0] == "" else [unquote(s) for s in raw]
        host = headers.get("Host")
        return cls(method, "/" + "/".join(segments), segments, parse_qs(parts.query, keep_blank_values=True),
                   headers, body, f"http://{host}" if host else default_base)

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> Any:
        raw = self.body.read_all()
        try:
            return json.loads(raw or b"null")
        except ValueError as e:
            raise RequestError(400, f"The request body is not valid JSON: {e}.") from None

    def json_object(self) -> dict:
        data = self.json()
        if not isinstance(data, dict):
            raise RequestError(400, "The request body must be a JSON object.")
        return data

    @property
    def accepts_text(self) -> bool:
        accept = self.headers.get("Accept", "")
        return "text/plain" in accept and "application/json" not in accept


@dataclass
class Response:
    """What to send. A file body is sent from ``file`` (already open, positioned by the sender) in chunks."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: BinaryIO | None = None
    file_start: int = 0
    file_length: int = 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(obj).encode()
    return Response(status, {"Content-Type": JSON_TYPE, **(headers or {})}, body)


def text_response(text: str, status: int = 200) -> Response:
    return Response(status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode())


def error_response(error: RequestError) -> Response:
    """The Hub's error shape: ``X-Error-Code``/``X-Error-Message`` headers (all HEAD has) and ``{"error"}``."""
    headers = dict(error.headers)
    if error.code:
        headers["X-Error-Code"] = error.code
    headers["X-Error-Message"] = error.message.encode("ascii", "replace").decode()
    return json_response({"error": error.message}, error.status, headers)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a ``Range`` header asks for, or ``None`` to send the whole file.

    Follows RFC 9110: a header that is not one well-formed ``bytes=`` range (other units, several ranges,
    ``a > b``) is ignored; a well-formed range that misses the file raises 416 with ``Content-Range: bytes */size``.
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None
        if start >= size:
            raise _unsatisfiable(header, size)
        return start, min(end, size - 1)
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise _unsatisfiable(header, size)
    return max(0, size - suffix), size - 1


def _unsatisfiable(header: str, size: int) -> RequestError:
    return RequestError(416, f"Range '{header}' is not satisfiable for a file of {size} bytes.",
                        headers={"Content-Range": f"bytes */{size}"})
