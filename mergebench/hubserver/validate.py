"""Repo card metadata checks behind the loopback Hub's ``POST /api/validate-yaml``.

``ModelCard.validate()`` and ``HfApi.create_commit`` (for a ``README.md``) do not check cards locally: they
send them to the Hub. Offline, this module answers instead, with the checks MergeBench's cards depend on:
the front matter parses to a mapping; ``license`` is a Hub license id; ``base_model`` holds well-formed repo
ids and ``base_model_relation`` a known relation; ``model-index`` has the structure the Hub renders
(name → results → task/dataset/metrics); dataset ``configs`` are well formed; Space ``sdk`` is known.
Messages name the field by its path, as the Hub does (``"model-index[0].results[0].task.type" is required``).
It does not check that referenced repos exist (the Hub does; the loopback Hub may not hold them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import yaml


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


YAML_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
DOCS = {"model": "https://huggingface.co/docs/hub/model-cards#model-card-metadata",
        "dataset": "https://huggingface.co/docs/hub/datasets-cards",
        "space": "https://huggingface.co/docs/hub/spaces-config-reference"}

LICENSES = _words("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl
gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr
mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
""")
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
TASKS = _words("""
text-classification token-classification table-question-answering question-answering zero-shot-classification
translation summarization feature-extraction text-generation fill-mask sentence-similarity text-to-speech
text-to-audio automatic-speech-recognition audio-to-audio audio-classification audio-text-to-text
voice-activity-detection depth-estimation image-classification object-detection image-segmentation text-to-image
image-to-text image-to-image image-to-video unconditional-image-generation video-classification
reinforcement-learning robotics tabular-classification tabular-regression tabular-to-text table-to-text
multiple-choice text-ranking text-retrieval time-series-forecasting text-to-video image-text-to-text
image-text-to-image image-text-to-video visual-question-answering document-question-answering
zero-shot-image-classification graph-ml mask-generation zero-shot-object-detection text-to-3d image-to-3d
image-feature-extraction video-text-to-text keypoint-detection visual-document-retrieval any-to-any
video-to-video other
""")
SIZE_CATEGORIES = ("n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B",
                   "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T")
SPACE_SDKS = ("gradio", "streamlit", "docker", "static")
SPACE_COLORS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
_REPO_PART = r"(?![-.])(?!.*(?:--|\.\.))[\w.-]{1,96}(?<![-.])"
REPO_ID = re.compile(rf"^(?:{_REPO_PART}/)?{_REPO_PART}$")
LANGUAGE = re.compile(r"^(?:[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*|multilingual)$")


