"""Write small safetensors models with full control over their contents (for engine edge cases)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8,
          "num_hidden_layers": 2, "vocab_size": 32}


def base_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {"model.embed_tokens.weight": torch.randn(32, 8, generator=g)}
    for i in range(2):
        t[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(8, 8, generator=g)
        t[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(16, 8, generator=g)
        t[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(8)
    t["model.norm.weight"] = torch.ones(8)
    t["lm_head.weight"] = torch.randn(32, 8, generator=g)
    return t


def expert_tensors(base: dict[str, torch.Tensor], seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in base.items()}


def write_model(folder: Path, tensors: dict[str, torch.Tensor], *, dtype: torch.dtype = torch.bfloat16,
                shards: int = 1, config: dict | None = None) -> Path:
    """Save ``tensors`` (cast to ``dtype``) as 1 file or ``shards`` files with an index, plus a config."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    names = list(tensors)
    if shards == 1:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        groups = [names[i::shards] for i in range(shards)]
        weight_map = {}
        for i, group in enumerate(groups):
            filename = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: tensors[k] for k in group}, folder / filename, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(group, filename))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config or CONFIG))
    return folder


def family(root: Path, n_experts: int = 3, *, dtype: torch.dtype = torch.bfloat16, shards: int = 1,
           ) -> tuple[Path, list[Path], dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A base and ``n_experts`` experts; returns folders and the tensors as written (in ``dtype``, as fp32)."""
    base = base_tensors()
    experts = [expert_tensors(base, seed=i + 1) for i in range(n_experts)]
    base_dir = write_model(root / "base", base, dtype=dtype, shards=shards)
    expert_dirs = [write_model(root / f"e{i}", e, dtype=dtype, shards=shards) for i, e in enumerate(experts)]
    as_written = lambda t: {k: v.to(dtype).float() for k, v in t.items()}  # noqa: E731
    return base_dir, expert_dirs, as_written(base), [as_written(e) for e in experts]


def recipe(base: Path, experts: list[Path], method: str = "task_arithmetic", **extra: object) -> dict:
    domains = ["math", "coding", "safety", "instruction", "multilingual"]
    return {"method": method, "base_model": str(base),
            "models": [{"model": str(e), "domain": domains[i % 5]} for i, e in enumerate(experts)], **extra}
