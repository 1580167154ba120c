"""Checking a submission before it is queued: everything that can be known from names, parameters and
safetensors headers, so a bad request is a message on the page and never a job, a push or a GPU minute.

The benchmark's bases and experts come from the reference results themselves (:class:`Catalogue`), so
the Space offers exactly the experts its leaderboard normalises by. Models are only ever Hub repo ids:
a submitted string is never read as a path on the Space's disk.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergebench.domains import DOMAINS
from mergebench.errors import ConfigError, MergeBenchError
from mergebench.eval.results import Results

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


class SubmissionError(MergeBenchError, ValueError):
    """A request the Space will not run; ``message`` and ``hint`` are shown on the page."""


@dataclass(frozen=True)
class Catalogue:
    """Per base: its experts ``{domain: repo}`` and the evaluation settings a submission is scored with."""

    experts: dict[str, dict[str, str]]
    eval_settings: dict[str, dict[str, Any]]

    @classmethod
    def from_results(cls, results: Iterable[Results]) -> Catalogue:
        """The benchmark's bases and experts, read from their reference results.

        A submission is scored like the benchmark's own merges: on every domain's evaluation tasks and on
        the forgetting tasks, i.e. each expert's tasks *in its own domain* (an expert's results hold only
        its domain, plus validation surrogates that never count) and the base's tasks (the runner scores
        the base on the whole evaluation suite, forgetting included). Taking one expert's task list would
        score a merge on that expert's domain alone.
        """
        experts: dict[str, dict[str, str]] = {}
        references: dict[str, list[Results]] = {}
        for r in results:
            role, domain = r.model.get("role"), r.model.get("domain")
            base = r.model.get("base_model") or (r.model.get("id") if role == "base" else None)
            if base and role == "expert" and domain:
                experts.setdefault(base, {})[domain] = r.model["id"]
            if base and role in ("expert", "base"):
                references.setdefault(base, []).append(r)
        return cls({b: dict(sorted(e.items())) for b, e in sorted(experts.items())},
                   {b: _eval_settings(references[b]) for b in experts})

    @property
    def bases(self) -> list[str]:
        return list(self.experts)


def _scored_tasks(r: Results) -> list[str]:
    """The tasks of a reference run that a merge is compared on: the base's evaluation tasks (every domain
    and the forgetting tasks), an expert's evaluation tasks of its own domain; never validation tasks."""
    own = r.model.get("domain") if r.model.get("role") == "expert" else None
    return [n for n, t in r.tasks.items() if t.role != "validation" and (own is None or t.domain == own)]


def _eval_settings(references: list[Results]) -> dict[str, Any]:
    """Tasks (the five domains in order, then the forgetting tasks) and ``max_samples`` of one base's
    references; ``max_samples`` from the base's run (the experts were scored with the same settings)."""
    tasks: dict[str, str] = {}
    for r in references:
        tasks.update({n: r.tasks[n].domain for n in _scored_tasks(r)})
    order = {d: i for i, d in enumerate(DOMAINS)}
    ordered = sorted(tasks, key=lambda n: order.get(tasks[n], len(order)))
    first = next((r for r in references if r.model.get("role") == "base"), references[0])
    return {"tasks": ordered, "suite": first.settings.get("suite"), "max_samples": first.settings.get("max_samples")}


def scoring(catalogue: Catalogue, base: str, *, tasks: tuple[str, ...] = (),
            max_samples: int | None = None) -> dict[str, Any]:
    """How a submission on ``base`` is evaluated: the catalogue's tasks and ``max_samples`` (the settings its
    reference results were scored with), unless the Space overrides them (``MERGEBENCH_EVAL_*``)."""
    reference = catalogue.eval_settings.get(base, {})
    return {"tasks": list(tasks) or reference.get("tasks"), "suite": reference.get("suite"),
            "max_samples": max_samples if max_samples is not None else reference.get("max_samples")}


def check_repo_id(text: str, what: str) -> str:
    text = (text or "").strip()
    if not REPO_ID.match(text) or ".." in text or Path(text).exists():
        raise SubmissionError(f"{what} '{text}' is not a Hub model id of the form 'org/name'.",
                              hint="Give the repo id as it appears on huggingface.co, e.g. 'my-org/my-merge'.")
    return text


def parse_parameters(text: str | None) -> dict[str, Any]:
    """The parameters box: a JSON object (empty: the method's defaults)."""
    if not text or not text.strip():
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise SubmissionError(f"Parameters are not valid JSON ({e.msg} at character {e.pos}).",
                              hint='Write them like {"top_k": 0.2, "scaling": 1.0}.') from e
    except (ValueError, RecursionError) as e:  # a number of 5,000 digits; nesting past the stack
        raise SubmissionError("Parameters are not valid JSON (a number is too long or the nesting too deep).",
                              hint='Write them like {"top_k": 0.2, "scaling": 1.0}.') from e
    if not isinstance(values, dict):
        raise SubmissionError("Parameters must be a JSON object.", hint='Write them like {"scaling": 0.4}.')
    return values


