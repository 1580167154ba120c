"""``mergebench train``: fine-tune one expert (or the multi-task baseline) and optionally push it;
``mergebench train-experts PLAN.yaml``: every expert of a plan, one unit each, on an executor.

Wired by the CLI as ``app.command("train")(train_command)`` and ``app.command("train-experts")(...)``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from mergebench.cli.data import parse_pairs
from mergebench.cli.options import (
    AddressOpt,
    ExecutorOpt,
    ExpertOutOpt,
    ExpertPushOpt,
    FormatOpt,
    MaxConcurrentOpt,
    OverwriteOpt,
    PrivateOpt,
    TrainDomain,
)
from mergebench.cli.output import print_fields, print_rows
from mergebench.errors import ConfigError
from mergebench.hub.refs import short_name


def data_mapping(values: list[str], domains: tuple[str, ...]) -> dict[str, str]:
    """``--data`` values → domain → source. One bare value may hold ``{domain}``, expanded for every domain."""
    if len(values) == 1 and "{domain}" in values[0] and "=" not in values[0]:
        return {d: values[0].format(domain=d) for d in domains}
    return parse_pairs(values, what="--data", sources=domains)


def overrides(values: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` → ``{KEY: yaml(VALUE)}`` (``--set max_steps=10 --set chat_template=chatml``)."""
    pairs = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise ConfigError(f"Cannot read --set '{value}'.", hint="Write KEY=VALUE, e.g. --set max_steps=10.")
        pairs[key.strip()] = yaml.safe_load(text)
    return pairs


def train_command(
    base: Annotated[str, typer.Option("--base", help="Base model: a folder, or org/name or org/name@REVISION.")],
    domain: Annotated[TrainDomain, typer.Option(
        "--domain", help="instruction, math, multilingual, coding, safety or all (the multi-task baseline).")],
    data: Annotated[list[str], typer.Option(
        "--data", help="DOMAIN=SOURCE (repeat), SOURCE a folder or org/name(@REV); a bare value for one domain, "
                       "or a template with {domain}, e.g. org/mergebench-{domain}.")],
    out_dir: ExpertOutOpt,
    config: Annotated[str, typer.Option("--config", help="Recipe: paper, tiny or a YAML file.")] = "paper",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config key: KEY=VALUE.")] = None,
    push_to: ExpertPushOpt = None,
    private: PrivateOpt = False,
    overwrite: OverwriteOpt = False,
    format: FormatOpt = "table",
) -> None:
    """Fully fine-tune BASE on one domain's training set (all: the multi-task baseline) with TRL's SFTTrainer.

    EXAMPLES: mergebench train --base org/Llama-3.2-3B --domain math --data org/mergebench-math --out experts/math
              mergebench train --base ./smollm2 --domain all --data build/{domain} --out mt --config tiny
              accelerate launch -m mergebench.cli train ... (see scripts/train_experts.sh)
    """
    from mergebench.train import load_train_config, train_expert
    from mergebench.train.data import expected_domains

    mapping = data_mapping(data, expected_domains(domain))
    cfg = load_train_config(config, **overrides(set_ or []))
    target = push_to.format(base=short_name(base), domain=domain) if push_to else None
    r = train_expert(base=base, domain=domain, data=mapping, out_dir=out_dir, config=cfg, push_to=target,
                     progress=sys.stderr.isatty(), private=private, overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate/torchrun every process runs this command
        return
    summary = {"out_dir": str(r.out_dir), "domain": r.domain, "steps": r.steps, "train_tokens": r.train_tokens,
               "final_loss": round(r.final_loss, 4), "seconds": round(r.seconds, 1),
               "train_seconds": round(r.train_seconds, 1), "base_revision": r.base_revision,
               "data_revisions": r.data_revisions, "pushed_url": r.pushed_url}
    print_fields(summary, format)


def train_experts_command(
    plan: Annotated[Path, typer.Argument(help="Training plan (PLAN.yaml): bases, domains, data, recipe, where "
                                              "experts go, executor; format and example in docs/training.md.")],
    executor: ExecutorOpt = None,
    address: AddressOpt = None,
    max_concurrent: MaxConcurrentOpt = None,
    format: FormatOpt = "table",
) -> None:
    """Train every expert of PLAN (each base × domain: one unit) that is not trained yet, on an executor: in this
    process (local), as Ray tasks, or as Hugging Face Jobs (with each expert's cost: flavor price × running time).

    Run the same command again to resume: trained experts are skipped; with hf-jobs it re-attaches to the Jobs
    still running.

    EXAMPLES: mergebench train-experts experts.yaml;
    mergebench train-experts experts.yaml --executor hf-jobs --max-concurrent 8
    """
    from dataclasses import asdict

    from mergebench.cli.run import stage_log
    from mergebench.runner.experts import TrainPlan, train_experts

    loaded = TrainPlan.from_yaml(plan).with_executor(executor, address=address, max_concurrent=max_concurrent)
    outcomes = train_experts(loaded, stages=stage_log())
    print_rows([asdict(o) for o in outcomes], format, title=f"Experts ({loaded.output_dir})")
