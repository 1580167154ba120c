"""One job, run in a child process of the worker: merge (streaming) → push the model with its card →
evaluate with lighteval → push the results. ``python pipeline.py JOB_DIR``.

Why a child process: the log is simply its stdout/stderr (tqdm bars and logging included) in a file the
page tails; lighteval and CUDA state die with it; and it is killed with the Space (:func:`die_with_parent`),
so a restart never leaves an orphan writing into a job the new process resumes.

Each step leaves a marker in ``JOB_DIR`` so a resumed job skips what is done: ``merge.json`` (merge
finished; a half-written merge resumes from its verified shards), ``pushed.json`` (model uploaded).
The outcome goes to ``outcome.json``; the current step to ``stage``. Inputs: ``job.json``, ``config.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from mergebench.work import write_atomic

logger = logging.getLogger("mergebench.space.pipeline")

PARENT_ENV = "MERGEBENCH_SPACE_PID"
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL this process when the Space process that started it dies (Linux), and exit at once if it
    already has (the signal would never come)."""
    import ctypes
    import os
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.environ.get(PARENT_ENV) and str(os.getppid()) != os.environ[PARENT_ENV]:
        sys.exit("The Space process that started this job is gone.")


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _stage(job_dir: Path, name: str) -> None:
    logger.info("== %s ==", name)
    write_atomic(job_dir / "stage", name)


def merged_repo_id(namespace: str, job: dict) -> str:
    """``{namespace}/{base name}-{method}-{job id tail}``: unique per job, readable on the Hub."""
    base = job["request"]["base_model"].rsplit("/", 1)[-1]
    return f"{namespace}/{base}-{job['request']['method']}-{job['id'].rsplit('-', 1)[-1]}"


def label(request: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in (request.get("parameters") or {}).items() if v is not None)
    return f"{request.get('method') or 'merged'} ({params})" if params else str(request.get("method") or "merged")


def _merge(job_dir: Path, job: dict, config: dict) -> tuple[Path, dict]:
    from mergebench.merge.engine import merge
    from mergebench.merge.options import MergeOptions

    done = _read_json(job_dir / "merge.json")
    out = job_dir / "merged"
    if done is None:
        _stage(job_dir, "merging")
        if out.exists():  # renamed into place, but the process died before merge.json: redo (cheap to check)
            shutil.rmtree(out)
        result = merge(job["request"]["recipe"], out, options=MergeOptions(resume=True, threads=2, progress=True))
        done = {"merge_seconds": round(result.seconds, 3), "merge_peak_memory_bytes": result.peak_rss_bytes}
        _write_json(job_dir / "merge.json", done)
    namespace = config.get("models_org") or (config["results_repo"].split("/")[0] if config.get("results_repo")
                                              else None)
    if namespace and not (job_dir / "pushed.json").exists():
        from mergebench.hub.push import push_folder

        _stage(job_dir, "pushing the merged model")
        repo = merged_repo_id(namespace, job)
        url = push_folder(out, repo, commit_message=f"MergeBench Space job {job['id']}")
        _write_json(job_dir / "pushed.json", {"model_id": repo, "commit_url": url})
    return out, done


def run(job_dir: Path) -> dict[str, Any]:
    """Run the job in ``job_dir`` and return its outcome (also written to ``outcome.json``)."""
    from mergebench.eval import evaluate

    job, config = _read_json(job_dir / "job.json"), _read_json(job_dir / "config.json")
    assert job is not None and config is not None
    request = job["request"]
    if job["kind"] == "merge":
        folder, cost = _merge(job_dir, job, config)
        pushed = _read_json(job_dir / "pushed.json") or {}
        model_id, target = pushed.get("model_id") or str(folder), str(folder)
        revision = pushed["commit_url"].rstrip("/").rsplit("/", 1)[-1] if pushed else None
        cost = {**cost, "validation_seconds": 0.0}  # parameters chosen by the user: no validation search
    else:
        pushed, model_id, target, revision = {}, request["model"], request["model"], None
        cost = {}
    _stage(job_dir, "evaluating")
    settings = request["eval"]
    model_info = {"id": model_id, "revision": revision, "role": "merged", "base_model": request["base_model"],
                  "domain": None, "method": request.get("method"), "parameters": request.get("parameters"),
                  "experts": sorted((request.get("experts") or {}).values()) or None, "label": label(request)}
    results = evaluate(target, suite=settings.get("suite") if not settings.get("tasks") else None,
                       tasks=settings.get("tasks") or None, backend=config["backend"],
                       refusal_judge=config["refusal_judge"],
                       max_samples=settings.get("max_samples"), out=job_dir / "results.json", model_info=model_info,
                       cost=cost, push_to=None)
    urls = {"model": pushed["commit_url"]} if pushed else {}
    if config.get("results_repo"):
        from mergebench.eval.results import push_results

        _stage(job_dir, "pushing the results")
        urls["results"] = push_results(config["results_repo"], results)
    failed = results.failed
    return {"status": "done", "model_id": model_id, "results_file": str(job_dir / "results.json"),
            "commit_urls": urls,
            "message": f"Scored on {len(results.tasks)} tasks" + (f"; failed: {', '.join(failed)}" if failed else "")}


def main(job_dir: Path) -> int:
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        outcome = run(job_dir)
    except Exception as e:  # every failure becomes a message on the page; the traceback stays in the log
        from submission import explain

        traceback.print_exc()
        try:
            message, hint = explain(e)
        except Exception:
            message, hint = f"{type(e).__name__}: {e}", None
        outcome = {"status": "failed", "message": message, "hint": hint}
    _write_json(job_dir / "outcome.json", outcome)
    logger.info("job finished: %s", outcome["status"])
    return 0 if outcome["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
