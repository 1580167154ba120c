"""The merge recipe: the YAML a user writes, validated before any work.

```yaml
method: task_arithmetic
base_model: org/base            # or org/base@rev, or ./local/dir (relative to the YAML file)
models:
  - {model: org/expert_math, domain: math}
  - {model: ./local/expert_code, domain: coding, weight: 1.0}
parameters: {scaling: 0.4}
dtype: bfloat16                 # optional; default: the base's dtype
merge_embeddings: false         # default false: embeddings/lm_head copied from the base
seed: 0
```

Unknown keys are errors (a typo must never be silently ignored). Per-expert coefficients may be given
either as ``weight:`` on each model or as ``parameters.weights`` (a list), not both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from mergebench.errors import ConfigError
from mergebench.finite import bad_numbers, describe


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]  # yaml is untyped here (no stubs installed)
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping.

    Plain YAML lets the last occurrence win, so ``method:`` written twice would silently merge with the
    second method; a benchmark configuration must never be read differently from how it looks.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:  # a list or mapping as a key (`? [a]`): what SafeLoader itself reports
                raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                        "found an unhashable key", key_node.start_mark) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key '{key}' (first given at line {seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def parse_yaml(text: str, *, name: str = "<string>") -> Any:
    """Parse YAML safely, rejecting duplicate keys (``yaml.YAMLError`` on any defect; marks quote ``name``)."""
    loader = _UniqueKeyLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except RecursionError:  # the composer recurses once per nesting level
        raise yaml.YAMLError("it nests too deeply (lists or mappings inside each other, hundreds of levels)") from None
    except ValueError as e:  # a scalar its constructor cannot build: a 5,000-digit integer, a 13th month
        problem = "an integer has more than 4,300 digits" if "integer string conversion" in str(e) else str(e)
        raise yaml.YAMLError(f"a value cannot be read: {problem}") from None
    finally:
        loader.dispose()


def read_yaml(path: Path, *, what: str) -> Any:
    """The parsed YAML of ``path``; a missing, unreadable or binary file, bad YAML or a duplicate key is a
    :class:`ConfigError` naming ``what``."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} '{path}' is a folder, not a YAML file.",
                          hint="Pass the path of the .yaml file itself.")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} '{path}' does not exist.",
                          hint="Check the path (a relative path starts from the current folder).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} '{path}' is not a text file (it is not valid UTF-8).",
                          hint="Pass a YAML file.") from None
    except OSError as e:
        raise ConfigError(f"{what} '{path}' cannot be read: {e.strerror or e}.",
                          hint="Check the path and the file's permissions.") from e
    if "\x00" in text:
        raise ConfigError(f"{what} '{path}' is a binary file, not YAML.", hint="Pass a YAML file.")
    try:
        return parse_yaml(text, name=str(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} '{path}' is not valid YAML: {e}",
                          hint="Fix the YAML where the message points (each key may appear once per mapping).") from e


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    """``org/name``, ``org/name@revision`` or a local folder."""
    domain: str | None = None
    """The expert's domain key; data-dependent methods pair the expert with this domain's data."""
    weight: float | None = None


class MergeRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    base_model: str
    models: list[ModelEntry] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: str | None = None
    merge_embeddings: bool = False
    seed: int = 0
    check_finite: bool = True
    """Fail on NaN/Inf in any input tensor (default); ``false`` merges them as they are."""
    tokenizer_source: str | None = None
    """Model whose config, generation config and tokenizer files are copied (default: the base)."""
    data: dict[str, str] = Field(default_factory=dict)
    """Validation data per domain for data-dependent methods: a ``.jsonl`` file or a dataset repo id."""

    @pydantic.model_validator(mode="after")
    def _one_way_to_weight(self) -> MergeRecipe:
        per_model = [m.weight is not None for m in self.models]
        if "weights" in self.parameters:
            if any(per_model):
                raise ValueError("give expert weights either as 'weight:' on each model or as "
                                 "'parameters.weights', not both")
            weights = self.parameters["weights"]
            if not isinstance(weights, list) or len(weights) != len(self.models):
                raise ValueError(f"'parameters.weights' must be a list of {len(self.models)} numbers, one per model")
        elif any(per_model) and not all(per_model):
            raise ValueError("either every model has a 'weight:' or none does")
        try:
            weights = self.weights
        except OverflowError:  # an integer too large for a float (400 digits)
            raise ValueError("expert weights must be finite numbers within float32's range") from None
        except (TypeError, ValueError):
            raise ValueError("expert weights must be numbers") from None
        where = "parameters.weights" if "weights" in self.parameters else "weight"
        problems = bad_numbers(list(weights or ()), where)
        if problems:
            raise ValueError(describe(problems))
        return self

    @property
    def weights(self) -> tuple[float, ...] | None:
        if "weights" in self.parameters:
            return tuple(float(w) for w in self.parameters["weights"])
        if self.models[0].weight is not None:
            return tuple(float(m.weight) for m in self.models)  # type: ignore[arg-type]
        return None

    @property
    def method_parameters(self) -> dict[str, Any]:
        """``parameters`` without ``weights``, which the engine passes to methods separately."""
        return {k: v for k, v in self.parameters.items() if k != "weights"}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "recipe") -> MergeRecipe:
        if not isinstance(data, dict):
            raise ConfigError(f"{source} must be a YAML mapping, got {type(data).__name__}.",
                              hint="Write it as `key: value` lines (method:, base_model:, models:); see the recipe "
                                   "format in `mergebench merge --help`.")
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as e:
            problems = "\n".join(
                f"  - {'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}" for err in e.errors())
            raise ConfigError(f"Invalid {source}:\n{problems}",
                              hint="See the recipe format in `mergebench merge --help`.") from e

    @classmethod
    def from_yaml(cls, path: Path) -> MergeRecipe:
        return cls.from_dict(read_yaml(path, what="Recipe file"), source=f"recipe '{path}'")

    def to_yaml(self) -> str:
        text: str = yaml.safe_dump(self.model_dump(exclude_defaults=True), sort_keys=False, allow_unicode=True)
        return text
