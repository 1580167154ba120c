"""The Hub's evaluation files: a benchmark dataset's ``eval.yaml`` and a model's ``.eval_results/*.yaml``.

Both formats are specified in the Hub documentation (https://huggingface.co/docs/hub/eval-results, "Eval.yaml
specification" and "Adding Evaluation Results"; the entry fields are also listed in
https://github.com/huggingface/hub-docs/blob/main/eval_results.yaml). The Hub treats them differently, and so
does the loopback Hub:

* ``eval.yaml`` "is validated at push time": a commit adding an invalid one is refused (400) with the field
  at fault, as a card with invalid metadata is. Required: ``name``, ``description``, ``evaluation_framework``
  and a non-empty ``tasks`` list whose items each have a unique ``id`` (``config`` and ``split`` optional
  strings); ``evaluation_framework: inspect-ai`` also needs ``field_spec``, ``solvers`` and ``scorers`` per
  task. Other keys are allowed (frameworks add their own). The framework identifiers the Hub lists
  (huggingface.js ``packages/tasks/src/eval.ts``) are not enforced: the documentation invites benchmarks to
  use their own and register it.
* ``.eval_results/*.yaml`` files are accepted as they are; ``model_info(expand=["evalResults"])`` serves their
  entries as ``{"filename", "data"}`` items, and a file that fails validation as ``{"filename", "error"}`` —
  the shapes ``huggingface_hub.parse_eval_result_entries`` reads (it skips the error items with a warning).
"""

from __future__ import annotations

from typing import Any

import yaml

from mergebench.hubserver.store import Snapshot

EVAL_YAML = "eval.yaml"
EVAL_RESULTS_DIR = ".eval_results"
INSPECT_AI_KEYS = ("field_spec", "solvers", "scorers")


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def eval_yaml_errors(text: str) -> list[str]:
    """What is wrong with a benchmark's ``eval.yaml`` (empty when it is valid), fields named by their path."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [f"Error parsing YAML: {' '.join(str(e).split())}"]
    if not isinstance(data, dict):
        return [f"eval.yaml must be a mapping (key: value), got a {type(data).__name__}"]
    errors = [f'"{key}" is required and must be a non-empty string'
              for key in ("name", "description", "evaluation_framework") if not _is_str(data.get(key))]
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        return [*errors, '"tasks" is required and must be a non-empty list']
    seen: set[str] = set()
    for i, task in enumerate(tasks):
        where = f"tasks[{i}]"
        if not isinstance(task, dict):
            errors.append(f'"{where}" must be an object')
            continue
        task_id = task.get("id")
        if not isinstance(task_id, str) or not _is_str(task_id):
            errors.append(f'"{where}.id" is required and must be a non-empty string')
        elif task_id in seen:
            errors.append(f'"{where}.id" with value "{task_id}" is used more than once')
        else:
            seen.add(task_id)
        errors += [f'"{where}.{key}" must be a non-empty string' for key in ("config", "split")
                   if key in task and not _is_str(task[key])]
        if data.get("evaluation_framework") == "inspect-ai":
            errors += [f'"{where}.{key}" is required with evaluation_framework inspect-ai'
                       for key in INSPECT_AI_KEYS if key not in task]
    return errors


def _entry_error(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "each entry must be an object"
    dataset = entry.get("dataset")
    if not isinstance(dataset, dict) or not _is_str(dataset.get("id")) or not _is_str(dataset.get("task_id")):
        return '"dataset.id" and "dataset.task_id" are required strings'
    if "value" not in entry or entry["value"] is None:
        return '"value" is required'
    source = entry.get("source")
    if source is not None and (not isinstance(source, dict) or not _is_str(source.get("url"))):
        return '"source.url" is required when "source" is given'
    return None


def eval_results_items(snap: Snapshot) -> list[dict[str, Any]]:
    """The ``evalResults`` of a model snapshot: one item per entry of each ``.eval_results/*.yaml`` file."""
    items: list[dict[str, Any]] = []
    for path, entry in snap.files.items():
        if not (path.startswith(f"{EVAL_RESULTS_DIR}/") and path.endswith(".yaml")):
            continue
        try:
            data = yaml.safe_load(entry.local.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            items.append({"filename": path, "error": f"cannot parse the file: {' '.join(str(e).split())}"})
            continue
        entries = data if isinstance(data, list) else [data]
        problems = [p for p in map(_entry_error, entries) if p]
        if problems:
            items.append({"filename": path, "error": problems[0]})
        else:
            items += [{"filename": path, "data": e} for e in entries]
    return items


__all__ = ["EVAL_RESULTS_DIR", "EVAL_YAML", "eval_results_items", "eval_yaml_errors"]
