"""Evaluation time of one MergeBench-Tiny model, with and without the shared pipeline and prefix sharing.

Why: issue 21 raises Tiny's item counts so that every domain's standard error is at most 0.06, under the
condition that ``make demo`` gets no slower. What pays for the extra items is that a model's tasks share one
lighteval pipeline and that log-likelihoods are computed with each shared prefix once
(:mod:`mergebench.eval.packed`). This script measures one model's evaluation both ways in the same
conditions, alternating, each in a fresh process:

- ``lighteval``: the code path before issue 21 — one lighteval pipeline per task, lighteval's per-sequence
  log-likelihoods (emulated by giving every task its own group and disabling prefix sharing);
- ``shared``: one pipeline for the model's tasks, prefix-shared log-likelihoods (what MergeBench runs now).

    python benchmarks/tiny_eval.py MODEL_DIR [--runs 3] [--suite tinybench] [--max-samples N] [--modes shared]

prints the median evaluation seconds (model load included, imports excluded) of each mode, the number of
items scored and ``uptime``: record the numbers in benchmarks/RESULTS.md with the load, the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("lighteval", "shared")


def measure(model: str, mode: str, suite: str, max_samples: int | None) -> dict:
    """Evaluate ``model`` on ``suite`` in this process with the code path of ``mode``; seconds and scores."""
    import lighteval.pipeline  # noqa: F401  (imports are not what is measured)

    from mergebench.eval import evaluate, packed, run

    if mode == "lighteval":
        packed.supports = lambda model: False  # lighteval's own per-sequence log-likelihoods
        run.pipeline_groups = lambda specs, max_samples: [[s] for s in specs]  # one pipeline per task
    started = time.perf_counter()
    results = evaluate(model, suite=suite, max_samples=max_samples, progress=False)
    seconds = time.perf_counter() - started
    return {"mode": mode, "seconds": round(seconds, 2), "items": sum(t.num_samples for t in results.tasks.values()),
            "scores": {n: t.score for n, t in results.tasks.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--suite", default="tinybench")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--modes", default=",".join(MODES), help="Comma-separated: lighteval,shared.")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one measurement, in a child process
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.model, args.mode, args.suite, args.max_samples)))
        return
    modes = [m for m in args.modes.split(",") if m in MODES]
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    items: dict[str, int] = {}
    for run_index in range(args.runs):
        for mode in modes:
            command = [sys.executable, str(Path(__file__).resolve()), args.model, "--mode", mode, "--suite", args.suite]
            if args.max_samples:
                command += ["--max-samples", str(args.max_samples)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            record = json.loads(out)
            seconds[mode].append(record["seconds"])
            items[mode] = record["items"]
            print(f"run {run_index + 1} {mode}: {record['seconds']}s, {record['items']} items, "
                  f"scores {record['scores']}", flush=True)
    for mode in modes:
        print(f"{mode}: median {statistics.median(seconds[mode]):.1f}s over {args.runs} runs {seconds[mode]}, "
              f"{items[mode]} items")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
