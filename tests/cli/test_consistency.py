"""One meaning per flag across the commands (issue #15, item 7).

Sizes parse one way (the Hub's decimal units) and every CLI default is the default of the API it stands for;
a value outside a fixed set is a usage error (exit 2) naming the valid values; ``--out`` means a folder to
create for what a command builds and a results file for evaluations; listings print one way.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest
import typer.main
from typer.testing import CliRunner

from mergebench.cli import app, parse_size
from mergebench.errors import ConfigError

SPACE_APP = Path(__file__).resolve().parents[2] / "space" / "app.py"


def _commands() -> Iterator[tuple[str, Any]]:
    """``("data build", command)`` for every leaf command of the app."""

    def walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
        if hasattr(command, "commands"):
            if getattr(command, "invoke_without_command", False) and command.params:
                yield " ".join(path), command  # a group that also runs alone (`mergebench space --results ...`)
            for name, sub in command.commands.items():
                yield from walk(sub, (*path, name))
        else:
            yield " ".join(path), command

    yield from walk(typer.main.get_command(app), ())


def _text(output: str) -> str:
    """CLI output on one line, without the error panel's box characters."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


# --- sizes -------------------------------------------------------------------------------------------------

def test_sizes_are_decimal_as_on_the_hub_and_binary_only_when_written_so() -> None:
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("500MB") == parse_size("500 mb") == 500_000_000
    assert parse_size("2KB") == parse_size("2k") == 2000
    assert parse_size("1GiB") == 2**30 and parse_size("512MiB") == 512 * 2**20
    assert parse_size("1000") == parse_size("1000B") == 1000
    for bad in ("5iB", "5XB", "GB", "-1GB", "5 G B"):
        with pytest.raises(ConfigError, match="Cannot read the size") as e:
            parse_size(bad)
        assert e.value.hint == "Write sizes like 2GB or 500MB (decimal, as on the Hub), or 1GiB (binary)."


def test_the_api_shard_size_is_the_clis_5gb() -> None:
    from mergebench.merge.options import MergeOptions

    assert MergeOptions().shard_size == parse_size("5GB") == 5_000_000_000


def test_every_api_shard_size_default_is_5gb() -> None:
    from mergebench.merge.inputs import prepare
    from mergebench.merge.plan import build_plan
    from mergebench.runner.config import MergeSettings

    assert inspect.signature(prepare).parameters["shard_size"].default == 5_000_000_000
    assert inspect.signature(build_plan).parameters["shard_size"].default == 5_000_000_000
    assert MergeSettings().shard_size == 5_000_000_000


def test_a_bad_size_is_a_usage_error_with_the_hint(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "r.yaml"), "--shard-size", "5XB"])
    assert result.exit_code == 2
    assert ("Invalid value for '--shard-size': Cannot read the size '5XB'. Write sizes like 2GB or 500MB "
            "(decimal, as on the Hub), or 1GiB (binary).") in _text(result.output)


# --- every CLI default is the API default it stands for ----------------------------------------------------

@dataclass(frozen=True)
class Api:
    """The API default an option stands for: ``owner`` (``module:Class`` → a field of ``Class()``,
    ``module:function`` → a parameter's default) and ``name``; ``convert`` maps the CLI value to the API's.
    ``inherit``: the CLI default is ``None`` so that the API applies its own (environment, then default)."""

    owner: str
    name: str
    convert: Callable[[Any], Any] = lambda value: value
    inherit: bool = False

    def default(self) -> Any:
        if self.owner.startswith("space/app.py:"):  # read from the source: importing it starts Gradio
            return _source_default(SPACE_APP, self.owner.partition(":")[2], self.name)
        if self.owner.startswith("space/"):
            spec = importlib.util.spec_from_file_location("space_settings", SPACE_APP.with_name("settings.py"))
            module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
            spec.loader.exec_module(module)
            return getattr(module.SpaceConfig(), self.name)
        module, _, attr = self.owner.partition(":")
        target = getattr(importlib.import_module(module), attr)
        if isinstance(target, type) and dataclasses.is_dataclass(target):  # may have required fields
            field = next(f for f in dataclasses.fields(target) if f.name == self.name)
            return field.default_factory() if field.default is dataclasses.MISSING else field.default
        if isinstance(target, type):
            return getattr(target(), self.name)
        return inspect.signature(target).parameters[self.name].default


def _source_default(path: Path, function: str, name: str) -> Any:
    node = next(n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)
                and n.name == function)
    defaults = dict(zip([a.arg for a in node.args.kwonlyargs], node.args.kw_defaults, strict=True))
    return ast.literal_eval(defaults[name])


@dataclass(frozen=True)
class CliOnly:
    """An option with no API counterpart, and why."""

    why: str


