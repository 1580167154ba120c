"""TIES through the streaming engine with open top-k buckets: the set-aside positions are merged once the exact
thresholds are known (patched into the written shards, or into the tensor for per-tensor top-k), so the inputs
are read twice, not three times, and the output is the bits of the textbook merge.

float32 experts are used on purpose: their task vectors have low bits set almost everywhere, so the bucket
holding each threshold is open (bf16 checkpoints are usually exact after one pass; see
``tests/engine/test_all_methods.py`` for those).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from mergebench.merge import passes
from mergebench.merge.engine import PROGRESS_FILE, merge
from mergebench.merge.options import MergeOptions
from mergebench.methods import MergeContext, topk
from mergebench.methods.common import is_embedding
from mergebench.methods.ties import TiesParams
from mergebench.stream import writer as writer_module
from tests.engine._build import base_tensors, family, recipe, write_model
from tests.methods.test_ties_exact import textbook_ties

OPTIONS = MergeOptions(progress=False, shard_size=1500, compute_chunk=97, compute_threads=2)
"""Several output shards, odd chunks on two threads."""


def load_dir(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def textbook_merge(base: dict[str, torch.Tensor], experts: list[dict[str, torch.Tensor]],
                   parameters: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Whole tensors in memory, thresholds by sorting, the previous TIES implementation."""
    p = TiesParams(**parameters)
    mergeable = [n for n in base if not is_embedding(n)]
    taus = {n: torch.stack([e[n] - base[n] for e in experts]) for n in mergeable}

    def kth_largest(values: torch.Tensor) -> torch.Tensor:
        keep = math.ceil(Fraction(str(p.top_k)) * values.shape[1])
        return values.abs().sort(dim=1, descending=True).values[:, keep - 1]

    whole = kth_largest(torch.cat([t.flatten(1) for t in taus.values()], dim=1))
    out = dict(base)
    for name, tau in taus.items():
        thresholds = kth_largest(tau.flatten(1)) if p.topk_scope == "tensor" else whole
        ctx = MergeContext(name=name, expert_ids=tuple(range(len(experts))), thresholds=thresholds)
        out[name] = textbook_ties(base[name].clone(), tau.clone(), p, ctx)
    return out


def open_family(root: Path, n_experts: int = 3, shards: int = 2) -> tuple[Path, list[Path]]:
    """A zero base and experts whose task vectors are mostly ±(1 + k·2⁻²³): one open bucket holds half of every
    task vector, in every tensor, so every shard has set-aside positions."""
    g = torch.Generator().manual_seed(11)
    shapes = {name: t.shape for name, t in base_tensors().items()}
    near_one = (torch.arange(1, 8, dtype=torch.int32) + 0x3F800000).view(torch.float32)
    magnitudes = torch.cat([near_one, torch.full((7,), 0.01)])
    base_dir = write_model(root / "base", {k: torch.zeros(s) for k, s in shapes.items()}, dtype=torch.float32,
                           shards=shards)
    experts = []
    for i in range(n_experts):
        tensors = {}
        for name, shape in shapes.items():
            picks = magnitudes[torch.randint(len(magnitudes), shape, generator=g)]
            tensors[name] = picks * torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
        experts.append(write_model(root / f"e{i}", tensors, dtype=torch.float32, shards=shards))
    return base_dir, experts


def assert_same_bits(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected)
    for name in expected:
        assert torch.equal(got[name].view(torch.int32), expected[name].view(torch.int32)), name


def count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[object]:
    calls: list[object] = []
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.mark.parametrize("parameters", [{"top_k": 0.2}, {"top_k": 0.3, "aggregate": "mean", "scaling": 0.6}])
def test_global_ties_sets_aside_open_positions_and_equals_the_textbook_merge(parameters, tmp_path, monkeypatch):
    base_dir, experts, base, expert_values = family(tmp_path / "in", 3, dtype=torch.float32)
    config = recipe(base_dir, experts, method="ties", parameters=parameters)
    saved = count_calls(monkeypatch, passes, "_save_records")
    result = merge(config, tmp_path / "out", options=OPTIONS)
    assert saved, "the thresholds were exact after counting: this test needs open buckets"
    assert_same_bits(load_dir(result.out_dir), textbook_merge(base, expert_values, parameters))
    assert not list(result.out_dir.glob(".*"))                    # no records left behind
    # read twice: once counting (mergeable tensors of every model), once merging
    counting = sum(v for v in result.plan.bytes_per_model.values()) - sum(
        t.numel * 4 for t in result.plan.tensors if not t.mergeable)
    merging = sum(result.plan.bytes_per_model.values())
    assert result.bytes_read == counting + merging


