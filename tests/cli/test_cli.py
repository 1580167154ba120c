"""The command line: commands listed, results on stdout, `Error:`/`Hint:` on stderr with exit code 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from mergebench.cli import app, parse_size
from tests.engine._build import family, recipe

MERGEBENCH = str(Path(sys.executable).parent / "mergebench")


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("merge", "plan", "methods", "hub", "demo", "eval", "data"):
        assert command in result.output


def test_parse_size() -> None:
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1000") == 1000


def test_plan_and_merge_json(tmp_path: Path) -> None:
    base, experts, _, _ = family(tmp_path / "in", 2, shards=2)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(base, experts, parameters={"scaling": 0.5})))
    runner = CliRunner()
    planned = runner.invoke(app, ["plan", str(path), "--format", "json", "--shard-size", "1KB"])
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.stdout)
    assert plan["method"] == "task_arithmetic" and plan["mergeable_tensors"] == 7 and len(plan["output_shards"]) > 1
    merged = runner.invoke(app, ["merge", str(path), "--out", str(tmp_path / "out"), "--format", "json"])
    assert merged.exit_code == 0, merged.output
    assert json.loads(merged.stdout)["out_dir"] == str(tmp_path / "out")
    assert (tmp_path / "out" / "README.md").exists()


def test_methods_ls_lists_registered_methods() -> None:
    result = CliRunner().invoke(app, ["methods", "ls", "--format", "json"])
    names = {row["method"] for row in json.loads(result.stdout)}
    assert {"task_arithmetic", "model_soup"} <= names


def test_errors_are_one_line_with_a_hint_and_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("method: task_arithmetc\nbase_model: ./x\nmodels: [{model: ./y}]\n")
    proc = subprocess.run([MERGEBENCH, "merge", str(path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Error: Unknown merge method 'task_arithmetc'. Did you mean 'task_arithmetic'?" in proc.stderr
    assert "Hint: Available methods:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_offline_mode_with_a_hub_reference_is_an_error_with_a_hint(tmp_path) -> None:
    """Before, HF_HUB_OFFLINE=1 and a Hub model in a recipe ended in huggingface_hub's OfflineModeIsEnabled
    traceback (found by the fault campaign on `data build`)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: task_arithmetic\nbase_model: org/base\nmodels:\n  - model: org/expert\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "mergebench.cli", "merge", str(recipe), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "Error: Cannot reach" in r.stderr and "offline mode is enabled" in r.stderr
    assert "Hint: Unset HF_HUB_OFFLINE" in r.stderr
    assert not (tmp_path / "o").exists()


def test_a_bad_push_target_is_refused_before_any_work(tmp_path) -> None:
    """Before, `--push-to 'org/bad name'` merged first, then failed with huggingface_hub's HFValidationError
    traceback (found by the fault campaign)."""
    from mergebench.errors import ConfigError
    from mergebench.merge.engine import merge

    missing = tmp_path / "missing-recipe.yaml"
    r = CliRunner().invoke(app, ["merge", str(missing), "--out", str(tmp_path / "o"), "--push-to", "org/bad name"])
    assert r.exit_code == 2 and "is not a Hub repo id" in r.output
    for target in ("org/bad name", "a/b/c", "org/-dash"):
        try:
            merge(missing, tmp_path / "o", push_to=target)
        except ConfigError as e:
            assert "is not a Hub repo id" in str(e) and e.hint
        else:
            raise AssertionError(f"{target!r} was accepted")
    assert not (tmp_path / "o").exists()
