"""``mergebench train``: data templates, ``--set`` overrides, ``{base}``/``{domain}`` in ``--push-to``, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mergebench.cli import app
from mergebench.cli.train import data_mapping, overrides
from mergebench.errors import ConfigError
from mergebench.fixtures import DOMAINS
from mergebench.hub.refs import short_name
from tests.train._data import write_domain_folder


def test_argument_helpers() -> None:
    assert data_mapping(["org/mergebench-{domain}"], DOMAINS)["safety"] == "org/mergebench-safety"
    assert data_mapping(["./math"], ("math",)) == {"math": "./math"}
    assert data_mapping(["math=a", "coding=b@v1"], ("math", "coding")) == {"math": "a", "coding": "b@v1"}
    assert overrides(["max_steps=10", "chat_template=chatml", "max_rows_per_domain=null"]) == {
        "max_steps": 10, "chat_template": "chatml", "max_rows_per_domain": None}
    with pytest.raises(ConfigError, match="Cannot read --set 'max_steps'"):
        overrides(["max_steps"])
    assert short_name("meta-llama/Llama-3.2-3B@main") == "Llama-3.2-3B"
    assert short_name("./fixtures/SmolLM2-135M/") == "SmolLM2-135M"


def test_train_command_multitask_json(tiny_llama, tmp_path: Path) -> None:
    for domain in DOMAINS:
        write_domain_folder(tmp_path / "data" / domain, domain, train_rows=8, validation=2)
    result = CliRunner().invoke(app, [
        "train", "--base", str(tiny_llama.base), "--domain", "all", "--data", f"{tmp_path}/data/{{domain}}",
        "--out", str(tmp_path / "mt"), "--config", "tiny", "--set", "max_steps=1", "--set", "num_threads=1",
        "--set", "max_length=96", "--set", "per_device_batch_size=2", "--set", "effective_batch_size=2",
        "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 1 and summary["domain"] == "all" and set(summary["data_revisions"]) == set(DOMAINS)
    assert (tmp_path / "mt" / "model.safetensors").is_file() and summary["pushed_url"] is None


def test_unknown_config_key_on_the_command_line(tiny_llama, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--base", str(tiny_llama.base), "--domain", "math", "--data",
                                      str(tmp_path), "--out", str(tmp_path / "x"), "--set", "max_step=3"])
    assert isinstance(result.exception, ConfigError) and result.exception.hint == "Did you mean 'max_steps'?"
