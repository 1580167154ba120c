"""``mergebench space deploy``: a Hub Space repo that builds the MergeBench Space from its own files.

The repo is staged in a temporary folder and pushed in one commit (:func:`mergebench.hub.push.push_folder`):

* the app, ``space/*.py``, as it is in this checkout;
* ``README.md``: ``space/README.md`` with its front matter completed (``sdk_version`` = the pinned Gradio,
  ``suggested_hardware``, the datasets it reads and writes; ``hf_oauth`` and ``hf_oauth_scopes`` —
  ``jobs`` for dispatching scoring to Hugging Face Jobs — come from ``space/README.md``), checked by the
  Hub's ``/api/validate-yaml`` before anything is pushed;
* ``requirements.txt``: ``space/requirements.txt`` (torch first, lighteval, datasets, the data packages,
  Gradio, each pinned as this project pins it), then MergeBench itself as a wheel built from this checkout;
* ``wheels/<sha-256 prefix>/mergebench-<version>-py3-none-any.whl``;
* ``mergebench-space.json``: the Space's settings (results shown, where submissions go), read by
  ``space/settings.py`` under the ``MERGEBENCH_*`` variables.

Why the wheel is referenced by URL and not as ``./wheels/...``: a Gradio Space's builder installs the
requirements before it copies the repo (its build log reads ``RUN --mount=target=/tmp/requirements.txt,
source=requirements.txt pip install -r /tmp/requirements.txt``, then ``COPY ./ /app``), so no other file
of the repo exists at that moment. The wheel's own resolve URL in the Space repo, with its sha-256 as a
URL fragment that pip verifies, is a pinned source that does exist. Its path holds the digest, so each
build names exactly the bytes it was staged with.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, SpaceCard, SpaceHardware, hf_hub_url

from mergebench.errors import ConfigError
from mergebench.hub.push import push_folder

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_FILE = "mergebench-space.json"
"""The deploy's settings in the Space repo (``space/settings.py`` reads the same name)."""
APP_FILE = "app.py"
PYTHON_VERSION = "3.11"
HARDWARE = "cpu-basic"
RESULTS = "mergebench/mergebench-results"
_SPACE_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_GRADIO_PIN = re.compile(r"^gradio(\[[^\]]*\])?==(?P<version>[\w.]+)\s*$", re.MULTILINE)
_MANAGED = ("*.py", "wheels/**")
"""Repo files a deploy owns: those not in the new commit are deleted by it (old app modules, old wheels)."""


@dataclass(frozen=True)
class DeployOptions:
    """What ``mergebench space deploy`` was asked for."""

    space_id: str
    hardware: str = HARDWARE
    results: str = RESULTS
    """Results dataset the Space shows and submissions push to."""
    private: bool = False


@dataclass(frozen=True)
class Deployment:
    """A staged (and, unless a dry run, pushed) Space repo."""

    space_id: str
    files: tuple[str, ...]
    requirements: str
    settings: dict[str, Any]
    commit_url: str | None
    space_url: str


def hardware(name: str) -> SpaceHardware:
    """``name`` as a Space hardware flavour (``cpu-basic``, ``l40sx1``, ...)."""
    try:
        return SpaceHardware(name)
    except ValueError as e:
        raise ConfigError(f"'{name}' is not a Space hardware.",
                          hint=f"Choose one of: {', '.join(h.value for h in SpaceHardware)}.") from e


def source_tree(root: Path = ROOT) -> Path:
    """The source checkout this MergeBench runs from (the Space and the wheel are built from it)."""
    if not (root / "space" / APP_FILE).is_file() or not (root / "pyproject.toml").is_file():
        raise ConfigError(f"The Space's code is not next to this MergeBench install ({root / 'space'}).",
                          hint="Deploy from a source checkout of MergeBench (git clone, then pip install -e .).")
    return root


