"""Fault injection and request accounting for the loopback Hub, changeable while it runs.

Tests of retrying and resuming code need a Hub that misbehaves on cue, and tests of streaming code need to
know how many bytes were actually fetched. Both live on the running server (``hub.faults``, ``hub.stats``)
and are thread-safe, since every request is handled on its own thread.

Body faults (drop, stall, throttle, short) act on any answer's body: a file download or an API answer. They
match ``GET`` requests unless armed with another ``method`` (``None``: any), e.g. ``method="POST"`` to lose the
answer of a commit or of a Job's launch after the server has done the work.

A rule's ``path_glob`` is matched (``fnmatch``) against the decoded request path, e.g.
``/org/name/resolve/<sha>/model-00001-of-00002.safetensors``, and against its last segment, so both
``"*.safetensors"`` and ``"model-00001-*"`` work. ``times`` is how many requests the rule affects before it
expires (``None``: until :meth:`Faults.clear`).

>>> hub.faults.drop_after_bytes(3000, times=2, path_glob="*.safetensors")   # doctest: +SKIP
>>> hub.faults.http_error(503, times=1)                                     # doctest: +SKIP
>>> hub.faults.stall_after_bytes(0, times=None)   # headers, then silence     # doctest: +SKIP
>>> hub.faults.http_error(429, retry_after=1)     # with a Retry-After header  # doctest: +SKIP
>>> hub.faults.throttle(100_000, times=None)      # 100 KB/s bodies            # doctest: +SKIP
>>> hub.faults.short_body(10, path_glob="*.json") # Content-Length 10 too small # doctest: +SKIP
>>> hub.stats.bytes_for("*.safetensors")                                    # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

FaultKind = Literal["drop", "error", "delay", "stall", "throttle", "short"]


def path_matches(path: str, glob: str) -> bool:
    """Whether ``glob`` matches the whole request path or its last segment."""
    return fnmatch.fnmatchcase(path, glob) or fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], glob)


@dataclass
class FaultRule:
    """One armed fault. ``remaining`` counts down per affected request; ``fired`` counts up."""

    kind: FaultKind
    path_glob: str = "*"
    method: str | None = None
    remaining: int | None = 1
    after_bytes: int = 0  # drop: body bytes sent before the connection is cut; stall: before the pause
    status: int = 503  # error: HTTP status returned instead of the real answer
    seconds: float = 0.0  # delay: sleep before each body chunk (and before the headers)
    pause: float | None = None  # stall: seconds of silence after ``after_bytes`` (None: until the server stops)
    retry_after: float | None = None  # error: the Retry-After header's seconds (None: no header)
    rate: float = 0.0  # throttle: body bytes per second
    short_by: int = 0  # short: bytes missing from the body *and* from its Content-Length (a lying length)
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and path_matches(path, self.path_glob)


class Faults:
    """The armed faults of one server. Every method returns the rule, whose ``fired`` count tests can check."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()

    def drop_after_bytes(self, n: int, *, times: int | None = 1, path_glob: str = "*",
                         method: str | None = "GET") -> FaultRule:
        """Cut the connection after ``n`` body bytes of each matching answer (headers are complete)."""
        if n < 0:
            raise ValueError(f"drop_after_bytes needs n >= 0, got {n}.")
        return self._add(FaultRule("drop", path_glob, method, times, after_bytes=n))

    def http_error(self, status: int = 503, *, times: int | None = 1, path_glob: str = "*",
                   method: str | None = None, retry_after: float | None = None) -> FaultRule:
        """Answer matching requests with ``status`` (and a JSON error body) instead of serving them; with
        ``retry_after``, also a ``Retry-After: <seconds>`` header (what a rate-limited Hub sends with 429)."""
        if not 400 <= status <= 599:
            raise ValueError(f"http_error needs a 4xx or 5xx status, got {status}.")
        if retry_after is not None and retry_after < 0:
            raise ValueError(f"http_error needs retry_after >= 0 or None, got {retry_after}.")
        return self._add(FaultRule("error", path_glob, method, times, status=status, retry_after=retry_after))

    def throttle(self, bytes_per_second: float, *, times: int | None = None, path_glob: str = "*",
                 method: str | None = "GET") -> FaultRule:
        """Send the body of matching answers at most ``bytes_per_second`` (a slow link, not a stall)."""
        if bytes_per_second <= 0:
            raise ValueError(f"throttle needs bytes_per_second > 0, got {bytes_per_second}.")
        return self._add(FaultRule("throttle", path_glob, method, times, rate=bytes_per_second))

    def short_body(self, missing: int, *, times: int | None = 1, path_glob: str = "*",
                   method: str | None = "GET") -> FaultRule:
        """Serve matching answers ``missing`` bytes short *with a Content-Length that agrees*, on a
        connection that stays open: nothing at the HTTP level is wrong, only the size the file (or the
        Content-Range) promised. A client that trusts Content-Length alone gets a silently truncated file."""
        if missing < 1:
            raise ValueError(f"short_body needs missing >= 1, got {missing}.")
        return self._add(FaultRule("short", path_glob, method, times, short_by=missing))

    def delay(self, seconds_per_chunk: float, *, times: int | None = None, path_glob: str = "*",
              method: str | None = None) -> FaultRule:
        """Sleep ``seconds_per_chunk`` before the headers and before every body chunk of matching requests."""
        if seconds_per_chunk < 0:
            raise ValueError(f"delay needs seconds_per_chunk >= 0, got {seconds_per_chunk}.")
        return self._add(FaultRule("delay", path_glob, method, times, seconds=seconds_per_chunk))

    def stall_after_bytes(self, n: int, *, seconds: float | None = None, times: int | None = 1,
                          path_glob: str = "*", method: str | None = "GET") -> FaultRule:
        """Send ``n`` body bytes of each matching answer, then nothing for ``seconds``, then the rest.

        The connection stays open and silent, as when a link or a proxy hangs: only a client-side read
        timeout gets out of it. ``seconds=None`` pauses until the server stops (stopping ends the pause).
        """
        if n < 0:
            raise ValueError(f"stall_after_bytes needs n >= 0, got {n}.")
        if seconds is not None and seconds < 0:
            raise ValueError(f"stall_after_bytes needs seconds >= 0 or None, got {seconds}.")
        return self._add(FaultRule("stall", path_glob, method, times, after_bytes=n, pause=seconds))

    def clear(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def take(self, kind: FaultKind, method: str, path: str) -> FaultRule | None:
        """The first armed ``kind`` rule matching the request, counted as used by it (``None`` if none)."""
        with self._lock:
            for rule in self._rules:
                if rule.kind == kind and rule.matches(method, path):
                    rule.fired += 1
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._rules.remove(rule)
                    logger.info("fault %s fired on %s %s", kind, method, path)
                    return rule
        return None

    def _add(self, rule: FaultRule) -> FaultRule:
        if rule.remaining is not None and rule.remaining < 1:
            raise ValueError(f"times must be >= 1 or None, got {rule.remaining}.")
        with self._lock:
            self._rules.append(rule)
        return rule


class Stats:
    """Requests per ``(method, path)`` and body bytes actually sent per path, since the last :meth:`reset`."""

    def __init__(self) -> None:
        self._requests: Counter[tuple[str, str]] = Counter()
        self._bytes: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record_request(self, method: str, path: str) -> None:
        with self._lock:
            self._requests[(method, path)] += 1

    def record_bytes(self, path: str, n: int) -> None:
        with self._lock:
            self._bytes[path] += n

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._bytes.clear()

    @property
    def requests(self) -> dict[tuple[str, str], int]:
        """A copy: ``{(method, path): count}``."""
        with self._lock:
            return dict(self._requests)

    @property
    def bytes_served(self) -> dict[str, int]:
        """A copy: ``{path: body bytes sent}`` (file downloads only; partial bodies count what was sent).

        Bytes are counted as they are handed to the socket, so whatever a client has received is already
        counted when its call returns; a write that fails (the client went away) counts its whole chunk.
        """
        with self._lock:
            return dict(self._bytes)

    def count(self, method: str | None = None, path_glob: str = "*") -> int:
        """Requests matching ``method`` (any if ``None``) and ``path_glob``."""
        return sum(n for (m, p), n in self.requests.items()
                   if (method is None or m == method) and path_matches(p, path_glob))

    def bytes_for(self, path_glob: str = "*") -> int:
        """Body bytes sent for paths matching ``path_glob``."""
        return sum(n for p, n in self.bytes_served.items() if path_matches(p, path_glob))
