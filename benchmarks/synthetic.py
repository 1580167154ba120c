"""Deterministic synthetic Llama-architecture families for benchmarks (no downloads).

A base is random-normal (std 0.02) in bf16; each expert adds a dense small perturbation plus a sparse
large one, so task vectors have the heavy tail that top-k methods care about. Files are written with
``safetensors`` in ``transformers``' shard layout, so MergeBench and mergekit read the same inputs.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class Shape:
    hidden: int = 1024
    intermediate: int = 2816
    layers: int = 24
    vocab: int = 32000
    heads: int = 16
    kv_heads: int = 4

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        h, i, kv = self.hidden, self.intermediate, self.hidden * self.kv_heads // self.heads
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                    (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                    (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                    (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                    (p + "mlp.down_proj.weight", (h, i))]
        return [*out, ("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]

    @property
    def parameters(self) -> int:
        return sum(torch.Size(s).numel() for _, s in self.tensors())

    def config(self) -> dict:
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.hidden,
                "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                "vocab_size": self.vocab, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def _tensor(name: str, shape: tuple[int, ...], seed: int, expert: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_stable(seed, name))
    base = torch.ones(shape) if name.endswith("norm.weight") else torch.randn(shape, generator=g) * 0.02
    if expert < 0:
        return base.to(torch.bfloat16)
    ge = torch.Generator().manual_seed(_stable(seed + 1000 + expert, name))
    delta = torch.randn(shape, generator=ge) * 1e-3
    spikes = torch.rand(shape, generator=ge) < 0.01
    delta += spikes * torch.randn(shape, generator=ge) * 1e-2
    return (base + delta).to(torch.bfloat16)


def _stable(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF


def write_model(folder: Path, shape: Shape, *, expert: int = -1, seed: int = 0, shard_bytes: int = 1 << 30) -> Path:
    """Write the base (``expert=-1``) or expert ``expert`` as sharded bf16 safetensors + index + config."""
    folder.mkdir(parents=True, exist_ok=True)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, s in shape.tensors():
        nbytes = torch.Size(s).numel() * 2
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, s))
        size += nbytes
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        filename = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: _tensor(name, s, seed, expert) for name, s in group}
        total += sum(t.numel() * 2 for t in tensors.values())
        save_file(tensors, folder / filename, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, filename))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (folder / "config.json").write_text(json.dumps(shape.config(), indent=1))
    return folder


def write_family(root: Path, shape: Shape, n_experts: int, *, shard_bytes: int = 1 << 30) -> tuple[Path, list[Path]]:
    """Base + ``n_experts`` experts under ``root`` (skipped when already there with the same shape)."""
    stamp = root / "shape.json"
    wanted = json.dumps({**shape.__dict__, "n": n_experts, "shard": shard_bytes})
    base, experts = root / "base", [root / f"expert{i}" for i in range(n_experts)]
    if stamp.exists() and stamp.read_text() == wanted:
        return base, experts
    write_model(base, shape, shard_bytes=shard_bytes)
    for i, e in enumerate(experts):
        write_model(e, shape, expert=i, shard_bytes=shard_bytes)
    stamp.write_text(wanted)
    return base, experts
