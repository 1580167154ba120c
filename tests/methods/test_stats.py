"""Statistics stages on the tiny fixture families: Gram, Fisher, trained masks, pairing, cache, reader.

The stages run layer by layer from the streamed checkpoints; every expected value is computed here another way,
on the whole model loaded by ``transformers``: Grams from hooks on one unpadded sample at a time, Fisher from
transformers' own loss and ``.backward()`` per sample, trained masks by full autograd on a model whose weights
were overwritten with θ₀ + σ(S)⊙τ, then the same update, epoch after epoch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import weakref
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from mergebench.errors import ConfigError, StatisticsError
from mergebench.fixtures import DOMAINS, Family, validation_rows
from mergebench.fixtures.tiny import read_tensors
from mergebench.fixtures.tokenizer import build_tokenizer
from mergebench.prompt import encode_chat
from mergebench.stats import ModelSource, StatisticsReader, StatsOptions, load_statistics, run_stage
from mergebench.stats import runner as runner_module
from mergebench.stats.cache import read_metadata

OPTIONS = StatsOptions(batch_size=3, max_length=48, progress=False)  # short: forces truncation and padding
LONG = StatsOptions(max_length=128, progress=False)


def rows_by_domain(n: int = 5) -> dict[str, list[dict]]:
    return {domain: validation_rows(domain, n) for domain in DOMAINS}


def load(folder: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def encoded(rows: list[dict], max_length: int = OPTIONS.max_length) -> list[tuple[list[int], list[int]]]:
    tok = build_tokenizer()
    return [encode_chat(tok, row["messages"], max_length=max_length) for row in rows]


def manual_gram(folder: Path, rows: list[dict], module_name: str) -> torch.Tensor:
    """Σ x xᵀ / T with one unpadded sample per forward pass."""
    model = load(folder)
    module = model.get_submodule(module_name)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for ids, _ in encoded(rows):
            model(input_ids=torch.tensor([ids]))
    handle.remove()
    x = torch.cat(seen).double()
    return (x.T @ x / x.shape[0]).float()


# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_gram_matches_a_manual_computation(arch: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    family: Family = request.getfixturevalue(f"tiny_{arch}")
    rows = rows_by_domain()
    expert = ModelSource.at(family.experts["math"], domain="math")
    [path] = run_stage("gram", [expert], rows, {"num_samples": 5}, cache_dir=tmp_path, options=OPTIONS)
    grams = load_statistics(path)
    assert len(grams) == 4 * 7 and all(name.startswith("model.layers.") for name in grams)
    assert grams["model.layers.0.mlp.down_proj.weight"].shape == (128, 128)
    for module in ("model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj",
                   "model.layers.2.self_attn.o_proj", "model.layers.1.mlp.up_proj"):
        expected = manual_gram(family.experts["math"], rows["math"], module)
        torch.testing.assert_close(grams[f"{module}.weight"], expected, rtol=1e-4, atol=1e-6)
    # q, k and v read the same input
    assert torch.equal(grams["model.layers.1.self_attn.q_proj.weight"], grams["model.layers.1.self_attn.v_proj.weight"])
    assert not list(tmp_path.rglob(".work-*")), "the spilled activations are removed"


def test_each_expert_is_paired_with_its_own_domain(tiny_llama: Family, tmp_path: Path) -> None:
    rows = rows_by_domain(3)
    order = ["safety", "math", "coding"]
    experts = [ModelSource.at(tiny_llama.experts[d], domain=d) for d in order]
    paths = run_stage("gram", experts, rows, {"num_samples": 3}, cache_dir=tmp_path, options=OPTIONS)
    name = "model.layers.0.self_attn.q_proj"
    for domain, path in zip(order, paths, strict=True):
        assert read_metadata(path)["mergebench.domain"] == domain
        got = load_statistics(path)[f"{name}.weight"]
        own = manual_gram(tiny_llama.experts[domain], rows[domain], name)
        torch.testing.assert_close(got, own, rtol=1e-4, atol=1e-6)
        assert not torch.allclose(got, manual_gram(tiny_llama.experts[domain], rows["instruction"], name), rtol=1e-3)
    # the rows dict order does not matter either
    reordered = dict(reversed(list(rows.items())))
    assert run_stage("gram", experts, reordered, {"num_samples": 3}, cache_dir=tmp_path, options=OPTIONS) == paths


def test_pairing_errors_are_raised_before_any_work(tiny_llama: Family, tmp_path: Path) -> None:
    rows = rows_by_domain(2)
    good = ModelSource.at(tiny_llama.experts["math"], domain="math")
    with pytest.raises(StatisticsError, match="has no domain"):
        run_stage("gram", [good, ModelSource.at(tiny_llama.experts["coding"])], rows, {"num_samples": 2},
                  cache_dir=tmp_path)
    with pytest.raises(StatisticsError, match="No validation rows for domain 'coding'") as info:
        run_stage("gram", [good, ModelSource.at(tiny_llama.experts["coding"], domain="coding")],
                  {"math": rows["math"]}, {"num_samples": 2}, cache_dir=tmp_path)
    assert "available for: math" in str(info.value)
    with pytest.raises(StatisticsError, match="belongs to domain 'safety'"):
        run_stage("gram", [good], {"math": rows["safety"]}, {"num_samples": 2}, cache_dir=tmp_path)
    with pytest.raises(StatisticsError, match="needs the base"):
        run_stage("mask", [good], rows, {"num_samples": 2}, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def reference_fisher(folder: Path, rows: list[dict], max_length: int = 128) -> dict[str, torch.Tensor]:
    """Mean over samples (with a response) of each parameter's squared gradient of transformers' own loss."""
    model = load(folder)
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    samples = [(ids, labels) for ids, labels in encoded(rows, max_length) if any(x != -100 for x in labels[1:])]
    for ids, labels in samples:
        model.zero_grad()
        model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.backward()
        for name, p in model.named_parameters():
            expected[name] += p.grad**2
    return {name: value / len(samples) for name, value in expected.items()}


def assert_fisher_close(fisher: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    for name, value in expected.items():
        torch.testing.assert_close(fisher[name], value, rtol=1e-3, atol=1e-5 * float(value.max()),
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_fisher_matches_per_sample_autograd(arch: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Every tensor, embeddings and head included (``merge_embeddings``): Gemma-2's tied embedding = head gets
    the square of the sum of both uses' gradients; small head blocks, head batches and spill budget make every
    loop of the layer-wise backward run more than once."""
    family: Family = request.getfixturevalue(f"tiny_{arch}")
    rows = rows_by_domain(4)
    folder = family.experts["coding"]
    options = dataclasses.replace(LONG, head_chunk_bytes=37 * 64 * 4, head_tokens=60, spill_bytes=1)
    [path] = run_stage("fisher", [ModelSource.at(folder, domain="coding")], rows, {"num_samples": 3},
                       cache_dir=tmp_path, options=options, merge_embeddings=True)
    fisher = load_statistics(path)
    expected = reference_fisher(folder, rows["coding"][:3])
    assert set(fisher) == set(expected) == set(read_tensors(folder))
    assert_fisher_close(fisher, expected)
    assert fisher["model.layers.0.mlp.up_proj.weight"].abs().sum() > 0
    assert fisher["model.embed_tokens.weight"].abs().sum() > 0


