"""TIES before and after issue 19, on the same inputs in the same run: per-tensor and global top-k, from local
folders and from the loopback Hub (against one plain download of the inputs), each timed as a whole process
and as the merge call alone.

The baseline is another source tree of MergeBench (e.g. ``git worktree add /tmp/before <commit>``), run with
``PYTHONPATH`` pointing at it; the current tree is this checkout. Each case runs ``--repeat`` times with the
contenders alternating (so a drift of the shared machine's load hits both), inputs read once before every run
(warm page cache), and the table reports medians. The family is the synthetic Llama of
``benchmarks/synthetic.py`` (hidden 1024, intermediate 4096, 4 layers, 32k vocabulary, bf16, 126M parameters),
a base and five experts, merged with ``merge_embeddings: true``.

    python benchmarks/ties_speed.py --baseline /tmp/before [--current .] [--repeat 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import folder_bytes, run_measured, warm
from merge_vs_mergekit import TOKEN, hub_tree, machine
from results_file import write_section
from synthetic import Shape, write_family

from mergebench.hub.endpoint import endpoint_env
from mergebench.hubserver import LoopbackHub

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHAPE = Shape(hidden=1024, intermediate=4096, layers=4, vocab=32000)
N_EXPERTS = 5
MERGE = ("import json, shutil, sys, time\nimport mergebench\nfrom mergebench.merge.engine import merge\n"
         "from mergebench.merge.options import MergeOptions\nshutil.rmtree(sys.argv[2], ignore_errors=True)\n"
         "t = time.perf_counter()\n"
         "r = merge(json.loads(sys.argv[1]), sys.argv[2], options=MergeOptions(progress=False))\n"
         "print(json.dumps({'bytes_read': r.bytes_read, 'peak_rss': r.peak_rss_bytes, "
         "'merge_seconds': time.perf_counter() - t, 'tree': mergebench.__file__}))")
DOWNLOAD = "import sys\nfrom huggingface_hub import snapshot_download\nfor r in sys.argv[1:]: snapshot_download(r)"


def recipe(base: str, experts: list[str], scope: str) -> dict:
    return {"method": "ties", "base_model": base, "merge_embeddings": True, "dtype": "bfloat16",
            "models": [{"model": e} for e in experts],
            "parameters": {"top_k": 0.2, "aggregate": "mean", "topk_scope": scope}}


def run_merge(source: Path, config: dict, out: Path, env: dict[str, str]) -> dict:
    """One merge in a fresh process importing MergeBench from ``source``. ``-P``: without it ``python -c`` puts
    the working directory first on ``sys.path``, and run from a checkout it imports that checkout's code
    whatever ``PYTHONPATH`` says (this benchmark's first run, 2026-12-06 06:15, timed the same code twice so)."""
    measured = run_measured([sys.executable, "-P", "-c", MERGE, json.dumps(config), str(out)],
                            env={**env, "PYTHONPATH": str(source)})
    result = json.loads(measured.stdout.strip().splitlines()[-1])
    if not Path(result.pop("tree")).is_relative_to(source):
        raise RuntimeError(f"the merge imported MergeBench from outside {source}: the comparison would be void")
    return {"seconds": measured.seconds, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="source tree of the code to compare with")
    parser.add_argument("--current", type=Path, default=ROOT, help="source tree of the code measured (this checkout)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--work-dir", type=Path, default=HERE / ".work" / "ties_speed")
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()
    work = args.work_dir
    base, experts = write_family(work / "family", SHAPE, N_EXPERTS, shard_bytes=256 << 20)
    family = [base, *experts]
    trees = {"before": args.baseline.resolve(), "after": args.current.resolve()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "PYTHONPATH"}
    times: dict[tuple[str, str, str], list[dict]] = {}
    for scope in ("tensor", "global"):
        config = recipe(str(base), [str(e) for e in experts], scope)
        for _ in range(args.repeat):
            for label, tree in trees.items():
                warm(family)
                times.setdefault(("local", scope, label), []).append(run_merge(tree, config, work / "out", env))
    ids = hub_tree(family, work / "hub")
    downloads = []
    with LoopbackHub(work / "hub") as hub:
        home = work / "home"
        hub_env = {**env, **endpoint_env(hub.url, home, token=TOKEN)}
        for _ in range(args.repeat):
            warm(family)
            shutil.rmtree(home, ignore_errors=True)
            downloads.append(run_measured([sys.executable, "-c", DOWNLOAD, *ids], env=hub_env).seconds)
            shutil.rmtree(home, ignore_errors=True)
            for scope in ("tensor", "global"):
                config = recipe(ids[0], ids[1:], scope)
                for label, tree in trees.items():
                    warm(family)
                    hub.stats.reset()
                    result = run_merge(tree, config, work / "out", hub_env)
                    result.update(fetched=hub.stats.bytes_for("*"), cache=folder_bytes(home))
                    times.setdefault(("hub", scope, label), []).append(result)
                    shutil.rmtree(home, ignore_errors=True)
    doc = {"machine": machine(), "load": [load_before, os.getloadavg()], "downloads": downloads,
           "runs": {"/".join(k): v for k, v in times.items()}, "minutes": (time.perf_counter() - started) / 60}
    (work / "results.json").write_text(json.dumps(doc, indent=1))
    table = render(doc, args.repeat)
    print(table)
    if not args.no_write:
        write_section("ties_speed", "TIES before and after issue 19 (`benchmarks/ties_speed.py`)", table)


def render(doc: dict, repeat: int) -> str:
    download = statistics.median(doc["downloads"])
    inputs = (N_EXPERTS + 1) * SHAPE.parameters * 2
    lines = [f"Synthetic Llama family: base + {N_EXPERTS} experts of {SHAPE.parameters / 1e6:.0f}M parameters, bf16 "
             f"({inputs / 1e9:.2f} GB of inputs), TIES top_k 0.2, mean, embeddings merged. Machine: {doc['machine']}; "
             f"load average {doc['load'][0][0]:.1f} before, {doc['load'][1][0]:.1f} after (the benchmark's own two "
             f"threads count); medians of {repeat} runs, before/after alternating. "
             f"Downloading all inputs once from the loopback Hub with `snapshot_download`: {download:.1f} s "
             f"(median). Whole benchmark {doc['minutes']:.0f} min.", "",
             "Whole process: `python -c` of a merge, imports included; in process: the `merge()` call alone.", "",
             "| source | top-k | whole process before → after (s) | speed-up | in process before → after (s) "
             "| speed-up | after / one download | GB read before → after | peak RSS after (GB) "
             "| Hub cache left (bytes) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for source, scope in (("local", "tensor"), ("local", "global"), ("hub", "tensor"), ("hub", "global")):
        before, after = (doc["runs"][f"{source}/{scope}/{label}"] for label in ("before", "after"))
        b, a = (statistics.median(r["seconds"] for r in runs) for runs in (before, after))
        bm, am = (statistics.median(r["merge_seconds"] for r in runs) for runs in (before, after))
        read = f"{before[-1]['bytes_read'] / 1e9:.2f} → {after[-1]['bytes_read'] / 1e9:.2f}"
        versus = f"{a / download:.2f}×" if source == "hub" else "—"
        cache = str(max(r["cache"] for r in after)) if source == "hub" else "—"
        lines.append(f"| {source} | {scope} | {b:.1f} → {a:.1f} | {b / a:.2f}× | {bm:.1f} → {am:.1f} | {bm / am:.2f}× "
                     f"| {versus} | {read} | {max(r['peak_rss'] for r in after) / 1e9:.2f} | {cache} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
