"""Issue 20: every code task records how its programs were isolated; the leaderboard flags rows without isolation."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from mergebench.eval import isolation
from mergebench.eval.leaderboard import format_table, table
from mergebench.eval.results import SCHEMA_FILE, Results, TaskResult, new_results, now
from mergebench.eval.run import evaluate
from mergebench.eval.sandbox import SandboxConfig, bwrap_refusal
from tests.eval._scripted import ScriptedModel


@pytest.mark.parametrize("refused", [False, True], ids=["bwrap", "bwrap-refused"])
def test_a_code_task_records_its_isolation_in_the_results_file(tmp_path, monkeypatch, refused):
    jsonschema = pytest.importorskip("jsonschema")
    if refused:
        monkeypatch.setattr(isolation, "probe", lambda uid, python: "simulated: no user namespaces")
    elif bwrap_refusal():
        pytest.skip(f"bwrap cannot run here: {bwrap_refusal()}")
    out = tmp_path / "results.json"
    results = evaluate(ScriptedModel(lambda doc: doc.specific["canonical_solution"]), tasks=["mb_tiny_humaneval"],
                       max_samples=3, out=out, sandbox=SandboxConfig(timeout_s=5), progress=False)
    task = results.tasks["mb_tiny_humaneval"]
    level = "none" if refused else "bwrap"
    assert (task.score, task.side_info["counts"], task.side_info["isolation"]) == (1.0, {"passed": 3}, level)
    written = json.loads(out.read_text())
    assert written["tasks"]["mb_tiny_humaneval"]["side_info"]["isolation"] == level
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(written, schema)
    written["tasks"]["mb_tiny_humaneval"]["side_info"]["isolation"] = "chroot"
    with pytest.raises(jsonschema.ValidationError, match="'chroot' is not one of"):
        jsonschema.validate(written, schema)


def _merge(label: str, scaling: float, levels: list[str | None]) -> Results:
    """A finished run of a merge whose code tasks recorded ``levels`` (None: a file from before the field)."""
    r = new_results(model={"id": f"out/{label}", "role": "merged", "base_model": "org/base", "label": label,
                           "parameters": {"scaling": scaling}}, settings={}, eval_data={}, environment={})
    tasks = {f"mb_code_{i}": TaskResult(name=f"mb_code_{i}", status="ok", domain="coding", role="test", version=1,
                                        main_metric="pass@1", score=0.5,
                                        side_info={"counts": {"passed": 1}} | ({"isolation": lvl} if lvl else {}))
             for i, lvl in enumerate(levels)}
    return replace(r, tasks=tasks, run={**r.run, "status": "complete", "finished_at": now()})


def test_the_leaderboard_flags_runs_scored_without_isolation():
    runs = [_merge("sandboxed", 1.0, ["bwrap", "bwrap"]), _merge("unsandboxed", 0.5, ["bwrap", "none"]),
            _merge("older-file", 0.3, [None])]
    df = table(runs, references=False)
    shown = {label: level if isinstance(level, str) else None  # unknown is missing (None or NaN), never "bwrap"
             for label, level in zip(df["label"], df["isolation"], strict=True)}
    assert shown == {"sandboxed": "bwrap", "unsandboxed": "none", "older-file": None}
    text = format_table(df)
    assert "unsandboxed [no isolation]" in text
    assert text.count("[no isolation]") == 1
