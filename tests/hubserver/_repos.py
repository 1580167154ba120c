"""Small repos written straight into a loopback-Hub tree for the hubserver tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def write_sharded_model(repo: Path) -> dict[str, torch.Tensor]:
    """A two-shard safetensors model with its index, a config and a README; returns the tensors."""
    repo.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    tensors = {
        "embed.weight": torch.randn(16, 8, generator=g),
        "layers.0.weight": torch.randn(8, 8, generator=g).to(torch.bfloat16),
        "layers.1.weight": torch.randn(8, 8, generator=g),
        "head.bias": torch.arange(5, dtype=torch.int64),
    }
    split = {SHARDS[0]: ["embed.weight", "layers.0.weight"], SHARDS[1]: ["layers.1.weight", "head.bias"]}
    for shard, names in split.items():
        save_file({n: tensors[n] for n in names}, repo / shard, metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": {n: shard for shard, names in split.items() for n in names}}
    (repo / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (repo / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (repo / "README.md").write_text("---\nlicense: apache-2.0\ntags: [test]\n---\n# A tiny model\n")
    (repo / "sub").mkdir(exist_ok=True)
    (repo / "sub" / "notes.txt").write_text("nested file\n")
    return tensors


def files_of(folder: Path) -> dict[str, bytes]:
    """``{relative posix path: bytes}`` of every file, ignoring the client's ``.cache`` folder."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".cache" not in p.relative_to(folder).parts}
