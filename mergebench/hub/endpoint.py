"""Point ``huggingface_hub`` (and ``datasets``) at another Hub: the loopback server, a mirror, a proxy."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import constants, hf_api


def endpoint_env(url: str, hf_home: Path, *, token: str | None = None) -> dict[str, str]:
    """Environment variables that point a ``huggingface_hub`` process at ``url`` with a private cache."""
    env = {
        "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_DATASETS_CACHE": str(hf_home / "datasets"),
    }
    return env | ({"HF_TOKEN": token} if token else {})


@contextlib.contextmanager
def use_endpoint(url: str, *, hf_home: Path, token: str | None = None) -> Iterator[None]:
    """Point this process's ``huggingface_hub`` (and ``datasets``) at another Hub, e.g. the loopback server.

    Both libraries read ``HF_ENDPOINT`` and friends once, at import, into module constants; setting the
    variables later is not enough, so the constants are patched as well as the environment, with a
    private cache under ``hf_home``, and everything is restored on exit. Xet transfers are disabled (the
    loopback server speaks the plain HTTP + LFS protocol).
    """
    url = url.rstrip("/")
    env = endpoint_env(url, Path(hf_home), token=token)
    patches: list[tuple[object, str, object]] = [(constants, name, value) for name, value in {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_DISABLE_XET": True, "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True, "HF_HOME": env["HF_HOME"], "HF_HUB_CACHE": env["HF_HUB_CACHE"],
        "HF_TOKEN_PATH": str(Path(hf_home) / "token"), "HF_STORED_TOKENS_PATH": str(Path(hf_home) / "stored_tokens"),
        "HF_XET_CACHE": str(Path(hf_home) / "xet"),
        "AGENT_HARNESSES_PATH": str(Path(hf_home) / ".agent_harnesses.json"),
        "HF_URL_HOSTS": frozenset({*constants.HF_URL_HOSTS, urlsplit(url).hostname}),
    }.items() if hasattr(constants, name)]
    if "datasets" in sys.modules:  # it read HF_ENDPOINT at its own import
        import datasets.config

        patches += [(datasets.config, "HF_ENDPOINT", url), (datasets.config, "HF_HUB_OFFLINE", False),
                    (datasets.config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")]
    # the module-level functions (huggingface_hub.whoami, create_repo, ...) share one HfApi bound at import
    patches.append((hf_api.api, "endpoint", url))
    if "transformers.utils.hub" in sys.modules:  # it keeps one HfApi, bound to the endpoint it was created with
        patches.append((sys.modules["transformers.utils.hub"], "_hf_api", None))
    saved_attrs = [(obj, name, getattr(obj, name, None)) for obj, name, _ in patches]
    saved_env = {k: os.environ.get(k) for k in env}
    for obj, name, value in patches:
        setattr(obj, name, value)
    os.environ.update(env)
    try:
        yield
    finally:
        for obj, name, value in saved_attrs:
            setattr(obj, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
