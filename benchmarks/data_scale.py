"""Scale of the data path (issue 16 item 8): ``mergebench data build`` on a synthetic source of N chat rows.

Writes a synthetic stand-in of ``allenai/tulu-3-sft-personas-instruction-following`` with N rows in its upstream
layout (parquet shards ``data/train-0000i-of-0000n.parquet`` of 100,000 rows in row groups of 1,000, as
``datasets`` writes them; columns ``id``, ``prompt``, ``messages``, ``constraints``) and plants, at fixed rates,
exact duplicates of earlier rows (half of them only re-cased and re-spaced), near duplicates (one word inserted
into the response, at a place that depends on the row: 5-gram Jaccard ≈ 0.9) and rows whose prompt quotes a
GSM8K test question (a 13-gram overlap with an evaluation set). The other rows are random words from a
30,000-word synthetic vocabulary, so they neither duplicate nor contaminate anything. The source is served by the
loopback Hub (``bench/tulu-synthetic-N``) and the real CLI builds it in a child process, with ``HF_ENDPOINT``
pointing there and an empty Hub and ``datasets`` cache (so the time includes the download and ``datasets``'
Arrow conversion)::

    mergebench -v data build instruction --source tulu3-personas-if=bench/tulu-synthetic-N --out OUT

Reported: wall time (and its loading part: download + Arrow conversion, from the build's log, kept in
``WORK/build.log``), the peak RSS of the build's process tree (``measure.run_measured``: every resident page,
including the memory-mapped Arrow files of the source and of the build's scratch copy, which the kernel can drop)
and its peak anonymous memory (RSS minus file-backed pages: what the build itself holds), rows in and out, what
deduplication and decontamination removed against what was planted, and the load average before and after (run
it alone on the machine). ``--write`` puts the row for this N into ``benchmarks/RESULTS.md`` beside the rows of
other N.

    .venv/bin/python benchmarks/data_scale.py --rows 100000 [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured
from results_file import RESULTS, write_section

from mergebench.data.evalsets import load_eval_set
from mergebench.hub.endpoint import endpoint_env
from mergebench.hubserver import LoopbackHub

MERGEBENCH = str(Path(sys.executable).with_name("mergebench"))
SOURCE_KEY = "tulu3-personas-if"
SEED = 16
SHARD_ROWS = 100_000
ROW_GROUP_ROWS = 1_000  # as `datasets` writes parquet (push_to_hub, to_parquet): readers hold one group at a time
EXACT, NEAR, CONTAMINATED = 0.03, 0.03, 0.005  # planted fractions of the rows
FIRST_BASE_ROWS = 10  # rows 0-9 are plain rows, so every planted duplicate has an earlier row to copy
GENERATOR_VERSION = 2
SECTION = "data_scale"


# ---------------------------------------------------------------- the synthetic source


def _vocabulary() -> list[str]:
    """30,000 distinct pronounceable pseudo-words (fixed seed)."""
    rng = np.random.default_rng(SEED)
    consonants, vowels = list("bcdfghjklmnprstvwz"), list("aeiou")
    words: set[str] = set()
    while len(words) < 30_000:
        n = int(rng.integers(2, 5))
        words.add("".join(str(rng.choice(consonants)) + str(rng.choice(vowels)) for _ in range(n)))
    return sorted(words)


@dataclasses.dataclass(frozen=True)
class Planted:
    """How many rows of each kind the generator wrote (what the build should remove)."""

    rows: int
    exact: int
    near: int
    contaminated: int


class SyntheticSource:
    """Row ``i`` is a pure function of ``(SEED, i)``: planted rows regenerate the row they copy, so no shard
    needs another's rows in memory."""

    def __init__(self) -> None:
        self.vocab = _vocabulary()
        self.questions = [r["question"] for r in load_eval_set("gsm8k")["test"]]

    @staticmethod
    def _draw(i: int) -> tuple[str, np.random.Generator]:
        rng = np.random.default_rng([SEED, i])
        u = rng.random()
        if i < FIRST_BASE_ROWS or u >= EXACT + NEAR + CONTAMINATED:
            return "base", rng
        return ("exact" if u < EXACT else "near" if u < EXACT + NEAR else "contaminated"), rng

    def _text(self, rng: np.random.Generator, low: int, high: int) -> str:
        picks = rng.integers(0, len(self.vocab), size=int(rng.integers(low, high))).tolist()
        return " ".join(map(self.vocab.__getitem__, picks)).capitalize()

    def _conversation(self, rng: np.random.Generator) -> tuple[str, str]:
        return self._text(rng, 15, 40) + ".", self._text(rng, 80, 200) + "."

    def row(self, i: int) -> tuple[str, dict]:
        """``(kind, row)`` of row ``i`` in the upstream schema."""
        kind, rng = self._draw(i)
        if kind in ("exact", "near"):
            j = int(rng.integers(0, i))
            while self._draw(j)[0] != "base":
                j -= 1
            prompt, response = self._conversation(self._draw(j)[1])
            if kind == "near":
                at, word = 10 + i % 50, self.vocab[i % len(self.vocab)]  # two near copies of one row differ
                words = response.split(" ")
                response = " ".join([*words[:at], word, *words[at:]])
            elif i % 2:  # an exact duplicate after normalisation only
                prompt, response = "  " + prompt.upper(), response.replace(" ", "   ") + "\n"
        else:
            prompt, response = self._conversation(rng)
            if kind == "contaminated":
                prompt = f"{prompt} {self.questions[i % len(self.questions)]}"
        return kind, {"id": f"personas_IF_syn{i:09d}", "prompt": prompt,
                      "messages": [{"content": prompt, "role": "user"}, {"content": response, "role": "assistant"}],
                      "constraints": [f"Answer in at least {len(response.split())} words."]}

    def write(self, repo: Path, rows: int) -> Planted:
        """The repo folder (parquet shards + README); returns what was planted. Reused when already written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        manifest = repo / "planted.json"
        key = {"rows": rows, "seed": SEED, "version": GENERATOR_VERSION}
        if manifest.is_file() and json.loads(manifest.read_text())["key"] == key:
            return Planted(**json.loads(manifest.read_text())["planted"])
        shutil.rmtree(repo, ignore_errors=True)
        (repo / "data").mkdir(parents=True)
        counts = dict.fromkeys(("base", "exact", "near", "contaminated"), 0)
        shards = -(-rows // SHARD_ROWS)
        for s in range(shards):
            batch = []
            for i in range(s * SHARD_ROWS, min(rows, (s + 1) * SHARD_ROWS)):
                kind, row = self.row(i)
                counts[kind] += 1
                batch.append(row)
            pq.write_table(pa.Table.from_pylist(batch), repo / "data" / f"train-{s:05d}-of-{shards:05d}.parquet",
                           row_group_size=ROW_GROUP_ROWS)
        (repo / "README.md").write_text(f"---\nlicense: odc-by\n---\n\n# Synthetic Tülu 3 personas IF ({rows} rows)\n\n"
                                        "Written by `benchmarks/data_scale.py`.\n")
        planted = Planted(rows, counts["exact"], counts["near"], counts["contaminated"])
        manifest.write_text(json.dumps({"key": key, "planted": dataclasses.asdict(planted)}))
        return planted


# ---------------------------------------------------------------- measuring


@contextlib.contextmanager
def anonymous_peak(interval: float = 0.01) -> Iterator[list[int]]:
    """Sample the anonymous memory (RSS minus file-backed and shared pages) of this process's children; the
    peak is in the yielded list's single item once the block ends. ``measure.run_measured`` reports all of RSS,
    which also counts the pages of memory-mapped Arrow files: resident, but dropped by the kernel when needed."""
    me, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            total = 0
            for p in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    info = p.memory_info()
                    total += info.rss - info.shared
            peak[0] = max(peak[0], total)
            done.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


_LOADED = re.compile(r"loaded \d+ rows of \d+ source\(s\) in ([\d.]+) s")


def measure(rows: int, work: Path) -> dict:
    """Generate (or reuse) the source, serve it, build it through the CLI; returns one result row."""
    repo_id = f"bench/tulu-synthetic-{rows}"
    started = time.perf_counter()
    planted = SyntheticSource().write(work / "hub" / "datasets" / repo_id, rows)
    generated = time.perf_counter() - started
    home, out = work / "home", work / "out"
    for folder in (home, out):
        shutil.rmtree(folder, ignore_errors=True)
    home.mkdir()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    with LoopbackHub(work / "hub") as hub:
        env = {**base_env, **endpoint_env(hub.url, home / "hf", token="hf_benchmark"), "HOME": str(home)}
        load_before = os.getloadavg()
        with anonymous_peak() as anon:
            m = run_measured([MERGEBENCH, "-v", "data", "build", "instruction", "--out", str(out), "--source",
                              f"{SOURCE_KEY}={repo_id}", "--format", "json"], env=env)
        load_after = os.getloadavg()
    (work / "build.log").write_text(m.stderr)
    report = json.loads((out / "mergebench_build.json").read_text())
    loaded = _LOADED.search(m.stderr)
    assert loaded, f"no 'loaded ... in ... s' line in {work / 'build.log'}"
    return {"rows": rows, "planted": dataclasses.asdict(planted), "seconds": m.seconds, "peak_rss": m.peak_rss,
            "peak_anonymous": anon[0], "load_seconds": float(loaded.group(1)),
            "converted": report["dedup"]["rows_in"], "exact_removed": report["dedup"]["exact_removed"],
            "near_removed": report["dedup"]["near_removed"],
            "contaminated_removed": report["decontamination"]["removed"],
            "train": report["split"]["train_rows"], "validation": report["split"]["validation_rows"],
            "load": [load_before, load_after], "generated_seconds": generated, "date": date.today().isoformat(),
            "parquet_bytes": sum(p.stat().st_size for p in (out / "data").glob("*.parquet"))}


# ---------------------------------------------------------------- reporting

HEADER = ("| rows | time (s) | of which loading (s) | peak RSS (GB) | peak anonymous (GB) | exact removed (planted) "
          "| near removed (planted) | contaminated removed (planted) | train + validation | load avg before / after "
          "| date |")


def table_row(r: dict) -> str:
    p = r["planted"]
    return (f"| {r['rows']:,} | {r['seconds']:.1f} | {r['load_seconds']:.1f} | {r['peak_rss'] / 1e9:.2f} "
            f"| {r['peak_anonymous'] / 1e9:.2f} | {r['exact_removed']:,} ({p['exact']:,}) "
            f"| {r['near_removed']:,} ({p['near']:,}) | {r['contaminated_removed']:,} ({p['contaminated']:,}) "
            f"| {r['train']:,} + {r['validation']:,} | {r['load'][0][0]:.2f} / {r['load'][1][0]:.2f} | {r['date']} |")


def merged_table(row: str, rows: int) -> str:
    """This run's row beside the rows of other N already in ``RESULTS.md`` (sorted by N)."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    block = text.partition(f"<!-- {SECTION}:begin -->")[2].partition(f"<!-- {SECTION}:end -->")[0]
    kept = {int(line.split("|")[1].replace(",", "")): line for line in block.splitlines()
            if re.match(r"\| [\d,]+ \|", line)}
    kept[rows] = row
    return "\n".join([HEADER, "|" + "---|" * (HEADER.count("|") - 1), *(kept[n] for n in sorted(kept))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the synthetic source (default 100,000)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "mergebench-data-scale",
                        help="where the source, the Hub cache and the output go (~6 KB of disk a row: 6 GB for 1M)")
    parser.add_argument("--write", action="store_true", help="put this N's row into benchmarks/RESULTS.md")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    result = measure(args.rows, args.work_dir)
    print(json.dumps(result, indent=1), file=sys.stderr)
    row = table_row(result)
    print(HEADER + "\n" + row)
    if args.write:
        write_section(SECTION, "Scale of the data path (issue 16, `benchmarks/data_scale.py`)",
                      merged_table(row, args.rows))


if __name__ == "__main__":
    main()
