"""Issue 18: what the executors cost -- dispatch overhead per unit, and the fast configuration on 1/2/4 Ray workers.

Run (from the repository root, with the project's venv; ``-m`` so that the tests' configuration imports)::

    .venv/bin/python -m benchmarks.executors            # prints both tables
    .venv/bin/python -m benchmarks.executors --write    # also rewrites its section of benchmarks/RESULTS.md

**Dispatch overhead.** The same small unit (the tiny Llama base evaluated on one task, 2 samples) run
``--units`` times, one after the other, by each executor: in this process (``run_unit``, what the local
executor does), as a task on a local Ray cluster (started beforehand), and as a Job of the loopback Hub
(a fresh process in this venv, polled every 0.2 s). Each run is a distinct unit (an input that changes only
its identity), so none is skipped. Overhead = the executor's median wall time per unit minus the in-process
median. The first unit of each executor is reported apart (cold: Ray starts its worker, a Job imports
torch and lighteval); the median is over the others.

**Scaling.** The runner's fast test configuration (tests/runner: tiny Llama family, model soup, task
arithmetic on 2 points, RegMean; 13 units) from an empty output folder, ``--repeat`` times each: in
process, and on a local Ray cluster of N logical CPUs with N units in flight (N = 1, 2, 4), cluster start
included.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergebench.fixtures import Family, build_family, write_validation_splits
from mergebench.hub.endpoint import use_endpoint
from mergebench.hubserver import LoopbackHub
from mergebench.runner import BenchConfig, run_benchmark
from mergebench.runner.config import ExecutorSettings
from mergebench.runner.executors.hf_jobs import HfJobsExecutor
from mergebench.runner.executors.ray import RayExecutor
from mergebench.runner.progress import StageLog
from mergebench.runner.units import EvaluationUnit, ResultsLocation, StageSpec, UnitSpec, run_unit
from mergebench.work import write_atomic
from tests.runner.test_runner import _bench

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- executors:begin -->", "<!-- executors:end -->"
TASK = "mb_tinybench_math"


def _unit(base: Path, out: Path, i: int) -> EvaluationUnit:
    return EvaluationUnit(label=f"unit {i}", results=ResultsLocation(folder=str(out)), path=f"results/u{i}.json",
                          stage=StageSpec(kind="evaluation", inputs={"benchmark": "dispatch", "unit": i}),
                          model=str(base), tasks=[TASK], max_samples=2)


def _timed(units: list[UnitSpec], run_one: Callable[[UnitSpec], None]) -> list[float]:
    times = []
    for unit in units:
        started = time.perf_counter()
        run_one(unit)
        times.append(time.perf_counter() - started)
    return times


def _in_process(unit: UnitSpec) -> None:
    run_unit(unit)


def dispatch_overhead(family: Family, validation: Path, work: Path, count: int) -> dict[str, list[float]]:
    """Seconds per unit for each executor, in launch order."""
    base = family.base
    times = {"in-process (local)": _timed([_unit(base, work / "local", i) for i in range(count)], _in_process)}
    quiet = StageLog(enabled=False)
    settings = ExecutorSettings(kind="ray", max_concurrent=1, ray={"num_cpus": 1})
    with RayExecutor(settings, run_dir=work / "ray") as ray:
        ray.prepare([_unit(base, work / "ray", -1)], quiet)  # the cluster starts here, not in the first unit
        times["Ray task (local cluster)"] = _timed([_unit(base, work / "ray", i) for i in range(count)],
                                                   lambda u: ray.run([u], quiet))
    root = work / "hub"
    root.mkdir()
    with LoopbackHub(root) as hub, use_endpoint(hub.url, hf_home=work / "hf-home", token="hf_benchmark"):
        config = BenchConfig.from_dict(_bench(family, validation, work / "jobs-run", executor={
            "kind": "hf-jobs", "results_repo": "alice/bench", "max_concurrent": 1,
            "hf_jobs": {"image": "mergebench:local", "poll_seconds": 0.2,
                        "flavors": {"grid_point": "cpu-basic", "evaluation": "cpu-basic"}}}))
        jobs = HfJobsExecutor(config.executor, run_dir=work / "jobs-run", name=config.name)
        location = ResultsLocation(repo="alice/bench", prefix="dispatch")
        units: list[UnitSpec] = [_unit(base, work, i).model_copy(update={"results": location}) for i in range(count)]
        times["loopback Hugging Face Job"] = _timed(units, lambda u: jobs.run([u], quiet))
    return times


def scaling(family: Family, validation: Path, work: Path, repeat: int) -> dict[str, list[float]]:
    """Wall seconds of the fast configuration, from an empty output folder, per setting."""
    settings: dict[str, dict[str, Any] | None] = {"in-process (local)": None}
    settings |= {f"Ray, {n} worker(s)": {"kind": "ray", "max_concurrent": n, "ray": {"num_cpus": n}} for n in (1, 2, 4)}
    times: dict[str, list[float]] = {}
    for name, executor in settings.items():
        for r in range(repeat):
            out = work / f"scale-{len(times)}-{r}"
            extra = {"executor": executor} if executor else {}
            config = BenchConfig.from_dict(_bench(family, validation, out, **extra))
            started = time.perf_counter()
            run_benchmark(config, progress=False)
            times.setdefault(name, []).append(time.perf_counter() - started)
    return times


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def markdown(overhead: dict[str, list[float]], scale: dict[str, list[float]], loads: list[str]) -> str:
    local = statistics.median(overhead["in-process (local)"][1:])
    lines = [f"Measured {datetime.date.today()} on this 2-core machine, **shared** with other sessions' test runs "
             "(1/5/15-min load average at the start, between the two parts and at the end: "
             f"{'; '.join(loads)}): absolute times are inflated and noisy; the differences are what to read.", "",
             "| executor | first unit (s) | median unit (s) | overhead per unit vs in-process (s) |",
             "|---|---|---|---|"]
    for name, times in overhead.items():
        median = statistics.median(times[1:])
        lines.append(f"| {name} | {times[0]:.2f} | {median:.2f} | {median - local:+.2f} |")
    base = statistics.median(scale["in-process (local)"])
    lines += ["", "| fast configuration (13 units) | runs | median wall (s) | vs in-process |", "|---|---|---|---|"]
    for name, times in scale.items():
        median = statistics.median(times)
        lines.append(f"| {name} | {len(times)} | {median:.1f} | {base / median:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mergebench-executors-") as tmp:
        work = Path(tmp)
        family = build_family(work / "family", "llama")
        write_validation_splits(work / "validation")
        loads = [_load()]
        overhead = dispatch_overhead(family, work / "validation", work / "dispatch", args.units)
        loads.append(_load())
        scale = scaling(family, work / "validation", work, args.repeat)
        loads.append(_load())
    text = markdown(overhead, scale, loads)
    print(text)
    if args.write:
        current = RESULTS.read_text(encoding="utf-8")
        block = f"{BEGIN}\n{text}\n{END}"
        if BEGIN in current:
            current = current[:current.index(BEGIN)] + block + current[current.index(END) + len(END):]
        else:
            current += f"\n## Executors: dispatch overhead and Ray scaling (`benchmarks/executors.py`)\n\n{block}\n"
        write_atomic(RESULTS, current)


if __name__ == "__main__":
    main()
