"""The expert fine-tuning recipe: a pydantic model loaded from a YAML file shipped in the package.

``paper`` is the recipe of He et al. (2025), benchmark-spec §2: full fine-tuning, bf16, sequences packed to
2,048 tokens, an effective batch of 160 packed sequences, 2 epochs, AdamW at 2e-5 with a cosine schedule and
10 % warm-up, no weight decay, gradient norm clipped to 1.0, loss on the responses only. ``tiny`` is the
MergeBench-Tiny recipe (CPU, float32, short sequences, a fixed number of steps). A recipe is a file so a run
records *exactly* what it used (``mergebench_train.yaml`` in every expert folder) and any file can be passed
back with ``--config FILE.yaml``.

Unknown keys are errors that name the closest known key: a typo must never silently fall back to a default.

>>> load_train_config("paper").effective_batch_size
160
>>> load_train_config("tiny", max_steps=5).max_steps
5
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from mergebench.errors import ConfigError
from mergebench.merge.recipe import read_yaml

RECIPES = Path(__file__).resolve().parent / "recipes"


class TrainConfig(BaseModel):
    """Every knob of one fine-tuning run. Master weights are always float32; ``precision`` is the autocast."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    """The recipe's name, recorded in cards (``paper``, ``tiny`` or a file's own)."""
    # sequences and batches
    max_length: int = Field(2048, ge=8)
    """Each conversation is cut to this many tokens, and packed sequences hold at most this many."""
    packing: bool = True
    """Best-fit-decreasing packing of whole conversations (no conversation is split; attention stays inside each)."""
    per_device_batch_size: int = Field(4, ge=1)
    effective_batch_size: int = Field(160, ge=1)
    """Sequences per optimizer step over all devices; gradient accumulation = this ÷ (per device × devices)."""
    # schedule and optimizer
    epochs: float = Field(2.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps; when set it overrides ``epochs`` (MergeBench-Tiny trains a fixed budget)."""
    learning_rate: float = Field(2e-5, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    optimizer: Literal["adamw_torch", "adamw_torch_fused"] = "adamw_torch"
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    # precision and memory
    precision: Literal["bf16", "fp32"] = "bf16"
    """Autocast dtype of forward and backward passes (weights and optimizer state stay float32)."""
    save_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """Dtype of the saved weights. Keep float32 for short runs: bf16 rounding erases updates below ~2⁻⁸ relative."""
    gradient_checkpointing: bool = True
    # data
    max_rows_per_domain: int | None = Field(None, ge=1)
    """Train on a seeded sample of at most this many rows of each domain (``None``: all rows)."""
    chat_template: str | None = None
    """``None``: the tokenizer's own; ``chatml``: :data:`mergebench.prompt.CHATML_TEMPLATE`; else a Jinja template."""
    dataset_num_proc: int | None = Field(None, ge=1)
    """Processes for tokenising (``None``: in this process)."""
    # runtime
    seed: int = 42
    num_threads: int | None = Field(None, ge=1)
    """``torch.set_num_threads`` for CPU training (``None``: torch's default)."""
    logging_steps: int = Field(10, ge=1)
    save_steps: int | None = Field(None, ge=1)
    """Write a resumable checkpoint every N steps beside the output folder (``None``: none)."""

    def gradient_accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step so that ``effective_batch_size`` holds exactly on ``world_size`` devices.

        Raises:
            ConfigError: the effective batch is not a multiple of ``per_device_batch_size × world_size``.
        """
        per_step = self.per_device_batch_size * world_size
        steps, rest = divmod(self.effective_batch_size, per_step)
        if rest or steps == 0:
            raise ConfigError(
                f"effective_batch_size {self.effective_batch_size} is not a multiple of per_device_batch_size "
                f"{self.per_device_batch_size} × {world_size} device(s) = {per_step}.",
                hint="Change per_device_batch_size (or the number of processes) so it divides the effective batch.")
        return steps

    def to_yaml(self) -> str:
        """The full config (every field, defaults included), as ``load_train_config(FILE)`` reads it back."""
        return yaml.safe_dump(self.model_dump(), sort_keys=False, allow_unicode=True)


def _known_key_hint(key: str) -> str:
    close = difflib.get_close_matches(key, list(TrainConfig.model_fields), n=1)
    return f"Did you mean '{close[0]}'?" if close else f"Known keys: {', '.join(TrainConfig.model_fields)}."


def train_config_from_dict(data: Any, *, source: str = "training config") -> TrainConfig:
    """Validate a mapping; unknown keys and bad values are one :class:`ConfigError` listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a YAML mapping, got {type(data).__name__}.")
    try:
        return TrainConfig.model_validate(data)
    except pydantic.ValidationError as e:
        errors = e.errors()
        problems = "\n".join(f"  - {'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}" for err in errors)
        unknown = [str(err["loc"][0]) for err in errors if err["type"] == "extra_forbidden"]
        hint = (_known_key_hint(unknown[0]) if unknown
                else "See mergebench/train/recipes/paper.yaml for every key and its meaning.")
        raise ConfigError(f"Invalid {source}:\n{problems}", hint=hint) from e


def load_train_config(name_or_path: str | Path = "paper", **overrides: Any) -> TrainConfig:
    """Load a shipped recipe (``paper``, ``tiny``) or a YAML file, then apply keyword ``overrides``.

    Args:
        name_or_path: a recipe name from ``mergebench/train/recipes/`` or the path of a YAML file.
        **overrides: field values that replace the file's (validated like the file).

    Raises:
        ConfigError: unknown recipe, missing or invalid file, unknown key or bad value.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not path.suffix and not path.is_file():  # a bare name is a shipped recipe, even if a folder has that name
        path = RECIPES / f"{text}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in RECIPES.glob("*.yaml"))
            raise ConfigError(f"Unknown training recipe '{text}'.",
                              hint=f"Use one of {', '.join(shipped)} or the path of a YAML file.")
    data = read_yaml(path, what="Training config file")
    if isinstance(data, dict):
        data = {"name": path.stem, **data, **overrides}
    return train_config_from_dict(data, source=f"training config '{path}'")
