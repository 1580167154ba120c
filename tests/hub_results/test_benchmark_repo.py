"""The evaluation repo as a Hub benchmark: its ``eval.yaml`` (format: https://huggingface.co/docs/hub/eval-results,
"Eval.yaml specification") lists every task whose rows the repo holds, is accepted by the loopback Hub's push-time
check, and that check refuses what the specification forbids while accepting the documentation's own examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from mergebench.data.evalrepo import build_eval_repo, eval_yaml
from mergebench.errors import ConfigError
from mergebench.eval.benchmark import HIGHER_IS_BETTER, benchmark_tasks, extra_eval_sets
from mergebench.eval.tasks import TASKS
from mergebench.hubserver.evals import eval_yaml_errors

EVAL = "alice/mergebench-eval"
SETS = ["gsm8k", "mmlu", "tinybench_math", "tinybench_general", "hellaswag_en"]

# The two examples of the Hub documentation's "Eval.yaml specification" (minimal, and inspect-ai specific).
DOC_MINIMAL = """name: MathArena AIME 2026
description: The American Invitational Mathematics Exam (AIME).
evaluation_framework: math-arena

tasks:
  - id: MathArena/aime_2026
"""
DOC_INSPECT = """name: Humanity's Last Exam
description: >
  Humanity's Last Exam (HLE) is a multi-modal benchmark at the frontier of human knowledge.
evaluation_framework: "inspect-ai"

tasks:
  - id: hle
    config: default
    split: test

    field_spec:
      input: question
      input_image: image
      target: answer

    solvers:
      - name: system_message
        args:
          template: |
            Your response should be in the following format:
            Answer: {your chosen answer}
      - name: generate

    scorers:
      - name: model_graded_fact
        args:
          model: openai/o3-mini
"""


def test_the_pushed_repo_describes_every_task_it_can_serve(hub, tmp_path) -> None:
    build_eval_repo(tmp_path / "eval", names=SETS, tasks=benchmark_tasks(), extra_sets=extra_eval_sets(),
                    push_to=EVAL)  # the loopback Hub checks eval.yaml at push time, as the Hub does
    text = Path(hf_hub_download(EVAL, "eval.yaml", repo_type="dataset")).read_text()
    assert eval_yaml_errors(text) == []
    doc = yaml.safe_load(text)
    assert (doc["name"], doc["evaluation_framework"]) == ("MergeBench", "mergebench")

    files = set(HfApi().list_repo_files(EVAL, repo_type="dataset"))
    held = {(f.split("/")[0], f.split("/")[1].split("-")[0]) for f in files if f.endswith(".parquet")}
    expected = [t.name for t in TASKS.values() if (t.eval_set, t.split) in held]
    assert [t["id"] for t in doc["tasks"]] == expected
    assert {"mb_gsm8k_cot", "mb_mmlu", "mb_tinybench_math", "mb_tinybench_math_val",
            "mb_tiny_hellaswag"} <= set(expected)
    by_id = {t["id"]: t for t in doc["tasks"]}
    assert by_id["mb_gsm8k_cot"] == {"id": "mb_gsm8k_cot", "config": "gsm8k", "split": "test",
                                     "metrics": [{"name": "extractive_match", "higher_is_better": True}],
                                     "domain": "math", "role": "test"}
    assert by_id["mb_tinybench_math_val"]["split"] == "validation"


def test_eval_yaml_needs_a_task_the_repo_can_serve() -> None:
    with pytest.raises(ConfigError, match="No evaluation task reads the configs") as e:
        eval_yaml(benchmark_tasks(), {"nothing": ["test"]})
    assert "mergebench tasks ls" in e.value.hint


def test_the_push_time_check_accepts_the_documentations_examples_and_refuses_what_it_forbids(hub) -> None:
    assert eval_yaml_errors(DOC_MINIMAL) == [] and eval_yaml_errors(DOC_INSPECT) == []
    bad = {
        "name: x\nevaluation_framework: mergebench\ntasks: [{id: a}, {id: a, split: ''}]\n":
            ['"description" is required and must be a non-empty string',
             '"tasks[1].id" with value "a" is used more than once', '"tasks[1].split" must be a non-empty string'],
        "name: x\ndescription: y\nevaluation_framework: mergebench\ntasks: []\n":
            ['"tasks" is required and must be a non-empty list'],
        "name: x\ndescription: y\nevaluation_framework: inspect-ai\ntasks: [{id: a, config: default}]\n":
            [f'"tasks[0].{k}" is required with evaluation_framework inspect-ai'
             for k in ("field_spec", "solvers", "scorers")],
        "- just a list\n": ["eval.yaml must be a mapping (key: value), got a list"],
    }
    api = HfApi()
    api.create_repo(EVAL, repo_type="dataset", exist_ok=True)
    for text, errors in bad.items():
        assert eval_yaml_errors(text) == errors
        with pytest.raises(HfHubHTTPError) as e:
            api.upload_file(path_or_fileobj=text.encode(), path_in_repo="eval.yaml", repo_id=EVAL,
                            repo_type="dataset")
        assert e.value.response.status_code == 400 and errors[0] in str(e.value)
    assert "eval.yaml" not in api.list_repo_files(EVAL, repo_type="dataset")


@pytest.mark.slow
def test_every_main_metric_is_declared_higher_is_better_by_lighteval() -> None:
    """``eval.yaml`` says higher is better for every task; lighteval's metric objects must agree."""
    from mergebench.errors import EvaluationError
    from mergebench.eval.metrics import build_metrics

    checked = set()
    for spec in TASKS.values():
        try:
            metrics, _ = build_metrics(spec.metrics)
        except EvaluationError:  # optional scoring packages (IFBench's spaCy) are not installed here
            continue
        declared = {}
        for metric in metrics:
            names, flags = metric.metric_name, metric.higher_is_better
            declared |= dict(flags) if isinstance(flags, dict) else {n: flags for n in (
                names if isinstance(names, list) else [names])}
        assert declared[spec.main_metric] is HIGHER_IS_BETTER, spec.name
        checked.add(spec.name)
    assert len(checked) >= len(TASKS) - 2
