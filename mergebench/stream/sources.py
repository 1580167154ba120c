"""Byte sources: read ``[begin, end)`` of one safetensors file, locally or over HTTP Range requests.

Offsets given to :meth:`ByteSource.read` are *relative to the data section* (as in the header); each
source learns the header length itself on first use — one 8-byte read — and checks the file is long
enough for its header before any tensor is read, so a truncated shard fails up front.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

import httpx2 as httpx  # the HTTP client huggingface_hub uses (get_session())
import numpy as np
from huggingface_hub.utils import build_hf_headers, get_session

from mergebench.errors import CorruptFileError
from mergebench.stream.format import header_length

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
        if size < self._start + data_size:
            self._map.close()
            raise CorruptFileError(f"'{path.name}' in '{model}' is truncated ({size} bytes).",
                                   model=model, filename=path.name)

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


class HttpSource:
    """One file on the Hub read with Range requests on its pinned resolve URL.

    A dropped connection or a 5xx/429 answer is retried with exponential back-off, resuming at the
    first byte not yet received, so a flaky network costs at most the bytes in flight.
    """

    def __init__(self, url: str, *, model: str, filename: str, data_size: int,
                 retries: int = 5, backoff: float = 0.2) -> None:
        self._url, self._model, self._filename = url, model, filename
        self._retries, self._backoff = retries, backoff
        self._headers = build_hf_headers()
        self._lock = threading.Lock()
        self._data_start: int | None = None
        self._data_size = data_size
        self.bytes_fetched = 0

    def _start(self) -> int:
        with self._lock:
            if self._data_start is None:
                prefix, total = self._fetch(0, 8, want_total=True)
                start = 8 + header_length(bytes(prefix))
                if total is not None and total < start + self._data_size:
                    raise CorruptFileError(
                        f"'{self._filename}' in '{self._model}' is truncated on the Hub: {total} bytes, "
                        f"but its header needs {start + self._data_size}.",
                        model=self._model, filename=self._filename, hint="Re-upload the shard.")
                self._data_start = start
            return self._data_start

    def read(self, begin: int, end: int) -> memoryview:
        start = self._start()
        data, _ = self._fetch(start + begin, start + end)
        return memoryview(data)

    def _fetch(self, begin: int, end: int, *, want_total: bool = False) -> tuple[bytearray, int | None]:
        buf = bytearray(end - begin)
        got, total, attempt = 0, None, 0
        session = get_session()
        while got < len(buf):
            headers = {**self._headers, "Range": f"bytes={begin + got}-{end - 1}"}
            try:
                with session.stream("GET", self._url, headers=headers, follow_redirects=True) as response:
                    if response.status_code in (429, 500, 502, 503, 504):
                        raise _Retryable(f"HTTP {response.status_code}")
                    if response.status_code == 416:
                        raise CorruptFileError(
                            f"'{self._filename}' in '{self._model}' is shorter than its header says "
                            f"(bytes {begin + got}-{end - 1} are not there).",
                            model=self._model, filename=self._filename, hint="Re-upload the shard.")
                    response.raise_for_status()
                    if response.status_code != 206:
                        raise CorruptFileError(
                            f"The server ignored the Range request for '{self._filename}' of '{self._model}'.",
                            model=self._model, filename=self._filename)
                    if want_total and total is None:
                        total = _content_range_total(response.headers.get("Content-Range", ""))
                    for chunk in response.iter_bytes(1 << 20):
                        n = min(len(chunk), len(buf) - got)
                        buf[got: got + n] = chunk[:n]
                        got += n
                        self.bytes_fetched += n
                if got < len(buf):
                    raise _Retryable("connection closed early")
            except (_Retryable, httpx.TransportError) as e:
                attempt += 1
                if attempt > self._retries:
                    raise OSError(
                        f"Reading '{self._filename}' of '{self._model}' failed after {self._retries} retries "
                        f"({got}/{len(buf)} bytes of the range received): {e}") from e
                delay = self._backoff * 2 ** (attempt - 1)
                logger.warning("Retrying %s of %s at byte %d in %.1fs (%s)", self._filename, self._model,
                               begin + got, delay, e)
                time.sleep(delay)
        return buf, total

    def release(self, begin: int, end: int) -> None:
        pass  # the buffer returned by read() is freed when its last view is dropped

    def close(self) -> None:
        pass


class _Retryable(Exception):
    pass


def _content_range_total(value: str) -> int | None:
    _, _, total = value.rpartition("/")
    return int(total) if total.isdigit() else None
