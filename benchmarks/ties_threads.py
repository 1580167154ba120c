"""How TIES' chunk arithmetic scales over two cores: Python threads (the engine's ``ChunkPool``) against torch's own
intra-op threads, at several chunk sizes.

Why: per-tensor TIES barely sped up with the pool's second thread (issue 19) while its arithmetic was ~45 torch calls
per chunk, each a GIL hand-off; it is now one fused loop that runs without the GIL (``mergebench.methods.kernels``),
and torch's threads only reach the final ``θ₀ + λ·Δ``. This isolates the arithmetic — the
registered ``ties`` function on float32 chunks of five task vectors already in memory, no I/O, no top-k counting —
so the table shows what the threading model costs, not what the inputs do. Each configuration merges the same
number of entries; every Python thread owns its buffers, as a pool thread does. The table is measured twice: on an
idle machine, then with ``--busy`` processes spinning on the CPU beside it (a machine shared with other work, as a
runner's or a Space's often is).

    python benchmarks/ties_threads.py [--repeat 3] [--busy 1] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_vs_mergekit import machine
from results_file import write_section

from mergebench.methods import MergeContext
from mergebench.methods.ties import TiesParams, ties

EXPERTS = 5
ENTRIES = 1 << 24
"""Entries per model merged by each measurement (whatever the chunk size and thread count)."""
CHUNKS = (1 << 14, 1 << 16, 1 << 17, 1 << 18)
SETUPS = (("1 Python thread", 1, 1), ("2 Python threads", 2, 1), ("1 Python thread, 2 torch threads", 1, 2))
"""(label, Python threads, torch intra-op threads)."""


def _merge_chunks(chunk: int, count: int) -> None:
    """Merge ``count`` chunks of ``chunk`` entries per model with per-tensor TIES (mean, top-k 0.2)."""
    generator = torch.Generator().manual_seed(chunk)
    base = torch.randn(chunk, generator=generator)
    deltas = torch.randn(EXPERTS, chunk, generator=generator) * 0.01
    params = TiesParams(top_k=0.2, aggregate="mean", topk_scope="tensor")
    ctx = MergeContext(name="bench", expert_ids=tuple(range(EXPERTS)), weights=None, seed=0,
                       thresholds=torch.full((EXPERTS,), 0.01), data={})
    stack = torch.empty_like(deltas)
    for _ in range(count):
        stack.copy_(deltas)  # ties works in place on its stack, as on the engine's reused buffers
        ties(base, stack, params, ctx)


def throughput(chunk: int, python_threads: int, torch_threads: int) -> float:
    """Million entries per model merged per second."""
    torch.set_num_threads(torch_threads)  # in this thread: one Python thread works here, as the engine's caller does
    count = ENTRIES // chunk // python_threads
    start = time.perf_counter()
    if python_threads == 1:
        _merge_chunks(chunk, count)
    else:
        threads = [threading.Thread(target=_merge_chunks, args=(chunk, count)) for _ in range(python_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return ENTRIES / (time.perf_counter() - start) / 1e6


def measure(repeat: int) -> dict[tuple[int, str], float]:
    """Median throughput of every (chunk, set-up), the configurations interleaved so a drift hits them all."""
    rates: dict[tuple[int, str], list[float]] = {}
    for _ in range(repeat):
        for chunk in CHUNKS:
            for label, python_threads, torch_threads in SETUPS:
                rates.setdefault((chunk, label), []).append(throughput(chunk, python_threads, torch_threads))
    return {key: statistics.median(values) for key, values in rates.items()}


def table(medians: dict[tuple[int, str], float]) -> str:
    lines = ["| chunk (entries per model) | " + " | ".join(label for label, _, _ in SETUPS) + " |",
             "|---|" + "---|" * len(SETUPS)]
    for chunk in CHUNKS:
        lines.append(f"| {chunk // 1024} Ki | " + " | ".join(f"{medians[(chunk, label)]:.0f} M/s"
                                                          for label, _, _ in SETUPS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--busy", type=int, default=1, help="CPU-spinning processes beside the second measurement")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_before, started = os.getloadavg()[0], time.perf_counter()
    _merge_chunks(CHUNKS[0], 4)  # warm-up: allocator, kernels
    idle = measure(args.repeat)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        time.sleep(1)
        busy = measure(args.repeat)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    body = (f"TIES arithmetic alone (per-tensor thresholds given, mean of agreeing signs), {EXPERTS} float32 task "
            f"vectors, {ENTRIES >> 20} Mi entries per model per measurement; entries per model merged per second, "
            f"median of {args.repeat}. Machine: {machine()}; load average {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after. Whole benchmark {time.perf_counter() - started:.0f} s.\n\n"
            f"Idle machine:\n\n{table(idle)}\n\n"
            f"With {args.busy} other process(es) spinning on the CPU:\n\n{table(busy)}")
    print(body)
    if not args.no_write:
        write_section("ties_threads", "TIES arithmetic over two cores (`benchmarks/ties_threads.py`)", body)


if __name__ == "__main__":
    main()
