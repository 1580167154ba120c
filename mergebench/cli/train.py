"""``mergebench train``: fine-tune one expert (or the multi-task baseline) and optionally push it.

Wired by the CLI as ``app.command("train")(train_command)``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from mergebench.cli.data import parse_pairs
from mergebench.cli.options import ExpertOutOpt, ExpertPushOpt, FormatOpt, OverwriteOpt, PrivateOpt, TrainDomain
from mergebench.cli.output import print_fields
from mergebench.errors import ConfigError


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


def repo_name(base: str) -> str:
    """A base reference's name: ``org/Llama-3.2-3B@rev`` → ``Llama-3.2-3B``, ``./x/SmolLM2/`` → ``SmolLM2``."""
    return Path(base.partition("@")[0].rstrip("/")).name


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
    target = push_to.format(base=repo_name(base), domain=domain) if push_to else None
    r = train_expert(base=base, domain=domain, data=mapping, out_dir=out_dir, config=cfg, push_to=target,
                     progress=sys.stderr.isatty(), private=private, overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate/torchrun every process runs this command
        return
    summary = {"out_dir": str(r.out_dir), "domain": r.domain, "steps": r.steps, "train_tokens": r.train_tokens,
               "final_loss": round(r.final_loss, 4), "seconds": round(r.seconds, 1),
               "train_seconds": round(r.train_seconds, 1), "base_revision": r.base_revision,
               "data_revisions": r.data_revisions, "pushed_url": r.pushed_url}
    print_fields(summary, format)
