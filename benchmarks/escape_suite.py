"""Issue 20: the code sandbox's escape suite as a table -- every escape, whether it was contained, and how.

Run (from the repository root, with the project's venv)::

    .venv/bin/python benchmarks/escape_suite.py            # prints the table (3 campaigns, checks they agree)
    .venv/bin/python benchmarks/escape_suite.py --write    # also rewrites its section of benchmarks/RESULTS.md

Each escape of :data:`mergebench.eval.escapes.ESCAPES` runs under the default sandbox (bubblewrap and the
in-process guard), under bubblewrap alone (audit hook off) and under the guard alone (what a machine without
user namespaces gets); :meth:`mergebench.eval.escapes.Trap.witnesses` decides what got out. The table comes
from the last campaign; the script fails (exit 1) if any escape got out or the campaigns disagree on how an
escape was stopped. It also measures what each layer costs a program: the median wall time of a trivial
program under each configuration.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mergebench.eval.escapes import ESCAPES, Outcome, campaign, layers, markdown
from mergebench.eval.sandbox import bwrap_refusal, run_program
from mergebench.work import write_atomic

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- escape-suite:begin -->", "<!-- escape-suite:end -->"


def _startup_ms(repeat: int) -> dict[str, float]:
    """Median wall time (ms) of ``pass`` under each layer: what a sandboxed program costs before it runs."""
    out = {}
    for name, config in layers(timeout_s=5).items():
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            result = run_program("pass", config)
            times.append((time.perf_counter() - start) * 1000)
            if result.status != "passed":
                raise SystemExit(f"'pass' under {name}: {result.status} {result.detail}")
        out[name] = statistics.median(times)
    return out


def _tool_versions() -> str:
    bwrap = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    dpkg = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libseccomp2"], capture_output=True, text=True,
                          check=False).stdout.strip()
    return f"{bwrap or 'no bwrap'}, libseccomp2 {dpkg or 'unknown'}"


def _signature(outcomes: list[Outcome], root: Path) -> list[tuple[str, str, bool, str]]:
    return [(o.escape.name, o.layer, o.contained, o.how(root).split(":")[0]) for o in outcomes]


def report(table: str, *, runs: int, seconds: list[float], startup: dict[str, float], load: tuple[str, str],
           agree: bool) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    costs = ", ".join(f"{name} {ms:.0f} ms" for name, ms in startup.items())
    return "\n".join([
        "## Code sandbox escape suite (issue 20, `benchmarks/escape_suite.py`)",
        "",
        f"`.venv/bin/python benchmarks/escape_suite.py --write`, run {when} on {os.cpu_count()} CPUs "
        f"({platform.machine()}, Linux {platform.release()}, Python {platform.python_version()}, "
        f"{'root: bwrap starts as nobody' if os.geteuid() == 0 else 'non-root'}; {_tool_versions()}); "
        f"machine shared with other jobs; `uptime` before: `{load[0]}`, after: `{load[1]}`.",
        f"{len(ESCAPES)} escapes × 3 layers, {runs} campaigns: median {statistics.median(seconds):.1f} s per "
        f"campaign ({', '.join(f'{s:.1f}' for s in seconds)} s); the campaigns "
        f"{'agree' if agree else 'DISAGREE'} on every outcome. Limits: 1 s of CPU, 1 GiB of address space, "
        "16 processes, a 32 MB tmpfs, 4 MiB of output.",
        "",
        "Layers: **bwrap + guard** is what `mergebench eval` uses where bubblewrap runs (results record "
        "`isolation: \"bwrap\"`); **bwrap alone** switches the audit hook off, so the kernel (namespaces, mounts, "
        "seccomp, rlimits) must stop each escape by itself; **guard alone** is the fallback where the kernel "
        "refuses user namespaces (`isolation: \"none\"`, flagged on the leaderboard). *How* is the sandbox's "
        "status and detail as observed (`blocked` = the audit hook refused the call; `<trap>` = the suite's "
        "folder holding the fake home, token and target folder). *Contained* means the host saw nothing: no "
        "pass, no secret or host file content in the output, no file in the world-writable target folder, no "
        "connection to the loopback Hub or datagram to the loopback DNS server, the canary process (same uid "
        "as the sandbox, HF_TOKEN in its environment) alive, no process left in the run's PID namespace, and "
        "the run stopped within its timeout + 6 s.",
        "",
        table.rstrip("\n"),
        "",
        f"Cost of a layer per program (median of 20 runs of `pass`): {costs}.",
    ])


def write_results(text: str) -> None:
    current = RESULTS.read_text(encoding="utf-8")
    section = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        updated = head + section + rest.split(END, 1)[1]
    else:
        updated = current.rstrip("\n") + "\n\n" + section + "\n"
    write_atomic(RESULTS, updated)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="campaigns to run (they must agree); default 3")
    parser.add_argument("--write", action="store_true", help="rewrite the escape-suite section of RESULTS.md")
    args = parser.parse_args()
    if bwrap_refusal():
        print(f"warning: bwrap cannot run here ({bwrap_refusal()}): its layers are reported as not run",
              file=sys.stderr)
    before = _uptime()
    seconds, signatures = [], []
    for n in range(args.runs):
        start = time.monotonic()
        outcomes, root = campaign()
        seconds.append(time.monotonic() - start)
        signatures.append(_signature(outcomes, root))
        escaped = [o for o in outcomes if o.witnesses]
        print(f"campaign {n + 1}: {len(outcomes)} runs in {seconds[-1]:.1f} s, "
              f"{len(escaped)} got out", file=sys.stderr)
    startup = _startup_ms(20)
    agree = all(s == signatures[0] for s in signatures)
    table = markdown(outcomes, root)
    text = report(table, runs=args.runs, seconds=seconds, startup=startup, load=(before, _uptime()), agree=agree)
    print(text)
    if args.write:
        write_results(text)
        print(f"wrote the escape-suite section of {RESULTS}", file=sys.stderr)
    return 0 if agree and all(o.contained or o.result is None for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
