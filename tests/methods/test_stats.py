"""Statistics stages on the tiny fixture families: Gram, Fisher, trained masks, pairing, cache, reader.

Every expected value is computed here another way: Grams from hooks on one unpadded sample at a time,
Fisher from transformers' own loss and ``.backward()`` per sample, mask gradients by the chain rule on a
model whose weights were overwritten with θ₀ + σ(S)⊙τ.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from mergebench.errors import StatisticsError
from mergebench.fixtures import DOMAINS, Family, validation_rows
from mergebench.fixtures.tiny import read_tensors
from mergebench.fixtures.tokenizer import build_tokenizer
from mergebench.prompt import encode_chat
from mergebench.stats import ModelSource, StatisticsReader, StatsOptions, load_statistics, run_stage
from mergebench.stats import runner as runner_module
from mergebench.stats.cache import read_metadata
from mergebench.stats.data import encode_rows, load_model, load_tokenizer, pad_token_id
from mergebench.stats.masks import MaskConfig, dataless_masks, mask_gradient, task_vectors, train_masks

OPTIONS = StatsOptions(batch_size=3, max_length=48)  # short: forces truncation and padding


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
def test_gram_matches_a_manual_computation(tiny_llama: Family, tmp_path: Path) -> None:
    rows = rows_by_domain()
    expert = ModelSource(tiny_llama.experts["math"], domain="math")
    [path] = run_stage("gram", [expert], rows, {"num_samples": 5}, cache_dir=tmp_path, options=OPTIONS)
    grams = load_statistics(path)
    assert len(grams) == 4 * 7 and all(name.startswith("model.layers.") for name in grams)
    assert grams["model.layers.0.mlp.down_proj.weight"].shape == (128, 128)
    for module in ("model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj",
                   "model.layers.2.self_attn.o_proj"):
        expected = manual_gram(tiny_llama.experts["math"], rows["math"], module)
        torch.testing.assert_close(grams[f"{module}.weight"], expected, rtol=1e-4, atol=1e-6)
    # q, k and v read the same input
    assert torch.equal(grams["model.layers.1.self_attn.q_proj.weight"], grams["model.layers.1.self_attn.v_proj.weight"])


def test_each_expert_is_paired_with_its_own_domain(tiny_llama: Family, tmp_path: Path) -> None:
    rows = rows_by_domain(3)
    order = ["safety", "math", "coding"]
    experts = [ModelSource(tiny_llama.experts[d], domain=d) for d in order]
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
    good = ModelSource(tiny_llama.experts["math"], domain="math")
    with pytest.raises(StatisticsError, match="has no domain"):
        run_stage("gram", [good, ModelSource(tiny_llama.experts["coding"])], rows, {"num_samples": 2},
                  cache_dir=tmp_path)
    with pytest.raises(StatisticsError, match="No validation rows for domain 'coding'") as info:
        run_stage("gram", [good, ModelSource(tiny_llama.experts["coding"], domain="coding")],
                  {"math": rows["math"]}, {"num_samples": 2}, cache_dir=tmp_path)
    assert "available for: math" in str(info.value)
    with pytest.raises(StatisticsError, match="belongs to domain 'safety'"):
        run_stage("gram", [good], {"math": rows["safety"]}, {"num_samples": 2}, cache_dir=tmp_path)
    with pytest.raises(StatisticsError, match="needs the base"):
        run_stage("mask", [good], rows, {"num_samples": 2}, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_fisher_matches_per_sample_autograd(tiny_llama: Family, tmp_path: Path) -> None:
    rows = rows_by_domain(4)
    folder = tiny_llama.experts["coding"]
    options = StatsOptions(max_length=128)
    [path] = run_stage("fisher", [ModelSource(folder, domain="coding")], rows, {"num_samples": 3},
                       cache_dir=tmp_path, options=options)
    fisher = load_statistics(path)
    model = load(folder)
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    samples = [(ids, labels) for ids, labels in encoded(rows["coding"][:3], 128) if any(x != -100 for x in labels[1:])]
    for ids, labels in samples:
        model.zero_grad()
        model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.backward()  # transformers' own loss
        for name, p in model.named_parameters():
            expected[name] += p.grad**2
    assert len(samples) == 3 and set(fisher) == set(expected)
    for name, value in expected.items():
        expected_value = value / len(samples)
        torch.testing.assert_close(fisher[name], expected_value, rtol=1e-3, atol=1e-5 * float(expected_value.max()),
                                   msg=lambda m, n=name: f"{n}: {m}")
    assert fisher["model.layers.0.mlp.up_proj.weight"].abs().sum() > 0


def test_fisher_with_tied_embeddings_uses_the_checkpoint_name(tiny_gemma2: Family, tmp_path: Path) -> None:
    [path] = run_stage("fisher", [ModelSource(tiny_gemma2.experts["math"], domain="math")], rows_by_domain(2),
                       {"num_samples": 1}, cache_dir=tmp_path, options=StatsOptions(max_length=128))
    fisher = load_statistics(path)
    assert "model.embed_tokens.weight" in fisher and "lm_head.weight" not in fisher
    assert set(fisher) == set(read_tensors(tiny_gemma2.experts["math"]))


def test_rows_without_responses_are_skipped(tiny_llama: Family, tmp_path: Path, caplog) -> None:
    rows = rows_by_domain(3)
    expert = ModelSource(tiny_llama.experts["math"], domain="math")
    with pytest.raises(StatisticsError, match="No row of domain 'math' has a response token"):
        run_stage("fisher", [expert], rows, {"num_samples": 3}, cache_dir=tmp_path, options=StatsOptions(max_length=8))
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
    experts = [ModelSource(tiny_llama.experts[d], domain=d) for d in ("multilingual", "safety")]
    params = {"mode": "trained", "sparsity": 0.1, "learning_rate": 0.0, "num_samples": 2}
    paths = run_stage("mask", experts, rows_by_domain(2), params, cache_dir=tmp_path,
                      base=ModelSource(tiny_llama.base), options=OPTIONS)
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
    weights = [read_tensors(e.path) for e in experts]
    taus = {n: torch.stack([w[n].float() for w in weights]) - base[n] for n in reader.names}
    thresholds = global_thresholds(list(taus.values()), 0.1)
    spec = get("localize_stitch")
    trained, dataless = spec.make_params(params), spec.make_params({"sparsity": 0.1})
    for name, tau in taus.items():
        a = spec.fn(base[name], tau.clone(), trained, MergeContext(name, (0, 1), data=reader.data_for(name)))
        b = spec.fn(base[name], tau.clone(), dataless, MergeContext(name, (0, 1), thresholds=thresholds))
        assert torch.equal(a, b), name


@pytest.fixture(scope="module")
def mask_setup(tiny_llama: Family):
    options = StatsOptions(batch_size=2, max_length=128)
    expert = ModelSource(tiny_llama.experts["math"], domain="math")
    tok = load_tokenizer(expert, options)
    samples = encode_rows(tok, validation_rows("math", 3), options)
    assert all(s.response_tokens > 0 for s in samples)
    base_model = load_model(ModelSource(tiny_llama.base), options)
    deltas = task_vectors(base_model, load_model(expert, options), lambda n: "embed" not in n and "lm_head" not in n)
    return tiny_llama, tok, samples, base_model, deltas


def chain_rule_gradient(family: Family, deltas, logits, samples) -> dict[str, torch.Tensor]:
    """∂L/∂S = (∂L/∂θ at θ₀ + σ(S)τ) ⊙ τ ⊙ σ(S)(1 − σ(S)), with ∂L/∂θ from a model holding those weights."""
    model = load(family.base)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in deltas:
                p.add_(torch.sigmoid(logits[name]) * deltas[name])
    for s in samples:
        loss = model(input_ids=torch.tensor([s.input_ids]), labels=torch.tensor([s.labels])).loss / len(samples)
        loss.backward()
    params = dict(model.named_parameters())
    return {n: params[n].grad * deltas[n] * torch.sigmoid(logits[n]) * (1 - torch.sigmoid(logits[n])) for n in deltas}


def test_mask_gradient_matches_the_chain_rule(mask_setup) -> None:
    family, tok, samples, base_model, deltas = mask_setup
    initial = dataless_masks(deltas, 0.1, "global")
    logits = {n: torch.where(m, 3.0, -3.0) for n, m in initial.items()}
    got = mask_gradient(base_model, deltas, logits, samples, pad_id=pad_token_id(tok), batch_size=2, device="cpu")
    expected = chain_rule_gradient(family, deltas, logits, samples)
    scale = max(float(g.abs().max()) for g in expected.values())
    assert scale > 0
    for name in deltas:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-4 * scale, msg=name)
    # the base model was only read
    base_file = read_tensors(family.base)
    assert torch.equal(dict(base_model.named_parameters())["model.layers.0.mlp.up_proj.weight"].detach(),
                       base_file["model.layers.0.mlp.up_proj.weight"].float())


def test_training_moves_the_masks_by_one_gradient_step(mask_setup) -> None:
    family, tok, samples, base_model, deltas = mask_setup
    config = MaskConfig(sparsity=0.1, sigmoid_bias=3.0, learning_rate=1e8, epochs=1)
    trained = train_masks(base_model, deltas, samples, config, pad_id=pad_token_id(tok), batch_size=2)
    initial = dataless_masks(deltas, 0.1, "global")
    logits = {n: torch.where(m, 3.0, -3.0) for n, m in initial.items()}
    grad = chain_rule_gradient(family, deltas, logits, samples)
    expected = {n: torch.sigmoid(logits[n] - 1e8 * grad[n]) >= 0.5 for n in deltas}
    total = sum(m.numel() for m in trained.values())
    flipped = sum(int((trained[n] != initial[n]).sum()) for n in trained)
    disagree = sum(int((trained[n] != expected[n]).sum()) for n in trained)
    assert flipped > 100                     # the step matters at this learning rate
    assert disagree <= 1e-4 * total          # only entries at the decision boundary may differ (float rounding)


# ----------------------------------------------------------------------------------------------------------
def test_cache_hits_and_keys(tiny_llama: Family, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = rows_by_domain(3)
    expert = ModelSource(tiny_llama.experts["math"], domain="math")
    [first] = run_stage("gram", [expert], rows, {"num_samples": 2}, cache_dir=tmp_path, options=OPTIONS)
    meta = read_metadata(first)
    assert meta["mergebench.stage"] == "gram" and meta["mergebench.domain"] == "math"

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached statistic")

    monkeypatch.setitem(runner_module.COMPUTE, "gram", fail)
    assert run_stage("gram", [expert], rows, {"num_samples": 2}, cache_dir=tmp_path, options=OPTIONS) == [first]
    # batch size and device are not part of the key
    assert run_stage("gram", [expert], rows, {"num_samples": 2}, cache_dir=tmp_path,
                     options=StatsOptions(batch_size=1, max_length=OPTIONS.max_length)) == [first]
    # rows, parameters, max_length and the model's revision are
    for change in [dict(params={"num_samples": 3}), dict(options=StatsOptions(max_length=40)),
                   dict(rows={**rows, "math": rows["math"][1:]}),
                   dict(experts=[ModelSource(expert.path, domain="math", revision="abc123")])]:
        with pytest.raises(AssertionError, match="recomputed"):
            run_stage("gram", change.get("experts", [expert]), change.get("rows", rows),
                      change.get("params", {"num_samples": 2}), cache_dir=tmp_path,
                      options=change.get("options", OPTIONS))


def test_reader_checks_its_files(tiny_llama: Family, tmp_path: Path) -> None:
    rows = rows_by_domain(2)
    experts = [ModelSource(tiny_llama.experts[d], domain=d) for d in ("math", "coding")]
    paths = run_stage("gram", experts, rows, {"num_samples": 1}, cache_dir=tmp_path, options=OPTIONS)
    reader = StatisticsReader("gram", paths)
    stacked = reader.get("model.layers.0.mlp.down_proj.weight")
    assert stacked.shape == (2, 128, 128)
    assert torch.equal(stacked[1], load_statistics(paths[1])["model.layers.0.mlp.down_proj.weight"])
    assert reader.data_for("model.layers.0.input_layernorm.weight") == {}
    assert set(reader.data_for("model.layers.0.mlp.up_proj.weight")) == {"gram"}
    with pytest.raises(StatisticsError, match="holds stage 'gram'"):
        StatisticsReader("fisher", paths)
    with pytest.raises(StatisticsError, match="does not exist"):
        StatisticsReader("gram", [tmp_path / "missing.safetensors"])


def test_regmean_merges_with_the_reader(tiny_llama: Family, tmp_path: Path) -> None:
    """The pieces fit: stage → reader → ctx.data → method."""
    from mergebench.methods import MergeContext, get

    domains = ("math", "coding")
    experts = [ModelSource(tiny_llama.experts[d], domain=d) for d in domains]
    reader = StatisticsReader("gram", run_stage("gram", experts, rows_by_domain(2), {"num_samples": 2},
                                                cache_dir=tmp_path, options=OPTIONS))
    name = "model.layers.3.mlp.gate_proj.weight"
    weights = torch.stack([read_tensors(tiny_llama.experts[d])[name].float() for d in domains])
    base = read_tensors(tiny_llama.base)[name].float()
    spec = get("regmean")
    out = spec.fn(base, weights.clone(), spec.make_params({}), MergeContext(name, (0, 1), data=reader.data_for(name)))
    assert out.shape == base.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, weights.mean(0))


@pytest.mark.parametrize("stage, params", [("fisher", {"num_samples": 2}),
                                           ("mask", {"mode": "trained", "sparsity": 0.1, "num_samples": 2})])
def test_gradient_stages_work_with_grad_mode_switched_off_globally(stage: str, params: dict, tiny_llama: Family,
                                                                   tmp_path: Path) -> None:
    """lighteval runs ``torch.set_grad_enabled(False)`` at import; statistics must not depend on grad mode."""
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        [path] = run_stage(stage, [ModelSource(tiny_llama.experts["math"], domain="math")], rows_by_domain(2),
                           params, cache_dir=tmp_path, base=ModelSource(tiny_llama.base),
                           options=StatsOptions(max_length=128))
    finally:
        torch.set_grad_enabled(previous)
    stats = load_statistics(path)
    assert stats and any(t.float().abs().sum() > 0 for t in stats.values())
