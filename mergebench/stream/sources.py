"""Byte sources: read ``[begin, end)`` of one safetensors file, locally or over HTTP Range requests.

Offsets given to :meth:`ByteSource.read` are *relative to the data section* (as in the header); each
source learns the header length itself on first use — one 8-byte read — and checks the file is long
enough for its header before any tensor is read, so a truncated shard fails up front.
"""

from __future__ import annotations

import email.utils
import logging
import math
import mmap
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx2 as httpx  # the HTTP client huggingface_hub uses (get_session())
import numpy as np
from huggingface_hub.utils import build_hf_headers, get_session

from mergebench.errors import ConfigError, CorruptFileError, NetworkError
from mergebench.stream.buffers import BufferPool
from mergebench.stream.format import FileHeader, header_length, parse_header

logger = logging.getLogger(__name__)

_PAGE = mmap.PAGESIZE
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform == "linux" else None)
"""Linux's value where Python (3.11) lacks the name; elsewhere pages are touched one by one."""


class ByteSource(Protocol):
    def read(self, begin: int, end: int) -> memoryview: ...

    def release(self, begin: int, end: int) -> None:
        """The range will not be read again: free what holds it."""

    def close(self) -> None: ...


class LocalSource:
    """A memory-mapped local file: reads are zero-copy views, paged in ahead of use by the reader's threads.

    Pages of a mapping count towards the process's resident memory while mapped, so streaming a large
    model through one map would grow RSS to the model's size. :meth:`release` drops the pages of a
    consumed range from the mapping (``MADV_DONTNEED``; they stay in the OS page cache), which keeps
    RSS at the read-ahead budget without copying.
    """

    def __init__(self, path: Path, *, model: str, data_size: int) -> None:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise CorruptFileError(f"'{path.name}' in '{model}' is truncated ({size} bytes).",
                                       model=model, filename=path.name)
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._start = 8 + header_length(self._map[:8])
        if size != self._start + data_size:  # the data section ends exactly at the last tensor (format spec)
            self._map.close()
            raise CorruptFileError(f"'{path.name}' in '{model}' {_size_problem(size, self._start + data_size)}.",
                                   model=model, filename=path.name, hint="Re-download or re-save the shard.")

    def read(self, begin: int, end: int) -> memoryview:
        view = memoryview(self._map)[self._start + begin: self._start + end]
        if len(view):  # map every page now (on a read thread) so the consumer never waits on the disk
            start = (self._start + begin) // _PAGE * _PAGE
            try:  # one call instead of a page fault per page (Linux ≥ 5.14)
                if _MADV_POPULATE_READ is None:
                    raise OSError("MADV_POPULATE_READ is not available")
                self._map.madvise(_MADV_POPULATE_READ, start, self._start + end - start)
            except OSError:
                np.frombuffer(view, dtype=np.uint8)[::_PAGE].sum()
        return view

    def release(self, begin: int, end: int) -> None:
        start = (self._start + begin) // _PAGE * _PAGE
        self._map.madvise(mmap.MADV_DONTNEED, start, self._start + end - start)

    def close(self) -> None:
        pass  # views handed out may still be alive; the map is unmapped when the last one is dropped


DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to open a connection (``MERGEBENCH_CONNECT_TIMEOUT``)."""
DEFAULT_READ_TIMEOUT = 30.0
"""Seconds without a byte before a read counts as stalled (``MERGEBENCH_READ_TIMEOUT``, else
``HF_HUB_DOWNLOAD_TIMEOUT``, the variable ``huggingface_hub`` reads for its own downloads)."""


class HttpSource:
    """One file on the Hub read with Range requests on its pinned resolve URL.

    A dropped connection, a stalled one (no byte for ``read_timeout`` seconds) or a 5xx/429 answer is retried
    with exponential back-off, resuming at the first byte not yet received — the body is consumed as it
    arrives — so a flaky network costs at most the bytes in flight. ``retries`` bounds the attempts *in a
    row* that receive nothing: a connection that keeps dropping but makes progress each time still finishes.
    ``connect_timeout``/``read_timeout`` default to :data:`DEFAULT_CONNECT_TIMEOUT`/:data:`DEFAULT_READ_TIMEOUT`
    or the environment variables named there: a hung link must never hang a merge.
    """

    def __init__(self, url: str, *, model: str, filename: str, data_size: int,
                 retries: int = 5, backoff: float = 0.2,
                 connect_timeout: float | None = None, read_timeout: float | None = None,
                 buffers: BufferPool | None = None) -> None:
        self._url, self._model, self._filename = url, model, filename
        self._retries, self._backoff = retries, backoff
        self.timeout = http_timeout(connect_timeout, read_timeout)
        # no compression: Range offsets must count the file's own bytes (as huggingface_hub's downloads do)
        self._headers = {**build_hf_headers(), "Accept-Encoding": "identity"}
        self._lock = threading.Lock()
        self._data_start: int | None = None
        self._data_size = data_size
        self._buffers = buffers
        self.bytes_fetched = 0

    def _start(self) -> int:
        with self._lock:
            if self._data_start is None:
                prefix, total = self._fetch(0, 8, want_total=True)
                start = 8 + header_length(bytes(prefix))
                expected = start + self._data_size
                if total is not None and total != expected:
                    raise CorruptFileError(
                        f"'{self._filename}' in '{self._model}' on the Hub {_size_problem(total, expected)}.",
                        model=self._model, filename=self._filename, hint="Re-upload the shard.")
                self._data_start = start
            return self._data_start

    def read_header(self) -> FileHeader:
        """The file's parsed header, read with the same resumable Range requests as its tensors (a link that
        drops every few kB still delivers it) and checked against the file's size.

        Raises:
            ValueError: the header is not a valid safetensors header. CorruptFileError: the file is not as long
                as its header says.
        """
        with self._lock:
            prefix, total = self._fetch(0, 8, want_total=True)
            n = header_length(bytes(prefix))
            raw, _ = self._fetch(8, 8 + n)
            header = parse_header(bytes(raw))
            expected = 8 + n + header.data_size
            if total is not None and total != expected:
                raise CorruptFileError(
                    f"'{self._filename}' in '{self._model}' on the Hub {_size_problem(total, expected)}.",
                    model=self._model, filename=self._filename, hint="Re-upload the shard.")
            self._data_start, self._data_size = 8 + n, header.data_size
        return header

    def read(self, begin: int, end: int) -> memoryview:
        start = self._start()
        data, _ = self._fetch(start + begin, start + end, pooled=True)
        return data

    def _fetch(self, begin: int, end: int, *, want_total: bool = False,
               pooled: bool = False) -> tuple[memoryview, int | None]:
        """Bytes ``[begin, end)`` of the file, retried until complete or ``retries + 1`` attempts in a row fail;
        ``pooled``: received into a buffer of the pool, if this source has one."""
        n = end - begin
        buf = self._buffers.take(n) if pooled and self._buffers is not None else memoryview(bytearray(n))
        t = _Transfer(begin, buf)
        idle = 0  # attempts in a row that received nothing
        while not t.done:
            reached = t.got
            try:
                self._attempt(t, want_total)
            except (_Retryable, httpx.TransportError) as e:
                # progress resets the budget, but not when the attempt ended in a stall: a link that trickles a
                # few bytes and then goes silent on every request must end in an error, not crawl for hours
                stalled = isinstance(e, httpx.TimeoutException)
                idle = 0 if t.got > reached and not stalled else idle + 1
                if idle > self._retries:
                    raise NetworkError(
                        f"Reading '{self._filename}' of '{self._model}' failed: {idle} attempts in a row received "
                        f"nothing or stalled ({t.got}/{len(t.buf)} bytes of the range received, at byte {t.position}); "
                        f"the last one: {self._describe(e)}.", model=self._model, filename=self._filename) from e
                delay = max(self._backoff * 2 ** max(idle - 1, 0), getattr(e, "wait", None) or 0.0)
                logger.warning("Retrying %s of %s at byte %d in %gs: %s", self._filename, self._model,
                               t.position, delay, self._describe(e))
                time.sleep(delay)
        return t.buf, t.total

    def _attempt(self, t: _Transfer, want_total: bool) -> None:
        """One Range request for what ``t`` still lacks, copying the body into ``t`` as it arrives."""
        headers = {**self._headers, "Range": f"bytes={t.position}-{t.begin + len(t.buf) - 1}"}
        with get_session().stream("GET", self._url, headers=headers, follow_redirects=True,
                                  timeout=self.timeout) as response:
            self._check(response, t)
            first, total = _content_range(response.headers.get("Content-Range", ""))
            if first is not None and first != t.position:  # bytes of another offset would be stored as these
                raise CorruptFileError(
                    f"The Hub answered a Range request for byte {t.position} of '{self._filename}' of '{self._model}' "
                    f"with bytes from {first}.", model=self._model, filename=self._filename,
                    hint="A proxy between you and the Hub is rewriting Range requests; bypass it.")
            if want_total and t.total is None:
                t.total = total
            for chunk in response.iter_bytes():  # no chunk size: nothing received is held back
                n = min(len(chunk), len(t.buf) - t.got)
                t.buf[t.got: t.got + n] = chunk[:n]
                t.got += n
                self.bytes_fetched += n
        if not t.done:
            raise _Retryable("connection closed early")

    def _check(self, response: httpx.Response, t: _Transfer) -> None:
        """Retry answers a later attempt may not get (429, 5xx); fail on those no retry can fix."""
        if response.status_code in (429, 500, 502, 503, 504):
            raise _Retryable(f"HTTP {response.status_code}", wait=retry_after_seconds(response.headers))
        if 400 <= response.status_code < 500 and response.status_code != 416:
            hint = ("Log in (`hf auth login`) or set HF_TOKEN with access to the repo."
                    if response.status_code in (401, 403) else "The file may have been deleted; re-upload it.")
            raise NetworkError(f"The Hub answered HTTP {response.status_code} for '{self._filename}' of "
                               f"'{self._model}'.", model=self._model, filename=self._filename, hint=hint)
        if response.status_code == 416:
            raise CorruptFileError(
                f"'{self._filename}' in '{self._model}' is shorter than its header says "
                f"(bytes {t.position}-{t.begin + len(t.buf) - 1} are not there).",
                model=self._model, filename=self._filename, hint="Re-upload the shard.")
        response.raise_for_status()
        if response.status_code != 206:
            raise CorruptFileError(
                f"The server ignored the Range request for '{self._filename}' of '{self._model}'.",
                model=self._model, filename=self._filename)

    def _describe(self, error: Exception) -> str:
        """What went wrong, in words: a read timeout is a stall, worth saying so with the time waited."""
        if isinstance(error, httpx.ReadTimeout):
            return f"connection stalled (no data for {self.timeout.read:g}s)"
        if isinstance(error, httpx.ConnectTimeout):
            return f"no connection within {self.timeout.connect:g}s"
        return str(error) or type(error).__name__

    def release(self, begin: int, end: int) -> None:
        pass  # the buffer returned by read() is freed when its last view is dropped

    def close(self) -> None:
        pass


@dataclass
class _Transfer:
    """A range being fetched: ``buf`` holds bytes ``[begin, begin + got)`` of the file so far."""

    begin: int
    buf: memoryview  # of unsigned bytes
    got: int = 0
    total: int | None = None  # the file's size, from Content-Range

    @property
    def done(self) -> bool:
        return self.got >= len(self.buf)

    @property
    def position(self) -> int:
        """The first byte of the file not received yet: where the next attempt resumes."""
        return self.begin + self.got


def http_timeout(connect: float | None = None, read: float | None = None) -> httpx.Timeout:
    """Timeouts of every MergeBench HTTP request: the arguments, else the environment variables named at
    :data:`DEFAULT_CONNECT_TIMEOUT`/:data:`DEFAULT_READ_TIMEOUT`, else those defaults."""
    connect_s = _timeout("connect_timeout", connect, ("MERGEBENCH_CONNECT_TIMEOUT",), DEFAULT_CONNECT_TIMEOUT)
    read_s = _timeout("read_timeout", read, ("MERGEBENCH_READ_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"),
                      DEFAULT_READ_TIMEOUT)
    return httpx.Timeout(connect=connect_s, read=read_s, write=read_s, pool=read_s)


def _timeout(name: str, value: float | None, env: tuple[str, ...], default: float) -> float:
    """``value``, else the first of the ``env`` variables that is set, else ``default``."""
    if value is not None:
        return _positive_seconds(value, name, default)
    for var in env:
        raw = os.environ.get(var, "").strip()
        if raw:
            try:
                seconds = float(raw)
            except ValueError:
                seconds = float("nan")
            return _positive_seconds(seconds, f"{var}={raw!r}", default)
    return default


def _positive_seconds(seconds: float, origin: str, default: float) -> float:
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{origin} is not a timeout: it must be a positive, finite number of seconds.",
                          hint=f"Use e.g. {default:g} (seconds).")
    return seconds


class _Retryable(Exception):
    def __init__(self, message: str, *, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait  # what the server asked for (Retry-After), if anything


MAX_RETRY_AFTER = 300.0
"""The longest ``Retry-After`` honoured (seconds): a server asking for more is waited on this long."""


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait a 429/503 answer asks for (``Retry-After``: seconds, or an HTTP date), at most
    :data:`MAX_RETRY_AFTER`; ``None`` when absent or unreadable. The Hub rate-limits with 429 + Retry-After, and
    retrying sooner only spends the attempts a retry budget allows."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else None


def _content_range(value: str) -> tuple[int | None, int | None]:
    """``(first byte, file size)`` of a ``Content-Range: bytes FIRST-LAST/SIZE`` header (``None`` when absent)."""
    span, _, total = value.removeprefix("bytes ").rpartition("/")
    first = span.partition("-")[0].strip()
    return (int(first) if first.isdigit() else None), (int(total) if total.isdigit() else None)


def _size_problem(size: int, expected: int) -> str:
    """Why a shard's size disagrees with its header, in words."""
    if size < expected:
        return f"is truncated: {size} bytes, but its header needs {expected}"
    return f"has {size - expected} bytes after its last tensor ({size} bytes, its header describes {expected})"
