"""Statistics files: one safetensors file per (expert, stage), keyed by tensor name, cached by content.

File: ``{cache_dir}/{stage}/{key}.safetensors`` with ``key`` the :func:`mergebench.work.fingerprint_of` of a
JSON document holding the stage, the file format version, the prompt format version, the model's identity
(its commit, or the local fingerprint of its weight and config files), the base's identity (``mask`` only),
the sha256 of the rows used, and every parameter that changes the numbers. The safetensors metadata repeats
those fields (``mergebench.*``) so a file explains itself. Files are written to a temporary name and renamed,
so a crash never leaves a truncated file under a valid key.

Loading for a merge is lazy (:class:`StatisticsReader`): statistics can be larger than the model (RegMean's
Gram matrices are Σ in² per linear layer), so only one tensor's statistics per expert are read at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from mergebench.errors import StatisticsError
from mergebench.prompt import PROMPT_FORMAT_VERSION
from mergebench.stats.data import ModelSource
from mergebench.work import atomic_file, fingerprint_of, folder_fingerprint

logger = logging.getLogger(__name__)

FORMAT = "mergebench-stats/1"
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json")


def model_identity(model: ModelSource) -> str:
    """``rev:<sha>`` when the revision is known, else the local folder's fingerprint of its weight and config
    files (:func:`mergebench.work.folder_fingerprint`, the one scheme every stage uses for local inputs)."""
    if model.revision:
        return f"rev:{model.revision}"
    folder = Path(model.path)
    if not folder.is_dir():
        raise StatisticsError(f"Model '{model.name}': '{folder}' is not a folder.",
                              hint="Statistics load each model from a local folder (config.json + weights).")
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(MODEL_FILE_SUFFIXES))
    if not names:
        raise StatisticsError(f"Model folder '{folder}' has no weight or config files.",
                              hint="Statistics load each model from a local folder (config.json + weights).")
    return folder_fingerprint(folder, names)


def cache_key(document: Mapping[str, Any]) -> str:
    """The statistics file's key: :func:`mergebench.work.fingerprint_of` of ``document`` plus format versions."""
    return fingerprint_of({**document, "format": FORMAT, "prompt_format": PROMPT_FORMAT_VERSION})


def cache_path(cache_dir: Path, stage: str, key: str) -> Path:
    return Path(cache_dir) / stage / f"{key}.safetensors"


def write_statistics(path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> Path:
    """Atomically write ``tensors`` (contiguous CPU copies) with string ``metadata``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "mergebench.format": FORMAT,
            **{f"mergebench.{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
               for k, v in metadata.items()}}
    with atomic_file(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    logger.info("wrote %d statistics tensors to %s", len(tensors), path)
    return path


def load_statistics(path: Path) -> dict[str, Tensor]:
    """Every tensor of one statistics file (small models and tests; merges use :class:`StatisticsReader`)."""
    from safetensors.torch import load_file

    return load_file(path)


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


class StatisticsReader:
    """Per-tensor statistics of all experts, read lazily: ``reader.get(name)`` → ``[n, ...]`` or ``None``.

    >>> reader = StatisticsReader("gram", paths)                   # doctest: +SKIP
    >>> ctx_data = reader.data_for("model.layers.0.mlp.up_proj.weight")  # {"gram": [n, in, in]} or {}

    Args:
        stage: the ``ctx.data`` key (``"gram"``, ``"fisher"``, ``"mask"``).
        paths: one file per expert, in the order of the merge's stack.

    Raises:
        StatisticsError: a file is missing, holds another stage, or the experts' tensor names differ.
    """

    def __init__(self, stage: str, paths: Sequence[Path]) -> None:
        self.stage = stage
        self.paths = [Path(p) for p in paths]
        self._files = []
        for path in self.paths:
            if not path.is_file():
                raise StatisticsError(f"Statistics file '{path}' does not exist.",
                                      hint="Run the statistics stage again (the cache may have been cleared).")
            try:
                f = safe_open(path, framework="pt")
                found = (f.metadata() or {}).get("mergebench.stage")
            except Exception as e:  # safetensors raises its own error type for truncated or garbled files
                raise StatisticsError(f"Statistics file '{path}' cannot be read ({type(e).__name__}: {e}).",
                                      hint="Delete the file and merge again: the statistics stage recomputes it."
                                      ) from e
            if found != stage:
                raise StatisticsError(f"Statistics file '{path}' holds stage {found!r}, not '{stage}'.",
                                      hint=f"Pass the '{stage}' statistics of each expert, in the merge's order.")
            self._files.append(f)
        names = [set(f.keys()) for f in self._files]
        if any(n != names[0] for n in names[1:]):
            odd = sorted(set.union(*names) - set.intersection(*names))[:5]
            raise StatisticsError(f"The experts' '{stage}' statistics cover different tensors (e.g. {odd}).",
                                  hint="Recompute the statistics; experts must share the base architecture.")
        self.names = frozenset(names[0]) if names else frozenset()
        for name in sorted(self.names):
            shapes = [tuple(f.get_slice(name).get_shape()) for f in self._files]
            if any(shape != shapes[0] for shape in shapes[1:]):
                listed = ", ".join(f"{s} in '{p}'" for s, p in zip(shapes, self.paths, strict=True))
                raise StatisticsError(f"The experts' '{stage}' statistics of tensor '{name}' have different shapes: "
                                      f"{listed}.", hint="Delete these statistics files and merge again: the "
                                      "statistics stage recomputes them. Experts must share the base architecture.")

    def get(self, name: str) -> Tensor | None:
        """``[n, *stat_shape]`` statistics of tensor ``name`` (stacked over experts), or ``None``."""
        if name not in self.names:
            return None
        return torch.stack([f.get_tensor(name) for f in self._files])

    def data_for(self, name: str) -> dict[str, Tensor]:
        """``{stage: stacked}`` for :attr:`MergeContext.data`, or ``{}`` when the tensor has no statistics."""
        stacked = self.get(name)
        return {} if stacked is None else {self.stage: stacked}
