"""Statistics stages fail with ``Error:`` and ``Hint:`` lines, never a traceback (issue #15).

Each case runs ``mergebench merge`` in a subprocess on a recipe whose data, model or cached statistics are
broken in one way, and checks exit status 1, the message naming what and where, and the hint. Library-level
checks (no CLI) follow at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from mergebench.errors import StatisticsError
from mergebench.fixtures import Family, validation_rows
from mergebench.stats import ModelSource, StatisticsReader, run_stage, stage_config
from mergebench.stats.data import Sample, require_responses, rows_for
from mergebench.stats.gram import GramAccumulator, gram_entries
from tests.engine import _build

DOMAINS = ("math", "coding", "safety")
CLI = str(Path(sys.executable).parent / "mergebench")


def _recipe(family: Family, validation_dir: Path, method: str = "regmean", **data: Path) -> dict:
    files = {d: str(validation_dir / f"{d}.jsonl") for d in DOMAINS}
    return {"method": method, "base_model": str(family.base),
            "models": [{"model": str(family.experts[d]), "domain": d} for d in DOMAINS],
            "parameters": {"num_samples": 3} if method != "localize_stitch" else {"mode": "trained", "num_samples": 3},
            "data": {**files, **{d: str(p) for d, p in data.items()}}}


def _merge(recipe: dict, tmp_path: Path, cache: Path | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "MERGEBENCH_CACHE": str(cache or tmp_path / "cache")}
    env.pop("MERGEBENCH_DEBUG", None)
    return subprocess.run([CLI, "merge", str(path), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          env=env, timeout=600)


def _assert_user_error(proc: subprocess.CompletedProcess, *fragments: str, hint: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    error = next((line for line in proc.stderr.splitlines() if line.startswith("Error: ")), "")
    hint_line = next((line for line in proc.stderr.splitlines() if line.startswith("Hint: ")), "")
    for fragment in fragments:
        assert fragment in error, (fragment, proc.stderr)
    assert hint in hint_line, (hint, proc.stderr)


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROW_CASES = {
    "not an object": ([[1, 2]], ["Row 0 of domain 'math' is a list, not an object"], "chat schema"),
    "no messages": ([{"id": "m0", "domain": "math"}], ["Row 0 ('m0') of domain 'math' has no messages"],
                    "chat schema"),
    "messages not a list": ([{"id": "m0", "domain": "math", "messages": "2 + 2 = 4"}],
                            ["Row 0 ('m0')", "'messages' of type str, not a list"], "chat schema"),
    "malformed message": ([{"id": "m0", "domain": "math", "messages": [{"role": "user"}]}],
                          ["Row 0 ('m0') of domain 'math' cannot be encoded", "Message 0"], "'messages' is a list"),
    "another domain": ([{"id": "c0", "domain": "coding", "messages": [{"role": "user", "content": "hi"}]}],
                       ["Row 0 ('c0') given for domain 'math' belongs to domain 'coding'"],
                       "Map 'math' in the recipe's 'data:' to that domain's own validation split"),
}


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_bad_validation_rows_are_reported_with_a_hint(case: str, tiny_llama: Family, validation_dir: Path,
                                                      tmp_path: Path) -> None:
    rows, fragments, hint = ROW_CASES[case]
    recipe = _recipe(tiny_llama, validation_dir, math=_jsonl(tmp_path / "math.jsonl", rows))
    _assert_user_error(_merge(recipe, tmp_path), *fragments, hint=hint)
    assert not (tmp_path / "out").exists()


def _unloadable_family(root: Path, tokenizer_from: Path | None) -> Family:
    """Weights whose config.json declares another vocabulary size: the config is valid, the model is not."""
    base_dir, expert_dirs, _, _ = _build.family(root, n_experts=3, dtype=torch.float32)
    config = {**_build.CONFIG, "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 16,
              "vocab_size": 64, "tie_word_embeddings": False}
    for folder in (base_dir, *expert_dirs):
        (folder / "config.json").write_text(json.dumps(config))
        if tokenizer_from is not None:
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (tokenizer_from / name).is_file():
                    shutil.copy(tokenizer_from / name, folder / name)
    return Family(name="unloadable", arch="llama", base=base_dir,
                  experts=dict(zip(DOMAINS, expert_dirs, strict=True)))


@pytest.mark.parametrize("method", ["regmean", "localize_stitch"])
def test_a_model_that_cannot_be_loaded_is_named_with_a_hint(method: str, tiny_llama: Family, validation_dir: Path,
                                                            tmp_path: Path) -> None:
    family = _unloadable_family(tmp_path / "models", tokenizer_from=tiny_llama.base)
    proc = _merge(_recipe(family, validation_dir, method), tmp_path)
    first = "base" if method == "localize_stitch" else "e0"  # masks build the base's skeleton
    _assert_user_error(proc, f"Cannot load model '{family.base.parent / first}' for its statistics",
                       "tensor 'model.embed_tokens.weight' is [32, 8] in its checkpoint but [64, 8] by its config",
                       hint="check that config.json describes the weights")


def test_a_model_without_a_tokenizer_is_named_with_a_hint(tiny_llama: Family, validation_dir: Path,
                                                          tmp_path: Path) -> None:
    family = _unloadable_family(tmp_path / "models", tokenizer_from=None)
    proc = _merge(_recipe(family, validation_dir), tmp_path)
    _assert_user_error(proc, "Cannot load the tokenizer of model", str(family.experts["math"]),
                       hint=f"put its tokenizer files (tokenizer.json, tokenizer_config.json) in "
                            f"'{family.experts['math']}'")


def _cached_files(cache: Path) -> list[Path]:
    return sorted((cache / "stats" / "gram").glob("*.safetensors"))


@pytest.fixture(scope="module")
def gram_cache(tiny_llama: Family, validation_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A statistics cache filled by one successful RegMean merge through the CLI."""
    tmp = tmp_path_factory.mktemp("gram-cache")
    proc = _merge(_recipe(tiny_llama, validation_dir), tmp)
    assert proc.returncode == 0, proc.stderr
    assert len(_cached_files(tmp / "cache")) == 3
    return tmp / "cache"


