"""Regression tests for issue #22's "wrong result with exit 0" and "errors, not tracebacks" probes.

Each test failed on the code before its fix (a merge that finished with NaN weights, aliased tensors,
mixed old/new inputs or a silently overridden key; a raw traceback; an absolute path in a pushed card).
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from mergebench.errors import ConfigError, CorruptFileError, NonFiniteError
from mergebench.fixtures import write_family_to_hub_root
from mergebench.merge.engine import merge
from mergebench.merge.options import MergeOptions
from mergebench.stream.format import parse_header
from tests.engine._build import family, recipe
from tests.engine.test_merge_local import interrupted_merge, load_dir

QUIET = MergeOptions(progress=False)
MERGEBENCH = str(Path(sys.executable).with_name("mergebench"))


def _rewrite_header(path: Path, edit) -> None:
    """Apply ``edit`` to the JSON header of a safetensors file, keeping the data bytes (header re-padded)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8: 8 + n])
    edit(header)
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path.unlink()  # never write through a hard link shared with a session fixture
    path.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n:])


def _alias_second_onto_first(header: dict) -> None:
    """Point the second of two same-sized tensors at the first one's bytes (and drop the now-orphan bytes)."""
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    a, b = next((x, y) for x, y in itertools.pairwise(names)
                if header[x]["shape"] == header[y]["shape"] and header[x]["dtype"] == header[y]["dtype"])
    header[b]["data_offsets"] = list(header[a]["data_offsets"])


# --- 1. safetensors headers validated as strictly as the specification ------------------------------------

@pytest.mark.parametrize(("offsets", "problem"), [
    ([[0, 8], [0, 8]], "overlaps"),       # aliased: both tensors read the same bytes
    ([[0, 8], [4, 12]], "overlaps"),      # partial overlap
    ([[0, 8], [16, 24]], "gap"),          # hole in the data section
    ([[8, 16], [16, 24]], "gap"),         # data does not start at 0
])
def test_header_offsets_must_tile_the_data_section(offsets, problem) -> None:
    header = {f"t{i}": {"dtype": "F32", "shape": [2], "data_offsets": o} for i, o in enumerate(offsets)}
    with pytest.raises(ValueError, match=problem):
        parse_header(json.dumps(header).encode())


def test_aliased_tensors_in_a_local_shard_are_rejected_before_writing(tmp_path: Path) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 2)
    _rewrite_header(experts[1] / "model.safetensors", _alias_second_onto_first)
    with pytest.raises(CorruptFileError, match="overlaps the previous tensor") as info:
        merge(recipe(base_dir, experts), tmp_path / "out", options=QUIET)
    assert info.value.filename == "model.safetensors"
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_trailing_bytes_after_the_last_tensor_are_rejected(tmp_path: Path) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 2)
    with open(experts[0] / "model.safetensors", "ab") as f:
        f.write(b"\0" * 64)
    with pytest.raises(CorruptFileError, match="trailing bytes"):
        merge(recipe(base_dir, experts), tmp_path / "out", options=QUIET)


def test_aliased_tensors_on_the_hub_are_rejected(hub, hub_root: Path, tiny_llama, tmp_path: Path) -> None:
    ids = write_family_to_hub_root(tiny_llama, hub_root)
    shard = sorted(hub.repo_dir(ids["math"]).glob("model-*.safetensors"))[0]
    _rewrite_header(shard, _alias_second_onto_first)
    config = {"method": "task_arithmetic", "base_model": ids["base"], "models": [{"model": ids["math"]}]}
    with pytest.raises(CorruptFileError, match="overlaps the previous tensor") as info:
        merge(config, tmp_path / "out", options=QUIET)
    assert ids["math"] in info.value.model and info.value.filename == shard.name


# --- 2. non-finite or absurd numbers are rejected at validation, and the output is checked ------------------

