"""What a merge from the Hub costs on a network link: MergeBench's Hub merges against one download of their inputs,
both through the loopback Hub's shared link (:mod:`mergebench.hubserver.link`) at a given rate.

``merge_vs_mergekit.py``'s Hub rows run at 127.0.0.1's speed: the download goes as fast as two cores move bytes and
the merge's own arithmetic shares those cores, so its ratio to one download measures compute as much as transfer.
Through a link the inputs arrive no faster than the link carries them, as from the real Hub; an engine that
fetches each byte once and computes while the next arrive should then cost about one download, and global TIES,
which fetches the inputs twice (a counting pass, then the merge pass), about two. The family, recipes and
measurements are ``merge_vs_mergekit.py``'s (imported from it, and its work folder reused); MergeBench only:
mergekit downloads every input before merging, so its cost on a link is a download plus its local merge, both
measured there. Each repeat runs the download and the merges in turn, on warm inputs and a fresh Hub cache.

``--every-method`` adds the other data-free methods at their default parameters (model soup, DARE, consensus,
dataless Localize-and-Stitch), which mergekit has no equal of; with ``--rate 0`` (no link: 127.0.0.1's speed, as
``merge_vs_mergekit.py``'s Hub rows) that is the table of issue 19's "every method from the Hub ≤ 1.2× one
download" (section ``hub_methods``).

    python benchmarks/hub_link.py [--rate BYTES_PER_S] [--every-method] [--repeat N] [--no-write] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import merge_vs_mergekit as vs
from measure import warm
from results_file import write_section
from synthetic import write_family

from mergebench.hubserver import LoopbackHub

HERE = Path(__file__).resolve().parent
GBIT = 125e6
"""Bytes per second of a 1 Gbit/s link."""
OTHER_METHODS = ("model_soup", "dare", "consensus", "localize_stitch")
"""Data-free methods besides ``merge_vs_mergekit.py``'s, run with ``--every-method`` at their defaults."""


def every_case(base: str, experts: list[str], every_method: bool) -> list[vs.Case]:
    """``merge_vs_mergekit.py``'s rows, then (``every_method``) the other data-free methods at their defaults."""
    rows = vs.cases(base, experts)
    if not every_method:
        return rows
    template = rows[0].recipe  # Task Arithmetic's: base, experts, dtype, embeddings merged
    return rows + [vs.Case(f"{method} (defaults)", {**template, "method": method, "parameters": {}}, None, None)
                   for method in OTHER_METHODS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=GBIT, help="link rate in bytes/s (default: 1 Gbit/s; 0: no link)")
    parser.add_argument("--every-method", action="store_true", help="every data-free method, not only TA and TIES")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each row (median reported)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--work-dir", type=Path, default=HERE / ".work" / "vs_mergekit")
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    base, experts = write_family(work / "family", vs.SHAPE, vs.N_EXPERTS, shard_bytes=vs.INPUT_SHARD_BYTES)
    family = [base, *experts]
    ids = vs.hub_tree(family, work / "hub")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    downloads: list[float] = []
    runs: dict[str, list[dict]] = {}
    with LoopbackHub(work / "hub") as hub:
        hub.link.rate = args.rate or None
        env["HF_ENDPOINT"] = hub.url
        for _ in range(args.repeat):
            warm(family)
            hub.stats.reset()
            downloads.append(vs.download_once(ids, work, env)[0])
            print(f"  download: {downloads[-1]:.1f} s", file=sys.stderr)
            for case in every_case(ids[0], ids[1:], args.every_method):
                warm(family)
                hub.stats.reset()
                run, _ = vs.mergebench_run(case, work, env)
                runs.setdefault(case.label, []).append({**run.__dict__, "fetched": hub.stats.bytes_for("*")})
                print(f"  {case.label}: {run.seconds:.1f} s", file=sys.stderr)
    doc = {"machine": vs.machine(), "load": [load_before, os.getloadavg()], "rate": args.rate, "repeat": args.repeat,
           "downloads": downloads, "runs": runs, "seconds": time.perf_counter() - started}
    table = render(doc)
    print(table)
    if not args.no_write:
        if args.every_method and not args.rate:
            write_section("hub_methods", "Every data-free method from the Hub (`benchmarks/hub_link.py "
                          "--every-method --rate 0`)", table)
        else:
            write_section("hub_link", "Merges from the Hub through a network link (`benchmarks/hub_link.py`)", table)


def render(doc: dict) -> str:
    gb, download = 1e9, statistics.median(doc["downloads"])
    inputs = (vs.N_EXPERTS + 1) * vs.SHAPE.parameters * 2 / gb
    lines = [
        (f"Loopback Hub behind a link of {doc['rate'] * 8 / 1e9:g} Gbit/s ({doc['rate'] / 1e6:g} MB/s) shared by "
         "every connection" if doc["rate"] else "Loopback Hub at 127.0.0.1's speed (no link)") +
        f"; `merge_vs_mergekit.py`'s family ({inputs:.1f} GB of bf16 "
        f"inputs) and recipes. Machine: {doc['machine']}; load average {doc['load'][0][0]:.1f} before, "
        f"{doc['load'][1][0]:.1f} after. Medians of {doc['repeat']} runs, each repeat a download then the "
        f"merges; one download of every input with `snapshot_download`: {download:.1f} s "
        f"({', '.join(f'{s:.1f}' for s in doc['downloads'])}). Whole benchmark: {doc['seconds'] / 60:.1f} min.",
        "",
        "| method | MergeBench (s) | runs (s) | × one download | fetched (GB) | peak RSS (GB) "
        "| Hub cache left (bytes) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, runs in doc["runs"].items():
        seconds = statistics.median(r["seconds"] for r in runs)
        each = ", ".join(format(r["seconds"], ".1f") for r in runs)
        lines.append(f"| {label} | {seconds:.1f} | {each} "
                     f"| {seconds / download:.2f}× | {runs[-1]['fetched'] / gb:.2f} "
                     f"| {max(r['peak_rss'] for r in runs) / gb:.2f} | {max(r['cache_bytes'] for r in runs)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
