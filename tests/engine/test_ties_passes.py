"""TIES through the streaming engine: how often the inputs are read, and that every way gives the bits of the
textbook merge.

Global top-k reads a small sample, then merges and counts in one pass, setting aside the positions near the
sample's bounds of the thresholds and patching them in once the counts give the exact thresholds; when the
sample misses, it merges again. Without a sample it counts first, then merges (setting open buckets' positions
aside), or counts twice when those are too many to hold. Per-tensor top-k reads the inputs once.

float32 experts are used on purpose: their task vectors have low bits set almost everywhere, so the bucket
holding each threshold is open (bf16 checkpoints are usually exact after one pass; see
``tests/engine/test_all_methods.py`` for those).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from mergebench.merge import passes
from mergebench.merge.engine import PROGRESS_FILE, merge
from mergebench.merge.inputs import prepare
from mergebench.merge.options import MergeOptions
from mergebench.merge.sample import plan_reads, plan_slices, sample_task_vectors
from mergebench.methods import MergeContext, topk
from mergebench.methods.common import is_embedding
from mergebench.methods.ties import TiesParams
from mergebench.stream import writer as writer_module
from tests.engine._build import base_tensors, family, recipe, write_model
from tests.methods.test_methods import ref_localize_stitch
from tests.methods.test_ties_exact import textbook_ties
from tests.methods.test_topk_interval import few_units_in_the_last_place, sorted_threshold

OPTIONS = MergeOptions(progress=False, shard_size=1500, compute_chunk=97, compute_threads=2)
"""Several output shards, odd chunks on two threads; a sample for global top-k only from the Hub."""
SAMPLE = dataclasses.replace(OPTIONS, topk_sample=True)
COUNT = dataclasses.replace(OPTIONS, topk_sample=False)


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


def mergeable_bytes(plan: Any, models: int) -> int:
    return sum(t.numel * 4 for t in plan.tensors if t.mergeable) * models


def sample_bytes(plan: Any, models: int) -> int:
    """The bytes of float32 inputs the engine's sample needs, from the slices it plans."""
    slices = plan_slices([t for t in plan.tensors if t.mergeable])
    return sum((s.end - s.start) * 4 for s in slices) * models


def assert_sampled(bytes_read: int, plan: Any, models: int) -> None:
    """A sample reads its slices, and with them gaps of at most as many bytes (``sample.plan_reads``)."""
    assert sample_bytes(plan, models) <= bytes_read <= 2 * sample_bytes(plan, models)


@pytest.mark.parametrize("parameters", [{"top_k": 0.2}, {"top_k": 0.3, "aggregate": "mean", "scaling": 0.6}])
def test_global_ties_reads_the_inputs_once_and_equals_the_textbook_merge(parameters, tmp_path, monkeypatch):
    base_dir, experts, base, expert_values = family(tmp_path / "in", 3, dtype=torch.float32)
    config = recipe(base_dir, experts, method="ties", parameters=parameters)
    saved = count_calls(monkeypatch, passes, "_save_records")
    counting = count_calls(monkeypatch, passes, "_counting_pass")
    result = merge(config, tmp_path / "out", options=SAMPLE)
    assert saved and not counting
    assert_same_bits(load_dir(result.out_dir), textbook_merge(base, expert_values, parameters))
    assert not list(result.out_dir.glob(".*"))                    # no records left behind
    merging = sum(result.plan.bytes_per_model.values())
    assert 0 < sample_bytes(result.plan, 4) <= mergeable_bytes(result.plan, 4) // 4
    assert_sampled(result.bytes_read - merging, result.plan, 4)


def test_a_sample_that_misses_the_thresholds_costs_a_second_pass_not_the_result(tmp_path, monkeypatch, caplog):
    base_dir, experts, base, expert_values = family(tmp_path / "in", 3, dtype=torch.float32)
    far_below = topk.Interval((2 * 0x2000,) * 3, (2 * 0x2000 + 1,) * 3)  # |τ| around 1e-19
    monkeypatch.setattr(topk.Interval, "estimate", classmethod(lambda cls, *args, **kwargs: far_below))
    with caplog.at_level("WARNING", logger="mergebench.merge.passes"):
        result = merge(recipe(base_dir, experts, method="ties", parameters={"top_k": 0.2}), tmp_path / "out",
                       options=SAMPLE)
    assert "outside the bounds the sample gave" in caplog.text
    assert_same_bits(load_dir(result.out_dir), textbook_merge(base, expert_values, {"top_k": 0.2}))
    assert not list(result.out_dir.glob(".*"))
    merging = sum(result.plan.bytes_per_model.values())
    assert_sampled(result.bytes_read - 2 * merging, result.plan, 4)