OUTPUT = CliOnly("how the result is printed")
OPTIONS = "mergebench.merge.options"
ENGINE, EVAL, MODEL = "mergebench.merge.engine", "mergebench.eval.run:evaluate", "mergebench.eval.lighteval_wrapper"
SERVE, FAULTS = "mergebench.hubserver.server:serve", "mergebench.cli.hub:FaultOptions"
DEFAULTS: dict[str, dict[str, Api | CliOnly]] = {
    "plan": {"shard_size": Api(f"{OPTIONS}:MergeOptions", "shard_size", parse_size), "format": OUTPUT},
    "merge": {"push_to": Api(f"{ENGINE}:merge", "push_to"), "private": Api(f"{ENGINE}:merge", "private"),
              "resume": Api(f"{OPTIONS}:MergeOptions", "resume"), "threads": Api(f"{OPTIONS}:MergeOptions", "threads"),
              "shard_size": Api(f"{OPTIONS}:MergeOptions", "shard_size", parse_size), "format": OUTPUT},
    "demo": {"work_dir": CliOnly("run_demo takes the folder as an argument"),
             "method": Api("mergebench.demo:run_demo", "method")},
    "eval": {"model": CliOnly("evaluate's model is required; the CLI needs it unless --list"),
             "suite": Api(EVAL, "suite"), "tasks": Api(EVAL, "tasks"), "backend": Api(EVAL, "backend"),
             "max_samples": Api(EVAL, "max_samples"), "out_file": Api(EVAL, "out"),
             "push_results": Api(EVAL, "push_to"), "eval_data": Api(EVAL, "eval_data"),
             "push_eval_results": Api(EVAL, "push_eval_results"), "refusal_judge": Api(EVAL, "refusal_judge"),
             "batch_size": Api(f"{MODEL}:ModelOptions", "batch_size"),
             "device": Api(f"{MODEL}:ModelOptions", "device"), "list_tasks": CliOnly("lists tasks instead"),
             "format": OUTPUT},
    "train": {"config": Api("mergebench.train.config:load_train_config", "name_or_path"),
              "set_": CliOnly("keyword overrides of load_train_config (none by default)"),
              "push_to": Api("mergebench.train.trainer:train_expert", "push_to"),
              "private": Api("mergebench.train.trainer:train_expert", "private"),
              "overwrite": Api("mergebench.train.trainer:train_expert", "overwrite"), "format": OUTPUT},
    "leaderboard": {"source": CliOnly("read_results needs a source; --models reads model repos instead"),
                    "revision": Api("mergebench.eval.leaderboard:read_results", "revision"),
                    "models": CliOnly("the model repos read_model_repos rebuilds the results from"),
                    "format": OUTPUT},
    "run": {"fresh": Api("mergebench.runner.run:run_benchmark", "resume", lambda fresh: not fresh),
            "methods": Api("mergebench.runner.run:run_benchmark", "methods"),
            "executor": CliOnly("overrides the configuration file's executor.kind (BenchConfig.with_executor)"),
            "address": CliOnly("overrides the configuration file's executor.address"),
            "max_concurrent": CliOnly("overrides the configuration file's executor.max_concurrent")},
    "train-experts": {"executor": CliOnly("overrides the plan's executor.kind (TrainPlan.with_executor)"),
                      "address": CliOnly("overrides the plan's executor.address"),
                      "max_concurrent": CliOnly("overrides the plan's executor.max_concurrent"), "format": OUTPUT},
    "unit run": {},
    "space": {"results": CliOnly("what to show; required to serve, absent when a subcommand (deploy) runs"),
              "port": Api("space/app.py:launch", "port"),
              "host": CliOnly("launch(host=None) would let GRADIO_SERVER_NAME decide; the CLI binds loopback"),
              "work_dir": Api("space/settings.py:SpaceConfig", "work_dir", inherit=True),
              "results_repo": Api("space/settings.py:SpaceConfig", "results_repo"),
              "backend": Api("space/settings.py:SpaceConfig", "backend", inherit=True)},
    "space deploy": {"hardware": Api("mergebench.space_deploy:DeployOptions", "hardware"),
                     "results": Api("mergebench.space_deploy:DeployOptions", "results"),
                     "private": Api("mergebench.space_deploy:DeployOptions", "private"),
                     "dry_run": Api("mergebench.space_deploy:deploy", "dry_run")},
    "tiny": {"work_dir": CliOnly("run_tiny takes the folder as an argument")},
    "methods ls": {"format": OUTPUT},
    "methods show": {"format": OUTPUT},
    "tasks ls": {"format": OUTPUT},
    "hub serve": {"host": Api(SERVE, "host"), "port": Api(SERVE, "port"),
                  "link_rate": Api("mergebench.hubserver.link:Link", "rate"),
                  "drop_after_bytes": Api(FAULTS, "drop_after_bytes"),
                  "stall_after_bytes": Api(FAULTS, "stall_after_bytes"),
                  "stall_seconds": Api(FAULTS, "stall_seconds"), "http_error": Api(FAULTS, "http_error"),
                  "delay": Api(FAULTS, "delay"), "fault_times": Api(FAULTS, "times", lambda k: k or None),
                  "retry_after": Api(FAULTS, "retry_after"), "throttle": Api(FAULTS, "throttle"),
                  "short_body": Api(FAULTS, "short_body"),
                  "fault_path": Api(FAULTS, "path"), "fault_method": Api(FAULTS, "method")},
    "data build": {"source_revision": Api("mergebench.data.build:BuildOptions", "revisions", lambda v: dict(v or {})),
                   "source": Api("mergebench.data.build:BuildOptions", "repos", lambda v: dict(v or {})),
                   "push_to": Api("mergebench.data.build:build_domain", "push_to"),
                   "private": Api("mergebench.data.build:build_domain", "private"),
                   "overwrite": Api("mergebench.data.build:BuildOptions", "overwrite"),
                   "cache_dir": Api("mergebench.data.build:BuildOptions", "cache_dir"),
                   "eval_sets": Api("mergebench.data.build:BuildOptions", "eval_sets"), "format": OUTPUT},
    "data eval-sets": {"tasks": Api("mergebench.data.evalrepo:build_eval_repo", "names", lambda v: v or None),
                       "from_hub": Api("mergebench.data.evalrepo:build_eval_repo", "from_hub", lambda on: on or None),
                       "unpinned": Api("mergebench.data.upstream.load:HubBuild", "unpinned"),
                       "pins": Api("mergebench.data.upstream.load:HubBuild", "pins"),
                       "cache_dir": Api("mergebench.data.upstream.load:HubBuild", "cache_dir"),
                       "push_to": Api("mergebench.data.evalrepo:build_eval_repo", "push_to"),
                       "private": Api("mergebench.data.evalrepo:build_eval_repo", "private"),
                       "overwrite": Api("mergebench.data.evalrepo:build_eval_repo", "overwrite"), "format": OUTPUT},
    "data fixtures": {},
}


