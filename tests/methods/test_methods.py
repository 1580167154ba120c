"""Every merge method against a plain reference written here, hand-computed golden cases, and properties.

The references loop over experts and use only torch primitives: no helper is shared with
``mergebench.methods`` (the top-k thresholds are found by sorting, the DARE masks are re-derived from the
documented hash recipe).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from mergebench.methods import REGISTRY, MergeContext, get
from mergebench.methods.common import weighted_mean, weighted_sum

# ----------------------------------------------------------------------------------------------------------
# A small random "model": three tensors, a base and three experts.
# ----------------------------------------------------------------------------------------------------------
SHAPES = {"layers.0.mlp.up_proj.weight": (6, 5), "layers.0.norm.weight": (7,), "layers.1.attn.q_proj.weight": (4, 3)}
N_EXPERTS = 3


def make_model(dtype: torch.dtype, seed: int = 0) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """fp32 values as the engine sees them after reading ``dtype`` checkpoints (bf16: rounded)."""
    g = torch.Generator().manual_seed(seed)
    base = {name: torch.randn(shape, generator=g) for name, shape in SHAPES.items()}
    experts = []
    for _ in range(N_EXPERTS):
        experts.append({name: b + 0.1 * torch.randn(b.shape, generator=g) * torch.rand(b.shape, generator=g)
                        for name, b in base.items()})
    # exact structure bf16 makes common: cancelling deltas (zero sums) and equal magnitudes (ties)
    for name, b in base.items():
        flat_b, e0, e1 = b.view(-1), experts[0][name].view(-1), experts[1][name].view(-1)
        e1[:2] = flat_b[:2] - (e0[:2] - flat_b[:2])
        experts[2][name].view(-1)[2] = e0[2]
    rounded = lambda t: t.to(dtype).float()  # noqa: E731
    return ({k: rounded(v) for k, v in base.items()}, [{k: rounded(v) for k, v in e.items()} for e in experts])


def sorted_threshold(values: list[Tensor], fraction: float) -> float:
    """⌈k·N⌉-th largest |v| over all tensors, by sorting."""
    flat = torch.cat([v.reshape(-1) for v in values]).abs().sort(descending=True).values
    k = math.ceil(round(fraction * flat.numel(), 9))
    return float(flat[k - 1])


# ----------------------------------------------------------------------------------------------------------
# Reference implementations (one expert at a time, plain formulas from docs/methods.md).
# ----------------------------------------------------------------------------------------------------------
def ref_task_arithmetic(base, taus, p, weights, **_):
    total = torch.zeros_like(base)
    for tau, w in zip(taus, weights, strict=True):
        total = total + w * tau
    return base + p["scaling"] * total


def ref_model_soup(base, taus, p, weights, **_):
    total = torch.zeros_like(base)
    for tau, w in zip(taus, weights, strict=True):
        total = total + (w / sum(weights)) * tau
    return base + p["scaling"] * total


def ref_ties(base, taus, p, weights, thresholds, **_):
    trimmed = []
    for tau, t, w in zip(taus, thresholds, weights, strict=True):
        trimmed.append(torch.where(tau.abs() >= t, tau, torch.zeros_like(tau)) * w)
    total = torch.zeros_like(base)
    for tr in trimmed:
        total = total + tr
    gamma = torch.sign(total)
    merged = torch.zeros_like(base)
    count = torch.zeros_like(base)
    for tr in trimmed:
        agrees = (tr != 0) & (torch.sign(tr) == gamma) & (gamma != 0)
        merged = merged + torch.where(agrees, tr, torch.zeros_like(tr))
        count = count + agrees.float()
    if p["aggregate"] == "mean":
        merged = merged / torch.clamp(count, min=1)
    return base + p["scaling"] * merged


def splitmix64(key: int, index: int) -> int:
    """Draw number ``index`` of SplitMix64 seeded with ``key`` (Steele, Lea and Flood, 2014), in Python integers."""
    z = (key + (index + 1) * 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def ref_dare_mask(seed: int, expert: int, name: str, shape, drop: float) -> Tensor:
    key = int.from_bytes(hashlib.sha256(f"mergebench/dare/v2|{seed}|{expert}|{name}".encode()).digest()[:8], "little")
    kept = [(splitmix64(key, j) >> 11) / 2**53 >= drop for j in range(math.prod(shape))]
    return torch.tensor(kept, dtype=torch.float32).view(shape)


def ref_dare(base, taus, p, weights, name, seed, **_):
    total = torch.zeros_like(base)
    for i, (tau, w) in enumerate(zip(taus, weights, strict=True)):
        total = total + w * ref_dare_mask(seed, i, name, tau.shape, p["drop_rate"]) * tau / (1 - p["drop_rate"])
    return base + p["scaling"] * total


def ref_consensus(base, taus, p, weights, **_):
    scaled = [w * tau for tau, w in zip(taus, weights, strict=True)]
    mtl = torch.zeros_like(base)
    for tau in scaled:
        mtl = mtl + tau
    votes = torch.zeros_like(base)
    for tau in scaled:
        votes = votes + (tau.abs() > p["tall_lambda"] * (mtl - tau).abs()).float()
    return base + p["scaling"] * mtl * (votes >= p["k"]).float()


def ref_localize_stitch(base, taus, p, weights, thresholds=None, masks=None, **_):
    if masks is None:
        masks = [(tau.abs() >= t).float() for tau, t in zip(taus, thresholds, strict=True)]
    count = torch.zeros_like(base)
    for m in masks:
        count = count + m.float()
    total = torch.zeros_like(base)
    for tau, m, w in zip(taus, masks, weights, strict=True):
        total = total + m.float() / torch.clamp(count, min=1) * w * tau
    return base + p["scaling"] * total


def ref_regmean(base, experts, p, weights, grams=None, **_):
    if grams is None:
        merged = sum(w * e for e, w in zip(experts, weights, strict=True)) / sum(weights)
    else:
        a = torch.zeros(grams[0].shape, dtype=torch.float64)
        b = torch.zeros(experts[0].shape[1], experts[0].shape[0], dtype=torch.float64)
        for e, g, w in zip(experts, grams, weights, strict=True):
            g = g.double()
            g_tilde = p["alpha"] * g + (1 - p["alpha"]) * torch.diag(torch.diagonal(g))
            a += w * g_tilde
            b += w * g_tilde @ e.double().T
        merged = torch.linalg.solve(a, b).T.float()
    return base + p["scaling"] * (merged - base)


def ref_fisher(base, experts, p, weights, fishers=None, **_):
    if fishers is None:
        merged = sum(w * e for e, w in zip(experts, weights, strict=True)) / sum(weights)
    else:
        num = torch.zeros_like(base)
        den = torch.zeros_like(base)
        for e, f, w in zip(experts, fishers, weights, strict=True):
            num = num + w * f * e
            den = den + w * (f + 1e-10)
        merged = num / den
    return base + p["scaling"] * (merged - base)


REFERENCES: dict[str, tuple[Callable, dict]] = {
    "model_soup": (ref_model_soup, {"scaling": 0.9}),
    "task_arithmetic": (ref_task_arithmetic, {"scaling": 0.6}),
    "ties": (ref_ties, {"top_k": 0.3, "scaling": 0.8, "aggregate": "sum"}),
    "ties_mean": (ref_ties, {"top_k": 0.2, "scaling": 1.0, "aggregate": "mean"}),
    "ties_tensor": (ref_ties, {"top_k": 0.3, "scaling": 0.8, "aggregate": "sum", "topk_scope": "tensor"}),
    "dare": (ref_dare, {"drop_rate": 0.7, "scaling": 0.8, "seed": 5}),
    "consensus": (ref_consensus, {"k": 2, "tall_lambda": 0.4, "scaling": 0.9}),
    "localize_stitch": (ref_localize_stitch, {"sparsity": 0.2, "scaling": 1.0}),
    "localize_stitch_tensor": (ref_localize_stitch, {"sparsity": 0.2, "scaling": 1.0, "topk_scope": "tensor"}),
    "localize_stitch_trained": (ref_localize_stitch, {"mode": "trained", "sparsity": 0.2, "scaling": 0.7}),
    "regmean": (ref_regmean, {"alpha": 0.3, "scaling": 1.0}),
    "regmean_scaled": (ref_regmean, {"alpha": 0.9, "scaling": 0.5}),
    "fisher": (ref_fisher, {"scaling": 1.0}),
}


def method_of(case: str) -> str:
    return next(name for name in REGISTRY.names() if case == name or case.startswith(name + "_")) \
        if case not in REGISTRY.names() else case


def random_gram(dim: int, g: torch.Generator) -> Tensor:
    x = torch.randn(9, dim, generator=g)
    return x.T @ x / 9


def run_case(case: str, dtype: torch.dtype, weights: tuple[float, ...] | None, seed: int = 0) -> None:
    ref, values = REFERENCES[case]
    spec = get(method_of(case))
    params = spec.make_params(values)
    p = {**spec.defaults(), **values}
    base, experts = make_model(dtype, seed)
    taus = {name: [e[name] - base[name] for e in experts] for name in base}
    w = weights or (1.0,) * N_EXPERTS
    g = torch.Generator().manual_seed(99)
    stats = {name: {"gram": torch.stack([random_gram(s[-1], g) for _ in experts]),
                    "fisher": torch.rand((N_EXPERTS, *s), generator=g) ** 2,
                    "mask": torch.rand((N_EXPERTS, *s), generator=g) < 0.3} for name, s in SHAPES.items()}
    fraction = params.global_topk()
    global_t = None
    if fraction is not None:
        global_t = torch.tensor([sorted_threshold([taus[n][i] for n in base], fraction) for i in range(N_EXPERTS)])
    for name in base:
        if "topk_scope" in values:
            ref_t = [sorted_threshold([tau], p.get("top_k", p.get("sparsity"))) for tau in taus[name]]
        else:
            ref_t = None if global_t is None else global_t.tolist()
        data = {}
        extra = {"thresholds": ref_t, "name": name, "seed": p.get("seed", 0)}
        if spec.data_stats == "gram" and len(SHAPES[name]) == 2:
            data = {"gram": stats[name]["gram"]}
            extra["grams"] = list(stats[name]["gram"])
        elif spec.data_stats == "fisher":
            data = {"fisher": stats[name]["fisher"]}
            extra["fishers"] = list(stats[name]["fisher"])
        elif p.get("mode") == "trained":
            data = {"mask": stats[name]["mask"]}
            extra["masks"] = list(stats[name]["mask"])
        inputs = [e[name] for e in experts] if spec.inputs == "weights" else taus[name]
        expected = ref(base[name], inputs, p, w, **extra)
        ctx = MergeContext(name=name, expert_ids=tuple(range(N_EXPERTS)), weights=weights, seed=0,
                           thresholds=global_t, data=data)
        base_copy = base[name].clone()
        got = spec.fn(base_copy, torch.stack(inputs).clone(), params, ctx)
        assert got.dtype == torch.float32
        tol = {"rtol": 2e-4, "atol": 2e-5} if spec.name == "regmean" else {"rtol": 1e-5, "atol": 1e-6}
        torch.testing.assert_close(got, expected, **tol, msg=lambda m, n=name: f"{case} {dtype} {n}: {m}")
        if spec.name not in ("task_arithmetic", "model_soup"):  # those two update their fp32 base in place
            assert torch.equal(base_copy, base[name]), f"{case} modified the base tensor"


@pytest.mark.parametrize("case", sorted(REFERENCES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(case: str, dtype: torch.dtype) -> None:
    run_case(case, dtype, weights=None)


@pytest.mark.parametrize("case", sorted(REFERENCES))
def test_matches_reference_with_weights(case: str) -> None:
    run_case(case, torch.bfloat16, weights=(0.5, 1.5, -0.25) if case != "model_soup" else (0.2, 0.3, 0.5), seed=1)


def test_every_method_has_a_reference() -> None:
    assert set(REGISTRY.names()) <= {method_of(c) for c in REFERENCES}


def test_bfloat16_tensors_are_computed_in_float32() -> None:
    """Methods given bf16 tensors upcast them; the result equals passing the same values as fp32."""
    base, experts = make_model(torch.bfloat16)
    name = "layers.0.mlp.up_proj.weight"
    taus = torch.stack([e[name] - base[name] for e in experts])
    for method in ("ties", "dare", "consensus"):
        spec = get(method)
        params = spec.make_params({"topk_scope": "tensor"} if method == "ties" else {})
        ctx = MergeContext(name=name, expert_ids=(0, 1, 2))
        got_bf16 = spec.fn(base[name].bfloat16(), taus.bfloat16(), params, ctx)
        got_f32 = spec.fn(base[name].bfloat16().float(), taus.bfloat16().float(), params, ctx)
        assert got_bf16.dtype == torch.float32
        assert torch.equal(got_bf16, got_f32), method


# ----------------------------------------------------------------------------------------------------------
# Golden cases: tiny tensors, every number worked out by hand in the comment.
# base θ₀ = [1, 2, 3, 4]; τ₁ = [0.5, -1, 0, 2]; τ₂ = [-0.5, 0.5, 1, 1]  (unless a case says otherwise)
# ----------------------------------------------------------------------------------------------------------
BASE = torch.tensor([1.0, 2.0, 3.0, 4.0])
TAU1 = torch.tensor([0.5, -1.0, 0.0, 2.0])
TAU2 = torch.tensor([-0.5, 0.5, 1.0, 1.0])


def golden_model_soup():
    # Σ τ / 2 = [0, -0.25, 0.5, 1.5] → θ = [1, 1.75, 3.5, 5.5]
    return "model_soup", {}, torch.stack([TAU1, TAU2]), {}, [1.0, 1.75, 3.5, 5.5]


def golden_task_arithmetic():
    # λ = 0.5: 0.5·[0, -0.5, 1, 3] = [0, -0.25, 0.5, 1.5] → [1, 1.75, 3.5, 5.5]
    return "task_arithmetic", {"scaling": 0.5}, torch.stack([TAU1, TAU2]), {}, [1.0, 1.75, 3.5, 5.5]


def golden_ties():
    # k = 0.75, N = 4 → K = 3. |τ₁| = [.5, 1, 0, 2] → t₁ = 0.5: τ̂₁ = [.5, -1, 0, 2].
    # |τ₂| = [.5, .5, 1, 1] → t₂ = 0.5: all 4 kept (tie at 0.5 kept): τ̂₂ = τ₂.
    # Σ = [0, -0.5, 1, 3] → γ = [0, -1, 1, 1]. a₁ = [0, 1, 0, 1] (γ=0 at 0; τ̂₁=0 at 2), a₂ = [0, 0, 1, 1].
    # sum: Δ = [0, -1, 1, 3]; λ = 0.5 → θ = [1, 1.5, 3.5, 5.5]   (entry 0: zero sum keeps the base)
    ctx = {"thresholds": torch.tensor([0.5, 0.5])}
    return "ties", {"top_k": 0.75, "scaling": 0.5}, torch.stack([TAU1, TAU2]), ctx, [1.0, 1.5, 3.5, 5.5]


def golden_ties_mean():
    # as golden_ties; agreeing counts [0, 1, 1, 2] → Δ = [0, -1, 1, 1.5]; λ = 1 → [1, 1, 4, 5.5]
    ctx = {"thresholds": torch.tensor([0.5, 0.5])}
    return "ties", {"top_k": 0.75, "aggregate": "mean"}, torch.stack([TAU1, TAU2]), ctx, [1.0, 1.0, 4.0, 5.5]


def golden_dare():
    # base = 1 (8 entries); τ₀ = 1, τ₁ = 2; p = 0.5 → τ̂₀ = 2·m₀, τ̂₁ = 4·m₁ with the masks of seed 0,
    # tensor "w" (SplitMix64 draws 0–7 of each expert's stream, by hand from splitmix64 above):
    # m₀ = [1,0,1,0,0,0,1,0], m₁ = [1,1,0,1,0,0,1,1]; θ = 1 + 2m₀ + 4m₁ = [7, 5, 3, 5, 1, 1, 7, 5]
    stack = torch.stack([torch.ones(8), torch.full((8,), 2.0)])
    return "dare", {"drop_rate": 0.5}, stack, {"name": "w", "base": torch.ones(8)}, [7, 5, 3, 5, 1, 1, 7, 5]


def golden_consensus():
    # base = [1, 2, 3, 4, 5]; tall_lambda = 0.5, k = 2
    # τ₁ = [1, 0, 2, -1, 1], τ₂ = [1, .1, -2, 0, 2], τ₃ = [0, 0, .5, 1, 0] → τ_MTL = [2, .1, .5, 0, 3]
    # m₁: 1>.5 ✓, 0>.05 ✗, 2>.75 ✓, 1>.5 ✓, 1>1 ✗ (strict: equality is not enough)
    # m₂: 1>.5 ✓, .1>0 ✓, 2>1.25 ✓, 0>0 ✗, 2>.5 ✓
    # m₃: 0>1 ✗, 0>.05 ✗, .5>0 ✓, 1>.5 ✓, 0>1.5 ✗
    # votes = [2, 1, 3, 2, 1] → c = [1, 0, 1, 1, 0] → θ = base + [2, 0, .5, 0, 0] = [3, 2, 3.5, 4, 5]
    stack = torch.tensor([[1, 0, 2, -1, 1], [1, 0.1, -2, 0, 2], [0, 0, 0.5, 1, 0]])
    return "consensus", {"tall_lambda": 0.5}, stack, {"base": torch.tensor([1.0, 2, 3, 4, 5])}, [3, 2, 3.5, 4, 5]


def golden_localize_stitch():
    # s = 0.5, N = 4 → K = 2: t₁ = 1 → M₁ = [0, 1, 0, 1]; t₂ = 1 → M₂ = [0, 0, 1, 1] (ties at 1 kept)
    # cnt = [0, 1, 1, 2] → Δ = [0, -1, 1, (2 + 1)/2] → θ = [1, 1, 4, 5.5]
    ctx = {"thresholds": torch.tensor([1.0, 1.0])}
    return "localize_stitch", {"sparsity": 0.5}, torch.stack([TAU1, TAU2]), ctx, [1.0, 1.0, 4.0, 5.5]


def golden_localize_stitch_trained():
    # given masks M₁ = [1, 0, 0, 0], M₂ = [1, 1, 0, 0] → cnt = [2, 1, 0, 0]
    # Δ = [(0.5 - 0.5)/2, 0.5, 0, 0] → θ = [1, 2.5, 3, 4]
    masks = torch.tensor([[True, False, False, False], [True, True, False, False]])
    return ("localize_stitch", {"mode": "trained"}, torch.stack([TAU1, TAU2]), {"data": {"mask": masks}},
            [1.0, 2.5, 3.0, 4.0])


def golden_regmean():
    # W₁ = [[1, 0]], W₂ = [[0, 1]]; G₁ = [[2, 1], [1, 1]], G₂ = [[1, 0], [0, 3]]; α = 0.5
    # G̃₁ = [[2, .5], [.5, 1]], G̃₂ = G₂;  A = G̃₁ + G̃₂ = [[3, .5], [.5, 4]], det = 11.75
    # B = G̃₁W₁ᵀ + G̃₂W₂ᵀ = [2, .5] + [0, 3] = [2, 3.5]
    # Wᵀ = A⁻¹B = [[4, -.5], [-.5, 3]]·[2, 3.5] / 11.75 = [6.25, 9.5] / 11.75 = [25/47, 38/47]
    stack = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    grams = torch.tensor([[[2.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 3.0]]])
    return ("regmean", {}, stack, {"data": {"gram": grams}, "base": torch.zeros(1, 2)}, [[25 / 47, 38 / 47]])


def golden_regmean_no_gram():
    # a norm weight has no Gram: mean of experts ([1, 3] + [3, 5]) / 2 = [2, 4]
    return "regmean", {}, torch.tensor([[1.0, 3.0], [3.0, 5.0]]), {"base": torch.zeros(2)}, [2.0, 4.0]


def golden_fisher():
    # θ₁ = [1, 2], θ₂ = [3, 4]; F₁ = [1, 0], F₂ = [3, 0]
    # entry 0: (1·1 + 3·3) / (1 + 3 + 2e-10) = 2.5;  entry 1: 0 / 2e-10 = 0 (no Fisher anywhere → 0)
    fishers = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    return ("fisher", {}, torch.tensor([[1.0, 2.0], [3.0, 4.0]]), {"data": {"fisher": fishers}, "base": torch.zeros(2)},
            [2.5, 0.0])


GOLDEN = [golden_model_soup, golden_task_arithmetic, golden_ties, golden_ties_mean, golden_dare, golden_consensus,
          golden_localize_stitch, golden_localize_stitch_trained, golden_regmean, golden_regmean_no_gram, golden_fisher]


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda f: f.__name__)
def test_golden(golden: Callable) -> None:
    method, values, stack, ctx_values, expected = golden()
    spec = get(method)
    base = ctx_values.pop("base", BASE).clone()
    ctx = MergeContext(name=ctx_values.pop("name", "t"), expert_ids=tuple(range(stack.shape[0])), **ctx_values)
    got = spec.fn(base, stack.clone(), spec.make_params(values), ctx)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=1e-7)


def test_every_registered_method_has_a_golden_case() -> None:
    covered = {golden()[0] for golden in GOLDEN}
    missing = set(REGISTRY.names()) - covered
    assert not missing, f"methods without a hand-computed golden case: {sorted(missing)}"


def test_golden_thresholds_are_the_exact_topk() -> None:
    from mergebench.methods.topk import global_thresholds

    assert global_thresholds([torch.stack([TAU1, TAU2])], 0.75).tolist() == [0.5, 0.5]
    assert global_thresholds([torch.stack([TAU1, TAU2])], 0.5).tolist() == [1.0, 1.0]


# ----------------------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------------------
def _ctx(n: int, **kw) -> MergeContext:
    return MergeContext(name=kw.pop("name", "t"), expert_ids=kw.pop("expert_ids", tuple(range(n))), **kw)


def test_ties_k1_single_expert_is_task_arithmetic() -> None:
    g = torch.Generator().manual_seed(4)
    base, tau = torch.randn(50, generator=g), torch.randn(1, 50, generator=g)
    tau[0, :5] = 0.0
    ties = get("ties").fn(base.clone(), tau.clone(), get("ties").make_params({"top_k": 1.0, "topk_scope": "tensor"}),
                          _ctx(1))
    ta = get("task_arithmetic").fn(base.clone(), tau.clone(), get("task_arithmetic").make_params({}), _ctx(1))
    assert torch.equal(ties, ta)


def test_ties_zero_sum_entries_keep_the_base_even_with_bf16_ties() -> None:
    base = torch.tensor([1.0, 2.0, 3.0]).bfloat16().float()
    v = torch.tensor(0.1).bfloat16().float()
    deltas = torch.stack([torch.stack([v, v, -v]), torch.stack([-v, -v, v]), torch.stack([v, -v, 0 * v])])
    # sums: [v, -v, 0] → entry 2 sums exactly to 0: base kept (peft/mergekit would elect + and add v)
    for aggregate in ("sum", "mean"):
        p = get("ties").make_params({"top_k": 1.0, "aggregate": aggregate, "topk_scope": "tensor"})
        out = get("ties").fn(base.clone(), deltas.clone(), p, _ctx(3))
        assert out[2] == base[2]
        assert out[0] == base[0] + (2 * v if aggregate == "sum" else v)


def test_consensus_edge_cases() -> None:
    spec = get("consensus")
    base = torch.zeros(4)
    deltas = torch.tensor([[1.0, 0.0, 0.0, 2.0], [1.0, 0.0, 3.0, -2.0]])
    # k larger than the number of experts keeps nothing
    assert torch.equal(spec.fn(base.clone(), deltas.clone(), spec.make_params({"k": 3}), _ctx(2)), base)
    # tall_lambda = 0, k = 1: every entry some task changed is kept; all-zero entries stay 0 (strict >)
    out = spec.fn(base.clone(), deltas.clone(), spec.make_params({"k": 1, "tall_lambda": 0.0}), _ctx(2))
    assert torch.equal(out, deltas.sum(0))
    # entry 3 cancels (τ_MTL = 0): |±2| > 0.2·2 for both → kept, and contributes 0
    out = spec.fn(base.clone(), deltas.clone(), spec.make_params({}), _ctx(2))
    assert out.tolist() == [2.0, 0.0, 0.0, 0.0]   # entry 2: only task 2 claims it (selfish) → dropped


def test_localize_stitch_counts_overlap_over_all_tasks() -> None:
    spec = get("localize_stitch")
    deltas = torch.tensor([[3.0], [6.0], [9.0]])
    ctx = _ctx(3, thresholds=torch.tensor([1.0, 1.0, 1.0]))
    # all three masks contain the entry: (3 + 6 + 9)/3 = 6 (the reference divided by 2 = overlap with the last)
    assert spec.fn(torch.zeros(1), deltas, spec.make_params({}), ctx).item() == 6.0


def test_localize_stitch_trained_without_masks_is_an_error() -> None:
    from mergebench.errors import StatisticsError

    spec = get("localize_stitch")
    with pytest.raises(StatisticsError, match="mask"):
        spec.fn(torch.zeros(2), torch.ones(2, 2), spec.make_params({"mode": "trained"}), _ctx(2))


def test_global_scope_without_thresholds_is_an_error() -> None:
    from mergebench.errors import StatisticsError

    with pytest.raises(StatisticsError, match="thresholds"):
        get("ties").fn(torch.zeros(2), torch.ones(2, 2), get("ties").make_params({}), _ctx(2))


def test_regmean_identical_grams_give_the_mean_of_experts() -> None:
    g = torch.Generator().manual_seed(5)
    experts = torch.randn(3, 4, 6, generator=g)
    x = torch.randn(20, 6, generator=g)
    gram = x.T @ x / 20
    spec = get("regmean")
    out = spec.fn(torch.zeros(4, 6), experts.clone(), spec.make_params({"alpha": 0.7}),
                  _ctx(3, data={"gram": gram.expand(3, 6, 6)}))
    torch.testing.assert_close(out, experts.mean(0), rtol=1e-5, atol=1e-6)
    weighted = spec.fn(torch.zeros(4, 6), experts.clone(), spec.make_params({"alpha": 0.7}),
                       _ctx(3, weights=(1.0, 2.0, 1.0), data={"gram": gram.expand(3, 6, 6)}))
    torch.testing.assert_close(weighted, (experts[0] + 2 * experts[1] + experts[2]) / 4, rtol=1e-5, atol=1e-6)


def test_regmean_never_active_input_keeps_the_mean_and_solves_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    g = torch.Generator().manual_seed(6)
    experts = torch.randn(2, 3, 4, generator=g)
    x = torch.randn(10, 4, generator=g)
    x[:, 3] = 0.0                                     # input feature 3 never active: row/column 3 of G is 0
    grams = torch.stack([x.T @ x / 10, (2 * x).T @ (2 * x) / 10])
    spec = get("regmean")
    with caplog.at_level(logging.WARNING, logger="mergebench.methods.regmean"):
        out = spec.fn(torch.zeros(3, 4), experts.clone(), spec.make_params({"alpha": 0.5}),
                      _ctx(2, name="w", data={"gram": grams}))
    assert caplog.text == ""                          # not ill-conditioned: the data says nothing about feature 3
    # never-seen input: the experts' mean; seen inputs: the RegMean solution restricted to features 0..2
    torch.testing.assert_close(out[:, 3], experts[:, :, 3].mean(0))
    sub = ref_regmean(torch.zeros(3, 3), list(experts[:, :, :3]), {"alpha": 0.5, "scaling": 1.0}, (1.0, 1.0),
                      grams=list(grams[:, :3, :3]))
    torch.testing.assert_close(out[:, :3], sub, rtol=1e-4, atol=1e-5)


def test_regmean_solves_a_gram_with_a_massive_activation_exactly(caplog: pytest.LogCaptureFixture) -> None:
    """One input feature 10⁴× larger than the rest (SmolLM2's layer-11 down-projection: diag(A) from 0.03 to
    1.6·10⁶) made unscaled LU pivots look singular, and the pseudo-inverse fallback truncated most of the
    solution; the equilibrated system is well conditioned and solved exactly."""
    g = torch.Generator().manual_seed(7)
    experts = torch.randn(3, 5, 64, generator=g)
    feature_scale = torch.full((64,), 0.03)
    feature_scale[5] = 1000.0
    xs = [torch.randn(40, 64, generator=g) * feature_scale for _ in range(3)]
    grams = torch.stack([x.T @ x / 40 for x in xs])
    a = 0.5 * grams.sum(0) + 0.5 * torch.diag(grams.sum(0).diagonal())
    pivots = torch.linalg.lu_factor(a)[0].diagonal().abs()
    assert pivots.min() / pivots.max() < 1e-6         # what the unscaled LU check rejected
    spec = get("regmean")
    with caplog.at_level(logging.WARNING, logger="mergebench.methods.regmean"):
        out = spec.fn(torch.zeros(5, 64), experts.clone(), spec.make_params({"alpha": 0.5}),
                      _ctx(3, name="w", data={"gram": grams}))
    assert caplog.text == ""
    reference = ref_regmean(torch.zeros(5, 64), list(experts), {"alpha": 0.5, "scaling": 1.0}, (1.0, 1.0, 1.0),
                            grams=list(grams))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_regmean_rank_deficient_gram_falls_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """α = 1 with fewer tokens than features: A is singular even equilibrated; the least-squares solution
    closest to the experts' mean is used (it reproduces every expert's outputs on the tokens seen)."""
    g = torch.Generator().manual_seed(8)
    experts = torch.randn(2, 3, 8, generator=g)
    x = torch.randn(3, 8, generator=g)                # 3 tokens, 8 features: rank 3
    grams = (x.T @ x / 3).expand(2, 8, 8)
    spec = get("regmean")
    with caplog.at_level(logging.WARNING, logger="mergebench.methods.regmean"):
        out = spec.fn(torch.zeros(3, 8), experts.clone(), spec.make_params({"alpha": 1.0}),
                      _ctx(2, name="w", data={"gram": grams}))
    assert "singular or ill-conditioned" in caplog.text and "'w'" in caplog.text
    mean = experts.mean(0)
    torch.testing.assert_close(x @ out.T, x @ mean.T, rtol=1e-4, atol=1e-4)   # same outputs on the data
    null = torch.linalg.svd(x)[2][3:]                 # directions the data never excites: the mean is kept
    torch.testing.assert_close(out @ null.T, mean @ null.T, rtol=1e-4, atol=1e-4)


def test_regmean_rejects_mismatched_grams() -> None:
    from mergebench.errors import StatisticsError

    spec = get("regmean")
    with pytest.raises(StatisticsError, match="Gram"):
        spec.fn(torch.zeros(3, 4), torch.ones(2, 3, 4), spec.make_params({}),
                _ctx(2, data={"gram": torch.ones(2, 3, 3)}))


def test_dare_drop_zero_is_task_arithmetic() -> None:
    g = torch.Generator().manual_seed(7)
    base, deltas = torch.randn(30, generator=g), torch.randn(3, 30, generator=g)
    for weights in (None, (0.5, 1.0, 2.0)):
        dare_params = get("dare").make_params({"drop_rate": 0.0, "scaling": 0.7})
        ta_params = get("task_arithmetic").make_params({"scaling": 0.7})
        dare = get("dare").fn(base.clone(), deltas.clone(), dare_params, _ctx(3, weights=weights))
        ta = get("task_arithmetic").fn(base.clone(), deltas.clone(), ta_params, _ctx(3, weights=weights))
        assert torch.equal(dare, ta)


def _dare(deltas: Tensor, *, seed: int | None = None, ctx_seed: int = 0, ids=None, name="t", p=0.8) -> Tensor:
    spec = get("dare")
    values = {"drop_rate": p} if seed is None else {"drop_rate": p, "seed": seed}
    return spec.fn(torch.zeros(deltas.shape[1:]), deltas.clone(), spec.make_params(values),
                   _ctx(deltas.shape[0], seed=ctx_seed, name=name, expert_ids=ids or tuple(range(deltas.shape[0]))))


def test_dare_seeds() -> None:
    deltas = torch.ones(2, 1000)
    assert torch.equal(_dare(deltas, seed=3), _dare(deltas, seed=3))
    assert not torch.equal(_dare(deltas, seed=3), _dare(deltas, seed=4))
    assert not torch.equal(_dare(deltas, name="a"), _dare(deltas, name="b"))
    # the recipe seed (ctx.seed) is used unless the parameter is given
    assert torch.equal(_dare(deltas, ctx_seed=3), _dare(deltas, seed=3))


def test_dare_mask_depends_only_on_expert_id() -> None:
    g = torch.Generator().manual_seed(8)
    deltas = torch.randn(3, 200, generator=g)
    together = _dare(deltas, ids=(0, 1, 2))
    alone = sum(_dare(deltas[i:i + 1], ids=(i,)) for i in range(3))
    torch.testing.assert_close(together, alone)
    # presenting the experts in another order, with their ids, gives the same merge
    torch.testing.assert_close(_dare(deltas[[2, 0, 1]], ids=(2, 0, 1)), together)
    # the id, not the position, decides the mask
    assert not torch.allclose(_dare(deltas[[2, 0, 1]], ids=(0, 1, 2)), together)


def test_dare_survival_rate_and_rescale() -> None:
    out = _dare(torch.ones(1, 200_000), p=0.8)
    values = set(out.unique().tolist())
    assert values <= {0.0, 5.0}                                # kept entries rescaled by 1/(1 − 0.8)
    assert abs((out != 0).float().mean().item() - 0.2) < 0.005  # ≈ 1 − p survive (σ ≈ 0.0009)
    assert abs(out.mean().item() - 1.0) < 0.03                  # unbiased in expectation


@pytest.mark.parametrize("weights", [(0.5, 1.0, 2.0, 1.0, 0.7, 1.3), None])
@pytest.mark.parametrize(("name", "parameters"), [
    ("task_arithmetic", {"scaling": 0.6}), ("model_soup", {}), ("ties", {"topk_scope": "global"}),
    ("consensus", {"k": 2, "tall_lambda": 0.4}), ("localize_stitch", {"sparsity": 0.3}), ("dare", {"drop_rate": 0.6})])
def test_elementwise_methods_give_the_same_bits_in_chunks_of_any_width(
        name: str, parameters: dict, weights: tuple[float, ...] | None) -> None:
    """What lets the engine merge these methods chunk by chunk: six experts (torch.sum adds the tail of a row of
    five or more in another order, so every sum is in expert order), chunks of odd widths with their offsets, the
    bits of the whole tensor; DARE's masks are drawn from the positions (``ctx.offset``), not from a chunk's
    shape."""
    spec = get(name)
    assert spec.elementwise
    params = spec.make_params(parameters)
    g = torch.Generator().manual_seed(7)
    base = torch.randn(3001, generator=g)
    deltas = torch.randn(6, 3001, generator=g) * torch.logspace(-3, 1, 3001)
    thresholds = deltas.abs().quantile(0.7, dim=1) if params.global_topk() is not None else None
    ctx = MergeContext(name="w", expert_ids=tuple(range(6)), weights=weights, thresholds=thresholds)
    whole = spec.fn(base.clone(), deltas.clone(), params, ctx)
    for width in (1, 7, 64, 777):
        parts = [spec.fn(base[s:s + width].clone(), deltas[:, s:s + width].clone(), params,
                         dataclasses.replace(ctx, offset=s)) for s in range(0, 3001, width)]
        assert torch.equal(torch.cat(parts).view(torch.int32), whole.view(torch.int32)), width


def test_weighted_sums_round_each_product_then_add_in_expert_order() -> None:
    """The float32 operations of ``(w ⊙ stack).sum(0)`` done one expert at a time: an independent reading in
    float64 arithmetic rounded to float32 at each step gives the same bits, signed zeros included."""
    g = torch.Generator().manual_seed(3)
    stack = torch.randn(5, 4099, generator=g) * torch.logspace(-4, 4, 4099)
    stack[:, :3] = -0.0
    weights = (0.3, -1.7, 2.0, 0.1, 1.1)
    expected = torch.zeros(4099, dtype=torch.float32)
    for w, row in zip(weights, stack, strict=True):
        product = (row.double() * torch.tensor(w, dtype=torch.float32).double()).float()
        expected = (expected.double() + product.double()).float()
    assert torch.equal(weighted_sum(stack, weights).view(torch.int32), expected.view(torch.int32))
    plain = torch.zeros(4099, dtype=torch.float32)
    for row in stack:
        plain = (plain.double() + row.double()).float()
    assert torch.equal(weighted_sum(stack, None).view(torch.int32), plain.view(torch.int32))
    assert torch.equal(weighted_mean(stack, None), plain / 5)
    assert weighted_sum(stack, None)[:3].signbit().logical_not().all()  # −0 + … + −0 from +0 is +0


def test_methods_may_reuse_the_stack_but_never_the_base() -> None:
    """Localize-and-Stitch's reference mutated the shared base; ours (and every new method) returns a new tensor."""
    base = torch.ones(4)
    for method in ("ties", "dare", "consensus", "localize_stitch", "regmean", "fisher"):
        spec = get(method)
        b = base.clone()
        values = {"topk_scope": "tensor"} if method in ("ties", "localize_stitch") else {}
        spec.fn(b, torch.ones(2, 4) * 2, spec.make_params(values), _ctx(2))
        assert torch.equal(b, base), method