@pytest.mark.parametrize(("parameters", "where"), [
    ({"scaling": float("nan")}, "parameters.scaling = nan"),
    ({"scaling": float("inf")}, "parameters.scaling = inf"),
    ({"scaling": "1e39"}, "parameters.scaling = 1e+39"),   # YAML 1.1 reads `1e39` as this string
    ({"weights": [float("inf"), 1.0]}, "parameters.weights[0] = inf"),
])
def test_non_finite_parameters_are_rejected_before_any_work(tmp_path: Path, parameters, where) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 2)
    with pytest.raises(ConfigError, match="not a finite number") as info:
        merge(recipe(base_dir, experts, parameters=parameters), tmp_path / "out", options=QUIET)
    assert where in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_a_non_finite_per_model_weight_is_rejected(tmp_path: Path) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 2)
    config = recipe(base_dir, experts, method="model_soup")
    config["models"][0]["weight"], config["models"][1]["weight"] = float("nan"), 1.0
    with pytest.raises(ConfigError, match=r"weight\[0\] = nan"):
        merge(config, tmp_path / "out", options=QUIET)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_an_overflowing_merge_fails_and_leaves_nothing(tmp_path: Path, method: str) -> None:
    """Finite parameters whose product overflows the output dtype (float16 here) must not finish."""
    base_dir, experts, _, _ = family(tmp_path / "in", 2)
    config = recipe(base_dir, experts, method=method, parameters={"scaling": 1e30}, dtype="float16")
    with pytest.raises(NonFiniteError, match="produced NaN or Inf from finite inputs") as info:
        merge(config, tmp_path / "out", options=QUIET)
    assert "Lower 'scaling'" in info.value.hint
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


# --- 3. resume fingerprints local inputs' contents ------------------------------------------------------

def test_resume_after_a_local_input_changed_starts_over(tmp_path: Path, monkeypatch, caplog) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 3, shards=2)
    config = recipe(base_dir, experts, method="ties", parameters={"top_k": 0.3})
    options = MergeOptions(progress=False, shard_size=700)
    interrupted_merge(monkeypatch, config, tmp_path / "out", options)
    assert (tmp_path / ".out.partial").exists()

    # the same shapes and dtypes, other values: only the contents tell the inputs apart
    changed = experts[1] / "model-00001-of-00002.safetensors"
    tensors = load_file(changed)
    save_file({k: v * 2 for k, v in tensors.items()}, changed, metadata={"format": "pt"})
    os.utime(changed, ns=(time.time_ns(), time.time_ns()))

    resumed = merge(config, tmp_path / "out", options=MergeOptions(progress=False, shard_size=700, resume=True))
    fresh = merge(config, tmp_path / "fresh", options=options)
    assert resumed.resumed_shards == ()
    assert "a local input has changed" in caplog.text
    a, b = load_dir(resumed.out_dir), load_dir(fresh.out_dir)
    assert all(torch.equal(a[k], b[k]) for k in b)


# --- 4. a key given twice is an error -------------------------------------------------------------------

def test_duplicate_recipe_keys_are_rejected(tmp_path: Path) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 2)
    path = tmp_path / "recipe.yaml"
    path.write_text(f"method: ties\nbase_model: {base_dir}\nmodels: [{{model: {experts[0]}}}]\n"
                    "method: task_arithmetic\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'method' \(first given at line 1\)"):
        merge(path, tmp_path / "out", options=QUIET)
    path.write_text(f"method: ties\nbase_model: {base_dir}\nmodels: [{{model: {experts[0]}}}]\n"
                    "parameters: {top_k: 0.2, top_k: 0.9}\n")
    with pytest.raises(ConfigError, match="duplicate key 'top_k'"):
        merge(path, tmp_path / "out", options=QUIET)


# --- 14. errors, not tracebacks --------------------------------------------------------------------------

def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MERGEBENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _assert_clean_error(proc: subprocess.CompletedProcess[str], message: str, hint: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"Error: {message}" in proc.stderr.replace("\n", " ") or message in proc.stderr, proc.stderr
    assert f"Hint: {hint}" in proc.stderr, proc.stderr


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    family(tmp_path, 2)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(
        {"method": "task_arithmetic", "base_model": "./base", "models": [{"model": "./e0"}, {"model": "./e1"}]}))
    return tmp_path