def test_the_three_pass_fallback_gives_the_same_bits(tmp_path, monkeypatch) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 3, dtype=torch.float32)
    config = recipe(base_dir, experts, method="ties", parameters={"top_k": 0.2})
    two = merge(config, tmp_path / "two", options=OPTIONS)
    monkeypatch.setattr(passes, "_can_set_aside", lambda *args, **kwargs: False)
    three = merge(config, tmp_path / "three", options=OPTIONS)
    assert_same_bits(load_dir(two.out_dir), load_dir(three.out_dir))
    mergeable_bytes = sum(t.numel * 4 for t in three.plan.tensors if t.mergeable) * 4  # base + 3 experts
    assert three.bytes_read - two.bytes_read == mergeable_bytes


@pytest.mark.parametrize("set_aside", [True, False])
def test_per_tensor_ties_equals_the_textbook_merge(set_aside: bool, tmp_path, monkeypatch) -> None:
    base_dir, experts, base, expert_values = family(tmp_path / "in", 3, dtype=torch.float32)
    parameters = {"top_k": 0.2, "topk_scope": "tensor", "aggregate": "mean"}
    if not set_aside:
        monkeypatch.setattr(passes, "_can_set_aside", lambda *args, **kwargs: False)
    resolved = count_calls(monkeypatch, topk.Selection, "resolve")
    result = merge(recipe(base_dir, experts, method="ties", parameters=parameters), tmp_path / "out",
                   options=OPTIONS)
    assert bool(resolved) == set_aside
    assert_same_bits(load_dir(result.out_dir), textbook_merge(base, expert_values, parameters))
    assert result.bytes_read == sum(result.plan.bytes_per_model.values())  # the inputs are read once


def interrupt(monkeypatch: pytest.MonkeyPatch, module: object, name: str, after: int) -> None:
    """Make ``module.name`` raise KeyboardInterrupt on its call number ``after + 1``."""
    original: Callable[..., Any] = getattr(module, name)
    calls = [0]

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > after:
            raise KeyboardInterrupt("simulated kill")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, dying)


@pytest.mark.parametrize(("where", "after"), [("write", 3), ("patch", 1)])  # shards 1-2: embeddings
def test_resume_after_a_kill_never_counts_again(where: str, after: int, tmp_path, monkeypatch) -> None:
    base_dir, experts = open_family(tmp_path / "in")
    config = recipe(base_dir, experts, method="ties", parameters={"top_k": 0.2})
    fresh = load_dir(merge(config, tmp_path / "fresh", options=OPTIONS).out_dir)
    with monkeypatch.context() as patch:
        if where == "write":  # killed in the merge pass, after a shard and its records were written
            original = writer_module.ShardWriter.write

            def write_then_die(self: writer_module.ShardWriter, name: str, data: object) -> None:
                original(self, name, data)  # type: ignore[arg-type]
                if self._shard_index == after:
                    raise KeyboardInterrupt("simulated kill")

            patch.setattr(writer_module.ShardWriter, "write", write_then_die)
        else:  # killed while patching the shards
            interrupt(patch, passes, "patch_shard", after)
        with pytest.raises(KeyboardInterrupt):
            merge(config, tmp_path / "out", options=OPTIONS)
    partial = tmp_path / ".out.partial"
    state = json.loads((partial / PROGRESS_FILE).read_text())
    assert "topk_selection" in state and state["shards"]
    if where == "write":
        assert "thresholds" not in state and list(partial.glob(f".*{passes.RECORDS_SUFFIX}"))

    def no_counting(*args: object, **kwargs: object) -> None:
        raise AssertionError("the counting pass must not run again")

    monkeypatch.setattr(topk.GlobalTopK, "update", no_counting)
    result = merge(config, tmp_path / "out", options=MergeOptions(**{**OPTIONS.__dict__, "resume": True}))
    assert result.resumed_shards
    assert_same_bits(load_dir(result.out_dir), fresh)
    assert not list(result.out_dir.glob(".*"))


def test_from_the_hub_the_inputs_are_fetched_twice(hub, hub_root, tmp_path) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 3, dtype=torch.float32)
    ids = []
    for folder in [base_dir, *experts]:
        repo = hub_root / "models" / "org" / folder.name
        repo.mkdir(parents=True)
        for f in folder.iterdir():
            (repo / f.name).write_bytes(f.read_bytes())
        ids.append(f"org/{folder.name}")
    parameters = {"top_k": 0.2}
    local = merge(recipe(base_dir, experts, method="ties", parameters=parameters), tmp_path / "local", options=OPTIONS)
    remote_recipe = {"method": "ties", "base_model": ids[0], "models": [{"model": i} for i in ids[1:]],
                     "parameters": parameters}
    hub.stats.reset()
    remote = merge(remote_recipe, tmp_path / "remote", options=OPTIONS)
    assert_same_bits(load_dir(remote.out_dir), load_dir(local.out_dir))
    inputs = sum(sum(f.stat().st_size for f in d.glob("*.safetensors")) for d in [base_dir, *experts])
    assert hub.stats.bytes_for("*.safetensors") <= 2 * inputs