def test_cached_statistics_of_mismatched_shapes_are_reported(gram_cache: Path, tiny_llama: Family,
                                                             validation_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(gram_cache, cache)
    odd = _cached_files(cache)[0]
    with safe_open(odd, framework="pt") as f:
        metadata, names = f.metadata(), f.keys()
        shapes = {name: f.get_slice(name).get_shape() for name in names}
    grown = {name: torch.zeros(rows + 1, cols + 1) for name, (rows, cols) in shapes.items()}
    save_file(grown, str(odd), metadata=metadata)  # as if another model's statistics were cached under this key
    proc = _merge(_recipe(tiny_llama, validation_dir), tmp_path, cache=cache)
    _assert_user_error(proc, "statistics of tensor 'model.layers.", "have different shapes", "(129, 129) in "
                       f"'{odd}'", hint="Delete these statistics files and merge again")


def test_a_damaged_cached_statistics_file_is_computed_again(gram_cache: Path, tiny_llama: Family,
                                                            validation_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(gram_cache, cache)
    damaged = _cached_files(cache)[1]
    intact = damaged.with_suffix(".intact")
    shutil.copy(gram_cache / damaged.relative_to(cache), intact)
    damaged.write_bytes(damaged.read_bytes()[:1000])  # a truncated copy, as a full disk or a bad sync leaves
    proc = _merge(_recipe(tiny_llama, validation_dir), tmp_path, cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert f"Cached statistics file {damaged} is unreadable" in proc.stderr
    with safe_open(damaged, framework="pt") as a, safe_open(intact, framework="pt") as b:
        names = a.keys()
        assert sorted(names) == sorted(b.keys())
        for name in names:
            assert torch.equal(a.get_tensor(name), b.get_tensor(name)), name


# ---- library level --------------------------------------------------------------------------------------------
def test_num_samples_below_one_is_a_statistics_error(tiny_llama: Family, tmp_path: Path) -> None:
    with pytest.raises(StatisticsError, match=r"num_samples ≥ 1 rows per expert, got 0") as info:
        stage_config("gram", {"num_samples": 0})
    assert "num_samples" in info.value.hint
    expert = ModelSource.at(tiny_llama.experts["math"], domain="math")
    with pytest.raises(StatisticsError, match="num_samples ≥ 1"):
        run_stage("fisher", [expert], {"math": [{"domain": "math", "messages": []}]}, {"num_samples": -2},
                  cache_dir=tmp_path)
    with pytest.raises(StatisticsError, match="num_samples must be an integer ≥ 1, got 0"):
        rows_for(expert, {"math": []}, 0)


def test_samples_without_responses_and_models_without_blocks_are_statistics_errors() -> None:
    with pytest.raises(StatisticsError, match=r"1 of 2 sample\(s\) have no response token \(e.g. \['b'\]\)") as info:
        require_responses([Sample("a", [1, 2], [-100, 2]), Sample("b", [1, 2], [-100, -100])])
    assert "with_responses()" in info.value.hint
    no_linear = SimpleNamespace(layers=[torch.nn.LayerNorm(2)], prefix="model.layers", module=torch.nn.Module())
    with pytest.raises(StatisticsError, match=r"no nn\.Linear inside its decoder blocks") as info:
        gram_entries(no_linear)  # type: ignore[arg-type]
    assert "another method" in info.value.hint


def test_gram_layers_that_no_token_reaches_are_a_statistics_error() -> None:
    acc = GramAccumulator({"layers.0.weight": torch.nn.Linear(2, 2)})
    acc.run(lambda: None)
    with pytest.raises(StatisticsError, match=r"No token reached 1 of 1 linear layers \(e.g. 'layers.0.weight'\)"):
        next(acc.means())


def test_experts_that_do_not_fit_the_base_are_a_statistics_error(tiny_llama: Family, tmp_path: Path) -> None:
    """Trained masks need τ = θᵢ − θ₀ of every mergeable tensor: a missing or reshaped tensor is named."""
    odd = tmp_path / "odd"
    shutil.copytree(tiny_llama.experts["math"], odd)
    shard = next(p for p in sorted(odd.glob("*.safetensors"))
                 if "model.layers.0.mlp.up_proj.weight" in safe_open(p, framework="pt").keys())  # noqa: SIM118
    with safe_open(shard, framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        metadata = f.metadata()
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:64].contiguous()
    save_file(tensors, str(shard), metadata=metadata)
    params = {"mode": "trained", "num_samples": 1}
    rows = {"math": validation_rows("math", 1)}
    with pytest.raises(StatisticsError, match=r"Tensor 'model.layers.0.mlp.up_proj.weight' is \[128, 64\] in the "
                                              r"base but \[64, 64\] in the expert") as info:
        run_stage("mask", [ModelSource.at(odd, domain="math")], rows, params, cache_dir=tmp_path / "cache",
                  base=ModelSource.at(tiny_llama.base))
    assert "same architecture" in info.value.hint
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_the_reader_reports_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "garbled.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(StatisticsError, match="cannot be read") as info:
        StatisticsReader("gram", [path])
    assert info.value.hint == "Delete the file and merge again: the statistics stage recomputes it."
