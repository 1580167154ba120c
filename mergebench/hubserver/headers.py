"""Safetensors headers as the loopback Hub reads them: for ``model_info().safetensors`` and the one-request
``/api/models/{repo}/safetensors-metadata`` endpoint. Only the header is read, never the tensor data.

(The project's full reader, with every consistency check, is :mod:`mergebench.stream.format`; the server
only needs the JSON, and refuses anything implausible instead of guessing.)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

MAX_HEADER = 100_000_000  # the client's SAFETENSORS_MAX_HEADER_LENGTH


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file.

    Raises:
        ValueError: the file is too short, its header length is implausible or the header is not a JSON object.
    """
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"'{path.name}' is too short to be a safetensors file.")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER:
            raise ValueError(f"'{path.name}' has an implausible safetensors header length {n}.")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError(f"'{path.name}' does not hold a JSON object as safetensors header.")
    return header


def parameter_counts(path: Path) -> dict[str, int] | None:
    """``{dtype: element count}`` over the file's tensors, or ``None`` if it is not a readable safetensors file."""
    try:
        counts: dict[str, int] = {}
        for name, info in read_header(path).items():
            if name != "__metadata__":
                numel = 1
                for dim in info["shape"]:
                    numel *= int(dim)
                counts[info["dtype"]] = counts.get(info["dtype"], 0) + numel
        return counts
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError):  # e.g. [Infinity], [[[...]]]
        return None