@pytest.mark.parametrize(("method", "parameters"), [("ties", {"top_k": 0.1}), ("localize_stitch", {"sparsity": 0.4})])
def test_thresholds_on_values_many_entries_share_set_nothing_aside(method, parameters, tmp_path, monkeypatch) -> None:
    """bf16 experts a few units in the last place from their base: each threshold is one value that many entries
    share, the sample pins it, and the one merge pass decides every position (nothing recorded, nothing patched)
    with the bits of a merge whose thresholds were counted first."""
    g = torch.Generator().manual_seed(4)
    shapes = {"model.layers.0.mlp.up_proj.weight": (256, 128), "model.layers.0.self_attn.q_proj.weight": (128, 128),
              "model.layers.1.mlp.up_proj.weight": (256, 128), "model.norm.weight": (128,)}
    made = {name: few_units_in_the_last_place(g, 3, shape) for name, shape in shapes.items()}
    base = {name: b for name, (b, _) in made.items()}
    experts = [{name: e[i] for name, (_, e) in made.items()} for i in range(3)]
    config = recipe(write_model(tmp_path / "base", base, shards=2),
                    [write_model(tmp_path / f"e{i}", e, shards=2) for i, e in enumerate(experts)],
                    method=method, parameters=parameters)
    saved = count_calls(monkeypatch, passes, "_save_records")
    one_pass = merge(config, tmp_path / "one-pass", options=SAMPLE)
    assert saved and all(not pending for _, _, pending, *_ in saved)   # each shard's counts, no position
    counted_first = merge(config, tmp_path / "counted", options=COUNT)
    assert one_pass.bytes_read < counted_first.bytes_read
    got = {name: t.float() for name, t in load_dir(one_pass.out_dir).items()}  # bf16, as the inputs
    assert_same_bits(got, {name: t.float() for name, t in load_dir(counted_first.out_dir).items()})
    if method == "ties":
        assert_same_bits(got, {name: t.bfloat16().float()
                               for name, t in textbook_merge(base, experts, parameters).items()})
    else:  # the reference stitches in another order: equal to bf16 rounding
        taus = {name: torch.stack([e[name] - base[name] for e in experts]) for name in base}
        thresholds = sorted_threshold(list(taus.values()), parameters["sparsity"])
        for name, tau in taus.items():
            expected = ref_localize_stitch(base[name], tau, {"scaling": 1.0}, [1.0] * 3, thresholds=thresholds)
            torch.testing.assert_close(got[name], expected.bfloat16().float(), rtol=2**-8, atol=0)


@pytest.mark.parametrize("hold", [True, False])
def test_counting_first_reads_twice_or_three_times_with_the_same_bits(hold: bool, tmp_path, monkeypatch) -> None:
    """Without a sample: count, then merge setting the open buckets' positions aside (``hold``), else count their
    low bits in a second pass before merging."""
    base_dir, experts, base, expert_values = family(tmp_path / "in", 3, dtype=torch.float32)
    if not hold:
        monkeypatch.setattr(passes, "_can_set_aside", lambda *args, **kwargs: False)
    saved = count_calls(monkeypatch, passes, "_save_records")
    result = merge(recipe(base_dir, experts, method="ties", parameters={"top_k": 0.2}), tmp_path / "out",
                   options=COUNT)
    assert bool(saved) == hold
    assert_same_bits(load_dir(result.out_dir), textbook_merge(base, expert_values, {"top_k": 0.2}))
    counts = 1 if hold else 2
    assert result.bytes_read == sum(result.plan.bytes_per_model.values()) + counts * mergeable_bytes(result.plan, 4)