def test_cli_broken_config_json_and_index(workdir: Path) -> None:
    (workdir / "e1" / "config.json").write_text("{broken")
    _assert_clean_error(_cli("merge", "recipe.yaml", "--out", "o", cwd=workdir),
                        "'config.json' of './e1' is not valid JSON", "Fix or re-download 'config.json'.")
    (workdir / "e1" / "config.json").write_text("{}")
    (workdir / "e1" / "model.safetensors.index.json").write_text("[1, 2")
    _assert_clean_error(_cli("merge", "recipe.yaml", "--out", "o", cwd=workdir),
                        "'model.safetensors.index.json' of './e1' is not valid JSON", "Fix or re-download")
    (workdir / "e1" / "model.safetensors.index.json").write_text('{"weight_map": 3}')
    _assert_clean_error(_cli("merge", "recipe.yaml", "--out", "o", cwd=workdir),
                        "has no 'weight_map'", "Re-save the model")
    assert not (workdir / "o").exists() and not (workdir / ".o.partial").exists()


def test_cli_out_is_a_file_or_the_current_folder(workdir: Path) -> None:
    (workdir / "taken").write_text("precious")
    _assert_clean_error(_cli("merge", "recipe.yaml", "--out", "taken", cwd=workdir),
                        "Output 'taken' is a file, not a folder.", "Choose a folder path")
    assert (workdir / "taken").read_text() == "precious"
    empty = workdir / "empty"
    empty.mkdir()
    _assert_clean_error(_cli("merge", "../recipe.yaml", "--out", ".", cwd=empty),
                        "Output '.' is the current folder", "Pass a new folder name")
    assert list(empty.iterdir()) == [] and not any(workdir.glob(".*.partial"))


def test_cli_recipe_that_is_a_folder_or_binary(workdir: Path) -> None:
    _assert_clean_error(_cli("merge", "e0", "--out", "o", cwd=workdir),
                        "Recipe file 'e0' is a folder, not a YAML file.", "Pass the path of the .yaml file")
    (workdir / "bin.yaml").write_bytes(bytes(range(256)))
    _assert_clean_error(_cli("merge", "bin.yaml", "--out", "o", cwd=workdir),
                        "Recipe file 'bin.yaml' is not a text file", "Pass a YAML file.")
    (workdir / "nul.yaml").write_bytes(b"method: ties\x00\x00")
    _assert_clean_error(_cli("merge", "nul.yaml", "--out", "o", cwd=workdir),
                        "Recipe file 'nul.yaml' is a binary file", "Pass a YAML file.")


def test_cli_unreachable_hub(workdir: Path) -> None:
    (workdir / "hub.yaml").write_text("method: task_arithmetic\nbase_model: org/base\nmodels: [{model: org/e}]\n")
    proc = _cli("plan", "hub.yaml", cwd=workdir, env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"})
    _assert_clean_error(proc, "Cannot reach the Hub at http://127.0.0.1:9", "Check your network connection")


# --- 15. pushed files name local inputs without absolute paths ---------------------------------------------

def test_card_and_saved_recipe_of_a_local_merge_hold_no_absolute_path(tmp_path: Path) -> None:
    _, experts, _, _ = family(tmp_path / "in", 2)
    (tmp_path / "rel").mkdir()
    relative = {"method": "task_arithmetic", "base_model": "../in/base",
                "models": [{"model": "../in/e0"}, {"model": str(experts[1])}]}  # one relative, one absolute
    (tmp_path / "rel" / "recipe.yaml").write_text(yaml.safe_dump(relative))
    out = merge(tmp_path / "rel" / "recipe.yaml", tmp_path / "out", options=QUIET).out_dir
    published = (out / "README.md").read_text() + (out / "mergebench_config.yaml").read_text()
    assert str(tmp_path) not in published
    saved = yaml.safe_load((out / "mergebench_config.yaml").read_text())
    assert saved["base_model"] == "../in/base"
    assert [m["model"] for m in saved["models"]] == ["../in/e0", "./e1"]
    card = ModelCard.load(out / "README.md")
    assert "../in/e0" in card.text and "./e1" in card.text


def test_cli_malformed_validation_jsonl(workdir: Path) -> None:
    (workdir / "math.jsonl").write_text('{"messages": []}\n{broken\n')
    (workdir / "regmean.yaml").write_text(yaml.safe_dump(
        {"method": "regmean", "base_model": "./base", "models": [{"model": "./e0", "domain": "math"}],
         "data": {"math": "math.jsonl"}}))
    _assert_clean_error(_cli("merge", "regmean.yaml", "--out", "o", cwd=workdir),
                        "Validation data file 'math.jsonl' is not JSON Lines", "Write one JSON object per line")
    assert not (workdir / "o").exists() and not (workdir / ".o.partial").exists()
