"""Fuzzed merge recipes: YAML text (noise, random documents, mutations of a valid recipe, edited text) → a
recipe or a MergeBench error with a hint, never a traceback or a hang; then the same through ``mergebench
merge``: exit 1 with ``Error:``/``Hint:`` and nothing written, or a complete merged model."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from mergebench.errors import MergeBenchError
from mergebench.merge.recipe import MergeRecipe, parse_yaml
from tests.fuzz._checks import CLI_SAMPLE, check_cli_error, files_under, outcome, run_cli
from tests.fuzz.strategies import YAML_TOKENS, documents, encoded, mutated, render, text_edits

KEYS = st.sampled_from(["method", "base_model", "models", "model", "domain", "weight", "parameters", "weights",
                        "dtype", "merge_embeddings", "seed", "check_finite", "tokenizer_source", "data", "scaling",
                        "top_k"])
VALID = {"method": "ties", "base_model": "./base",
         "models": [{"model": "./e0", "domain": "math", "weight": 1.0}, {"model": "./e1", "domain": "coding",
                                                                        "weight": 0.5}],
         "parameters": {"top_k": 0.2, "scaling": 1.0}, "dtype": "bfloat16", "merge_embeddings": False, "seed": 0,
         "check_finite": True, "tokenizer_source": "./base", "data": {"math": "./math.jsonl"}}
SNIPPETS = ("\nmethod: task_arithmetic\n", "\nparameters: {scaling: .nan}\n", "\n? [a, b]\n: c\n", "\n? {a: 1}\n: c\n",
            "\nx: &a [1, 2]\ny: *a\n", "\n<<: {seed: 3}\n", "\n<<: *nowhere\n", "\t", "  ", "- ", ": ", "\n---\n",
            "%TAG ! tag:x,2000:\n---\n", "!!python/name:os.system ", "\nseed: " + "9" * 5000 + "\n", *YAML_TOKENS)
RECIPE_TEXTS = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(encoded),
    documents("yaml", KEYS).map(lambda t: encoded(render(t, "yaml"))),
    mutated(VALID, "yaml", KEYS).map(lambda t: encoded(render(t, "yaml"))),
    text_edits(yaml.safe_dump(VALID, sort_keys=False), SNIPPETS).map(encoded),
)


def _parse(path: Path) -> MergeRecipe | MergeBenchError:
    result = outcome(lambda: MergeRecipe.from_yaml(path))
    if isinstance(result, MergeRecipe):  # what it accepted reads back the same from its own YAML
        assert MergeRecipe.from_dict(parse_yaml(result.to_yaml())).to_yaml() == result.to_yaml()
    return result


@pytest.fixture(scope="module")
def workspace(tiny_llama, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny Llama family as ./base, ./e0, ./e1 (links: never written to)."""
    root = tmp_path_factory.mktemp("recipe-cli")
    (root / "base").symlink_to(tiny_llama.base)
    for i, domain in enumerate(("math", "coding")):
        (root / f"e{i}").symlink_to(tiny_llama.experts[domain])
    return root


_case = itertools.count()


@pytest.mark.fuzz
@pytest.mark.usefixtures("fuzz_hub")
@given(RECIPE_TEXTS, CLI_SAMPLE)
@example(b"? [a]\n: b\n", 1)  # an unhashable key: TypeError in the duplicate-key check
@example(b"seed: " + b"1" * 5000 + b"\n", 1)  # an integer past Python's 4,300-digit limit: ValueError from yaml
@example(b"[" * 100_000 + b"]" * 100_000, 1)  # nesting past the recursion limit: RecursionError
@example(b"method: ties\nbase_model: b\nmodels: [{model: m}]\nparameters: {weights: [" + b"1" * 400 + b"]}\n",
         1)  # float() of a 400-digit integer: OverflowError
@example(b"- 1\n", 1)  # not a mapping: the error had no hint
@example(yaml.safe_dump({**VALID, "parameters": {"top_k": None}}).encode(), 0)  # methods: a type error had no hint
@example(yaml.safe_dump({**VALID, "base_model": "org/not-on-the-hub"}).encode(), 0)  # a Hub 404 had no hint
def test_recipes(workspace: Path, text: bytes, sample: int) -> None:
    """Every case through the parser; one in ten (``sample == 0``) also through ``mergebench merge`` in a
    folder holding the tiny family as ./base, ./e0, ./e1 (Hub ids go to the loopback Hub)."""
    work = workspace / f"case{next(_case)}"
    work.mkdir()
    (work / "recipe.yaml").write_bytes(text)
    _parse(work / "recipe.yaml")
    if sample == 0:
        for name in ("base", "e0", "e1"):
            (work / name).symlink_to(workspace / name)
        before = files_under(work)
        run = run_cli(["merge", "recipe.yaml", "--out", "out"], cwd=work)
        if run.code == 0:  # a valid recipe: a complete merge, nothing partial
            assert (work / "out" / "config.json").is_file() and not (work / ".out.partial").exists()
        else:
            check_cli_error(run)
            assert files_under(work) == before, "a rejected recipe left files behind"
    shutil.rmtree(work)


def test_a_missing_recipe_file_is_rejected_with_a_hint(tmp_path: Path) -> None:
    """It was a ConfigError without a hint (and so were unreadable files)."""
    error = outcome(lambda: MergeRecipe.from_yaml(tmp_path / "nope.yaml"))
    assert isinstance(error, MergeBenchError) and "does not exist" in str(error)
