"""Retrying Hub calls: transient failures (5xx, 429, dropped connections, answers cut short) are retried with
back-off, waiting at least what the server's ``Retry-After`` asks for
(:func:`mergebench.stream.sources.retry_after_seconds`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import httpx2 as httpx  # the HTTP client huggingface_hub uses (get_session())
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from mergebench.stream.sources import http_timeout, retry_after_seconds

logger = logging.getLogger(__name__)

T = TypeVar("T")
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
CUT_SHORT = "Consistency check failed"
"""How ``huggingface_hub`` reports a download whose size is not the file's (a plain ``OSError``)."""


def is_transient(error: BaseException) -> bool:
    """A failure worth retrying: 5xx or 429, a dropped connection, an API answer that does not parse or a download
    of the wrong size (both: a body cut short under a Content-Length that agrees with it)."""
    if isinstance(error, HfHubHTTPError):
        return getattr(error.response, "status_code", None) in RETRYABLE_STATUS
    if isinstance(error, (httpx.TransportError, json.JSONDecodeError)):
        return True
    return isinstance(error, OSError) and CUT_SHORT in str(error)


def with_retries(call: Callable[[], T], *, retries: int = 5, backoff: float = 0.2) -> T:
    """Run a Hub call, retrying :func:`is_transient` failures with back-off."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as e:  # what to retry is is_transient's decision alone
            status = getattr(getattr(e, "response", None), "status_code", None)
            if not is_transient(e) or attempt == retries:
                raise
            headers = getattr(getattr(e, "response", None), "headers", None) or {}
            delay = max(backoff * 2**attempt, retry_after_seconds(headers) or 0.0)
            logger.warning("Hub request failed (%s); retrying in %.1fs", status or type(e).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def get_bytes(url: str) -> bytes:
    """The body of a small file at ``url`` (configs, indexes, cards), retried like any Hub call."""
    def call() -> bytes:
        response = get_session().get(url, headers=build_hf_headers(), follow_redirects=True, timeout=http_timeout())
        hf_raise_for_status(response)
        return response.content

    return with_retries(call)
