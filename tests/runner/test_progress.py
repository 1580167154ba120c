"""The stage log: one line per stage with a bar, a percentage by weight and an ETA from the measured rate."""

from __future__ import annotations

import io
import re

from rich.console import Console

from mergebench.runner import progress
from mergebench.runner.progress import StageLog, format_seconds, text_bar


def _log(clock: list[float], monkeypatch) -> tuple[StageLog, io.StringIO]:
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    buffer = io.StringIO()
    return StageLog(console=Console(file=buffer, width=200), live=False), buffer


def test_lines_count_stages_weigh_progress_and_estimate_the_rest(monkeypatch) -> None:
    clock = [0.0]
    stages, buffer = _log(clock, monkeypatch)
    stages.plan(1.0)
    stages.plan(6.0, stages=2)
    stages.plan(1.0)
    stages.reused("data")
    with stages.stage("math expert", weight=3.0, done="trained"):
        clock[0] += 30.0
    with stages.stage("coding expert", weight=3.0, done="trained"):
        clock[0] += 90.0
    stages.reused("evaluation")
    lines = buffer.getvalue().splitlines()
    assert lines == [
        f"[1/4] {text_bar(1 / 8)}  12%  ETA –        data: reused",
        f"[2/4] {text_bar(4 / 8)}  50%  ETA 40s      math expert: trained in 30s",  # 4 left × 10 s
        f"[3/4] {text_bar(7 / 8)}  88%  ETA 20s      coding expert: trained in 1m 30s",  # 1 left × 20 s
        f"[4/4] {text_bar(1.0)} 100%  done         evaluation: reused"]


def test_unplanned_stages_extend_the_count_and_a_disabled_log_prints_nothing(monkeypatch) -> None:
    clock = [0.0]
    stages, buffer = _log(clock, monkeypatch)
    stages.reused("a")
    stages.reused("b", weight=2.0)
    assert buffer.getvalue().splitlines()[-1].startswith(f"[2/2] {text_bar(1.0)} 100%  done")
    silent = StageLog(enabled=False, console=Console(file=io.StringIO()))
    silent.plan(1.0)
    with silent.stage("x"):
        pass
    assert silent.console.file.getvalue() == "" and silent.done_stages == 1


def test_a_live_line_shows_the_running_stage_on_a_terminal(monkeypatch) -> None:
    buffer = io.StringIO()
    stages = StageLog(console=Console(file=buffer, force_terminal=True, width=120))
    assert stages.live
    stages.plan(1.0)
    with stages.stage("base evaluation"):
        pass
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
    assert "[1/1] base evaluation" in text  # the transient line of the running stage
    assert text.rstrip().endswith("done         base evaluation: done in 0s")


def test_durations_read_naturally() -> None:
    assert [format_seconds(s) for s in (0.4, 41, 370, 3725)] == ["0s", "41s", "6m 10s", "1h 02m"]
    assert text_bar(0.5, width=10) == "━━━━━╺────" and text_bar(1.2, width=4) == "━━━━"
