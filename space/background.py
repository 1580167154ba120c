"""A background loop the Space starts, nudges and stops: one daemon thread running ``_loop``.

Why a module of its own: the in-process worker (:mod:`worker`) and the Jobs dispatcher (:mod:`dispatch`) both
poll the job store this way; ``wake`` makes a new submission seen now rather than at the next poll.
"""

from __future__ import annotations

import threading


class BackgroundLoop:
    """Subclasses implement ``_loop`` (checking ``self._stop``, waiting on ``self._wake``) and name the thread."""

    thread_name = "mergebench-space"

    def __init__(self) -> None:
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def _start_loop(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    def _request_stop(self) -> None:
        """Ask the loop to end and interrupt its wait; it ends after its current step."""
        self._stop.set()
        self._wake.set()

    def _join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        raise NotImplementedError