def test_a_sample_that_leaves_too_much_undecided_counts_first(tmp_path, monkeypatch, caplog) -> None:
    """Positions set aside are held in memory, one shard's at a time: when the sample says they would not fit,
    the merge counts first, and here (nothing fits) counts the open buckets' low bits too."""
    base_dir, experts, base, expert_values = family(tmp_path / "in", 3, dtype=torch.float32)
    monkeypatch.setattr(passes, "_set_aside_budget", lambda inputs: 0)
    with caplog.at_level("INFO", logger="mergebench.merge.passes"):
        result = merge(recipe(base_dir, experts, method="ties", parameters={"top_k": 0.2}), tmp_path / "out",
                       options=SAMPLE)
    assert "counting first" in caplog.text
    assert_same_bits(load_dir(result.out_dir), textbook_merge(base, expert_values, {"top_k": 0.2}))
    plan = result.plan
    assert_sampled(result.bytes_read - 2 * mergeable_bytes(plan, 4) - sum(plan.bytes_per_model.values()), plan, 4)


def test_set_aside_positions_need_to_fit_one_output_shard_not_the_model(tmp_path, monkeypatch, caplog) -> None:
    """Set-aside positions are held until their shard is written: a budget of one shard's worth lets the one-pass
    merge through where the whole model's would not fit."""
    base_dir, experts, base, expert_values = family(tmp_path / "in", 3, dtype=torch.float32)
    config = recipe(base_dir, experts, method="ties", parameters={"top_k": 0.2})
    options = dataclasses.replace(SAMPLE, shard_size=300)  # a shard per tensor, about
    plan = prepare(config, shard_size=options.shard_size).plan
    by_name = {t.name: t for t in plan.tensors}
    record = 8 + 4 * 4  # an index and four float32 values
    largest_shard = max(sum(by_name[n].numel for n in shard.tensors if by_name[n].mergeable) for shard in plan.shards)
    monkeypatch.setattr(passes, "_set_aside_budget", lambda inputs: largest_shard * record)
    with caplog.at_level("INFO", logger="mergebench.merge.passes"):
        result = merge(config, tmp_path / "out", options=options)
    share = float(re.search(r"about ([0-9.]+)% of the positions set aside", caplog.text).group(1)) / 100
    assert share * sum(t.numel for t in plan.tensors if t.mergeable) * record > largest_shard * record
    assert_sampled(result.bytes_read - sum(plan.bytes_per_model.values()), plan, 4)  # one pass
    assert_same_bits(load_dir(result.out_dir), textbook_merge(base, expert_values, {"top_k": 0.2}))


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


@pytest.mark.parametrize("sample", [True, False])
@pytest.mark.parametrize(("where", "after"), [("write", 3), ("patch", 1)])  # shards 1-2: embeddings
def test_resume_after_a_kill_never_counts_again(sample: bool, where: str, after: int, tmp_path, monkeypatch) -> None:
    """Killed while merging or patching, a merge resumes without a sample or a counting pass; after a one-pass
    merge was killed while writing, it counts (as it merges) only the shards it has left."""
    base_dir, experts = open_family(tmp_path / "in")
    options = SAMPLE if sample else COUNT
    config = recipe(base_dir, experts, method="ties", parameters={"top_k": 0.2})
    fresh = load_dir(merge(config, tmp_path / "fresh", options=options).out_dir)
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
            merge(config, tmp_path / "out", options=options)
    partial = tmp_path / ".out.partial"
    state = json.loads((partial / PROGRESS_FILE).read_text())
    assert state["shards"]
    if where == "write":
        assert ("topk_interval" if sample else "topk_selection") in state and "thresholds" not in state
        assert list(partial.glob(f".*{passes.RECORDS_SUFFIX}"))
    else:
        assert "thresholds" in state and not state.keys() & {"topk_interval", "topk_selection"}

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("neither a sample nor a counting pass may run again")

    monkeypatch.setattr(passes, "_counting_pass", never)
    monkeypatch.setattr(passes, "sample_task_vectors", never)
    if where == "patch" or not sample:
        monkeypatch.setattr(topk.GlobalTopK, "update", never)
    result = merge(config, tmp_path / "out", options=dataclasses.replace(options, resume=True))
    assert result.resumed_shards
    assert_same_bits(load_dir(result.out_dir), fresh)
    assert not list(result.out_dir.glob(".*"))


def publish(hub_root: Path, folders: list[Path]) -> list[str]:
    """Copy each model folder into the loopback Hub's root as ``org/<folder name>``; returns the repo ids."""
    for folder in folders:
        repo = hub_root / "models" / "org" / folder.name
        repo.mkdir(parents=True)
        for f in folder.iterdir():
            (repo / f.name).write_bytes(f.read_bytes())
    return [f"org/{folder.name}" for folder in folders]