def test_fisher_without_merge_embeddings_leaves_out_the_embeddings(tiny_gemma2: Family, tmp_path: Path) -> None:
    """The merge copies embeddings and head from the base unless ``merge_embeddings``: no statistics for them
    (Llama-3.1-8B: 4.2 GB less per expert), the same values for the rest."""
    folder = tiny_gemma2.experts["math"]
    rows = rows_by_domain(2)
    [path] = run_stage("fisher", [ModelSource.at(folder, domain="math")], rows, {"num_samples": 1},
                       cache_dir=tmp_path, options=LONG)
    fisher = load_statistics(path)
    expected = reference_fisher(folder, rows["math"][:1])
    assert set(fisher) == set(read_tensors(folder)) - {"model.embed_tokens.weight"}
    assert_fisher_close(fisher, {name: expected[name] for name in fisher})


def test_rows_without_responses_are_skipped(tiny_llama: Family, tmp_path: Path, caplog) -> None:
    rows = rows_by_domain(3)
    expert = ModelSource.at(tiny_llama.experts["math"], domain="math")
    with pytest.raises(StatisticsError, match="No row of domain 'math' has a response token"):
        run_stage("fisher", [expert], rows, {"num_samples": 3}, cache_dir=tmp_path,
                  options=dataclasses.replace(OPTIONS, max_length=8))
    # math rows 0 and 1 lose their responses at 48 tokens, row 2 keeps them: Fisher over that row alone
    [path] = run_stage("fisher", [expert], rows, {"num_samples": 3}, cache_dir=tmp_path, options=OPTIONS)
    assert "2 of 3 rows of domain 'math' have no response token" in caplog.text
    assert torch.isfinite(load_statistics(path)["model.layers.0.mlp.up_proj.weight"]).all()