def build_wheel(root: Path, out_dir: Path) -> Path:
    """A wheel of this checkout (no dependencies), built from a copy so the checkout gets no build files."""
    with tempfile.TemporaryDirectory(prefix="mergebench-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, src / name)
        shutil.copytree(root / "mergebench", src / "mergebench", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                   "--wheel-dir", str(out_dir), str(src)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(out_dir.glob("mergebench-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise ConfigError(f"Building the MergeBench wheel failed:\n{tail}",
                          hint=f"Run `pip wheel --no-deps --no-build-isolation {root}` to see the whole error "
                               "(setuptools>=68 must be installed).")
    return wheels[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gradio_version(pins: str) -> str:
    """The Gradio version ``space/requirements.txt`` pins: the Space's ``sdk_version`` must be the same."""
    match = _GRADIO_PIN.search(pins)
    if match is None:
        raise ConfigError("space/requirements.txt pins no Gradio version (a line like gradio[oauth]==6.31.0).",
                          hint="Pin gradio there: the Space's sdk_version is taken from it.")
    return match.group("version")


def requirements(pins: str, wheel_url: str) -> str:
    """``space/requirements.txt``'s pins (comments dropped), then MergeBench's wheel by URL and sha-256."""
    lines = [line.strip() for line in pins.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    header = "# Written by `mergebench space deploy` from space/requirements.txt; mergebench: this repo's wheel."
    return "\n".join([header, *lines, f"mergebench @ {wheel_url}", ""])


def readme(template: str, *, gradio: str, hardware: str, datasets: list[str]) -> str:
    """``space/README.md`` with the front matter a deploy decides: Gradio version, hardware, datasets."""
    card = SpaceCard(template)
    decided = {"sdk": "gradio", "sdk_version": gradio, "app_file": APP_FILE, "python_version": PYTHON_VERSION,
               "suggested_hardware": hardware, "datasets": datasets}
    for key, value in decided.items():
        card.data[key] = value
    if not card.data.get("hf_oauth") or "jobs" not in (card.data.get("hf_oauth_scopes") or []):
        raise ConfigError("space/README.md must enable hf_oauth with the 'jobs' scope (sign-in, job dispatch).",
                          hint="Add `hf_oauth: true` and `hf_oauth_scopes: [openid, profile, jobs]` to its front "
                               "matter.")
    return str(card)


def space_settings(options: DeployOptions, endpoint: str) -> dict[str, Any]:
    """The Space's settings (``SpaceConfig`` fields): results shown and pushed to, the requests dataset that
    keeps the queue across restarts, and the Hub its links point to."""
    return {"results": options.results, "results_repo": options.results,
            "requests_repo": f"{options.space_id}-requests", "hub_url": endpoint, "backend": "transformers"}


def stage(options: DeployOptions, folder: Path, *, endpoint: str, root: Path = ROOT) -> Deployment:
    """Write the Space repo's files into ``folder`` (empty) without pushing anything."""
    root = source_tree(root)
    hardware(options.hardware)
    if not _SPACE_ID.match(options.space_id):
        raise ConfigError(f"'{options.space_id}' is not a Space id of the form 'org/name'.",
                          hint="Name the Space like my-org/mergebench.")
    for module in sorted((root / "space").glob("*.py")):
        shutil.copy2(module, folder / module.name)
    with tempfile.TemporaryDirectory(prefix="mergebench-wheel-out-") as out:
        built = build_wheel(root, Path(out))
        digest = _sha256(built)
        wheel = f"wheels/{digest[:16]}/{built.name}"
        (folder / wheel).parent.mkdir(parents=True)
        shutil.move(built, folder / wheel)
    url = hf_hub_url(options.space_id, wheel, repo_type="space", revision="main", endpoint=endpoint)
    pins = (root / "space" / "requirements.txt").read_text(encoding="utf-8")
    text = requirements(pins, f"{url}#sha256={digest}")
    (folder / "requirements.txt").write_text(text, encoding="utf-8")
    settings = space_settings(options, endpoint)
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    datasets = [settings["results"], settings["requests_repo"]]
    (folder / "README.md").write_text(readme((root / "space" / "README.md").read_text(encoding="utf-8"),
                                             gradio=gradio_version(pins), hardware=options.hardware,
                                             datasets=datasets), encoding="utf-8")
    files = tuple(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()))
    return Deployment(options.space_id, files, text, settings, None, f"{endpoint}/spaces/{options.space_id}")


def deploy(options: DeployOptions, *, dry_run: bool = False, api: HfApi | None = None) -> Deployment:
    """Create the Space (Gradio SDK, ``options.hardware``) if it does not exist, then push the staged repo in
    one commit; stale app modules and wheels are deleted in the same commit.

    The hardware is requested when the Space is created; an existing Space keeps the hardware it runs on
    (changing it changes what its owner pays: do that in the Space's settings).

    Raises:
        ConfigError: not a source checkout, a bad Space id, the wheel does not build, the README's front
            matter is refused by the Hub's validator.
    """
    api = api or HfApi()
    with tempfile.TemporaryDirectory(prefix="mergebench-space-") as tmp:
        folder = Path(tmp) / "repo"
        folder.mkdir()
        staged = stage(options, folder, endpoint=api.endpoint)
        try:
            SpaceCard((folder / "README.md").read_text(encoding="utf-8")).validate(repo_type="space")
        except ValueError as e:
            raise ConfigError(f"The Space's README front matter is invalid: {e}",
                              hint="Fix the front matter of space/README.md.") from e
        if dry_run:
            return staged
        if options.private:
            logger.warning("A private Space's builder must fetch the MergeBench wheel from %s without a token; "
                           "if its build fails there, make the Space public.", staged.space_url)
        url = push_folder(folder, options.space_id, repo_type="space", private=options.private, api=api,
                          space_sdk="gradio", space_hardware=hardware(options.hardware),
                          commit_message=f"Deploy the MergeBench Space ({len(staged.files)} files)",
                          delete_patterns=_MANAGED)
    logger.info("Deployed %s: %s", options.space_id, url)
    return Deployment(staged.space_id, staged.files, staged.requirements, staged.settings, url, staged.space_url)