def test_from_the_hub_the_inputs_are_fetched_once(hub, hub_root, tmp_path) -> None:
    base_dir, experts, _, _ = family(tmp_path / "in", 3, dtype=torch.float32)
    ids = publish(hub_root, [base_dir, *experts])
    parameters = {"top_k": 0.2}
    local = merge(recipe(base_dir, experts, method="ties", parameters=parameters), tmp_path / "local", options=OPTIONS)
    # by default a local merge counts first (a second local read costs less than a sample and its set-aside)
    assert local.bytes_read == sum(local.plan.bytes_per_model.values()) + mergeable_bytes(local.plan, 4)
    remote_recipe = {"method": "ties", "base_model": ids[0], "models": [{"model": i} for i in ids[1:]],
                     "parameters": parameters}
    hub.stats.reset()
    remote = merge(remote_recipe, tmp_path / "remote", options=OPTIONS)
    assert_same_bits(load_dir(remote.out_dir), load_dir(local.out_dir))
    files = [f for d in [base_dir, *experts] for f in d.glob("*.safetensors")]
    headers = sum(8 + int.from_bytes(f.read_bytes()[:8], "little") for f in files)
    fetched = hub.stats.bytes_for("*.safetensors")
    assert_sampled(remote.bytes_read - sum(remote.plan.bytes_per_model.values()), remote.plan, 4)
    # besides: each header once, and the length prefix of every file a reader opens (8 bytes, at most twice)
    assert remote.bytes_read + headers <= fetched <= remote.bytes_read + headers + 16 * len(files)


def test_a_sample_over_the_hub_reads_neighbouring_runs_in_one_request(hub, hub_root, tmp_path) -> None:
    """Runs reach the ends of their tensors, so a tensor's last run and the next tensor's first are read together:
    fewer requests than runs, each run's values those of the checkpoint."""
    base_dir, experts, base, expert_values = family(tmp_path / "in", 3, shards=2)
    ids = publish(hub_root, [base_dir, *experts])
    inputs = prepare({"method": "ties", "base_model": ids[0], "models": [{"model": i} for i in ids[1:]]})
    slices = plan_slices([t for t in inputs.plan.tensors if t.mergeable])
    hub.stats.reset()
    stacks, nbytes = sample_task_vectors(inputs, slices)
    requests = sum(n for (method, path), n in hub.stats.requests.items() if path.endswith(".safetensors"))
    assert 0 < requests < len(slices) * 4
    assert hub.stats.bytes_for("*.safetensors") == nbytes + 8 * 4 * 2  # and the length of each file's header
    assert sample_bytes(inputs.plan, 4) // 2 <= nbytes <= sample_bytes(inputs.plan, 4)  # bf16: half of float32's
    for piece, stack in zip(slices, stacks, strict=True):
        name = piece.tensor.name
        expected = torch.stack([e[name].flatten()[piece.start:piece.end] - base[name].flatten()[piece.start:piece.end]
                                for e in expert_values])
        assert torch.equal(stack, expected), name


def test_reads_join_the_smallest_gaps_first_while_they_at_most_double_the_bytes() -> None:
    runs = [(1000, 1010), (0, 10), (25, 35), (10, 20), (100, 110)]  # gaps 0, 5, 65, 890; 50 bytes in all
    as_tuples = lambda reads: [(r.model, r.filename, r.begin, r.end) for r in reads]  # noqa: E731
    assert as_tuples(plan_reads({(0, "a"): runs})) == [(0, "a", 0, 35), (0, "a", 100, 110), (0, "a", 1000, 1010)]
    assert as_tuples(plan_reads({(0, "a"): runs}, extra=1000)) == [(0, "a", 0, 1010)]
    assert as_tuples(plan_reads({(0, "a"): runs}, gap=100, extra=1000)) == [(0, "a", 0, 110), (0, "a", 1000, 1010)]
    assert as_tuples(plan_reads({(0, "a"): runs}, extra=0)) == [(0, "a", 0, 20), (0, "a", 25, 35),
                                                                 (0, "a", 100, 110), (0, "a", 1000, 1010)]
    # files and models never share a read, however close their ranges
    assert as_tuples(plan_reads({(0, "a"): [(0, 10)], (0, "b"): [(10, 20)], (1, "a"): [(10, 20)]})) == [
        (0, "a", 0, 10), (0, "b", 10, 20), (1, "a", 10, 20)]
    assert plan_reads({}) == []