# ----------------------------------------------------------------------------------------------------------
def brute_force_dataless(family: Family, domain: str, sparsity: float) -> dict[str, torch.Tensor]:
    base, expert = read_tensors(family.base), read_tensors(family.experts[domain])
    taus = {n: expert[n].float() - base[n].float() for n in base if "embed" not in n and "lm_head" not in n}
    flat = torch.cat([t.reshape(-1) for t in taus.values()]).abs().sort(descending=True).values
    t = flat[math.ceil(round(sparsity * flat.numel(), 9)) - 1]
    return {n: tau.abs() >= t for n, tau in taus.items()}


def test_trained_masks_with_zero_learning_rate_are_the_dataless_masks(tiny_llama: Family, tmp_path: Path) -> None:
    experts = [ModelSource.at(tiny_llama.experts[d], domain=d) for d in ("multilingual", "safety")]
    params = {"mode": "trained", "sparsity": 0.1, "learning_rate": 0.0, "num_samples": 2}
    paths = run_stage("mask", experts, rows_by_domain(2), params, cache_dir=tmp_path,
                      base=ModelSource.at(tiny_llama.base), options=OPTIONS)
    for expert, path in zip(experts, paths, strict=True):
        masks = load_statistics(path)
        expected = brute_force_dataless(tiny_llama, expert.domain, 0.1)
        assert set(masks) == set(expected)
        for name, mask in masks.items():
            assert mask.dtype == torch.bool
            assert torch.equal(mask, expected[name]), name
    reader = StatisticsReader("mask", paths)
    assert reader.get("model.layers.0.mlp.up_proj.weight").shape == (2, 128, 64)
    assert reader.data_for("model.embed_tokens.weight") == {}

    # ... so the trained merge equals the dataless merge, tensor for tensor (the engine's path)
    from mergebench.methods import MergeContext, get
    from mergebench.methods.topk import global_thresholds

    base = {n: t.float() for n, t in read_tensors(tiny_llama.base).items()}
    weights = [read_tensors(e.model.ref.local_path) for e in experts]
    taus = {n: torch.stack([w[n].float() for w in weights]) - base[n] for n in reader.names}
    thresholds = global_thresholds(list(taus.values()), 0.1)
    spec = get("localize_stitch")
    trained, dataless = spec.make_params(params), spec.make_params({"sparsity": 0.1})
    for name, tau in taus.items():
        a = spec.fn(base[name], tau.clone(), trained, MergeContext(name, (0, 1), data=reader.data_for(name)))
        b = spec.fn(base[name], tau.clone(), dataless, MergeContext(name, (0, 1), thresholds=thresholds))
        assert torch.equal(a, b), name


