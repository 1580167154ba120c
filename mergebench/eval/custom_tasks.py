"""Every MergeBench task as a lighteval custom-tasks module, for lighteval's own CLI (``--custom-tasks``).

```bash
ARGS=$(python -m mergebench.eval.custom_tasks --model-args mb_hellaswag_fr merged/ "$(mktemp -d)")
python -m mergebench.eval.custom_tasks accelerate "$ARGS" "mb_hellaswag_fr|0" \\
    --custom-tasks mergebench.eval.custom_tasks --max-samples 100 --output-dir lighteval-out
```

``TASKS_TABLE`` holds one ``LightevalTaskConfig`` per task of :data:`mergebench.eval.tasks.TASKS` (the ``mb_*``
names), built by the code ``mergebench eval`` runs (:func:`task_configs`: the task's lighteval config from
``lighteval_wrapper``, its metrics from :func:`mergebench.eval.metrics.build_metrics`): one code path, no copy.
It is built on first access, from the environment:

* ``MERGEBENCH_EVAL_DATA`` — the rows, as ``mergebench eval --eval-data`` takes them: ``org/mergebench-eval[@rev]``
  (pinned to one commit when the module loads), a folder, or unset for the packaged sets (written to a temporary
  folder that is removed when the process exits);
* ``MERGEBENCH_REFUSAL_JUDGE`` — the safety tasks' judge, as ``--refusal-judge`` (unset: the rule-based one).

**Why ``python -m mergebench.eval.custom_tasks`` rather than ``lighteval``.** lighteval 0.13.0 builds its task
registry by importing every built-in task module before the custom one, and here that fails: ``tiny_benchmarks``
downloads a pickle at import (offline: no network), and ``mix_eval``/``mt_bench`` call
``HfApi.list_models(model_name=...)``, an argument huggingface_hub 2.x no longer has (so online too). The
entry point below installs MergeBench's registry override (only the custom tasks given are loaded, as in
``mergebench eval``; :func:`mergebench.eval.lighteval_wrapper.install_registry_override`) and the offline NLTK
data, then runs lighteval's own typer app unchanged: the same commands, arguments and options. Where lighteval's
registry loads, ``lighteval accelerate ... --custom-tasks mergebench/eval/custom_tasks.py`` is the same run.

**Model settings are per model in lighteval, per task in MergeBench.** ``mergebench eval`` renders generative
prompts with the chat template (tokenized without extra special tokens) and scores log-likelihood tasks on plain
text, and samples each task at its own temperature/top-p. lighteval's CLI takes one setting per run from its
model args, so run one task kind at a time with :func:`cli_model_args`, which gives the model args that
reproduce ``mergebench eval``'s settings for a task (``python -m mergebench.eval.custom_tasks --model-args TASK
MODEL [CACHE_DIR]`` prints them; give a fresh response cache per evaluation, as ``mergebench eval`` does).
Sampled tasks (pass@1 from n=10 at T=0.2, top-p 0.95) sample under lighteval's transformers backend only if the
model's ``generation_config.json`` says ``do_sample: true``: lighteval 0.13.0 sets ``do_sample`` only to turn it
off, while ``mergebench eval`` sets it per task.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mergebench.errors import EvaluationError
from mergebench.eval.data_source import resolve_source, task_data
from mergebench.eval.lighteval_wrapper import ModelOptions, _lighteval_config, default_device, prepare_offline
from mergebench.eval.metrics import MetricContext, build_metrics
from mergebench.eval.refusal import make_judge
from mergebench.eval.sandbox import SandboxConfig
from mergebench.eval.tasks import TASKS, TaskSpec, get_task
from mergebench.scratch import scratch_folder

logger = logging.getLogger(__name__)
EVAL_DATA_ENV = "MERGEBENCH_EVAL_DATA"
JUDGE_ENV = "MERGEBENCH_REFUSAL_JUDGE"


def task_configs(eval_data: str | Path | None = None, *, work_dir: Path, refusal_judge: str | None = None,
                 tasks: Iterable[TaskSpec] | None = None, sandbox: SandboxConfig | None = None) -> list[Any]:
    """lighteval's ``LightevalTaskConfig`` of each task (default: every task), exactly as ``mergebench eval``
    builds it, reading ``eval_data`` (as ``--eval-data``; packaged sets are written under ``work_dir``).

    A task whose rows or metric are unavailable here (a folder without its config, ``mb_ifbench`` without spaCy)
    is left out, and one warning says which and why; the others are still listed.
    """
    prepare_offline()
    source = resolve_source(eval_data, work_dir=work_dir)
    judge, sandbox = make_judge(refusal_judge), sandbox or SandboxConfig()
    configs, left_out = [], {}
    for spec in tasks if tasks is not None else TASKS.values():
        try:
            metrics, _ = build_metrics(spec.metrics, MetricContext(spec.num_samples, sandbox, judge))
            configs.append(_lighteval_config(spec, task_data(source, spec.eval_set), metrics))
        except EvaluationError as e:
            left_out[spec.name] = str(e)
    if left_out:
        logger.warning("%d MergeBench task(s) left out of the lighteval table: %s", len(left_out),
                       "; ".join(f"{name}: {why}" for name, why in left_out.items()))
    return configs


def _build_table() -> list[Any]:
    scratch = contextlib.ExitStack()  # lighteval imports this table: its folder lives as long as the process
    work_dir = scratch.enter_context(scratch_folder("custom-tasks"))
    atexit.register(scratch.close)
    return task_configs(os.environ.get(EVAL_DATA_ENV) or None, work_dir=work_dir,
                        refusal_judge=os.environ.get(JUDGE_ENV) or None)


_TABLE: list[Any] | None = None


def __getattr__(name: str) -> Any:
    """``TASKS_TABLE`` is built on first access: importing this module for :func:`cli_model_args` stays cheap."""
    global _TABLE
    if name == "TASKS_TABLE":
        if _TABLE is None:
            _TABLE = _build_table()
        return _TABLE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cli_model_args(task: str, model: str | Path, *, options: ModelOptions | None = None,
                   cache_dir: str | Path | None = None) -> str:
    """lighteval ``accelerate`` model args that evaluate ``model`` on ``task`` as ``mergebench eval`` does.

    The prompt format (chat template for generative tasks, tokenized without added special tokens; plain text
    with the tokenizer's special tokens for log-likelihood tasks), dtype, device, batch size and the task's
    temperature/top-p. A model whose tokenizer has no chat template needs one for generative tasks
    (``mergebench eval`` falls back to ChatML; lighteval does not).

    Give a fresh ``cache_dir`` per evaluation: lighteval caches responses by model *config*, not weights (two
    merges written to one folder would share answers), in ``cache_dir / model`` — so ``model`` must be a Hub id
    or a path relative to the working directory, without ``..``: an absolute path would put lighteval's cache
    inside the model folder itself, whatever ``cache_dir`` says.

    Raises:
        EvaluationError: ``model`` is an absolute path or climbs out with ``..`` (the hint says what to pass).

    >>> cli_model_args("mb_gsm8k_cot", "merged/", options=ModelOptions(device="cpu"))
    'model_name=merged/,dtype=float32,device=cpu,batch_size=32,override_chat_template=True,add_special_tokens=False,generation_parameters={temperature:0.0}'
    """
    spec, options = get_task(task), options or ModelOptions()
    path = Path(model)
    if path.is_absolute() or ".." in path.parts:
        raise EvaluationError(f"lighteval would write its response cache inside '{model}' (it stores it at "
                              "cache_dir/model_name, and this model name is a path out of cache_dir).",
                              hint=f"Run from the model's parent folder and pass '{path.name}', or pass a Hub id.")
    chat = spec.uses_chat_template
    args: dict[str, Any] = {"model_name": str(model), "dtype": options.dtype,
                            "device": options.device or default_device(), "batch_size": options.batch_size,
                            "override_chat_template": chat, "add_special_tokens": not chat}
    if options.max_length is not None:
        args["max_length"] = options.max_length
    if cache_dir is not None:
        args["cache_dir"] = str(cache_dir)
    generation = {"temperature": spec.temperature, **({"top_p": spec.top_p} if spec.top_p is not None else {})}
    return ",".join([*(f"{k}={v}" for k, v in args.items()),
                     "generation_parameters={" + ",".join(f"{k}:{v}" for k, v in generation.items()) + "}"])


def main(argv: list[str] | None = None) -> None:
    """lighteval's CLI with MergeBench's registry override (see the module docstring); ``--model-args TASK MODEL
    [CACHE_DIR]`` prints :func:`cli_model_args` instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--model-args"]:
        if len(argv) not in (3, 4):
            raise SystemExit("usage: python -m mergebench.eval.custom_tasks --model-args TASK MODEL [CACHE_DIR]")
        print(cli_model_args(argv[1], argv[2], cache_dir=argv[3] if len(argv) == 4 else None))  # the CLI's output
        return
    prepare_offline()
    from lighteval.__main__ import app

    app(args=argv, prog_name="python -m mergebench.eval.custom_tasks")


if __name__ == "__main__":
    main()
