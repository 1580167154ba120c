"""Jobs calls on a flaky network (``mergebench.hub.jobs``), against the loopback Hub's Jobs API with its faults: a
launch whose answer is lost after the Job was created is adopted, not launched again; every other call is retried
on 5xx, 429 and cut answers; body faults reach API answers (JSON), not only file downloads."""

from __future__ import annotations

import httpx2 as httpx
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from mergebench.hub import jobs as hub_jobs
from mergebench.hubserver import LoopbackHub

LABELS = {"mergebench-run": "faults", "mergebench-unit": "u1"}
SPEC = {"image": "python:3.11", "command": ["python", "-c", "import time; time.sleep(30)"], "flavor": "cpu-basic"}


def _namespace(api: HfApi) -> str:
    return hub_jobs.whoami_name(api)


def _live(api: HfApi, namespace: str) -> list:
    return [j for j in hub_jobs.list_jobs(api, labels=LABELS, namespace=namespace)
            if j.status.stage not in hub_jobs.TERMINAL]


def test_a_launch_whose_answer_is_lost_is_adopted_not_run_twice(hub: LoopbackHub) -> None:
    api = HfApi()
    namespace = _namespace(api)
    cut = hub.faults.drop_after_bytes(0, path_glob=f"/api/jobs/{namespace}", method="POST")
    with pytest.raises(httpx.TransportError):  # what a caller without the adoption sees: the Job exists anyway
        api.run_job(labels=LABELS, namespace=namespace, **SPEC)
    assert cut.fired == 1 and len(_live(api, namespace)) == 1
    [first] = _live(api, namespace)
    hub_jobs.cancel_job(api, first.id, namespace=namespace)

    hub.faults.drop_after_bytes(0, path_glob=f"/api/jobs/{namespace}", method="POST")
    job = hub_jobs.launch_job(api, labels=LABELS, namespace=namespace, **SPEC)
    live = _live(api, namespace)
    assert [j.id for j in live] == [job.id]  # the Job the lost answer created, adopted
    assert hub.stats.count("POST", f"/api/jobs/{namespace}") == 2  # one launch each time, none retried
    hub_jobs.cancel_job(api, job.id, namespace=namespace)


def test_a_launch_refused_with_503_is_launched_once_it_is_accepted(hub: LoopbackHub) -> None:
    api = HfApi()
    namespace = _namespace(api)
    refused = hub.faults.http_error(503, times=2, path_glob=f"/api/jobs/{namespace}", method="POST")
    job = hub_jobs.launch_job(api, labels=LABELS, namespace=namespace, **SPEC)
    assert refused.fired == 2 and [j.id for j in _live(api, namespace)] == [job.id]
    hub_jobs.cancel_job(api, job.id, namespace=namespace)


def test_watching_calls_are_retried_on_429_5xx_and_cut_or_short_answers(hub: LoopbackHub) -> None:
    api = HfApi()
    namespace = _namespace(api)
    job = hub_jobs.launch_job(api, labels=LABELS, namespace=namespace,
                              **{**SPEC, "command": ["python", "-c", "print('hello from the job')"]})
    path = f"/api/jobs/{namespace}/{job.id}"
    rules = [hub.faults.http_error(429, retry_after=0.1, path_glob=path),
             hub.faults.drop_after_bytes(5, path_glob=path),
             hub.faults.short_body(3, path_glob=path),
             hub.faults.http_error(502, path_glob=f"{path}/logs")]
    info = hub_jobs.inspect_job(api, job.id, namespace=namespace)
    assert info.id == job.id and [r.fired for r in rules[:3]] == [1, 1, 1]
    done = api.wait_for_job(job.id, poll_interval=0.2, timeout=60)
    assert done.status.stage == "COMPLETED"
    assert "hello from the job" in hub_jobs.job_logs(api, job.id, namespace=namespace)
    assert rules[3].fired == 1


def test_a_job_that_does_not_exist_is_not_retried(hub: LoopbackHub) -> None:
    api = HfApi()
    with pytest.raises(HfHubHTTPError) as raised:
        hub_jobs.inspect_job(api, "0123456789abcdef", namespace=_namespace(api))
    assert raised.value.response.status_code == 404
    assert hub.stats.count("GET", "/api/jobs/*/0123456789abcdef") == 1