@dataclass
class Report:
    """Errors (the card is refused) and warnings (accepted, but the Hub would flag it)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_text(self) -> str:
        """The plain-text answer (``Accept: text/plain``), which ``RepoCard.validate`` puts in its ValueError."""
        if self.ok:
            return "OK"
        return "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in self.errors)

    def as_json(self) -> dict[str, Any]:
        """The JSON answer, read by ``HfApi.create_commit`` before uploading a ``README.md``."""
        return {"errors": [{"message": e} for e in self.errors],
                "warnings": [{"message": w} for w in self.warnings]}


def validate_card(content: str, repo_type: str = "model") -> Report:
    """Check the YAML front matter of a repo card (``README.md`` text) the way the Hub does."""
    report = Report()
    if repo_type not in DOCS:
        report.errors.append(f'"repoType" must be one of [model, dataset, space], got "{repo_type}"')
        return report
    match = YAML_BLOCK.search(content)
    if match is None:
        report.warnings.append(f"Empty or missing yaml metadata in repo card ({DOCS[repo_type]})")
        return report
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as e:
        report.errors.append(f"Error parsing YAML metadata: {' '.join(str(e).split())}")
        return report
    if data is None:
        report.warnings.append(f"Empty or missing yaml metadata in repo card ({DOCS[repo_type]})")
        return report
    if not isinstance(data, dict):
        report.errors.append(f"YAML metadata must be a mapping (key: value), got a {type(data).__name__}")
        return report
    _common(data, report.errors)
    {"model": _model, "dataset": _dataset, "space": _space}[repo_type](data, report)
    return report


# ------------------------------------------------------------------------------------------------ helpers
def _is_str(v: Any) -> TypeGuard[str]:
    return isinstance(v, str) and v.strip() != ""


def _str_or_list(data: dict, key: str, errors: list[str], check: Callable[[str], str | None] | None = None) -> None:
    """``key`` is a string or a list of strings; ``check(item)`` returns an error message or ``None``."""
    if key not in data or data[key] is None:
        return
    value = data[key]
    items = [(f'"{key}"', value)] if isinstance(value, str) else None
    if items is None:
        if not isinstance(value, list):
            errors.append(f'"{key}" must be a string or a list of strings')
            return
        items = [(f'"{key}[{i}]"', v) for i, v in enumerate(value)]
    for where, item in items:
        if not _is_str(item):
            errors.append(f"{where} must be a non-empty string")
        elif check is not None and (problem := check(item)):
            errors.append(f"{where} {problem}")


def _one_of(allowed: frozenset[str] | tuple[str, ...], what: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if value in allowed:
            return None
        listed = ", ".join(sorted(allowed)) if len(allowed) <= 12 else "the list at " + what
        return f'with value "{value}" must be one of [{listed}]'
    return check


def _repo_id(value: str) -> str | None:
    if REPO_ID.match(value):
        return None
    return f'with value "{value}" is not a valid model id: use "org/name" (letters, digits, "-", "_", ".")'


def _language(value: str) -> str | None:
    return None if LANGUAGE.match(value) else f'with value "{value}" is not a valid ISO 639 language code'


# ------------------------------------------------------------------------------------------------- fields
def _common(data: dict, errors: list[str]) -> None:
    _str_or_list(data, "license", errors,
                 _one_of(LICENSES, "https://huggingface.co/docs/hub/repositories-licenses"))
    if data.get("license") == "other" and "license_name" in data and not _is_str(data["license_name"]):
        errors.append('"license_name" must be a non-empty string')
    if "license_link" in data and not _is_str(data["license_link"]):
        errors.append('"license_link" must be a non-empty string')
    _str_or_list(data, "tags", errors)
    _str_or_list(data, "language", errors, _language)
    _str_or_list(data, "datasets", errors)
    for key in ("pretty_name", "library_name", "thumbnail"):
        if key in data and data[key] is not None and not _is_str(data[key]):
            errors.append(f'"{key}" must be a non-empty string')


def _model(data: dict, report: Report) -> None:
    errors = report.errors
    _str_or_list(data, "base_model", errors, _repo_id)
    relation = data.get("base_model_relation")
    if relation is not None:
        if relation not in BASE_MODEL_RELATIONS:
            errors.append(f'"base_model_relation" with value "{relation}" must be one of '
                          f"[{', '.join(BASE_MODEL_RELATIONS)}]")
        elif not data.get("base_model"):
            errors.append('"base_model_relation" requires "base_model"')
    if data.get("pipeline_tag") is not None:
        if not _is_str(data["pipeline_tag"]):
            errors.append('"pipeline_tag" must be a non-empty string')
        elif data["pipeline_tag"] not in TASKS:
            errors.append(f'"pipeline_tag" with value "{data["pipeline_tag"]}" is not a known task '
                          "(see https://huggingface.co/tasks)")
    if "model-index" in data:
        _model_index(data["model-index"], errors)


def _model_index(value: Any, errors: list[str]) -> None:
    if not isinstance(value, list) or not value:
        errors.append('"model-index" must be a non-empty list')
        return
    for i, model in enumerate(value):
        where = f"model-index[{i}]"
        if not isinstance(model, dict):
            errors.append(f'"{where}" must be an object')
            continue
        if not _is_str(model.get("name")):
            errors.append(f'"{where}.name" is required and must be a string')
        results = model.get("results")
        if not isinstance(results, list):
            errors.append(f'"{where}.results" is required and must be a list')
            continue
        for j, result in enumerate(results):
            _result(result, f"{where}.results[{j}]", errors)


def _result(result: Any, where: str, errors: list[str]) -> None:
    if not isinstance(result, dict):
        errors.append(f'"{where}" must be an object')
        return
    task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
    if not isinstance(task, dict) or not _is_str(task.get("type")):
        errors.append(f'"{where}.task.type" is required and must be a string')
    if not isinstance(dataset, dict):
        errors.append(f'"{where}.dataset" is required and must be an object with "type" and "name"')
    else:
        for key in ("type", "name"):
            if not _is_str(dataset.get(key)):
                errors.append(f'"{where}.dataset.{key}" is required and must be a string')
    if not isinstance(metrics, list) or not metrics:
        errors.append(f'"{where}.metrics" is required and must be a non-empty list')
        return
    for k, metric in enumerate(metrics):
        at = f"{where}.metrics[{k}]"
        if not isinstance(metric, dict):
            errors.append(f'"{at}" must be an object')
            continue
        if not _is_str(metric.get("type")):
            errors.append(f'"{at}.type" is required and must be a string')
        if "value" not in metric or metric["value"] is None or isinstance(metric["value"], (dict, list)):
            errors.append(f'"{at}.value" is required and must be a number or a string')
        if "verified" in metric and not isinstance(metric["verified"], bool):
            errors.append(f'"{at}.verified" must be a boolean')


def _dataset(data: dict, report: Report) -> None:
    errors = report.errors
    _str_or_list(data, "task_categories", errors, _one_of(TASKS, "https://huggingface.co/tasks"))
    _str_or_list(data, "size_categories", errors, _one_of(SIZE_CATEGORIES, "size_categories"))
    if "configs" in data:
        _configs(data["configs"], errors)


def _configs(value: Any, errors: list[str]) -> None:
    if not isinstance(value, list) or not value:
        errors.append('"configs" must be a non-empty list')
        return
    names: set[str] = set()
    defaults = 0
    for i, config in enumerate(value):
        where = f"configs[{i}]"
        if not isinstance(config, dict):
            errors.append(f'"{where}" must be an object')
            continue
        name = config.get("config_name")
        if not _is_str(name):
            errors.append(f'"{where}.config_name" is required and must be a string')
        elif name in names:
            errors.append(f'"{where}.config_name" with value "{name}" is used more than once')
        else:
            names.add(name)
        defaults += config.get("default") is True
        if "default" in config and not isinstance(config["default"], bool):
            errors.append(f'"{where}.default" must be a boolean')
        if "data_dir" in config and not _is_str(config["data_dir"]):
            errors.append(f'"{where}.data_dir" must be a string')
        if "data_files" in config:
            _data_files(config["data_files"], f"{where}.data_files", errors)
    if defaults > 1:
        errors.append('"configs": at most one config can have "default: true"')


def _data_files(value: Any, where: str, errors: list[str]) -> None:
    if _is_str(value):
        return
    if not isinstance(value, list) or not value:
        errors.append(f'"{where}" must be a path pattern or a non-empty list')
        return
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if _is_str(item):
            continue
        if not isinstance(item, dict):
            errors.append(f'"{at}" must be a path pattern or an object with "split" and "path"')
            continue
        if not _is_str(item.get("split")):
            errors.append(f'"{at}.split" is required and must be a string')
        path = item.get("path")
        if not (_is_str(path) or (isinstance(path, list) and path and all(_is_str(p) for p in path))):
            errors.append(f'"{at}.path" is required and must be a path pattern or a list of them')


def _space(data: dict, report: Report) -> None:
    errors = report.errors
    sdk = data.get("sdk")
    if sdk is None:
        errors.append(f'"sdk" is required and must be one of [{", ".join(SPACE_SDKS)}]')
    elif sdk not in SPACE_SDKS:
        errors.append(f'"sdk" with value "{sdk}" must be one of [{", ".join(SPACE_SDKS)}]')
    for key in ("colorFrom", "colorTo"):
        if key in data and data[key] not in SPACE_COLORS:
            errors.append(f'"{key}" with value "{data[key]}" must be one of [{", ".join(SPACE_COLORS)}]')
    for key in ("title", "emoji", "app_file", "sdk_version", "short_description"):
        if key in data and data[key] is not None and not isinstance(data[key], (str, int, float)):
            errors.append(f'"{key}" must be a string')
    if "pinned" in data and not isinstance(data["pinned"], bool):
        errors.append('"pinned" must be a boolean')
    if "app_port" in data and not isinstance(data["app_port"], int):
        errors.append('"app_port" must be an integer')
    _str_or_list(data, "models", errors, _repo_id)