def test_every_option_of_every_command_is_accounted_for() -> None:
    """A new option (or command) needs an entry in DEFAULTS: its API default, or why it has none."""
    found = {path: {p.name for p in command.params if not p.required} for path, command in _commands()}
    assert found == {path: set(entries) for path, entries in DEFAULTS.items()}


@pytest.mark.parametrize(("path", "name"), [(p, n) for p, entries in DEFAULTS.items() for n, e in entries.items()
                                            if isinstance(e, Api)])
def test_every_cli_default_is_the_api_default(path: str, name: str) -> None:
    command = dict(_commands())[path]
    cli_default = next(p.default for p in command.params if p.name == name)
    api = DEFAULTS[path][name]
    if api.inherit:
        assert cli_default is None and api.default() is not None
    else:
        assert api.convert(cli_default) == api.default(), f"mergebench {path}: {name}"


# --- fixed sets: usage errors that list the valid values ---------------------------------------------------

FORMATS = ["'table', 'json'"]
CASES = {
    "plan --format": (["plan", "r.yaml", "--format", "yaml"], FORMATS),
    "merge --format": (["merge", "r.yaml", "--out", "o", "--format", "yaml"], FORMATS),
    "methods ls --format": (["methods", "ls", "--format", "yaml"], FORMATS),
    "eval --list --format": (["eval", "--list", "--format", "yaml"], FORMATS),
    "data eval-sets --format": (["data", "eval-sets", "--out", "o", "--tasks", "gsm8k", "--format", "yaml"], FORMATS),
    "eval --backend": (["eval", "m", "--suite", "tiny", "--backend", "vlm"], ["'transformers', 'vllm'"]),
    "eval --suite": (["eval", "m", "--suite", "domain"],
                     ["Unknown suite 'domain'. Did you mean 'domains'? Suites: domains, forgetting, validation, tiny"]),
    "eval --tasks": (["eval", "m", "--tasks", "mb_mmlu,gsm8k_cott"],
                     ["Unknown task 'gsm8k_cott'. Did you mean 'mb_gsm8k_cot'?"]),
    "data build DOMAIN": (["data", "build", "maths", "--out", "o"],
                          ["'instruction', 'math', 'multilingual', 'coding', 'safety'"]),
    "data eval-sets --tasks": (["data", "eval-sets", "--out", "o", "--tasks", "gsm8k,gsm9k"],
                              ["Unknown evaluation set 'gsm9k'. Choose from ifeval, ifbench, gsm8k, math,"]),
    "train --domain": (["train", "--base", "b", "--domain", "maths", "--data", "d", "--out", "o"],
                       ["'instruction', 'math', 'multilingual', 'coding', 'safety', 'all'"]),
    "space --backend": (["space", "--results", "r", "--backend", "vlm"], ["'transformers', 'vllm'"]),
    "demo --method (unknown)": (["demo", "--method", "tiess", "--work-dir", "w"],
                                ["Unknown merge method 'tiess'. Did you mean 'ties'?"]),
    "demo --method (needs data)": (["demo", "--method", "regmean", "--work-dir", "w"],
                                   ["Method 'regmean' needs validation data, which the demo does not have. Choose one "
                                    "of model_soup, task_arithmetic, ties, dare, consensus, localize_stitch."]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_value_outside_a_fixed_set_is_a_usage_error_naming_the_valid_ones(
        case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args, expected = CASES[case]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output
    for text in expected:
        assert text in _text(result.output)
    assert list(tmp_path.iterdir()) == []  # rejected before any work


def test_choices_are_the_librarys() -> None:
    from mergebench.cli import options
    from mergebench.domains import DOMAINS
    from mergebench.eval.run import Backend
    from mergebench.train.data import MULTITASK

    assert get_args(options.Backend) == get_args(Backend)
    assert get_args(options.Domain) == DOMAINS
    assert [v for arg in get_args(options.TrainDomain) for v in get_args(arg) or (arg,)] == [*DOMAINS, MULTITASK]


# --- one meaning per flag ----------------------------------------------------------------------------------

def _help(alias: str) -> str:
    """The help of a shared option of :mod:`mergebench.cli.options`."""
    return get_args(getattr(importlib.import_module("mergebench.cli.options"), alias))[1].help


def _flags(flag: str) -> dict[str, Any]:
    return {path: p for path, command in _commands() for p in command.params if flag in (p.opts or ())}


def test_out_is_a_folder_to_create_for_what_a_command_builds_and_a_file_for_results() -> None:
    helps = {path: p.help for path, p in _flags("--out").items()}
    assert helps == {"merge": _help("MergeOutOpt"), "train": _help("ExpertOutOpt"),
                     "data build": _help("DatasetOutOpt"), "data eval-sets": _help("DatasetOutOpt"),
                     "eval": _help("ResultsOutOpt")}
    assert all(h.startswith("Folder to create for the ") and "must not exist or be empty" in h
               for path, h in helps.items() if path != "eval")
    assert helps["eval"].startswith("Results JSON file to write")


def test_eval_out_must_not_be_a_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "model"), "--suite", "tiny", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert f"Invalid value for '--out': file '{tmp_path}' is a directory." in _text(result.output)


@pytest.mark.parametrize(("flag", "alias"), [("--format", "FormatOpt"), ("--private", "PrivateOpt"),
                                             ("--overwrite", "OverwriteOpt"), ("--shard-size", "ShardSizeOpt")])
def test_a_shared_option_has_one_help_everywhere(flag: str, alias: str) -> None:
    found = _flags(flag)
    assert len(found) >= 2 and {p.help for p in found.values()} == {_help(alias)}


def test_push_to_names_the_kind_of_repo() -> None:
    helps = {path: p.help for path, p in _flags("--push-to").items()}
    assert helps == {"merge": _help("ModelPushOpt"), "train": _help("ExpertPushOpt"),
                     "data build": _help("DatasetPushOpt"), "data eval-sets": _help("DatasetPushOpt")}


def test_every_command_has_examples() -> None:
    missing = {path for path, command in _commands() if "EXAMPLES:" not in (command.help or "").upper()}
    assert missing <= {"methods ls", "methods show"}  # owned elsewhere: add EXAMPLES there, then empty this set


# --- one listing style -------------------------------------------------------------------------------------

def test_tasks_ls_and_eval_list_print_the_same_listing() -> None:
    from mergebench.eval.tasks import TASKS

    runner = CliRunner()
    as_json = runner.invoke(app, ["tasks", "ls", "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert [r["task"] for r in rows] == list(TASKS)
    assert rows[0] == {"task": "mb_ifeval", "suite": "domains", "domain": "instruction", "kind": "generative",
                       "metric": "prompt_level_strict_acc", "data": "ifeval", "version": 2}  # 2: trained punkt
    assert runner.invoke(app, ["eval", "--list", "--format", "json"]).stdout == as_json.stdout
    table = runner.invoke(app, ["tasks", "ls"])
    assert table.exit_code == 0 and runner.invoke(app, ["eval", "--list"]).stdout == table.stdout
    assert table.stdout.split("\n")[1].split() == ["┃", "task", "┃", "suite", "┃", "domain", "┃", "kind", "┃",
                                                   "metric", "┃", "data", "┃", "version", "┃"]  # the JSON keys
