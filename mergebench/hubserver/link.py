"""The loopback Hub's network link: one capacity shared by every body it sends, as a real connection's is.

On 127.0.0.1 a download runs as fast as two processes can move bytes, which is not what a user's link to the
Hub does. The ``throttle`` fault slows one answer; a link of ``rate`` bytes/s is shared by every connection a
client opens (a streaming merge reads several shards at once, ``snapshot_download`` several files), so it is
what "a merge from the Hub costs N downloads" means on a real network. ``hub.link.rate = 125e6`` (1 Gbit/s), or
``mergebench hub serve --link-rate 125000000``; ``None`` (the default) is no limit.

Bodies go out in slices of 10 ms of the link, each booked after the ones before it, so concurrent bodies
interleave and an idle link saves up no burst.
"""

from __future__ import annotations

import threading
import time

SLICE_SECONDS = 0.01
"""How much of the link one slice of a body takes: concurrent bodies interleave at this grain."""


class Link:
    """A shared link of ``rate`` body bytes per second (``None``: unlimited); thread-safe, changeable at any time."""

    def __init__(self, rate: float | None = None) -> None:
        self._lock = threading.Lock()
        self._free_at = 0.0
        self._rate: float | None = None
        self.rate = rate

    @property
    def rate(self) -> float | None:
        return self._rate

    @rate.setter
    def rate(self, value: float | None) -> None:
        if value is not None and not value > 0:
            raise ValueError(f"A link rate must be > 0 bytes/s (or None: unlimited), got {value}.")
        self._rate = value

    def slice_bytes(self, n: int) -> int:
        """``n``, cut to one slice of the link (unchanged when unlimited)."""
        rate = self._rate
        return n if rate is None else min(n, max(1, int(rate * SLICE_SECONDS)))

    def wait(self, n: int) -> None:
        """Block until ``n`` bytes may leave: the link carries them after every byte booked before them."""
        rate = self._rate
        if rate is None:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + n / rate
        if start > now:
            time.sleep(start - now)