def _method(name: str, parameters: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The method's spec and the full validated parameters (defaults filled in); range errors raise."""
    from dataclasses import asdict

    from mergebench import methods

    spec = methods.get(name)
    return spec, asdict(spec.make_params(parameters))


def _base(catalogue: Catalogue, base: str) -> dict[str, str]:
    if base not in catalogue.experts:
        raise SubmissionError(f"'{base}' is not one of the benchmark's base models.",
                              hint=f"Choose one of: {', '.join(catalogue.bases) or '(none loaded)'}.")
    return catalogue.experts[base]


def validate_merge(catalogue: Catalogue, *, base: str, experts: list[str], method: str, parameters: str | None,
                   validation_data: dict[str, str]) -> dict[str, Any]:
    """A merge request, checked down to the safetensors headers (models exist, architectures agree).

    Returns:
        The job request: ``{method, base_model, experts: {domain: repo}, parameters, recipe}``.

    Raises:
        SubmissionError, ConfigError, RefError, IncompatibleModelsError, huggingface_hub errors.
    """
    known = _base(catalogue, base)
    by_repo = {repo: domain for domain, repo in known.items()}
    chosen = [check_repo_id(e, "Expert") for e in experts]
    unknown = [e for e in chosen if e not in by_repo]
    if unknown:
        raise SubmissionError(f"{unknown} are not experts of '{base}' in this benchmark.",
                              hint=f"Choose among: {', '.join(known.values())}.")
    if len(chosen) < 2:
        raise SubmissionError("Choose at least two experts to merge.", hint="Tick two or more experts.")
    given = parse_parameters(parameters)
    spec, params = _method(method, given)
    picked = {by_repo[e]: e for e in chosen}
    recipe: dict[str, Any] = {"method": spec.name, "base_model": check_repo_id(base, "Base model"),
                              "models": [{"model": repo, "domain": d} for d, repo in picked.items()],
                              "parameters": given}
    if spec.stats_stage(spec.make_params(given)):
        missing = [d for d in picked if d not in validation_data]
        if missing:
            raise SubmissionError(f"'{spec.name}' needs validation data, which this Space has not configured for "
                                  f"{missing}.", hint="Choose a data-free method.")
        recipe["data"] = {d: validation_data[d] for d in picked}
    from mergebench.merge.inputs import prepare

    prepare(recipe)  # resolves every model on the Hub and checks compatibility from headers only
    return {"method": spec.name, "base_model": base, "experts": picked, "parameters": params, "recipe": recipe}


def validate_model(catalogue: Catalogue, *, model: str, base: str, method: str | None,
                   parameters: str | None) -> dict[str, Any]:
    """An already merged Hub model: safetensors weights, no custom code, the base's architecture."""
    from mergebench.hub.models import resolve
    from mergebench.hub.refs import Ref
    from mergebench.merge.plan import check_compatible

    known = _base(catalogue, base)
    repo = check_repo_id(model, "Model")
    params = parse_parameters(parameters)
    name = None
    if method:
        spec, params = _method(method, params)
        name = spec.name
    merged = resolve(Ref.parse(repo))
    if "auto_map" in merged.config:
        raise SubmissionError(f"'{repo}' needs custom code (auto_map in config.json); the Space never runs remote "
                              "code.", hint="Submit a model that loads with the standard transformers classes.")
    check_compatible(resolve(Ref.parse(base)), [merged])
    return {"model": repo, "base_model": base, "method": name, "parameters": params if name else None,
            "experts": dict(known)}


def explain(error: Exception) -> tuple[str, str | None]:
    """What to show for a failed check: (message, hint). Hub errors name the model, never a URL's token."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(error, RepositoryNotFoundError):
        repo = getattr(error, "repo_id", None) or _repo_in(str(error))
        return (f"Model '{repo}' was not found on the Hub (or it is private).",
                "Check the spelling; the Space can only read public repos.")
    if isinstance(error, RevisionNotFoundError):
        return "That revision does not exist on the Hub.", "Use a branch, tag or commit that exists."
    if isinstance(error, (MergeBenchError, ConfigError)):
        return str(error), getattr(error, "hint", None)
    if isinstance(error, HfHubHTTPError):
        return f"The Hub answered with an error: {str(error).splitlines()[0]}", "Try again in a minute."
    raise error


def _repo_in(text: str) -> str:
    match = re.search(r"/(?:api/)?models/([\w.-]+/[\w.-]+)", text)
    return match.group(1) if match else "?"
