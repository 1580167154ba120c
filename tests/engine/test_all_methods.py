"""Every registered method through the streaming engine, on both tiny families, checked against an
in-memory merge of whole state dicts (same method function, brute-force thresholds, same statistics).

This is the registry matrix: streaming (tensor by tensor, sharded output, extra passes) must give
exactly what applying the method to fully loaded models gives, for every method and architecture.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mergebench.errors import StatisticsError
from mergebench.fixtures import write_family_to_hub_root
from mergebench.merge.engine import _statistics, merge
from mergebench.merge.inputs import prepare
from mergebench.merge.options import MergeOptions
from mergebench.methods import MergeContext
from mergebench.methods.common import is_embedding

DOMAINS = ("math", "coding", "safety")
PARAMETERS = {
    "model_soup": {},
    "task_arithmetic": {"scaling": 0.6},
    "ties": {"top_k": 0.2, "scaling": 0.8, "aggregate": "mean"},
    "ties_tensor": {"top_k": 0.2, "scaling": 0.8, "topk_scope": "tensor"},
    "dare": {"drop_rate": 0.7, "scaling": 0.5},
    "consensus": {"k": 2, "tall_lambda": 0.4},
    "localize_stitch": {"sparsity": 0.1},
    "localize_stitch_trained": {"mode": "trained", "sparsity": 0.1, "num_samples": 4},
    "regmean": {"alpha": 0.5, "num_samples": 4},
    "fisher": {"num_samples": 4},
}


def load_dir(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def make_recipe(family, validation_dir: Path, key: str) -> dict:
    return {"method": key.removesuffix("_trained").removesuffix("_tensor"), "base_model": str(family.base),
            "models": [{"model": str(family.experts[d]), "domain": d} for d in DOMAINS],
            "parameters": PARAMETERS[key], "data": {d: str(validation_dir / f"{d}.jsonl") for d in DOMAINS},
            "seed": 3}


def in_memory_merge(config: dict, cache_dir: Path) -> dict[str, torch.Tensor]:
    """The whole merge with every model fully in memory: an independent driver for the same method."""
    inputs = prepare(config)
    spec, params = inputs.spec, inputs.params
    base = load_dir(Path(config["base_model"]))
    experts = [load_dir(Path(m["model"])) for m in config["models"]]
    mergeable = [n for n in base if not is_embedding(n) and base[n].is_floating_point()]
    thresholds = None
    if params.global_topk() is not None:  # brute force: the ⌈k·N⌉-th largest |τᵢ| of each expert, by sorting
        n_keep = math.ceil(Fraction(str(params.global_topk())) * sum(base[n].numel() for n in mergeable))
        thresholds = torch.stack([
            torch.cat([(e[n].float() - base[n].float()).abs().flatten() for n in mergeable])
            .sort(descending=True).values[n_keep - 1] for e in experts])
    # The statistics files the streaming merge wrote to the cache (a cache hit: nothing is recomputed).
    reader = _statistics(inputs, MergeOptions(cache_dir=cache_dir)) if inputs.stage else None
    out = {}
    for name, b in base.items():
        if name not in mergeable:
            out[name] = b
            continue
        stack = torch.stack([e[name].float() for e in experts])
        if spec.inputs == "deltas":
            stack = stack - b.float()
        ctx = MergeContext(name=name, expert_ids=tuple(range(len(experts))), weights=None, seed=config["seed"],
                           thresholds=thresholds, data=reader.data_for(name) if reader else {})
        out[name] = spec.fn(b.float().clone(), stack, params, ctx).to(b.dtype)
    return out


@pytest.mark.parametrize("key", list(PARAMETERS))
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_streaming_equals_in_memory(key: str, arch: str, tiny_llama, tiny_gemma2, validation_dir, tmp_path) -> None:
    family = tiny_llama if arch == "llama" else tiny_gemma2
    config = make_recipe(family, validation_dir, key)
    # compute_chunk: elementwise methods are merged in many odd-sized chunks on two threads
    options = MergeOptions(progress=False, shard_size=100_000, chunk_bytes=50_000, cache_dir=tmp_path / "cache",
                           compute_chunk=777, compute_threads=2)
    result = merge(config, tmp_path / "out", options=options)
    streamed = load_dir(result.out_dir)
    expected = in_memory_merge(config, tmp_path / "cache")
    assert set(streamed) == set(expected)
    for name in expected:
        assert torch.equal(streamed[name], expected[name]), name
    base = load_dir(family.base)
    changed = [n for n in base if not torch.equal(streamed[n], base[n])]
    assert changed and not any(is_embedding(n) for n in changed)


def test_methods_give_distinguishable_results(tiny_llama, validation_dir, tmp_path) -> None:
    outputs = {}
    for key in ("task_arithmetic", "ties", "dare", "consensus", "localize_stitch"):
        result = merge(make_recipe(tiny_llama, validation_dir, key), tmp_path / key, options=MergeOptions(
            progress=False, cache_dir=tmp_path / "cache"))
        outputs[key] = torch.cat([t.float().flatten() for t in load_dir(result.out_dir).values()])
    keys = list(outputs)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not torch.equal(outputs[a], outputs[b]), (a, b)


FAST = ("ties", "regmean")  # one data-free and one data-dependent method in the fast suite; all in `slow`
EVERY_METHOD = [k if k in FAST else pytest.param(k, marks=pytest.mark.slow) for k in PARAMETERS]


@pytest.mark.parametrize("key", EVERY_METHOD)
def test_every_method_runs_from_yaml_through_the_cli(key: str, tiny_llama, validation_dir, tmp_path) -> None:
    cli = str(Path(sys.executable).parent / "mergebench")
    path = tmp_path / f"{key}.yaml"
    path.write_text(yaml.safe_dump(make_recipe(tiny_llama, validation_dir, key)))
    proc = subprocess.run([cli, "merge", str(path), "--out", str(tmp_path / "out"), "--format", "json"],
                          capture_output=True, text=True, env={**os.environ, "MERGEBENCH_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "README.md").exists()


@pytest.mark.parametrize("key", EVERY_METHOD)
def test_every_method_streams_from_the_hub_like_local(key: str, hub, hub_root, tiny_llama, validation_dir,
                                                      tmp_path) -> None:
    repos = write_family_to_hub_root(tiny_llama, hub_root)
    local = make_recipe(tiny_llama, validation_dir, key)
    remote = {**local, "base_model": repos["base"],
              "models": [{"model": repos[d], "domain": d} for d in DOMAINS]}
    options = MergeOptions(progress=False, cache_dir=tmp_path / "cache", shard_size=200_000)
    a = merge(local, tmp_path / "local", options=options)
    b = merge(remote, tmp_path / "remote", options=options)
    files = sorted(p.name for p in a.out_dir.glob("*.safetensors"))
    assert files == sorted(p.name for p in b.out_dir.glob("*.safetensors")) and len(files) > 1
    assert all((a.out_dir / f).read_bytes() == (b.out_dir / f).read_bytes() for f in files)


def test_data_dependent_methods_need_domains_and_data(tiny_llama, validation_dir, tmp_path) -> None:
    config = make_recipe(tiny_llama, validation_dir, "regmean")
    del config["models"][1]["domain"]
    with pytest.raises(StatisticsError, match="have no 'domain:'"):
        merge(config, tmp_path / "a", options=MergeOptions(progress=False))
    config = make_recipe(tiny_llama, validation_dir, "fisher")
    del config["data"]["coding"]
    with pytest.raises(StatisticsError, match=r"needs validation data for domain\(s\) \['coding'\]"):
        merge(config, tmp_path / "b", options=MergeOptions(progress=False))
    dataless = make_recipe(tiny_llama, validation_dir, "localize_stitch")
    for m in dataless["models"]:
        del m["domain"]
    del dataless["data"]
    assert merge(dataless, tmp_path / "c", options=MergeOptions(progress=False)).out_dir.exists()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