def reference_masks(family: Family, domain: str, rows: list[dict], params: dict, merge_embeddings: bool
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Dataless and trained masks computed on the whole model: S⁰ = ±bias from the brute-force threshold, then per
    epoch ∂L/∂θ at θ₀ + σ(S)τ by transformers' own loss (mean over rows), and S ← S − lr·∂L/∂θ⊙τ⊙σ'(S) − l1·σ'(S)."""
    base, expert = read_tensors(family.base), read_tensors(family.experts[domain])
    taus = {n: expert[n].float() - base[n].float() for n in base
            if merge_embeddings or ("embed" not in n and "lm_head" not in n)}
    if params.get("topk_scope", "global") == "global":
        flat = torch.cat([t.reshape(-1) for t in taus.values()]).abs().sort(descending=True).values
        thresholds = dict.fromkeys(taus, flat[math.ceil(round(params["sparsity"] * flat.numel(), 9)) - 1])
    else:
        thresholds = {n: t.abs().reshape(-1).sort(descending=True).values[
            math.ceil(round(params["sparsity"] * t.numel(), 9)) - 1] for n, t in taus.items()}
    dataless = {n: t.abs() >= thresholds[n] for n, t in taus.items()}
    logits = {n: torch.where(m, 3.0, -3.0) for n, m in dataless.items()}
    samples = encoded(rows, 128)
    for _ in range(params.get("epochs", 1)):
        model = load(family.base)
        theta = dict(model.named_parameters())
        with torch.no_grad():
            for name, s in logits.items():
                theta[name].add_(torch.sigmoid(s) * taus[name])
        for ids, labels in samples:
            (model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss / len(samples)).backward()
        for name, s in logits.items():
            slope = torch.sigmoid(s) * (1 - torch.sigmoid(s))
            logits[name] = s - params["learning_rate"] * theta[name].grad * taus[name] * slope \
                - params.get("l1_strength", 0.0) * slope
    return dataless, {n: torch.sigmoid(s) >= 0.5 for n, s in logits.items()}


@pytest.mark.parametrize("arch, params, merge_embeddings", [
    ("llama", {"epochs": 1}, False),
    ("llama", {"epochs": 2, "l1_strength": 0.5}, True),
    ("gemma2", {"epochs": 1, "topk_scope": "tensor"}, True),
    ("gemma2", {"epochs": 2, "topk_scope": "tensor", "l1_strength": 0.5}, False),
])
def test_trained_masks_match_whole_model_training(arch: str, params: dict, merge_embeddings: bool,
                                                  request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """One or two full-batch steps from the dataless masks, layer by layer, equal the whole-model computation
    (global or per-tensor thresholds; with merge_embeddings the embedding, head and Gemma-2's tied embedding
    are trained too, their rows read in blocks)."""
    family: Family = request.getfixturevalue(f"tiny_{arch}")
    params = {"mode": "trained", "sparsity": 0.1, "learning_rate": 1e8, "num_samples": 3, **params}
    rows = rows_by_domain(3)
    options = dataclasses.replace(LONG, head_chunk_bytes=40 * 64 * 4)
    [path] = run_stage("mask", [ModelSource.at(family.experts["math"], domain="math")], rows, params,
                       cache_dir=tmp_path, base=ModelSource.at(family.base), options=options,
                       merge_embeddings=merge_embeddings)
    masks = load_statistics(path)
    dataless, expected = reference_masks(family, "math", rows["math"], params, merge_embeddings)
    assert set(masks) == set(expected)
    total = sum(m.numel() for m in expected.values())
    flipped = sum(int((expected[n] != dataless[n]).sum()) for n in expected)
    disagree = sum(int((masks[n] != expected[n]).sum()) for n in expected)
    assert flipped > 100                     # the steps matter at this learning rate
    assert disagree <= 1e-4 * total          # only entries at the decision boundary may differ (float rounding)


# ----------------------------------------------------------------------------------------------------------
def test_cache_hits_and_keys(tiny_llama: Family, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = rows_by_domain(3)
    expert = ModelSource.at(tiny_llama.experts["math"], domain="math")
    [first] = run_stage("gram", [expert], rows, {"num_samples": 2}, cache_dir=tmp_path, options=OPTIONS)
    meta = read_metadata(first)
    assert meta["mergebench.stage"] == "gram" and meta["mergebench.domain"] == "math"

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached statistic")

    monkeypatch.setitem(runner_module.COMPUTE, "gram", fail)
    assert run_stage("gram", [expert], rows, {"num_samples": 2}, cache_dir=tmp_path, options=OPTIONS) == [first]
    # batch size and device are not part of the key
    assert run_stage("gram", [expert], rows, {"num_samples": 2}, cache_dir=tmp_path,
                     options=dataclasses.replace(OPTIONS, batch_size=1, head_tokens=1, spill_bytes=1)) == [first]
    # rows, parameters, max_length and the model's revision are
    for change in [dict(params={"num_samples": 3}), dict(options=dataclasses.replace(OPTIONS, max_length=40)),
                   dict(rows={**rows, "math": rows["math"][1:]}),
                   dict(experts=[ModelSource(dataclasses.replace(expert.model, sha="abc123"), domain="math")])]:
        with pytest.raises(AssertionError, match="recomputed"):
            run_stage("gram", change.get("experts", [expert]), change.get("rows", rows),
                      change.get("params", {"num_samples": 2}), cache_dir=tmp_path,
                      options=change.get("options", OPTIONS))


def test_reader_checks_its_files(tiny_llama: Family, tmp_path: Path) -> None:
    rows = rows_by_domain(2)
    experts = [ModelSource.at(tiny_llama.experts[d], domain=d) for d in ("math", "coding")]
    paths = run_stage("gram", experts, rows, {"num_samples": 1}, cache_dir=tmp_path, options=OPTIONS)
    reader = StatisticsReader("gram", paths)
    stacked = reader.get("model.layers.0.mlp.down_proj.weight")
    assert stacked.shape == (2, 128, 128)
    assert torch.equal(stacked[1], load_statistics(paths[1])["model.layers.0.mlp.down_proj.weight"])
    assert reader.data_for("model.layers.0.input_layernorm.weight") == {}
    assert set(reader.data_for("model.layers.0.mlp.up_proj.weight")) == {"gram"}
    rows = reader.data_for("model.layers.0.mlp.down_proj.weight")["gram"]
    assert rows.shape == stacked.shape and len(rows) == 2
    seen: list[weakref.ref] = []
    for row in rows:  # one expert's row at a time: the previous one is gone once the consumer drops it
        assert all(ref() is None for ref in seen)
        assert torch.equal(row, stacked[len(seen)])
        assert row.untyped_storage().nbytes() == row.numel() * row.element_size()  # its own memory, not a stack's
        seen.append(weakref.ref(row))
        del row
    with pytest.raises(StatisticsError, match="holds stage 'gram'"):
        StatisticsReader("fisher", paths)
    with pytest.raises(StatisticsError, match="does not exist"):
        StatisticsReader("gram", [tmp_path / "missing.safetensors"])


def test_regmean_merges_with_the_reader(tiny_llama: Family, tmp_path: Path) -> None:
    """The pieces fit: stage → reader → ctx.data → method."""
    from mergebench.methods import MergeContext, get

    domains = ("math", "coding")
    experts = [ModelSource.at(tiny_llama.experts[d], domain=d) for d in domains]
    reader = StatisticsReader("gram", run_stage("gram", experts, rows_by_domain(2), {"num_samples": 2},
                                                cache_dir=tmp_path, options=OPTIONS))
    name = "model.layers.3.mlp.gate_proj.weight"
    weights = torch.stack([read_tensors(tiny_llama.experts[d])[name].float() for d in domains])
    base = read_tensors(tiny_llama.base)[name].float()
    spec = get("regmean")
    out = spec.fn(base, weights.clone(), spec.make_params({}), MergeContext(name, (0, 1), data=reader.data_for(name)))
    assert out.shape == base.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, weights.mean(0))
    stacked = spec.fn(base, weights.clone(), spec.make_params({}), MergeContext(name, (0, 1),
                                                                               data={"gram": reader.get(name)}))
    assert torch.equal(out, stacked)  # rows read lazily or stacked: the same merge


@pytest.mark.parametrize("stage, params", [("fisher", {"num_samples": 2}),
                                           ("mask", {"mode": "trained", "sparsity": 0.1, "num_samples": 2})])
def test_gradient_stages_work_with_grad_mode_switched_off_globally(stage: str, params: dict, tiny_llama: Family,
                                                                   tmp_path: Path) -> None:
    """lighteval runs ``torch.set_grad_enabled(False)`` at import; statistics must not depend on grad mode."""
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        [path] = run_stage(stage, [ModelSource.at(tiny_llama.experts["math"], domain="math")], rows_by_domain(2),
                           params, cache_dir=tmp_path, base=ModelSource.at(tiny_llama.base),
                           options=LONG)
    finally:
        torch.set_grad_enabled(previous)
    stats = load_statistics(path)
    assert stats and any(t.float().abs().sum() > 0 for t in stats.values())


def test_the_cache_stays_within_its_bound_deleting_the_least_recently_used(tiny_llama: Family,
                                                                           tmp_path: Path) -> None:
    rows = rows_by_domain(3)

    def gram(*domains: str, options: StatsOptions = OPTIONS) -> list[Path]:
        experts = [ModelSource.at(tiny_llama.experts[d], domain=d) for d in domains]
        return run_stage("gram", experts, rows, {"num_samples": 2}, cache_dir=tmp_path, options=options)

    [math_file], [coding_file] = gram("math"), gram("coding")
    os.utime(math_file, (1, 1))
    os.utime(coding_file, (2, 2))
    temporary = math_file.parent / f".{math_file.name}.x.tmp"  # a stage being written by another process
    temporary.write_bytes(b"0" * 10)
    assert gram("math") == [math_file] and math_file.stat().st_mtime > 2  # reused: now the most recently used

    # room for two files: the safety file's header (its domain, hashes) may be a few bytes longer than math's
    room = 2 * math_file.stat().st_size + math_file.stat().st_size // 100
    [safety_file] = gram("safety", options=dataclasses.replace(OPTIONS, cache_limit_bytes=room))
    assert safety_file.exists() and math_file.exists() and not coding_file.exists() and temporary.exists()

    paths = gram("math", "coding", options=dataclasses.replace(OPTIONS, cache_limit_bytes=0))
    assert paths == [math_file, coding_file] and all(p.exists() for p in paths)  # a stage's own files stay
    assert not safety_file.exists()


def test_the_cache_bound_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERGEBENCH_STATS_CACHE_GB", "0.5")
    assert StatsOptions().cache_limit_bytes == 500_000_000
    monkeypatch.delenv("MERGEBENCH_STATS_CACHE_GB")
    assert StatsOptions().cache_limit_bytes == 20_000_000_000
    monkeypatch.setenv("MERGEBENCH_STATS_CACHE_GB", "lots")
    with pytest.raises(ConfigError, match="MERGEBENCH_STATS_CACHE_GB='lots'") as e:
        StatsOptions()
    assert "decimal GB" in (e.value.hint or "")
