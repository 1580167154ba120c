"""One line per stage of a long run (MergeBench-Tiny, the benchmark runner) on stderr, with a bar and an ETA.

Each finished stage prints one line, which is itself a progress report, readable in a log file as on a
terminal::

    [ 3/32] ━━━━━━━━╺───────────────────────────────  21%  ETA 6m 10s    math expert: trained in 41s

On a terminal a transient line also shows the running stage with its elapsed time. Progress is measured in
*weights* (a stage's expected cost relative to the others) and the ETA is the remaining weight at the rate
of the stages that ran in this process; reused stages count as done but not towards the rate.

>>> stages = StageLog(enabled=False)
>>> stages.plan(2.0)
>>> with stages.stage("math expert", weight=1.0, done="trained"):
...     pass
>>> stages.reused("coding expert")
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

BAR_WIDTH = 40


def format_seconds(seconds: float) -> str:
    """``41s``, ``6m 10s``, ``1h 02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def text_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """A bar drawn with box characters (``━`` done, ``╺`` the tip, ``─`` to do), as rich draws its own."""
    fraction = min(1.0, max(0.0, fraction))
    full = int(fraction * width)
    if full >= width:
        return "━" * width
    return "━" * full + "╺" + "─" * (width - full - 1)


class StageLog:
    """Counts, times and reports the stages of a run; see the module docstring.

    Args:
        enabled: print anything at all (``False``: silent, e.g. for library calls with ``progress=False``).
        live: show the running stage on a transient line (default: when stderr is a terminal).
        console: where to print (default: a stderr console).
    """

    def __init__(self, *, enabled: bool = True, live: bool | None = None, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True, highlight=False)
        self.enabled = enabled
        self.live = enabled and (self.console.is_terminal if live is None else live)
        self.total_weight = 0.0
        self.total_stages = 0
        self.done_weight = 0.0
        self.done_stages = 0
        self.measured_weight = 0.0
        self.measured_seconds = 0.0
        self.planned: set[str] = set()
        """Keys of the groups of stages already announced (so that a caller can announce a sub-run's stages early)."""

    def plan(self, weight: float, stages: int = 1) -> None:
        """Announce ``stages`` more stages of ``weight`` in total (before they run: the bar and ETA count them)."""
        self.total_weight += weight
        self.total_stages += stages

    @property
    def eta(self) -> float | None:
        """Seconds left at the measured rate; ``None`` until stages that ran have taken a second or more."""
        if not self.measured_weight or self.measured_seconds < 1.0:
            return None
        return max(0.0, self.total_weight - self.done_weight) * self.measured_seconds / self.measured_weight

    @contextlib.contextmanager
    def stage(self, label: str, *, weight: float = 1.0, done: str = "done") -> Iterator[None]:
        """Run one stage: a live line while it runs (terminal only), then one finished line ``label: done in 12s``."""
        self._ensure_planned(weight)
        started = time.perf_counter()
        with self._live(label):
            yield
        self.finished(label, weight=weight, seconds=time.perf_counter() - started, done=done)

    def finished(self, label: str, *, weight: float = 1.0, seconds: float, done: str = "done",
                 rate_seconds: float | None = None) -> None:
        """A stage that ran elsewhere (a Ray task, a Hugging Face Job), reported when it ends: ``label: done in
        12s``. ``rate_seconds``: the wall-clock time it adds to the ETA's rate (default ``seconds``; stages
        running side by side pass the time since the previous one ended, so the ETA is not multiplied by
        their number)."""
        self._ensure_planned(weight)
        self.measured_seconds += seconds if rate_seconds is None else rate_seconds
        self.measured_weight += weight
        self._finish(weight, f"{label}: {done} in {format_seconds(seconds)}")

    def reused(self, label: str, *, weight: float = 1.0, why: str = "reused") -> None:
        """A stage that had nothing to do (its result exists and was built from the same inputs)."""
        self._ensure_planned(weight)
        self._finish(weight, f"{label}: {why}")

    def _ensure_planned(self, weight: float) -> None:
        if self.done_stages >= self.total_stages:  # an unplanned stage: count it now rather than pass 100 %
            self.plan(weight)

    def _finish(self, weight: float, text: str) -> None:
        self.done_weight += weight
        self.done_stages += 1
        if not self.enabled:
            return
        fraction = self.done_weight / self.total_weight if self.total_weight else 1.0
        eta = self.eta
        eta_text = "done" if self.done_stages >= self.total_stages else (
            f"ETA {format_seconds(eta)}" if eta is not None else "ETA –")
        width = len(str(self.total_stages))
        self.console.print(f"[{self.done_stages:>{width}}/{self.total_stages}] {text_bar(fraction)} "
                           f"{fraction:4.0%}  {eta_text:<12} {text}", markup=False, highlight=False)

    @contextlib.contextmanager
    def _live(self, label: str) -> Iterator[None]:
        if not self.live:
            yield
            return
        eta = self.eta
        suffix = f"  (ETA {format_seconds(eta)})" if eta is not None else ""
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as live:
            live.add_task(f"[{self.done_stages + 1}/{self.total_stages}] {escape(label)}{escape(suffix)}", total=None)
            yield
