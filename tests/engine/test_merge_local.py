"""The streaming engine on local folders: exact results, layout independence, resume and bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergebench.errors import (
    ConfigError,
    CorruptFileError,
    IncompatibleModelsError,
    NonFiniteError,
    OutputExistsError,
    RefError,
)
from mergebench.merge.engine import PROGRESS_FILE, merge
from mergebench.merge.inputs import prepare
from mergebench.merge.options import MergeOptions
from mergebench.stream import writer as writer_module
from tests.engine._build import base_tensors, expert_tensors, family, recipe, write_model

QUIET = MergeOptions(progress=False)


def load_dir(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_task_arithmetic_matches_plain_torch_and_keeps_embeddings(tmp_path: Path) -> None:
    base_dir, experts, base, ex = family(tmp_path / "in", 3)
    result = merge(recipe(base_dir, experts, parameters={"scaling": 0.4}), tmp_path / "out", options=QUIET)
    merged = load_dir(result.out_dir)
    assert set(merged) == set(base)
    for name, b in base.items():
        kept = "embed" in name or "lm_head" in name
        expected = b if kept else b + 0.4 * sum(e[name] - b for e in ex)
        assert merged[name].dtype == torch.bfloat16
        torch.testing.assert_close(merged[name].float(), expected.bfloat16().float(), rtol=0, atol=1e-2)
        # Exactness: at most a few entries may differ by one bf16 ulp (summation order).
        assert (merged[name] != expected.bfloat16()).float().mean() < 0.05
    assert (result.out_dir / "config.json").exists() and (result.out_dir / "mergebench_config.yaml").exists()
    assert not list(tmp_path.glob(".out.partial"))


def test_merge_embeddings_option_merges_them(tmp_path: Path) -> None:
    base_dir, experts, base, ex = family(tmp_path / "in", 2, dtype=torch.float32)
    r = recipe(base_dir, experts, merge_embeddings=True)
    merged = load_dir(merge(r, tmp_path / "out", options=QUIET).out_dir)
    name = "lm_head.weight"
    torch.testing.assert_close(merged[name], base[name] + sum(e[name] - base[name] for e in ex))


def test_output_independent_of_input_sharding_output_shards_and_threads(tmp_path: Path) -> None:
    single = family(tmp_path / "one", 3, shards=1)
    sharded = family(tmp_path / "three", 3, shards=3)
    a = merge(recipe(single[0], single[1]), tmp_path / "a", options=QUIET)
    b = merge(recipe(sharded[0], sharded[1]), tmp_path / "b",
              options=MergeOptions(progress=False, threads=1, shard_size=600, chunk_bytes=300, compute_chunk=5,
                                   compute_threads=1))
    assert len(list(b.out_dir.glob("model-*.safetensors"))) > 2
    index = json.loads((b.out_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(load_dir(a.out_dir))
    ta, tb = load_dir(a.out_dir), load_dir(b.out_dir)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_dtype_option_casts_output(tmp_path: Path) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 2)
    merged = load_dir(merge(recipe(base_dir, experts, dtype="float32"), tmp_path / "out", options=QUIET).out_dir)
    assert {t.dtype for t in merged.values()} == {torch.float32}


def test_weights_per_model_and_unknown_parameter(tmp_path: Path) -> None:
    base_dir, experts, _, ex = family(tmp_path / "in", 2, dtype=torch.float32)
    r = recipe(base_dir, experts)
    r["models"][0]["weight"], r["models"][1]["weight"] = 1.0, 0.0
    merged = load_dir(merge(r, tmp_path / "out", options=QUIET).out_dir)
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(merged[name], ex[0][name])
    with pytest.raises(ConfigError, match=r"Unknown parameter 'scale' for method 'task_arithmetic'\. Did you mean"):
        merge(recipe(base_dir, experts, parameters={"scale": 1}), tmp_path / "o2", options=QUIET)
    with pytest.raises(ConfigError, match="Did you mean 'task_arithmetic'"):
        merge(recipe(base_dir, experts, method="task_arithmetc"), tmp_path / "o3", options=QUIET)
    with pytest.raises(ConfigError, match="colour"):
        merge(recipe(base_dir, experts, colour="red"), tmp_path / "o4", options=QUIET)


def test_incompatible_models_report_every_problem_and_write_nothing(tmp_path: Path) -> None:
    base = base_tensors()
    base_dir = write_model(tmp_path / "base", base)
    bad = expert_tensors(base, 1)
    bad["model.layers.0.mlp.up_proj.weight"] = torch.zeros(16, 9)
    del bad["model.norm.weight"]
    bad_dir = write_model(tmp_path / "bad", bad)
    wrong_dtype = write_model(tmp_path / "f32", expert_tensors(base, 2), dtype=torch.float32)
    other_cfg = write_model(tmp_path / "cfg", expert_tensors(base, 3), config={"model_type": "gemma2"})
    with pytest.raises(IncompatibleModelsError) as info:
        merge(recipe(base_dir, [bad_dir, wrong_dtype, other_cfg]), tmp_path / "out", options=QUIET)
    text = "\n".join(info.value.problems)
    assert "'model.layers.0.mlp.up_proj.weight' is (16, 8)" in text and "(16, 9)" in text
    assert "'model.norm.weight' of" in text and "missing" in text
    assert "BF16" in text and "F32" in text
    assert "config 'model_type' is 'llama'" in text
    assert len(info.value.problems) >= 4
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_truncated_shard_and_corrupt_header(tmp_path: Path) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 2)
    shard = experts[1] / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CorruptFileError, match=r"truncated") as info:
        merge(recipe(base_dir, experts), tmp_path / "out", options=QUIET)
    assert info.value.model.endswith("e1") and info.value.filename == "model.safetensors"
    shard.write_bytes(struct.pack("<Q", 12) + b"{not json!!}")
    with pytest.raises(CorruptFileError, match="header"):
        merge(recipe(base_dir, experts), tmp_path / "out", options=QUIET)
    assert not (tmp_path / "out").exists()


TOP_K_METHODS = [({"method": "task_arithmetic"}, torch.bfloat16),
                 ({"method": "ties", "parameters": {"top_k": 0.5, "topk_scope": "tensor"}}, torch.bfloat16),
                 ({"method": "ties", "parameters": {"top_k": 0.5}}, torch.bfloat16),
                 ({"method": "ties", "parameters": {"top_k": 0.5, "topk_scope": "tensor"}}, torch.float16)]
"""A plain merge, and top-k counts from stored bf16 values and from float32 copies of float16 ones."""


@pytest.mark.parametrize(("method", "dtype"), TOP_K_METHODS)
@pytest.mark.parametrize("culprit", ["bad", "base"])
def test_non_finite_input_is_an_error_by_default(method: dict, dtype: torch.dtype, culprit: str,
                                                 tmp_path: Path) -> None:
    base = base_tensors()
    bad = expert_tensors(base, 1)
    (bad if culprit == "bad" else base)["model.layers.1.self_attn.q_proj.weight"][2, 3] = float("nan")
    if culprit == "base":
        bad["model.layers.1.self_attn.q_proj.weight"][2, 3] = 1.0
    base_dir = write_model(tmp_path / "base", base, dtype=dtype)
    bad_dir = write_model(tmp_path / "bad", bad, dtype=dtype)
    with pytest.raises(NonFiniteError, match=rf"'model.layers.1.self_attn.q_proj.weight' of '.*{culprit}'") as info:
        merge({**recipe(base_dir, [bad_dir]), **method}, tmp_path / "out", options=QUIET)
    assert "check_finite: false" in (info.value.hint or "")
    assert not (tmp_path / "out").exists()
    merged = load_dir(merge({**recipe(base_dir, [bad_dir], check_finite=False), **method}, tmp_path / "out",
                            options=QUIET).out_dir)
    assert torch.isnan(merged["model.layers.1.self_attn.q_proj.weight"][2, 3])


def test_missing_model_and_existing_output(tmp_path: Path) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 1)
    with pytest.raises(RefError, match="does not exist"):
        merge(recipe(base_dir, [tmp_path / "nope"]), tmp_path / "out", options=QUIET)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    with pytest.raises(OutputExistsError):
        merge(recipe(base_dir, experts), tmp_path / "taken", options=QUIET)
    assert (tmp_path / "taken" / "file").read_text() == "keep me"


def interrupted_merge(monkeypatch, config: dict, out: Path, options: MergeOptions, after_shards: int = 2) -> None:
    """Run a merge that is killed right after ``after_shards`` output shards are complete."""
    original = writer_module.ShardWriter.write

    def write_then_die(self, name, data):
        original(self, name, data)
        if self._shard_index == after_shards:
            raise KeyboardInterrupt("simulated kill")

    with monkeypatch.context() as patch:
        patch.setattr(writer_module.ShardWriter, "write", write_then_die)
        with pytest.raises(KeyboardInterrupt):
            merge(config, out, options=options)


def test_resume_keeps_verified_shards_and_gives_identical_output(tmp_path: Path, monkeypatch) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 3, shards=2)
    options = MergeOptions(progress=False, shard_size=700)
    fresh = load_dir(merge(recipe(base_dir, experts), tmp_path / "fresh", options=options).out_dir)

    interrupted_merge(monkeypatch, recipe(base_dir, experts), tmp_path / "out", options)
    partial = tmp_path / ".out.partial"
    assert partial.exists() and not (tmp_path / "out").exists()

    result = merge(recipe(base_dir, experts), tmp_path / "out",
                   options=MergeOptions(progress=False, shard_size=700, resume=True))
    assert len(result.resumed_shards) == 2
    resumed = load_dir(result.out_dir)
    assert all(torch.equal(fresh[k], resumed[k]) for k in fresh)
    assert not partial.exists()


def test_resume_rewrites_a_corrupted_finished_shard(tmp_path: Path, monkeypatch) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 2)
    options = MergeOptions(progress=False, shard_size=700)
    interrupted_merge(monkeypatch, recipe(base_dir, experts), tmp_path / "out", options)
    first = sorted((tmp_path / ".out.partial").glob("model-*.safetensors"))[0]
    first.write_bytes(first.read_bytes()[:-4] + b"\0\0\0\0")
    result = merge(recipe(base_dir, experts), tmp_path / "out", options=MergeOptions(
        progress=False, shard_size=700, resume=True))
    assert result.resumed_shards == ()
    assert load_dir(result.out_dir)


def test_plan_reads_headers_only(tmp_path: Path) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 2, shards=2)
    inputs = prepare(recipe(base_dir, experts), shard_size=700)
    plan = inputs.plan
    assert plan.n_experts == 2 and plan.sharded
    assert sum(t.mergeable for t in plan.tensors) == 7  # embed_tokens and lm_head are copied
    assert plan.output_bytes == sum(t.numel * 2 for t in plan.tensors)
    largest = max(t.numel for t in plan.tensors if t.mergeable)
    assert plan.peak_memory_bytes >= (2 + 2) * largest * 4


def test_a_resumed_global_topk_merge_counts_only_the_shards_it_has_left(tmp_path: Path, monkeypatch) -> None:
    """A one-pass global top-k merge counts as it merges and keeps each finished shard's counts: resumed, it reads
    no sample again and counts exactly the mergeable entries of the shards it still writes."""
    from mergebench.merge import passes
    from mergebench.methods import topk

    base_dir, experts, _, _ = family(tmp_path / "in", 3, shards=2)
    config = recipe(base_dir, experts, method="ties", parameters={"top_k": 0.3})
    options = MergeOptions(progress=False, shard_size=700, topk_sample=True)
    fresh = load_dir(merge(config, tmp_path / "fresh", options=options).out_dir)
    interrupted_merge(monkeypatch, config, tmp_path / "out", options)
    state = json.loads((tmp_path / ".out.partial" / PROGRESS_FILE).read_text())
    assert "topk_interval" in state and state["shards"]
    finished = set(state["shards"])

    counted: list[int] = []
    update = topk.GlobalTopK.update

    def counting(self: topk.GlobalTopK, pass_index: int, stack: torch.Tensor) -> None:
        counted.append(stack.shape[-1])
        update(self, pass_index, stack)

    def no_sample(*args: object, **kwargs: object) -> None:
        raise AssertionError("the bounds must come from the saved state")

    monkeypatch.setattr(topk.GlobalTopK, "update", counting)
    monkeypatch.setattr(passes, "sample_task_vectors", no_sample)
    result = merge(config, tmp_path / "out", options=MergeOptions(progress=False, shard_size=700, resume=True,
                                                                  topk_sample=True))
    resumed = load_dir(result.out_dir)
    assert result.resumed_shards and all(torch.equal(fresh[k], resumed[k]) for k in fresh)
    mergeable = {t.name: t.numel for t in result.plan.tensors if t.mergeable}
    left = sum(mergeable.get(name, 0) for shard in result.plan.shards if shard.filename not in finished
               for name in shard.tensors)
    assert 0 < sum(counted) == left


def test_a_shard_missing_from_the_index_is_named(tmp_path: Path) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 2, shards=3)
    (experts[1] / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(RefError, match=r"model-00002-of-00003\.safetensors.*missing") as info:
        merge(recipe(base_dir, experts), tmp_path / "out", options=QUIET)
    assert info.value.ref.endswith("e1")
    assert not (tmp_path / "out").exists()
