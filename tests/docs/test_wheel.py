"""The built wheel renders every card kind on its own: templates and the data cards read are package data.

The wheel is built from a copy of the sources (an in-tree build would write ``build/`` into the checkout),
installed by unzipping it into a fresh venv that sees the project venv's dependencies through a ``.pth`` file but
not the checkout, and a script run from a folder outside the repository renders a merged, an expert, a domain and
an eval card. They must equal the committed examples byte for byte. Offline: ``--no-build-isolation`` uses the
project venv's setuptools.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from mergebench.docs import ROOT

SCRIPT = """
import json, sys
import mergebench
from mergebench.cards import CARD_KINDS, template_path
from mergebench.docs import example_cards

print(json.dumps({"package": mergebench.__file__, "templates": [str(template_path(k)) for k in CARD_KINDS],
                  "cards": example_cards()}))
"""


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, check=False)
    assert proc.returncode == 0, f"{args[:3]} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "mergebench", source / "mergebench", ignore=shutil.ignore_patterns("__pycache__"))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", tmp_path / "dist", source)
    (wheel,) = (tmp_path / "dist").glob("mergebench-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A venv holding only the wheel, plus a ``.pth`` naming the project venv's site-packages (not the checkout)."""
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    dependencies = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    assert not any(Path(d) == ROOT for d in dependencies)
    (site / "mergebench-test-dependencies.pth").write_text("\n".join(dependencies) + "\n", encoding="utf-8")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return python


def test_installed_wheel_renders_every_card_kind(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {f"mergebench/cards/templates/{k}.md" for k in ("merged", "expert", "domain", "eval")} <= names
    python = _fresh_venv(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    result = json.loads(_run(python, "-c", SCRIPT, cwd=elsewhere, env=env))

    venv = tmp_path / "venv"
    assert Path(result["package"]).is_relative_to(venv), result["package"]
    assert all(Path(t).is_relative_to(venv) for t in result["templates"]), result["templates"]
    cards = result["cards"]
    kinds = {"merged": "model_cards/merged-ties.md", "expert": "model_cards/expert.md",
             "domain": "datasets_cards/domain-math.md", "eval": "datasets_cards/eval.md"}
    for kind, path in kinds.items():
        assert cards[path] == (ROOT / path).read_text(encoding="utf-8"), f"the installed {kind} card differs"
    assert set(cards) == {p.relative_to(ROOT).as_posix() for folder in ("model_cards", "datasets_cards")
                          for p in (ROOT / folder).iterdir()}
