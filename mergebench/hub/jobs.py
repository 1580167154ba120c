"""Hugging Face Jobs calls that survive a flaky network.

Every call is retried on transient failures (5xx, 429 after its Retry-After, dropped or cut-short answers) by
:func:`mergebench.hub.retry.with_retries`, as Hub reads and pushes are. A launch needs one more step: a
``POST`` whose answer was lost may still have created the Job, and launching again would run the same work
twice (and bill it twice). So before a retry, :func:`launch_job` looks for a live Job carrying the same labels
— every MergeBench Job is labelled with the work it does — and adopts it instead.
"""

from __future__ import annotations

import logging
from typing import Any

from huggingface_hub import HfApi

from mergebench.hub.retry import with_retries

logger = logging.getLogger(__name__)

TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
"""Stages after which a Job does nothing more."""


def list_jobs(api: HfApi, *, labels: dict[str, str], namespace: str | None, token: str | None = None) -> list[Any]:
    """The Jobs of ``namespace`` carrying every one of ``labels``."""
    return with_retries(lambda: list(api.list_jobs(labels=labels, namespace=namespace, token=token)))


def launch_job(api: HfApi, *, labels: dict[str, str], namespace: str | None, token: str | None = None,
               **spec: Any) -> Any:
    """``api.run_job(**spec)`` with ``labels``, launched at most once: a retry first adopts a live Job with the
    same labels, which the attempt whose answer was lost created."""
    attempts = 0

    def launch() -> Any:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            live = [j for j in api.list_jobs(labels=labels, namespace=namespace, token=token)
                    if j.status.stage not in TERMINAL]
            if live:
                logger.info("adopting Job %s: the launch whose answer was lost created it", live[0].id)
                return live[0]
        return api.run_job(labels=labels, namespace=namespace, token=token, **spec)

    return with_retries(launch)


def inspect_job(api: HfApi, job_id: str, *, namespace: str | None, token: str | None = None) -> Any:
    return with_retries(lambda: api.inspect_job(job_id=job_id, namespace=namespace, token=token))


def job_logs(api: HfApi, job_id: str, *, namespace: str | None, token: str | None = None,
             tail: int | None = None) -> list[str]:
    """The Job's log lines (all, or the last ``tail``), read whole on every attempt."""
    return with_retries(lambda: [str(line) for line in api.fetch_job_logs(job_id=job_id, namespace=namespace,
                                                                          tail=tail, token=token)])


def cancel_job(api: HfApi, job_id: str, *, namespace: str | None, token: str | None = None) -> None:
    with_retries(lambda: api.cancel_job(job_id=job_id, namespace=namespace, token=token))


def hardware_prices(api: HfApi) -> dict[str, float]:
    """USD per second of each Jobs flavor (``list_jobs_hardware``'s published price)."""
    hardware = with_retries(api.list_jobs_hardware)
    return {h.name: h.unit_cost_usd / (60.0 if h.unit_label == "minute" else 3600.0) for h in hardware}


def whoami_name(api: HfApi, token: str | None = None) -> str:
    """The token's user or organisation name (the default Jobs namespace)."""
    return str(with_retries(lambda: api.whoami(token=token))["name"])
